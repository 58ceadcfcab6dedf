"""The stage's row files: scored rows (read, written, reused by a re-run), failures, the pairs' schema.

A scored row is one prompt after the pipeline: `row`, `prompt_id`, `instruction`, `reference`,
`candidates` with their `candidate_generators` and `scores` (None when the row failed), and
what went wrong (`generation_errors`, `row_error`, `judge_error`).
"""

from __future__ import annotations

from pathlib import Path

PAIR_COLUMNS = [
    "prompt_id",
    "prompt",
    "chosen",
    "rejected",
    "score_chosen",
    "score_rejected",
    "chosen_generator",
    "rejected_generator",
]


def read_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def pair_schema():
    """pairs.parquet's schema: scores as float64, everything else a string (an empty file keeps its columns)."""
    import pyarrow as pa

    return pa.schema([(c, pa.float64() if c.startswith("score_") else pa.string()) for c in PAIR_COLUMNS])


def write_rows(rows: list[dict], path: Path, metadata: dict[str, str] | None = None, schema=None) -> None:
    """Write parquet through a partial file, so a crash never leaves a half-written file under `path`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=schema)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    partial = path.with_suffix(".partial")
    pq.write_table(table, partial)
    partial.replace(path)


def previous_rows(out_dir: Path, fingerprint: str) -> dict[int, dict]:
    """Every row a previous attempt with the same settings scored, judged or failed, by row number."""
    scored, stamp = out_dir / "scored.parquet", out_dir / "scored.fingerprint"
    if not (scored.exists() and stamp.exists() and stamp.read_text() == fingerprint):
        return {}
    return {r["row"]: r for r in read_rows(scored)}


def failures(scored: list[dict]) -> list[dict]:
    """failed_rows.jsonl's lines: one per failed generation or judgement, with the step and the reason."""
    lines = []
    for r in scored:
        failed = r.get("scores") is None
        base = {"row": r["row"], "prompt_id": r["prompt_id"], "prompt": r["instruction"], "row_failed": failed}
        for err in r.get("generation_errors") or []:
            lines.append({**base, "step": err["generator"], "reason": err["reason"]})
        if r.get("judge_error"):
            lines.append({**base, "step": "judge", "reason": r["judge_error"]})
        if failed and not (r.get("generation_errors") or r.get("judge_error")):
            lines.append({**base, "step": "judge", "reason": r.get("row_error") or "not judged"})
    return lines
