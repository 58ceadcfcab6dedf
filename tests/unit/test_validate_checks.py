"""The validate stage without a tokenizer: checks, quarantine, gate, grouped split, outputs, reading files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignflow.conf.checks import CHECKS
from alignflow.conf.validation import ValidationConfig
from alignflow.tasks.validation.readers import DatasetError, read_pairs
from alignflow.tasks.validation.stage import split_by_prompt, validate_file, validate_pairs

VALID = {"prompt": "What is 2 + 2?", "chosen": "It is 4.", "rejected": "It is 5."}


def mixed_frame(dtype: object = object) -> tuple[pd.DataFrame, list[set[str]]]:
    """One row per case; `expected` is the set of reasons each row must be quarantined with."""
    rows = [
        (VALID, set()),
        ({"prompt": "Name a color.", "chosen": "", "rejected": "Blue."}, {"empty_field"}),
        ({"prompt": "   \n\t", "chosen": "Yes.", "rejected": "No."}, {"empty_field"}),
        ({"prompt": "Say hi.", "chosen": "Hi  there!", "rejected": " Hi there!\n"}, {"identical_pair"}),
        (dict(VALID), {"duplicate_pair"}),
        ({"prompt": "Pick one.", "chosen": None, "rejected": "B"}, {"null_field"}),
        ({"prompt": "Count.", "chosen": "one two", "rejected": 3}, {"wrong_type"}),
        ({"prompt": "Another question?", "chosen": "A fine answer.", "rejected": "A worse answer."}, set()),
    ]
    frame = pd.DataFrame([r for r, _ in rows], dtype=dtype)
    return frame, [e for _, e in rows]


def lenient(**kw) -> ValidationConfig:
    return ValidationConfig(**{"min_pairs": 1, "max_rejected_fraction": 1.0, **kw})


@pytest.mark.parametrize("dtype", [object, None], ids=["object", "inferred"])
def test_each_bad_row_is_quarantined_with_its_reason(dtype):
    frame, expected = mixed_frame(dtype)
    valid, quarantined, report = validate_pairs(frame, lenient(), tokenizer=None)

    assert len(valid) + len(quarantined) == len(frame)
    assert list(valid.columns) == list(frame.columns)
    assert valid.to_dict("records") == [frame.iloc[0].to_dict(), frame.iloc[7].to_dict()]

    by_row = {int(r["row"]): set(r["reasons"]) for r in quarantined.to_dict("records")}
    assert by_row == {i: e for i, e in enumerate(expected) if e}
    assert all(reason in CHECKS for reasons in by_row.values() for reason in reasons)


def test_report_counts_match():
    frame, expected = mixed_frame()
    valid, quarantined, report = validate_pairs(frame, lenient(), tokenizer=None)
    assert report.rows == len(frame) == 8
    assert report.valid == len(valid) == 2
    assert report.quarantined == len(quarantined) == 6
    assert report.valid_fraction == round(2 / 8, 4)
    for check_id, item in report.checks.items():
        rows_with = [i for i, e in enumerate(expected) if check_id in e]
        assert item.count == len(rows_with), check_id
        assert item.example_rows == rows_with[:5]
        assert item.description == CHECKS[check_id].description
    assert report.checks["too_long"].count == 0  # no tokenizer: token checks skipped
    assert "skipped" in report.checks["too_long"].model_dump(mode="json")
    assert report.tokens.measured == 0 and report.tokens.longest is None
    assert report.gate.passed is True and report.gate.failures == []
    json.dumps(report.model_dump(mode="json"))  # serializable as is


def test_missing_column_quarantines_every_row():
    frame = pd.DataFrame([{"prompt": "p1", "chosen": "a"}, {"prompt": "p2", "chosen": "b"}])
    valid, quarantined, report = validate_pairs(frame, lenient(), tokenizer=None)
    assert valid.empty
    assert len(quarantined) == 2
    assert all(r == ["missing_column"] for r in quarantined["reasons"])
    assert report.checks["missing_column"].count == 2
    assert report.gate.passed is False


def test_non_default_index_reports_positions():
    # Row numbers are positions in the input (as for files), whatever the frame's index.
    frame, expected = mixed_frame()
    frame.index = [100 + 10 * i for i in range(len(frame))]
    valid, quarantined, report = validate_pairs(frame, lenient(), tokenizer=None)
    assert len(valid) == 2
    assert sorted(quarantined["row"]) == [i for i, e in enumerate(expected) if e]
    assert report.checks["duplicate_pair"].example_rows == [4]
    assert report.checks["duplicate_pair"].detail["first_seen"] == [[4, 0]]


def test_valid_rows_pass_untouched():
    frame = pd.DataFrame([{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(30)])
    valid, quarantined, report = validate_pairs(frame, ValidationConfig(), tokenizer=None)
    assert len(valid) == 30 and quarantined.empty
    assert report.gate.passed is True
    pd.testing.assert_frame_equal(valid, frame)


def test_gate_fails_under_min_pairs():
    frame, _ = mixed_frame()
    _, _, report = validate_pairs(frame, ValidationConfig(min_pairs=5, max_rejected_fraction=1.0))
    assert report.gate.passed is False
    assert len(report.gate.failures) == 1
    assert "validation.min_pairs" in report.gate.failures[0]
    assert "5" in report.gate.failures[0]


def test_gate_fails_over_max_rejected_fraction():
    frame, _ = mixed_frame()
    _, _, report = validate_pairs(frame, ValidationConfig(min_pairs=1, max_rejected_fraction=0.5))
    assert report.gate.passed is False
    assert len(report.gate.failures) == 1
    failure = report.gate.failures[0]
    assert "validation.max_rejected_fraction" in failure
    assert "0.750" in failure and "empty_field: 2 rows (rows 1, 2)" in failure


def test_gate_names_both_keys_when_both_fail():
    frame, _ = mixed_frame()
    _, _, report = validate_pairs(frame, ValidationConfig())  # min_pairs=20, max_rejected_fraction=0.5
    failures = " ".join(report.gate.failures)
    assert "validation.min_pairs" in failures
    assert "validation.max_rejected_fraction" in failures


def test_empty_frame_fails_gate():
    frame = pd.DataFrame(columns=["prompt", "chosen", "rejected"])
    valid, quarantined, report = validate_pairs(frame, lenient())
    assert valid.empty and quarantined.empty
    assert report.rows == 0
    assert report.gate.passed is False


# --- split_by_prompt -----------------------------------------------------------------------------


def pairs_for(prompts: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {"prompt": prompts, "chosen": [f"c{i}" for i in range(len(prompts))], "rejected": ["r"] * len(prompts)}
    )


def test_split_is_deterministic_for_a_seed():
    df = pairs_for([f"prompt {i}" for i in range(200)])
    a_train, a_test = split_by_prompt(df, 0.2, seed=7)
    b_train, b_test = split_by_prompt(df, 0.2, seed=7)
    pd.testing.assert_frame_equal(a_train, b_train)
    pd.testing.assert_frame_equal(a_test, b_test)
    _, other_test = split_by_prompt(df, 0.2, seed=8)
    assert set(other_test["prompt"]) != set(a_test["prompt"])


def test_split_fraction_on_1000_prompts():
    df = pairs_for([f"prompt number {i}" for i in range(1000)])
    for test_size in (0.15, 0.5):
        train, test = split_by_prompt(df, test_size, seed=0)
        assert len(train) + len(test) == 1000
        assert abs(len(test) / 1000 - test_size) <= 0.05


@settings(max_examples=150, deadline=None)
@given(
    prompts=st.lists(st.text(max_size=8), min_size=0, max_size=40),
    test_size=st.floats(0.01, 0.99),
    seed=st.integers(0, 2**31),
)
def test_split_disjoint_by_prompt(prompts, test_size, seed):
    df = pairs_for(prompts)
    train, test = split_by_prompt(df, test_size, seed)
    assert len(train) + len(test) == len(df)
    assert not set(train["prompt"]) & set(test["prompt"])
    assert sorted(train["chosen"].tolist() + test["chosen"].tolist()) == sorted(df["chosen"].tolist())


# --- validate_file: the streaming path the flow and the CLI use --------------------------------------


def write_jsonl(path, frame: pd.DataFrame) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for record in frame.to_dict("records"):
            handle.write(json.dumps(record) + "\n")


def test_validate_file_when_gate_passes(tmp_path):
    frame, expected = mixed_frame()
    frame = pd.concat([frame, pairs_for([f"extra {i}" for i in range(20)])], ignore_index=True)
    write_jsonl(tmp_path / "pairs.jsonl", frame)
    config = ValidationConfig(min_pairs=5, max_rejected_fraction=0.5, chunk_rows=7)
    report = validate_file(tmp_path / "pairs.jsonl", config, tmp_path / "out")
    assert report.gate.passed
    paths = {k: Path(v) for k, v in report.files.items()}
    assert set(paths) == {"report", "quarantine", "summary", "train", "test"}
    written = json.loads(paths["report"].read_text())
    assert written["valid"] == 22
    assert written["split"]["train"] + written["split"]["test"] == 22
    assert written["split"]["seed"] == config.split_seed
    assert written["split"]["leaked_prompts"] == 0
    assert "gate passed" in paths["summary"].read_text()

    lines = paths["quarantine"].read_text().splitlines()
    assert len(lines) == sum(bool(e) for e in expected)
    records = [json.loads(line) for line in lines]
    assert all(isinstance(r["reasons"], list) and r["reasons"] for r in records)
    assert {r["row"]: set(r["reasons"]) for r in records} == {i: e for i, e in enumerate(expected) if e}
    assert [r["line"] for r in records] == [r["row"] + 1 for r in records]
    assert records[0]["record"] == frame.iloc[records[0]["row"]].to_dict()

    train, test = pd.read_parquet(paths["train"]), pd.read_parquet(paths["test"])
    assert len(train) + len(test) == 22
    assert len(train) == written["split"]["train"]
    assert not set(train["prompt"]) & set(test["prompt"])
    for column in ("prompt", "chosen", "rejected"):
        assert pd.api.types.is_string_dtype(train[column])


def test_validate_file_when_gate_fails(tmp_path):
    frame, expected = mixed_frame()
    write_jsonl(tmp_path / "pairs.jsonl", frame)
    report = validate_file(tmp_path / "pairs.jsonl", ValidationConfig(), tmp_path / "out")
    assert not report.gate.passed
    assert set(report.files) == {"report", "quarantine", "summary"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["quarantine.jsonl", "report.json", "summary.md"]
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["gate"]["passed"] is False
    assert "split" not in written
    assert "FAILED" in (tmp_path / "out" / "summary.md").read_text()
    assert len((tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()) == sum(bool(e) for e in expected)


# --- read_pairs ----------------------------------------------------------------------------------


def test_read_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope.parquet"
    with pytest.raises(FileNotFoundError) as info:
        read_pairs(missing)
    assert str(missing) in str(info.value)


def test_read_unsupported_suffix_names_it(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("prompt,chosen,rejected\n")
    with pytest.raises(DatasetError, match=r"\.txt"):
        read_pairs(path)


def test_read_invalid_jsonl_names_path(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{not json\n')
    with pytest.raises(ValueError) as info:
        read_pairs(path)
    assert str(path) in str(info.value)


ROUND_TRIP = pd.DataFrame(
    {
        "prompt": ["What is 2 + 2?", "12", "NA", 'Quote "this", please'],
        "chosen": ["4", "3.5", "true", "line one\nline two, with comma"],
        "rejected": ["five", "null", "", "naïve — ünïcode"],
    }
)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet", ".JSONL"])
def test_read_round_trips(tmp_path, suffix):
    path = tmp_path / f"pairs{suffix}"
    if suffix.lower() == ".jsonl":
        ROUND_TRIP.to_json(path, orient="records", lines=True, force_ascii=False)
    elif suffix == ".csv":
        ROUND_TRIP.to_csv(path, index=False)
    else:
        ROUND_TRIP.to_parquet(path, index=False)
    back = read_pairs(str(path))
    assert back.to_dict("records") == ROUND_TRIP.to_dict("records")
    valid, quarantined, _ = validate_pairs(back, lenient())
    assert len(valid) + len(quarantined) == len(ROUND_TRIP)
    assert list(quarantined["reasons"]) == [["empty_field"]]  # only the row with an empty rejected
