"""alignflow.tasks.generation.prompts: the shipped prompt set and a user's jsonl file."""

from __future__ import annotations

import json

import pytest

from alignflow.conf.base import BUILTIN_PROMPTS
from alignflow.tasks.generation.prompts import SHIPPED_PROMPTS, load_prompts, prompts_path, source_sha256


def test_shipped_set_is_large_unique_and_has_references():
    rows = load_prompts()
    assert len(rows) >= 200
    ids = [r["id"] for r in rows]
    prompts = [r["prompt"] for r in rows]
    assert len(set(ids)) == len(ids)
    assert len(set(prompts)) == len(prompts)
    assert len({p.lower() for p in prompts}) == len(prompts)
    for row in rows:
        assert set(row) == {"id", "prompt", "reference"}
        assert row["prompt"].strip() == row["prompt"] != ""
        assert isinstance(row["reference"], str) and row["reference"].strip(), row["id"]


def test_shipped_file_is_the_builtin_source():
    assert prompts_path(BUILTIN_PROMPTS) == SHIPPED_PROMPTS
    assert SHIPPED_PROMPTS.is_file()
    assert load_prompts(str(SHIPPED_PROMPTS)) == load_prompts(BUILTIN_PROMPTS)


def test_max_prompts():
    five = load_prompts(max_prompts=5)
    assert len(five) == 5
    assert five == load_prompts()[:5]
    assert len(load_prompts(max_prompts=10_000)) == len(load_prompts())


def write_jsonl(path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_user_file_without_ids_or_references(tmp_path):
    path = tmp_path / "mine.jsonl"
    write_jsonl(
        path,
        [
            json.dumps({"prompt": "  First question?  "}),
            "",
            json.dumps({"prompt": "Second?", "id": 7, "reference": None}),
            json.dumps({"prompt": "Third?", "reference": "An answer."}),
        ],
    )
    rows = load_prompts(str(path))
    assert rows == [
        {"id": "line1", "prompt": "First question?", "reference": ""},
        {"id": "7", "prompt": "Second?", "reference": ""},
        {"id": "line4", "prompt": "Third?", "reference": "An answer."},
    ]


def test_bad_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, [json.dumps({"prompt": "ok"}), json.dumps({"prompt": "fine"}), "{not json"])
    with pytest.raises(ValueError, match="not valid JSON") as info:
        load_prompts(str(path))
    assert f"{path}:3" in str(info.value)


@pytest.mark.parametrize(
    "bad",
    [json.dumps({"text": "no prompt key"}), json.dumps({"prompt": "   "}), json.dumps({"prompt": 5}), "[1, 2]"],
)
def test_row_without_a_prompt_names_file_and_line(tmp_path, bad):
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, [json.dumps({"prompt": "ok"}), bad])
    with pytest.raises(ValueError, match="prompt") as info:
        load_prompts(str(path))
    assert f"{path}:2" in str(info.value)


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError) as info:
        load_prompts(str(missing))
    assert str(missing) in str(info.value)
    assert "generation.prompts" in str(info.value)


def test_empty_file_raises(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(ValueError, match="no prompts"):
        load_prompts(str(path))


QUESTIONS = [
    {"question": "What is rain?", "answer": "Water falling from clouds.", "id": "a"},
    {"question": "  Why do cats purr?  ", "answer": None, "id": "b"},
]


@pytest.mark.parametrize("kind", ["parquet", "csv", "dataset", "datasetdict", "jsonl"])
def test_table_and_dataset_sources_with_a_configured_column(tmp_path, kind):
    import datasets
    import pandas as pd

    path = tmp_path / f"prompts.{kind}"
    if kind == "parquet":
        pd.DataFrame(QUESTIONS).to_parquet(path)
    elif kind == "csv":
        pd.DataFrame(QUESTIONS).to_csv(path, index=False)
    elif kind == "dataset":
        datasets.Dataset.from_list(QUESTIONS).save_to_disk(str(path))
    elif kind == "datasetdict":
        datasets.DatasetDict({"train": datasets.Dataset.from_list(QUESTIONS)}).save_to_disk(str(path))
    else:
        write_jsonl(path, [json.dumps(q) for q in QUESTIONS])
    rows = load_prompts(str(path), column="question", reference_column="answer")
    assert rows == [
        {"id": "a", "prompt": "What is rain?", "reference": "Water falling from clouds."},
        {"id": "b", "prompt": "Why do cats purr?", "reference": ""},
    ]
    assert source_sha256(path) == source_sha256(path) and len(source_sha256(path)) == 64


def test_missing_column_names_the_columns_and_the_key(tmp_path):
    import pandas as pd

    path = tmp_path / "prompts.parquet"
    pd.DataFrame(QUESTIONS).to_parquet(path)
    with pytest.raises(ValueError, match="generation.prompt_column") as info:
        load_prompts(str(path))
    assert "no column 'prompt'" in str(info.value) and "question" in str(info.value)


def test_empty_prompt_in_a_table_names_the_row(tmp_path):
    import pandas as pd

    path = tmp_path / "prompts.csv"
    pd.DataFrame({"prompt": ["fine", " "], "id": ["x", "y"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"row 1: needs a non-empty string `prompt`"):
        load_prompts(str(path))


def test_source_hash_tracks_a_folder_content(tmp_path):
    import datasets

    path = tmp_path / "ds"
    datasets.Dataset.from_list(QUESTIONS).save_to_disk(str(path))
    before = source_sha256(path)
    datasets.Dataset.from_list(QUESTIONS[:1]).save_to_disk(str(tmp_path / "other"))
    assert source_sha256(tmp_path / "other") != before
    with pytest.raises(FileNotFoundError):
        source_sha256(tmp_path / "nope")


def test_a_round_takes_the_next_prompts_wrapping_around_the_set():
    every = load_prompts()
    first = load_prompts(max_prompts=96)
    second = load_prompts(max_prompts=96, offset=96)
    third = load_prompts(max_prompts=96, offset=192)
    assert [r["id"] for r in first] == [r["id"] for r in every[:96]]
    assert not {r["id"] for r in first} & {r["id"] for r in second}
    assert [r["id"] for r in third] == [r["id"] for r in every[192:] + every[: 96 - len(every[192:])]]
