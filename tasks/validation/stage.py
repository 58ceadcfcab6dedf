"""Stage 2, validate: the entry points that read, check and write (the flow, the CLI, benchmarks).

validate_file streams a dataset file `validation.chunk_rows` rows at a time through the
Validator (each chunk's own checks in `validation.workers` processes, parallel.py) and writes the quarantine, the grouped train/test split (when the gate passed),
report.json and summary.md; validate_pairs does the same checks on a frame in memory and
writes nothing. Both return a ValidationReport.

Both read the data through its Layout (layouts.py: a column mapping, a system column, the
ultrafeedback_binarized layout) and take the evaluation prompt set for `eval_overlap`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from alignflow.tasks.validation.fields import detect_format
from alignflow.tasks.validation.hashing import prompt_buckets
from alignflow.tasks.validation.layouts import Layout, detect_layout, format_note
from alignflow.tasks.validation.outputs import Outputs, summary_markdown
from alignflow.tasks.validation.overlap import eval_prompt_set
from alignflow.tasks.validation.parallel import validate_chunks
from alignflow.tasks.validation.readers import Chunk, DatasetError, check_readable, compression, iter_chunks
from alignflow.tasks.validation.report import Source, ValidationReport
from alignflow.tasks.validation.validator import Validator

if TYPE_CHECKING:
    from alignflow.conf.validation import ValidationConfig


def code_version() -> str:
    """Hash of this package's modules: a change to the checks is a new validation (a cache miss in the flow)."""
    digest = hashlib.sha256()
    for module in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(module.name.encode() + b"\0" + module.read_bytes())
    return digest.hexdigest()


def validate_file(
    path: str | Path,
    config: ValidationConfig,
    out_dir: str | Path,
    tokenizer=None,
    *,
    split: bool = True,
    columns: Mapping[str, str] | None = None,
    eval_prompts: Iterable[str] | None = None,
    notes: Iterable[str] = (),
) -> ValidationReport:
    """Check a dataset file chunk by chunk; write quarantine, report, summary and (gate passed) the split.

    `tokenizer` (or a function that loads one, called when the first rows need it) enables the
    token checks; `columns` is generation.preference_columns; `eval_prompts` the evaluation
    prompts (evaluation.prompts) for `eval_overlap`; `notes` lines about where the file came from.
    Raises DatasetError when the file cannot be read; returns the report (with `files`).
    """
    started = time.perf_counter()
    path, out_dir = Path(path), Path(out_dir)
    kind = check_readable(path)
    # The layout and the format are decided from the first rows before any row is judged (short reads).
    layout = detect_layout(iter_chunks(path, config.chunk_rows), columns, str(path))
    validator = _validator(config, tokenizer, eval_prompts, layout, iter_chunks(path, config.chunk_rows))
    outputs = Outputs(out_dir, config, split)
    try:
        read = ((raw, layout.apply(raw)) for raw in iter_chunks(path, config.chunk_rows))
        for start, raw, chunk, result in validate_chunks(validator, read, config.workers):
            outputs.write(chunk, result, start, raw)
        if validator.rows == 0:
            raise DatasetError(f"{path}: no rows (the file holds no records)")
    except BaseException:
        outputs.abort()
        raise
    report = validator.report()
    packed = compression(path)
    report.source = Source(path=str(path), type=kind, bytes=path.stat().st_size, compression=packed)
    gzip_note = ["gzip-compressed: decompressed while reading"] if packed else []
    report.notes = [*notes, *gzip_note, *_notes(report, layout, validator)]
    paths = outputs.close(report.gate.passed)
    if split and report.gate.passed:
        report.split = outputs.split_summary()
        if report.split.leaked_prompts:
            raise AssertionError(f"split leaked {report.split.leaked_prompts} prompts (a bug: it is by prompt)")
    report.seconds = round(time.perf_counter() - started, 3)
    report.rows_per_second = round(validator.rows / max(report.seconds, 1e-9))
    paths["report"] = out_dir / "report.json"
    paths["summary"] = out_dir / "summary.md"
    report.files = {k: str(v) for k, v in paths.items()}
    paths["summary"].write_text(summary_markdown(report), encoding="utf-8")
    paths["report"].write_text(json.dumps(report.model_dump(mode="json"), indent=2), encoding="utf-8")
    return report


def _validator(
    config: ValidationConfig,
    tokenizer,
    eval_prompts: Iterable[str] | None,
    layout: Layout,
    head: Iterable[Chunk],
) -> Validator:
    # The format is detected on the chunks as the layout rewrites them (a copy, so nothing is counted twice).
    probe = dataclasses.replace(layout, counts={})
    fmt = detect_format(probe.apply(chunk) for chunk in head)
    evaluation = eval_prompt_set(eval_prompts) if eval_prompts is not None else None
    return Validator(config, tokenizer, fmt, evaluation)


def _notes(report: ValidationReport, layout: Layout, validator: Validator) -> list[str]:
    notes = [format_note(report.format)] if report.format else []
    notes += layout.notes()
    return notes + validator.notes()


def validate_pairs(
    df: pd.DataFrame,
    config: ValidationConfig,
    tokenizer=None,
    *,
    columns: Mapping[str, str] | None = None,
    eval_prompts: Iterable[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, ValidationReport]:
    """In memory: (valid rows as given, quarantined rows with `row` and `reasons`, report). Writes nothing."""
    step = max(config.chunk_rows, 1)

    def chunks() -> Iterator[Chunk]:
        for start in range(0, len(df), step):
            part = df.iloc[start : start + step]
            yield Chunk({str(c): part[c].tolist() for c in part.columns}, len(part))

    layout = detect_layout(chunks(), columns, "the pairs")
    validator = _validator(config, tokenizer, eval_prompts, layout, chunks())
    valid = np.zeros(len(df), dtype=bool)
    reasons: dict[int, list[str]] = {}
    for start, chunk in zip(range(0, len(df), step), chunks(), strict=True):
        result = validator.feed(layout.apply(chunk))
        valid[start : start + chunk.n] = result.valid
        reasons.update({start + i: r for i, r in result.reasons.items()})
    quarantined = df[~valid].copy()
    quarantined.insert(0, "row", np.flatnonzero(~valid))
    quarantined["reasons"] = [reasons[i] for i in np.flatnonzero(~valid)]
    report = validator.report()
    report.notes = _notes(report, layout, validator)
    return df[valid].reset_index(drop=True), quarantined.reset_index(drop=True), report


def split_by_prompt(df: pd.DataFrame, test_size: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deterministic split grouped by prompt: a prompt's pairs all land on one side (as validate_file does)."""
    is_test = prompt_buckets(df["prompt"].tolist(), seed) < test_size
    return df[~is_test].reset_index(drop=True), df[is_test].reset_index(drop=True)
