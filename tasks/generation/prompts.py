"""Prompt sources: the shipped set, a user's .jsonl/.parquet/.csv file, or a `datasets` folder.

Every source gives rows with `id`, `prompt` and `reference` (empty when the source has no
reference answers; the offline judge then scores without one). Errors name the file, the
line or row, and the config key to change.
"""

from __future__ import annotations

import json
from pathlib import Path

from alignflow.conf.base import BUILTIN_EVAL_PROMPTS, BUILTIN_PROMPTS
from alignflow.conf.loader import SHIPPED_EVAL_PROMPTS, SHIPPED_PROMPTS
from alignflow.tasks.runtime.state import sha256_file, sha256_tree

# The promotion gate's evaluation set: its own file, so it is disjoint from the training prompts by construction.
SHIPPED_SETS = {BUILTIN_PROMPTS: SHIPPED_PROMPTS, BUILTIN_EVAL_PROMPTS: SHIPPED_EVAL_PROMPTS}
__all__ = ["SHIPPED_PROMPTS", "SHIPPED_SETS", "load_prompts", "prompts_path", "source_sha256"]
TABLE_SUFFIXES = (".parquet", ".csv")


def prompts_path(source: str) -> Path:
    return SHIPPED_SETS.get(source) or Path(source).expanduser()


def source_sha256(path: str | Path) -> str:
    """Content hash of a source: a file's bytes, or every file of a folder (a `datasets` save)."""
    path = Path(path)
    if path.is_dir():
        return sha256_tree(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder")
    return sha256_file(path)


def load_prompts(
    source: str = BUILTIN_PROMPTS,
    max_prompts: int | None = None,
    column: str = "prompt",
    reference_column: str = "reference",
    offset: int = 0,
) -> list[dict]:
    """Rows with `id`, `prompt` and `reference` (used by the offline judge): `max_prompts` of them from row
    `offset` on, wrapping around to the first rows (the nightly rounds' prompt rotation)."""
    path = prompts_path(source)
    if path.is_dir():
        rows = _from_records(path, _dataset_records(path), column, reference_column, "row")
    elif not path.is_file():
        raise FileNotFoundError(f"{path}: prompt file not found (generation.prompts)")
    elif path.suffix.lower() in TABLE_SUFFIXES:
        rows = _from_records(path, _table_records(path), column, reference_column, "row")
    else:
        rows = _from_jsonl(path, column, reference_column)
    if not rows:
        raise ValueError(f"{path}: no prompts")
    start = offset % len(rows)
    rows = rows[start:] + rows[:start]
    return rows[:max_prompts] if max_prompts else rows


def _from_jsonl(path: Path, column: str, reference_column: str) -> list[dict]:
    rows: list[dict] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            rows.append(_row(path, f"{path}:{lineno}", row, column, reference_column, f"line{lineno}"))
    return rows


def _from_records(path: Path, records: list[dict], column: str, reference_column: str, unit: str) -> list[dict]:
    if records and column not in records[0]:
        raise ValueError(
            f"{path}: no column {column!r} (generation.prompt_column); columns: {', '.join(map(str, records[0]))}"
        )
    return [
        _row(path, f"{path} {unit} {i}", record, column, reference_column, f"{unit}{i}")
        for i, record in enumerate(records)
    ]


def _row(path: Path, where: str, row: object, column: str, reference_column: str, default_id: str) -> dict:
    prompt = row.get(column) if isinstance(row, dict) else None
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: needs a non-empty string `{column}` (generation.prompt_column)")
    reference = row.get(reference_column)
    row_id = row.get("id")
    return {
        "id": default_id if row_id is None or row_id != row_id else str(row_id),  # NaN != NaN (pandas' missing)
        "prompt": prompt.strip(),
        "reference": reference if isinstance(reference, str) else "",
    }


def _table_records(path: Path) -> list[dict]:
    import pandas as pd

    try:
        if path.suffix.lower() == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype=object, keep_default_na=False, na_values=[], encoding="utf-8")
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ValueError(f"{path}: cannot read it as {path.suffix[1:]} ({exc})") from None
    return frame.to_dict(orient="records")


def _dataset_records(path: Path) -> list[dict]:
    """A folder written by `datasets` save_to_disk: a Dataset, or a DatasetDict's `train` (or only) split."""
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(f"{path}: not a `datasets` folder written by save_to_disk ({exc})") from None
    if isinstance(data, datasets.DatasetDict):
        if "train" in data:
            data = data["train"]
        elif len(data) == 1:
            data = next(iter(data.values()))
        else:
            raise ValueError(f"{path}: a DatasetDict with splits {list(data)} and no `train`: save one split")
    return data.to_list()
