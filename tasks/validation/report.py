"""The validation report (the typed result of the stage) and the gate's verdict.

`ValidationReport.model_dump(mode="json")` is report.json exactly; its schema is documented in
docs/validation.md. Optional parts (a check's detail, the source, the split, the
files) are left out of the dump when absent, as the file has always done, not written as null.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from alignflow.conf.checks import CHECKS, DATASET_CHECKS, GATE_ROW_CHECKS, Level

if TYPE_CHECKING:
    from alignflow.conf.validation import ValidationConfig

REPORT_VERSION = 1
PERCENTILES = (50, 90, 95, 99)
KEEP_PERCENT = 95  # the share of pairs the suggested max_length keeps


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


class TokenPercentiles(_Part):
    """The distribution of the length `too_long` compares with validation.max_length (per pair, the longer of
    prompt + chosen and prompt + rejected, after the chat template), over the measured pairs."""

    p50: int
    p90: int
    p95: int
    p99: int
    suggested_max_length: int = Field(description="the smallest max_length that keeps 95% of the measured pairs")
    too_long_fraction: float = Field(
        description="measured pairs over the current max_length (truncated_fraction, even with too_long off)"
    )


class Tokens(_Part):
    measured: int
    max_length: int
    longest: int | None
    mean: float | None
    too_long: int
    truncated_fraction: float | None
    percentiles: TokenPercentiles | None = _optional(description="absent when no pair was measured")


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


def _nearest_rank(lengths: list[int], cumulative: list[int], percent: int) -> int:
    """The smallest length at least `percent`% of the pairs are no longer than (nearest rank), so a max_length
    of it keeps that share: no interpolation, which could suggest a length that keeps a little less."""
    rank = -(-percent * cumulative[-1] // 100)  # ceil in integers: 0.95 * n in floats can land just under
    return lengths[bisect_left(cumulative, max(rank, 1))]


def length_percentiles(counts: Mapping[int, int], max_length: int) -> TokenPercentiles | None:
    """Percentiles and the suggested max_length from how many pairs have each length (None: no pair).

    Counts per distinct length, not every pair's length: memory stays flat however many rows the
    file has, and chunks merge by adding counts."""
    lengths = sorted(length for length, n in counts.items() if n > 0)
    if not lengths:
        return None
    cumulative = list(accumulate(counts[length] for length in lengths))
    at = {p: _nearest_rank(lengths, cumulative, p) for p in (*PERCENTILES, KEEP_PERCENT)}
    over = sum(counts[length] for length in lengths if length > max_length)
    return TokenPercentiles(
        p50=at[50],
        p90=at[90],
        p95=at[95],
        p99=at[99],
        suggested_max_length=at[KEEP_PERCENT],
        too_long_fraction=round(over / cumulative[-1], 4),
    )


def length_lines(tokens: Tokens) -> list[str]:
    """The report's token lengths for a person (the CLI and summary.md say the same): the longest and mean, the
    percentiles, then the max_length that keeps 95% of the pairs against the share too long now."""
    if not tokens.measured:
        return []
    lines = [
        f"tokens: longest {tokens.longest}, mean {tokens.mean}, "
        f"{tokens.truncated_fraction or 0:.1%} over max_length={tokens.max_length}"
    ]
    pct = tokens.percentiles
    if pct is not None:
        spread = ", ".join(f"p{p} {getattr(pct, f'p{p}')}" for p in PERCENTILES)
        lines += [
            f"pair length (the longer side, after the chat template): {spread}",
            f"max_length={pct.suggested_max_length} would keep {KEEP_PERCENT}% of the pairs; at max_length="
            f"{tokens.max_length}, {pct.too_long_fraction:.1%} are too long "
            "(set validation.max_length and training.max_length together)",
        ]
    return lines


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
