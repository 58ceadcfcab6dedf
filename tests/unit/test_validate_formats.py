"""Formats (TRL's standard, conversational, implicit prompt) across file types, the preference checks, levels."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from pydantic import ValidationError

from alignflow.conf.validation import ValidationConfig
from alignflow.tasks.validation.fields import FORMATS
from alignflow.tasks.validation.readers import read_pairs
from alignflow.tasks.validation.stage import validate_file, validate_pairs


def lenient(**kw) -> ValidationConfig:
    return ValidationConfig(**{"min_pairs": 1, "max_rejected_fraction": 1.0, **kw})


def msgs(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in turns]


CONVERSATIONAL = [
    {
        "prompt": msgs(("system", "Be brief."), ("user", f"What is {i} + {i}?")),
        "chosen": msgs(("assistant", f"{2 * i}.")),
        "rejected": msgs(("assistant", "I do not know, sorry.")),
    }
    for i in range(6)
]
IMPLICIT_CONVERSATIONAL = [
    {
        "chosen": msgs(("user", f"Capital of country {i}?"), ("assistant", f"City {i}.")),
        "rejected": msgs(("user", f"Capital of country {i}?"), ("assistant", "No idea at all.")),
    }
    for i in range(6)
]
IMPLICIT_STANDARD = [{"chosen": f"The sky {i} is blue.", "rejected": f"The sky {i} is green, maybe."} for i in range(6)]


def write(path, rows) -> None:
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows, indent=2))
    elif suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    else:
        frame = pd.DataFrame(rows)
        for c in frame.columns:
            frame[c] = [json.dumps(v) if isinstance(v, list) else v for v in frame[c]]
        frame.to_csv(path, index=False)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
@pytest.mark.parametrize(
    ("rows", "fmt"),
    [
        (CONVERSATIONAL, "conversational"),
        (IMPLICIT_CONVERSATIONAL, "conversational_implicit_prompt"),
        (IMPLICIT_STANDARD, "standard_implicit_prompt"),
    ],
    ids=["conversational", "implicit-conversational", "implicit-standard"],
)
def test_formats_are_detected_and_written_as_strings(tmp_path, suffix, rows, fmt):
    path = tmp_path / f"pairs{suffix}"
    write(path, rows)
    report = validate_file(path, lenient(test_size=0.3), tmp_path / "out")
    assert report.format == fmt and fmt in FORMATS
    assert report.valid == len(rows), report.gate
    out = pd.concat([pd.read_parquet(report.files["train"]), pd.read_parquet(report.files["test"])])
    for column in ("prompt", "chosen", "rejected"):
        assert all(isinstance(v, str) and v for v in out[column])
    first = out.sort_values("source_row").iloc[0]
    if fmt == "conversational":
        assert first["prompt"] == "system: Be brief.\n\nuser: What is 0 + 0?"
        assert (first["chosen"], first["rejected"]) == ("0.", "I do not know, sorry.")
    elif fmt == "conversational_implicit_prompt":
        assert (first["prompt"], first["chosen"]) == ("Capital of country 0?", "City 0.")
    else:
        assert (first["prompt"], first["chosen"], first["rejected"]) == ("The sky 0 is", "blue.", "green, maybe.")


def test_mixed_formats_name_rows_and_fail_the_gate(tmp_path):
    rows = [*CONVERSATIONAL, {"prompt": "plain", "chosen": "a", "rejected": "b"}, *IMPLICIT_CONVERSATIONAL[:1]]
    write(tmp_path / "mixed.jsonl", rows)
    report = validate_file(tmp_path / "mixed.jsonl", lenient(), tmp_path / "out")
    item = report.checks["mixed_format"]
    assert item.count == 2 and item.example_rows == [6, 7]
    assert item.detail == {"standard": 1, "conversational": 6, "conversational_implicit_prompt": 1}
    assert not report.gate.passed
    assert any("mixed_format: 2 rows" in f and "(rows 6, 7)" in f for f in report.gate.failures)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (
            {
                "prompt": msgs(("assistant", "hi")),
                "chosen": msgs(("assistant", "a")),
                "rejected": msgs(("assistant", "b")),
            },
            "conversation_structure",
        ),
        (
            {"prompt": msgs(("user", "hi")), "chosen": msgs(("user", "a")), "rejected": msgs(("assistant", "b"))},
            "conversation_structure",
        ),
        (
            {
                "prompt": msgs(("user", "hi"), ("system", "late")),
                "chosen": msgs(("assistant", "a")),
                "rejected": msgs(("assistant", "b")),
            },
            "conversation_structure",
        ),
        (
            {"prompt": msgs(("robot", "hi")), "chosen": msgs(("assistant", "a")), "rejected": msgs(("assistant", "b"))},
            "conversation_structure",
        ),
        (
            {"prompt": msgs(("user", "hi")), "chosen": msgs(("assistant", "  ")), "rejected": msgs(("assistant", "b"))},
            "empty_field",
        ),
        ({"prompt": msgs(("user", "hi")), "chosen": [], "rejected": msgs(("assistant", "b"))}, "empty_field"),
        (
            {"prompt": msgs(("user", "hi")), "chosen": [{"role": "assistant"}], "rejected": msgs(("assistant", "b"))},
            "wrong_type",
        ),
        (
            {
                "prompt": msgs(("user", "hi")),
                "chosen": [{"role": "assistant", "content": None}],
                "rejected": msgs(("assistant", "b")),
            },
            "null_field",
        ),
        (
            {
                "prompt": msgs(("user", "hi")),
                "chosen": msgs(("assistant", "Same  answer")),
                "rejected": msgs(("assistant", "Same answer ")),
            },
            "identical_pair",
        ),
        (
            {"prompt": "a string", "chosen": msgs(("assistant", "a")), "rejected": msgs(("assistant", "b"))},
            "wrong_type",
        ),
    ],
)
def test_conversation_checks(row, reason):
    frame = pd.DataFrame([*CONVERSATIONAL[:2], row], dtype=object)
    _, quarantined, report = validate_pairs(frame, lenient())
    assert quarantined["row"].tolist() == [2]
    assert quarantined["reasons"].tolist() == [[reason]]


def test_ratings_ties_margins_and_types():
    rows = [
        {"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}", "score_chosen": c, "score_rejected": r}
        for i, (c, r) in enumerate([(0.9, 0.1), (0.5, 0.5), (0.5, 0.45), (0.2, 0.6), (None, 0.1), ("high", 0.1)])
    ]
    frame = pd.DataFrame(rows, dtype=object)
    _, quarantined, report = validate_pairs(frame, lenient(min_rating_margin=0.1))
    assert dict(zip(quarantined["row"], quarantined["reasons"], strict=True)) == {
        1: ["rating_tie"],
        2: ["low_margin"],
        3: ["low_margin"],
        4: ["null_field"],
        5: ["wrong_type"],
    }
    assert report.ratings.columns == ["score_chosen", "score_rejected"]
    assert report.ratings.rows == 4


def test_duplicates_and_contradictions_across_chunks():
    base = [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(10)]
    rows = [
        *base,
        dict(base[2]),
        {"prompt": "p3", "chosen": "bad 3", "rejected": "good 3"},
        {"prompt": "p4", "chosen": "bad 4", "rejected": "other"},
    ]
    _, quarantined, report = validate_pairs(pd.DataFrame(rows), lenient(chunk_rows=4))
    assert dict(zip(quarantined["row"], quarantined["reasons"], strict=True)) == {
        10: ["duplicate_pair"],
        11: ["contradiction"],
    }
    assert report.checks["duplicate_pair"].detail["first_seen"] == [[10, 2]]
    assert report.checks["contradiction"].detail["reverses"] == [[11, 3]]


def test_split_leakage_in_a_given_split_column():
    rows = [
        {"prompt": f"p{i % 5}", "chosen": f"good {i}", "rejected": f"bad {i}", "split": "train" if i < 5 else "test"}
        for i in range(8)
    ]
    _, quarantined, report = validate_pairs(pd.DataFrame(rows), lenient())
    item = report.checks["split_leakage"]
    assert quarantined.empty  # a dataset check: the gate fails, rows stay
    assert item.count == 3 and item.example_rows == [5, 6, 7]
    assert item.detail["leaked_prompts"] == 3
    assert any(f.startswith("split_leakage: 3 prompts") for f in report.gate.failures)


def test_extra_columns_and_length_bias_are_warnings():
    rows = [
        {"prompt": f"p{i}", "chosen": "a much longer answer " * 3, "rejected": f"short {i}", "junk": i}
        for i in range(40)
    ]
    valid, _, report = validate_pairs(pd.DataFrame(rows), lenient())
    assert len(valid) == 40 and report.gate.passed
    assert report.checks["extra_columns"].detail == {"columns": ["junk"]}
    bias = report.checks["length_bias"]
    assert bias.level == "warning" and bias.count == 40
    assert bias.detail["chosen_longer_fraction"] == 1.0 and bias.detail["sign_test_z"] > 6
    assert any(w.startswith("length_bias: chosen is longer in 100%") for w in report.gate.warnings)
    assert any(w.startswith("extra_columns: junk") for w in report.gate.warnings)


def test_unbiased_lengths_do_not_warn():
    rows = [{"prompt": f"p{i}", "chosen": "x" * (5 + i % 2), "rejected": "y" * (5 + (i + 1) % 2)} for i in range(40)]
    _, _, report = validate_pairs(pd.DataFrame(rows), lenient())
    assert report.checks["length_bias"].count == 0
    assert report.checks["length_bias"].detail["chosen_longer_fraction"] == 0.5


def test_levels_warning_keeps_rows_and_off_skips():
    rows = [{"prompt": "p", "chosen": "same", "rejected": "same"}, {"prompt": "q", "chosen": "a", "rejected": "b"}]
    errors = [c for c in ValidationConfig().errors if c != "identical_pair"]
    valid, _, report = validate_pairs(pd.DataFrame(rows), lenient(errors=errors, warnings=["identical_pair"]))
    assert len(valid) == 2
    assert report.checks["identical_pair"].model_dump(mode="json") | {"detail": None} == {
        "level": "warning",
        "description": report.checks["identical_pair"].description,
        "count": 1,
        "example_rows": [0],
        "detail": None,
    }
    assert any(w.startswith("identical_pair: 1 rows") for w in report.gate.warnings)
    valid, _, report = validate_pairs(pd.DataFrame(rows), lenient(errors=errors, warnings=[]))
    assert len(valid) == 2 and report.checks["identical_pair"].level == "off"
    assert report.checks["identical_pair"].count == 0


def test_config_rejects_inconsistent_levels():
    with pytest.raises(ValidationError, match="both errors and warnings: empty_field"):
        ValidationConfig(warnings=["empty_field"])
    with pytest.raises(ValidationError, match="null_field must stay in validation.errors"):
        ValidationConfig(errors=["missing_column", "wrong_type", "mixed_format"])
    with pytest.raises(ValidationError):
        ValidationConfig(errors=["no_such_check"])


def test_json_array_line_numbers_and_read_pairs(tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}" if i != 2 else f"c{i}"} for i in range(4)]
    write(tmp_path / "pairs.json", rows)
    report = validate_file(tmp_path / "pairs.json", lenient(), tmp_path / "out")
    quarantine = [json.loads(x) for x in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert [(q["row"], q["line"], q["reasons"]) for q in quarantine] == [(2, 12, ["identical_pair"])]
    assert report.source.type == "json"
    assert read_pairs(tmp_path / "pairs.json").to_dict("records") == rows


def test_hf_style_json_lines_with_json_suffix(tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(3)]
    (tmp_path / "pairs.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert validate_file(tmp_path / "pairs.json", lenient(), tmp_path / "o").valid == 3
