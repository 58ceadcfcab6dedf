"""Data as people have it: the ultrafeedback_binarized layout, system prompts and multi-turn histories,
columns named otherwise, gzip, a dataset id from the HF cache; each detected, noted in the report, and
(marked integration) run through the whole flow."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import SMALL, STATE, small_config
from preference_files import ROWS, bad, lenient, turn, ultrafeedback, write  # noqa: E402

from alignflow.tasks.generation.byo import PreferenceDataError, import_preference_data, is_dataset_id
from alignflow.tasks.validation.readers import DatasetError, check_readable, read_pairs
from alignflow.tasks.validation.stage import validate_file, validate_pairs


def split_rows(report) -> pd.DataFrame:
    return pd.concat([read_pairs(report.files["train"]), read_pairs(report.files["test"])]).sort_values("source_row")


# ---- the ultrafeedback_binarized layout ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["uf.jsonl", "uf.jsonl.gz", "uf.json.gz", "uf.parquet"])
def test_ultrafeedback_layout_strips_the_prompt_turn(tmp_path, name):
    report = validate_file(write(tmp_path / name, ultrafeedback()), lenient(), tmp_path / "out")
    assert report.quarantined == 0 and report.valid == len(ROWS), report.gate
    assert report.format == "conversational"
    assert report.checks["wrong_type"].count == 0 and report.checks["extra_columns"].count == 0
    assert any(n.startswith("ultrafeedback_binarized layout") and f"in {len(ROWS)} rows" in n for n in report.notes)
    assert any("`messages` (a copy of chosen) left out" in n for n in report.notes)
    out = split_rows(report)
    assert out["prompt"].tolist() == [r["prompt"] for r in ROWS]
    assert out["chosen"].tolist() == [r["reference"] for r in ROWS]
    assert {"prompt_id", "score_chosen", "score_rejected"} <= set(out.columns) and "messages" not in out.columns
    assert report.ratings.rows == len(ROWS)
    if name.endswith(".gz"):
        assert report.source.compression == "gzip" and "gzip-compressed: decompressed while reading" in report.notes
    else:
        assert report.source.compression is None


def test_shared_system_prompt_and_history_become_the_prompt():
    system, history = turn("system", "Answer briefly."), [turn("user", "Hello."), turn("assistant", "Hi! Ask away.")]
    rows = [
        {
            "prompt": r["prompt"],
            "chosen": [system, *history, turn("user", r["prompt"]), turn("assistant", r["reference"])],
            "rejected": [system, *history, turn("user", r["prompt"]), turn("assistant", bad(r["reference"]))],
        }
        for r in ROWS[:6]
    ]
    valid, quarantined, report = validate_pairs(pd.DataFrame(rows), lenient())
    assert quarantined.empty and report.format == "conversational"
    assert any(n.startswith("6 rows share a system prompt or earlier turns") for n in report.notes)


def test_ultrafeedback_rows_that_do_not_fit_are_named():
    rows = ultrafeedback(ROWS[:4])
    rows[1]["chosen"] = [turn("user", "another question"), turn("assistant", "an answer")]  # no shared prompt turn
    rows[2]["rejected"] = "not a conversation"
    rows[3]["chosen"] = [turn("assistant", ROWS[3]["reference"])]  # responses alone: the prompt column is the turn
    rows[3]["rejected"] = [turn("assistant", bad(ROWS[3]["reference"]))]
    _, quarantined, report = validate_pairs(pd.DataFrame(rows), lenient())
    assert dict(zip(quarantined["row"], quarantined["reasons"], strict=True)) == {
        1: ["conversation_structure", "prompt_in_response"],  # rejected still holds the prompt turn
        2: ["wrong_type"],
    }
    assert any(n.startswith("1 rows hold the responses alone") for n in report.notes)


def test_repeated_prompt_turns_in_explicit_conversations_are_stripped():
    rows = [
        {
            "prompt": [turn("user", r["prompt"])],
            "chosen": [turn("user", r["prompt"]), turn("assistant", r["reference"])],
            "rejected": [turn("user", r["prompt"]), turn("assistant", bad(r["reference"]))],
        }
        for r in ROWS[:5]
    ]
    valid, quarantined, report = validate_pairs(pd.DataFrame(rows), lenient())
    assert quarantined.empty
    assert "prompt turns repeated at the start of chosen and rejected stripped in 5 rows" in report.notes


# ---- a system column, columns named otherwise -----------------------------------------------------------


def test_system_column_becomes_the_system_turn(tmp_path):
    rows = [
        {
            "system": "You are terse." if i % 2 else "",
            "prompt": r["prompt"],
            "chosen": r["reference"],
            "rejected": "No.",
        }
        for i, r in enumerate(ROWS[:6])
    ]
    report = validate_file(write(tmp_path / "orca.jsonl", rows), lenient(), tmp_path / "out")
    assert report.quarantined == 0 and report.format == "conversational"
    assert "system prompts read from the `system` column (3 rows have one)" in report.notes
    out = split_rows(report)
    assert out["prompt"].tolist()[:2] == [ROWS[0]["prompt"], f"system: You are terse.\n\nuser: {ROWS[1]['prompt']}"]


def test_column_mapping(tmp_path):
    rows = [{"question": r["prompt"], "response_j": r["reference"], "response_k": "Not sure."} for r in ROWS[:6]]
    path = write(tmp_path / "se.jsonl", rows)
    mapping = {"prompt": "question", "chosen": "response_j", "rejected": "response_k"}
    report = validate_file(path, lenient(), tmp_path / "out", columns=mapping)
    assert report.valid == 6 and report.format == "standard" and report.checks["extra_columns"].count == 0
    assert (
        "columns mapped by generation.preference_columns: prompt <- question, chosen <- response_j, "
        "rejected <- response_k" in report.notes
    )
    assert split_rows(report)["chosen"].tolist() == [r["reference"] for r in ROWS[:6]]
    quarantine = validate_file(path, lenient(), tmp_path / "unmapped")  # without it: no pairs, and a clear gate
    assert quarantine.valid == 0 and any("no chosen/rejected columns" in f for f in quarantine.gate.failures)
    with pytest.raises(DatasetError, match=r"generation.preference_columns maps rejected to 'response_x'"):
        validate_file(path, lenient(), tmp_path / "o", columns={**mapping, "rejected": "response_x"})


def test_column_mapping_through_byo(tmp_path):
    rows = [{"question": r["prompt"], "response_j": r["reference"], "response_k": "Not sure."} for r in ROWS[:6]]
    path = write(tmp_path / "se.jsonl", rows)
    with pytest.raises(PreferenceDataError, match="generation.preference_columns"):
        import_preference_data(path, tmp_path / "stage")
    mapping = {"prompt": "question", "chosen": "response_j", "rejected": "response_k"}
    _, report = import_preference_data(path, tmp_path / "stage", mapping)
    assert report.format == "standard" and report.rows == 6


# ---- gzip ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".json.gz", ".csv.gz"])
def test_gzip_is_read_and_noted(tmp_path, suffix):
    rows = [{"prompt": r["prompt"], "chosen": r["reference"], "rejected": "No."} for r in ROWS[:5]]
    path = tmp_path / f"pairs{suffix}"
    if suffix == ".csv.gz":
        path.write_bytes(gzip.compress(pd.DataFrame(rows).to_csv(index=False).encode()))
    else:
        write(path, rows)
    assert check_readable(path) == suffix.split(".")[1]
    report = validate_file(path, lenient(), tmp_path / "out")
    assert report.valid == 5 and report.source.compression == "gzip"
    assert report.notes[:2] == [
        "gzip-compressed: decompressed while reading",
        "format standard: prompt, chosen and rejected strings",
    ]
    ref, imported = import_preference_data(path, tmp_path / "stage")
    assert ref.path.name == f"pairs{suffix}" and imported.rows == 5


def test_broken_gzip_names_the_problem(tmp_path):
    truncated = tmp_path / "t.jsonl.gz"
    truncated.write_bytes(gzip.compress(b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n' * 200)[:60])
    with pytest.raises(DatasetError, match="gzip stream ends early"):
        validate_file(truncated, lenient(), tmp_path / "o")
    plain = tmp_path / "plain.jsonl.gz"
    plain.write_text('{"prompt": "p"}\n')
    with pytest.raises(DatasetError, match="named .gz but not gzip-compressed"):
        check_readable(plain)
    hidden = tmp_path / "hidden.jsonl"
    hidden.write_bytes(gzip.compress(b'{"prompt": "p"}\n'))
    with pytest.raises(DatasetError, match=r"gzip-compressed: name it hidden\.jsonl\.gz"):
        check_readable(hidden)
    with pytest.raises(DatasetError, match="unsupported file type '.parquet.gz'"):
        check_readable(write(tmp_path / "x.parquet.gz", [{"a": 1}]))


# ---- a dataset id through datasets.load_dataset, offline ----------------------------------------------------


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory):
    """`someone/tiny_prefs` in an HF datasets cache under the test state directory, built here: what
    load_dataset leaves behind after reading a Hub dataset, with splits train_prefs and test_prefs."""
    import datasets
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.parquet.parquet import Parquet

    cache = Path(datasets.config.HF_DATASETS_CACHE)
    assert str(cache).startswith(str(STATE))  # conftest configure_environment: HF_DATASETS_CACHE in the test state
    source = tmp_path_factory.mktemp("hub-files")
    files = {}
    for split, rows in (("train_prefs", ultrafeedback()), ("test_prefs", ultrafeedback(ROWS[:4]))):
        files[split] = [str(source / f"{split}.parquet")]
        pd.DataFrame(rows).to_parquet(files[split][0])
    builder = Parquet(
        cache_dir=str(cache), dataset_name="tiny_prefs", data_files=DataFilesDict.from_patterns(files), hash="0" * 16
    )
    builder.download_and_prepare()
    target = cache / "someone___tiny_prefs"
    shutil.rmtree(target, ignore_errors=True)
    (cache / "tiny_prefs").rename(target)
    for config_dir in target.iterdir():  # a Hub dataset's config is `default`
        config_dir.rename(config_dir.with_name("default"))
    return "someone/tiny_prefs"


def test_dataset_ids_are_told_from_paths(tmp_path):
    assert is_dataset_id("HuggingFaceH4/ultrafeedback_binarized")
    assert is_dataset_id("HuggingFaceH4/ultrafeedback_binarized:train_prefs")
    assert is_dataset_id("hf:someone/tiny_prefs")
    assert not is_dataset_id("data/pairs.jsonl") and not is_dataset_id("pairs.jsonl.gz")
    assert not is_dataset_id("./someone/tiny_prefs") and not is_dataset_id("/abs/path")
    (tmp_path / "owner").mkdir()
    (tmp_path / "owner" / "name").write_text("x")
    assert not is_dataset_id(tmp_path / "owner" / "name")


def test_dataset_id_is_read_from_the_hf_cache(hf_cache, tmp_path):
    ref, report = import_preference_data(f"{hf_cache}:train_prefs", tmp_path / "stage")
    assert ref.path.name == "pairs.parquet" and report.rows == len(ROWS) and report.format == "conversational"
    result = validate_file(ref.path, lenient(), tmp_path / "out")
    assert result.quarantined == 0 and any(n.startswith("ultrafeedback_binarized layout") for n in result.notes)
    with pytest.raises(PreferenceDataError, match=r"splits train_prefs, test_prefs and no `train`: name one"):
        import_preference_data(hf_cache, tmp_path / "stage2")
    with pytest.raises(PreferenceDataError, match="not readable offline from the HF datasets cache"):
        import_preference_data("someone/not_cached", tmp_path / "stage3")


def test_cli_validates_a_dataset_id(hf_cache, tmp_path):
    from typer.testing import CliRunner

    from alignflow.flows.cli import app

    args = ["validate", f"hf:{hf_cache}:test_prefs", "--no-tokenizer", "--out", str(tmp_path / "o"), *SMALL]
    result = CliRunner().invoke(app, [*args, "validation.min_pairs=4"])
    assert result.exit_code == 0, result.output
    assert "read with datasets.load_dataset from the HF cache: someone/tiny_prefs, split test_prefs" in result.output
    written = json.loads((tmp_path / "o" / "report.json").read_text())
    assert written["valid"] == 4 and written["notes"][0].startswith("read with datasets.load_dataset")


def test_preflight_looks_for_a_dataset_id_in_the_cache(hf_cache):
    import os

    from alignflow.tasks.runtime.preflight import check_dataset_id, parts

    cache = Path(os.environ.get("HF_DATASETS_CACHE") or Path(os.environ["HF_HOME"]) / "datasets")
    assert check_dataset_id(f"{hf_cache}:train_prefs", cache) is None
    assert "not in the HF datasets cache" in check_dataset_id("someone/absent", cache)
    found = {key: target for key, target, _ in parts(small_config(f"generation.preference_data={hf_cache}"))}
    assert found["generation.preference_data"] == hf_cache


# ---- through the whole flow -------------------------------------------------------------------------------

EVAL = ["evaluation.max_prompts=12", "evaluation.samples_per_prompt=2", "evaluation.max_new_tokens=12"]
