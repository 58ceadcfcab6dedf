"""`validation`: dataset checks, their levels, and the gate before training."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from alignflow.conf.base import Section
from alignflow.conf.checks import CHECK_IDS, DEFAULT_ERRORS, DEFAULT_WARNINGS, STRUCTURAL_CHECKS

# The check ids, their default levels and which must stay errors come from the one registry
# (conf/checks.py), so a new check is one entry there, never a second list here.
ValidationCheck = Literal[CHECK_IDS]  # type: ignore[valid-type]  (built from the registry at import)


class ValidationConfig(Section):
    """Dataset checks (ids and defaults in conf/checks.py), their levels and the gate before training."""

    max_length: int = Field(
        256,
        ge=8,
        description="Longest prompt+response in tokens (chat template applied); longer pairs are `too_long`.",
    )
    max_rejected_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="Stop the run when more than this fraction of rows is quarantined."
    )
    min_pairs: int = Field(20, ge=1, description="Stop the run with fewer valid pairs than this.")
    errors: list[ValidationCheck] = Field(
        default_factory=lambda: list(DEFAULT_ERRORS),
        description="Checks that quarantine their rows (row checks) or fail the gate (dataset checks).",
    )
    warnings: list[ValidationCheck] = Field(
        default_factory=lambda: list(DEFAULT_WARNINGS),
        description="Checks that are only reported; a check in neither list is not run.",
    )
    min_rating_margin: float = Field(
        0.0, ge=0.0, description="Rating margin (chosen - rejected) below this is `low_margin`; equal is `rating_tie`."
    )
    rating_columns: list[str] = Field(
        default_factory=lambda: ["score_chosen", "score_rejected"],
        min_length=2,
        max_length=2,
        description="The chosen and rejected ratings, when the dataset has them.",
    )
    allowed_columns: list[str] = Field(
        default_factory=lambda: ["prompt_id", "id", "split", "chosen_generator", "rejected_generator"],
        description="Columns besides prompt/chosen/rejected and the ratings that are not `extra_columns`.",
    )
    length_bias_threshold: float = Field(
        0.65,
        gt=0.5,
        le=1.0,
        description="Warn when more than this share of pairs has the longer response chosen (and it is significant).",
    )
    chunk_rows: int = Field(10000, ge=1, description="Rows read and checked at a time: memory is bounded by this.")
    # The per-row checks of one Python process bound validation at ~15k rows/s with the token checks
    # (issue 17): chunks are checked in worker processes and merged here in file order, with results
    # identical to one process. "auto" is one worker per CPU, at most 3 (the merge, the reading and
    # the writing stay in one process and bound the gain beyond that); files under 30k rows, and
    # systems without fork, are checked in-process whatever this says.
    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto",
        description="Processes checking chunks: 1 checks in this process; `auto` one per CPU, at most 3.",
    )
    example_rows: int = Field(5, ge=0, le=1000, description="Example row numbers kept per check in the report.")
    test_size: float = Field(0.15, gt=0.0, lt=1.0, description="Held-out fraction of prompts.")
    split_seed: int = 0

    @model_validator(mode="after")
    def _levels_are_consistent(self) -> ValidationConfig:
        both = sorted(set(self.errors) & set(self.warnings))
        if both:
            raise ValueError(f"checks listed as both errors and warnings: {', '.join(both)}")
        structural = [c for c in STRUCTURAL_CHECKS if c not in self.errors]
        if structural:
            raise ValueError(f"{', '.join(structural)} must stay in validation.errors: such rows have no usable text")
        return self
