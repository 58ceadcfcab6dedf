"""Properties of the streaming validator on random datasets (hypothesis).

Nothing is lost (valid + quarantined == input), the split is disjoint by prompt, the report
counts are the quarantine's, and the chunk size changes nothing but memory.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from alignflow.conf.checks import CHECKS, DATASET_CHECKS
from alignflow.conf.validation import ValidationConfig
from alignflow.tasks.validation.stage import validate_file, validate_pairs

TEXT = st.text(alphabet=st.sampled_from(list("ab \n\t\x01é")), max_size=6)
VALUE = st.one_of(TEXT, TEXT, TEXT, st.none(), st.integers(-2, 2), st.just([{"role": "user", "content": "x"}]))
RATING = st.one_of(st.floats(0, 1, allow_nan=False), st.none(), st.just("high"))


@st.composite
def datasets(draw) -> list[dict]:
    prompts = draw(st.lists(TEXT, min_size=1, max_size=4))
    rows = []
    for _ in range(draw(st.integers(0, 30))):
        row = {"prompt": draw(st.sampled_from(prompts)), "chosen": draw(VALUE), "rejected": draw(VALUE)}
        for key in list(row):
            if draw(st.integers(0, 20)) == 0:
                del row[key]
        if draw(st.booleans()):
            row["score_chosen"], row["score_rejected"] = draw(RATING), draw(RATING)
        rows.append(row)
    return rows


def lenient(**kw) -> ValidationConfig:
    return ValidationConfig(**{"min_pairs": 1, "max_rejected_fraction": 1.0, **kw})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=datasets(), chunk_rows=st.integers(1, 8))
def test_file_nothing_lost_split_disjoint_counts_match(rows, chunk_rows):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows) or "\n")
        if not rows:
            return
        report = validate_file(path, lenient(chunk_rows=chunk_rows, test_size=0.5), Path(tmp) / "out")
        quarantine = [json.loads(line) for line in Path(report.files["quarantine"]).read_text().splitlines()]

        assert report.rows == len(rows)
        assert report.valid + report.quarantined == len(rows)
        assert len(quarantine) == report.quarantined
        assert sorted(q["row"] for q in quarantine) == sorted({q["row"] for q in quarantine})
        assert all(q["record"] == rows[q["row"]] for q in quarantine)

        reasons = Counter(r for q in quarantine for r in q["reasons"])
        for check, item in report.checks.items():
            if item.level == "error" and check not in DATASET_CHECKS:
                assert item.count == reasons[check], check
                assert item.example_rows == sorted(q["row"] for q in quarantine if check in q["reasons"])[:5]
        assert set(reasons) <= set(CHECKS)

        if report.gate.passed:
            train = pd.read_parquet(report.files["train"])
            test = pd.read_parquet(report.files["test"])
            assert len(train) + len(test) == report.valid
            assert not set(train["prompt"]) & set(test["prompt"])
            kept = sorted(train["source_row"].tolist() + test["source_row"].tolist())
            assert sorted(kept + [q["row"] for q in quarantine]) == list(range(len(rows)))
            assert report.split.leaked_prompts == 0


@settings(max_examples=50, deadline=None)
@given(rows=datasets(), chunk_rows=st.integers(1, 5))
@example(rows=[{}, {"chosen": "", "rejected": None}], chunk_rows=1)  # format known only from row 2
def test_chunk_size_changes_nothing(rows, chunk_rows):
    frame = pd.DataFrame(rows, dtype=object)
    one_valid, one_quarantined, one = validate_pairs(frame, lenient(chunk_rows=10_000))
    many_valid, many_quarantined, many = validate_pairs(frame, lenient(chunk_rows=chunk_rows))
    assert len(one_valid) + len(one_quarantined) == len(frame)
    pd.testing.assert_frame_equal(one_valid, many_valid)
    assert one_quarantined["reasons"].tolist() == many_quarantined["reasons"].tolist()
    assert one == many


@settings(max_examples=50, deadline=None)
@given(
    prompts=st.lists(st.text(alphabet="abc xyzé?", max_size=8), min_size=1, max_size=40),
    test_size=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**31),
)
def test_split_output_is_disjoint_by_prompt(prompts, test_size, seed):
    rows = [{"prompt": p + "?", "chosen": f"good {i}", "rejected": f"bad {i}!"} for i, p in enumerate(prompts)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.parquet"
        pd.DataFrame(rows).to_parquet(path)
        config = lenient(test_size=test_size, split_seed=seed, chunk_rows=7, warnings=[])
        report = validate_file(path, config, Path(tmp) / "out")
        train, test = pd.read_parquet(report.files["train"]), pd.read_parquet(report.files["test"])
    assert len(train) + len(test) == report.valid == len(rows)
    assert not set(train["prompt"]) & set(test["prompt"])
    assert report.split.train_prompts == train["prompt"].nunique()
