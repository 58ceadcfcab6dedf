"""The validation report (the typed result of the stage) and the gate's verdict.

`ValidationReport.model_dump(mode="json")` is report.json exactly; its schema is documented in
docs/validation.md. Optional parts (a check's detail, the source, the split, the
files) are left out of the dump when absent, as the file has always done, not written as null.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from alignflow.conf.checks import CHECKS, DATASET_CHECKS, GATE_ROW_CHECKS, Level

if TYPE_CHECKING:
    from alignflow.conf.validation import ValidationConfig

REPORT_VERSION = 1


def _absent(value: object) -> bool:
    return value is None


def _optional(**kw: Any) -> Any:
    """A field that is left out of the dump (and of report.json) when it is None."""
    return Field(None, exclude_if=_absent, **kw)


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CheckResult(_Part):
    level: Level
    description: str
    count: int
    example_rows: list[int]  # the first `validation.example_rows` rows hit (0-based, in input order)
    detail: dict[str, Any] | None = _optional()
    skipped: str | None = _optional(description="why the check could not run (too_long without a tokenizer)")


class Tokens(_Part):
    measured: int
    max_length: int
    longest: int | None
    mean: float | None
    too_long: int
    truncated_fraction: float | None


class Ratings(_Part):
    columns: list[str] | None  # the rating columns, when the dataset has both
    rows: int
    mean_margin: float | None
    min_rating_margin: float


class Gate(_Part):
    passed: bool
    failures: list[str]  # each one names the config key or check that failed, with example rows
    warnings: list[str]
    min_pairs: int
    max_rejected_fraction: float


class Source(_Part):
    path: str
    type: str  # the reader: jsonl, json, parquet or csv
    bytes: int
    compression: str | None = _optional(description="gzip when the file was gzip-compressed")


class SplitSummary(_Part):
    train: int
    test: int
    train_prompts: int
    test_prompts: int
    leaked_prompts: int  # always 0: the split is by prompt (validate_file raises otherwise)
    seed: int
    test_size: float


class ValidationReport(_Part):
    """What the validate stage found; `files` names report.json, summary.md, the quarantine and the split."""

    schema_version: int = REPORT_VERSION
    format: str | None
    notes: list[str] = Field(
        default_factory=list, description="one line per way the data was read: format, layout, mapping, compression"
    )
    columns: list[str]
    rows: int
    valid: int
    quarantined: int
    valid_fraction: float
    rejected_fraction: float
    checks: dict[str, CheckResult]  # every registered check, in registry order, with its level
    tokens: Tokens
    ratings: Ratings
    gate: Gate
    # Set by validate_file (a file was read and outputs written); absent from validate_pairs' report.
    source: Source | None = _optional()
    split: SplitSummary | None = _optional(description="the train/test split, written when the gate passed")
    seconds: float | None = _optional()
    rows_per_second: int | None = _optional()
    files: dict[str, str] | None = _optional()


def describe(check: str, item: CheckResult, dataset_format: str | None = None) -> str:
    """One line for a gate failure or warning: the check, its count and example rows."""
    rows = ", ".join(str(r) for r in item.example_rows)
    more = f" (rows {rows}{', ...' if item.count > len(item.example_rows) else ''})" if rows else ""
    detail = item.detail or {}
    if check == "mixed_format" and dataset_format is not None:
        return (
            f"mixed_format: {item.count} rows differ from the dataset's format "
            f"{dataset_format} ({', '.join(f'{k}: {v}' for k, v in detail.items())}){more}"
        )
    if check == "length_bias":
        return (
            f"length_bias: chosen is longer in {detail['chosen_longer_fraction']:.0%} of pairs "
            f"(sign test z={detail['sign_test_z']}, threshold {detail['threshold']})"
        )
    if check == "extra_columns":
        return f"extra_columns: {', '.join(detail.get('columns', []))} in {item.count} rows"
    if check == "contradiction" and detail.get("reverses"):
        pairs = ", ".join(f"row {a} reverses row {b}" for a, b in detail["reverses"])
        return f"contradiction: {item.count} swapped pairs ({pairs}{', ...' if item.count > len(detail['reverses']) else ''})"
    if check == "split_leakage":
        return f"split_leakage: {detail.get('leaked_prompts', '?')} prompts in more than one split{more}"
    return f"{check}: {item.count} rows{more}"


def decide_gate(
    checks: dict[str, CheckResult],
    config: ValidationConfig,
    *,
    rows: int,
    valid: int,
    rejected_fraction: float,
    columns: list[str],
    dataset_format: str | None,
) -> Gate:
    """Pass unless too few valid pairs remain, too many rows were quarantined, a dataset check
    (or a gate row check) is an error that fired, or the file has no chosen/rejected at all."""
    failures, warnings = [], []
    if valid < config.min_pairs:
        failures.append(f"{valid} valid pairs < validation.min_pairs={config.min_pairs}")
    if rejected_fraction > config.max_rejected_fraction:
        top = sorted(
            (c for c in CHECKS if checks[c].count and checks[c].level == "error" and c not in DATASET_CHECKS),
            key=lambda c: -checks[c].count,
        )[:3]
        failures.append(
            f"rejected fraction {rejected_fraction:.3f} > validation.max_rejected_fraction="
            f"{config.max_rejected_fraction} (" + ", ".join(describe(c, checks[c]) for c in top) + ")"
        )
    for check, item in checks.items():
        if not item.count:
            continue
        if item.level == "error" and check in (*DATASET_CHECKS, *GATE_ROW_CHECKS):
            failures.append(describe(check, item, dataset_format))
        elif item.level == "warning":
            warnings.append(describe(check, item, dataset_format))
    if rows and not any(c in columns for c in ("chosen", "rejected")):
        failures.append("no chosen/rejected columns at all (columns found: " + ", ".join(columns[:10]) + ")")
    return Gate(
        passed=not failures,
        failures=failures,
        warnings=warnings,
        min_pairs=config.min_pairs,
        max_rejected_fraction=config.max_rejected_fraction,
    )
