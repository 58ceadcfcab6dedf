"""validation.workers: chunks checked in worker processes give what one process gives.

The same report, the same quarantine (bytes and order), the same train/test split, on a file
whose duplicates, contradictions, swapped pairs and leaked prompts cross chunk boundaries,
with the token checks on (each worker has its own TokenCounter) and bad rows of many kinds.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest

from alignflow.conf.validation import ValidationConfig
from alignflow.tasks.runtime.tiny_model import corpus, train_tokenizer
from alignflow.tasks.validation import parallel
from alignflow.tasks.validation.readers import DatasetError
from alignflow.tasks.validation.stage import validate_file

WORDS = ["the", "a", "model", "answer", "question", "data", "light", "water", "energy", "system", "because", "when"]


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return train_tokenizer(corpus(), 512)


def _rows(n: int, seed: int = 3) -> list[dict]:
    rng = random.Random(seed)

    def sentence(k: int, source: random.Random = rng) -> str:
        return " ".join(source.choice(WORDS) for _ in range(k)).capitalize() + "."

    rows: list[dict] = []
    for i in range(n):
        row = {
            "prompt_id": f"q{i // 3}",
            "prompt": f"Question {i // 3}: {sentence(5, random.Random(i // 3))}?",  # three rows a prompt
            "chosen": sentence(rng.randint(3, 40)),  # some over max_length: too_long
            "rejected": sentence(rng.randint(3, 30)),
            "score_chosen": round(rng.uniform(0.5, 1.0), 3),
            "score_rejected": round(rng.uniform(0.0, 0.45), 3),
            "split": rng.choice(["train", "train", "test"]),  # prompts under both labels: split_leakage
        }
        kind = i % 23
        earlier = rows[rng.randrange(len(rows))] if rows else None
        if kind == 1 and earlier:
            row = dict(earlier)  # a duplicate, usually from another chunk
        elif kind == 2 and earlier and "rejected" in earlier:
            row = {**earlier, "chosen": earlier["rejected"], "rejected": earlier["chosen"]}  # swapped: contradiction
        elif kind == 3:
            row["chosen"] = "   "
        elif kind == 4:
            row["rejected"] = row["chosen"] + " "
        elif kind == 5:
            row["rejected"] = None
        elif kind == 6:
            row["score_rejected"] = row["score_chosen"]
        elif kind == 7:
            row["chosen"] = 42
        elif kind == 8:
            row["prompt"] = "bell\x07 " + row["prompt"]
        elif kind == 9:
            row["notes"] = "an extra column"
        elif kind == 10:
            row["chosen"] = row["prompt"] + " " + row["chosen"]  # the prompt inside the response
        elif kind == 11:
            del row["rejected"]
        rows.append(row)
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def _outputs(report, out: Path) -> dict:
    written = json.loads((out / "report.json").read_text())
    for key in ("seconds", "rows_per_second", "files"):  # timings and where the files are differ
        written.pop(key)
    return {
        "report": written,
        "summary": (out / "summary.md").read_text(),
        "quarantine": (out / "quarantine.jsonl").read_bytes(),
        "train": pd.read_parquet(out / "train.parquet") if (out / "train.parquet").exists() else None,
        "test": pd.read_parquet(out / "test.parquet") if (out / "test.parquet").exists() else None,
    }


class CountingPool(parallel.ProcessPoolExecutor):
    started = 0

    def __init__(self, *args, **kwargs) -> None:
        CountingPool.started += 1
        super().__init__(*args, **kwargs)


@pytest.fixture
def pools(monkeypatch) -> type[CountingPool]:
    CountingPool.started = 0
    monkeypatch.setattr(parallel, "ProcessPoolExecutor", CountingPool)
    return CountingPool


def _conversational(rows: list[dict]) -> list[dict]:
    """The same rows as messages (the texts the workers send back are then not the strings read)."""
    out = []
    for row in rows:
        row = dict(row)
        for key, role in (("prompt", "user"), ("chosen", "assistant"), ("rejected", "assistant")):
            if isinstance(row.get(key), str):
                row[key] = [{"role": role, "content": row[key]}]
        out.append(row)
    return out


@pytest.mark.parametrize(
    ("tokens", "conversational"),
    [(True, False), (False, False), (True, True)],
    ids=["token-checks", "no-tokenizer", "conversational"],
)
def test_workers_change_nothing_but_speed(tmp_path, monkeypatch, pools, tiny_tokenizer, tokens, conversational):
    monkeypatch.setattr(parallel, "MIN_ROWS", 1)  # a pool even for this small file
    rows = _rows(700)
    rows[100]["chosen"] = "broken \ud800 bytes"  # invalid_utf8: the text is rewritten with U+FFFD
    path = _write(tmp_path / "pairs.jsonl", _conversational(rows) if conversational else rows)
    defaults = ValidationConfig()
    config = dict(
        chunk_rows=37,
        max_length=130,
        min_pairs=1,
        max_rejected_fraction=1.0,
        errors=[c for c in defaults.errors if c != "split_leakage"],  # reported, not a gate failure: a split is written
        warnings=[*defaults.warnings, "split_leakage"],
    )
    results = {}
    for workers in (1, 2, 3):
        out = tmp_path / f"out-{workers}"
        # A loader, as the CLI passes: the workers inherit what it loaded (nothing is pickled).
        tokenizer = (lambda: tiny_tokenizer) if tokens else None
        report = validate_file(path, ValidationConfig(**config, workers=workers), out, tokenizer)
        results[workers] = _outputs(report, out)
    assert pools.started == 2  # workers=2 and 3 ran a pool; workers=1 did not

    one = results[1]
    checks = one["report"]["checks"]
    for fired in (
        "duplicate_pair",
        "contradiction",
        "split_leakage",
        "empty_field",
        "identical_pair",
        "null_field",
        "invalid_utf8",
    ):
        assert checks[fired]["count"], fired  # the file exercises what crosses chunks, and bad rows
    assert checks["too_long"]["count"] if tokens else checks["too_long"]["skipped"]
    if tokens:
        assert any(note.startswith("token lengths:") for note in one["report"]["notes"])
    assert one["train"] is not None and len(one["train"]) and len(one["test"])
    for workers in (2, 3):
        other = results[workers]
        assert other["report"] == one["report"], workers
        assert other["summary"] == one["summary"]
        assert other["quarantine"] == one["quarantine"]
        pd.testing.assert_frame_equal(other["train"], one["train"])
        pd.testing.assert_frame_equal(other["test"], one["test"])


def test_small_files_are_checked_in_process(tmp_path, pools):
    path = _write(tmp_path / "pairs.jsonl", _rows(300))
    report = validate_file(path, ValidationConfig(chunk_rows=50, workers=2, min_pairs=1), tmp_path / "out")
    assert report.rows == 300
    assert pools.started == 0  # under parallel.MIN_ROWS: no pool to start


def test_auto_workers_are_bounded():
    assert 1 <= parallel.resolve_workers("auto") <= parallel.MAX_AUTO_WORKERS
    assert parallel.resolve_workers(1) == 1
    assert ValidationConfig().workers == "auto"
    with pytest.raises(ValueError):
        ValidationConfig(workers=0)


def test_a_bad_line_mid_file_stops_the_pool_and_leaves_no_outputs(tmp_path, monkeypatch, pools):
    monkeypatch.setattr(parallel, "MIN_ROWS", 1)
    path = _write(tmp_path / "pairs.jsonl", _rows(400))
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"prompt": "cut off\n')  # chunks are in the workers when the reader meets it
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match=r"pairs.jsonl:401: malformed JSON line"):
        validate_file(path, ValidationConfig(chunk_rows=20, workers=2, min_pairs=1), out)
    assert pools.started == 1
    assert sorted(p.name for p in out.iterdir()) == []  # nothing partial: the .tmp files are removed
