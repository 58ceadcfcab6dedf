"""The generate stage's report: what report.json holds and what the stage returns with the pairs' Ref.

One model for both ways the stage makes its data. Generated pairs (stage.py) fill the counts,
judge, throughput and per-generator fields; bring-your-own data (byo.py) fills `source`,
`generated`, `format`, `rows` and `columns`. Both fill `prompts`, `pairs`, `content_sha256`
and `seconds`. A dump holds only the fields the path set (a set None, such as a throughput
of a run that reused every row, stays), so report.json, the MLflow metrics and the flow's
result keep each path's keys.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, SerializerFunctionWrapHandler, model_serializer


class GeneratorStats(BaseModel):
    """One generator's share of the candidates and of the pairs."""

    generator: str  # the step label, e.g. g0:model@t1.0
    candidates: int
    failed: int  # requests that failed after the client's retries
    chosen: int
    rejected: int
    mean_score: float | None  # None: none of its candidates was judged


class GenerationReport(BaseModel):
    """The generate stage's report (report.json). Fields in report.json's key order."""

    source: str | None = None  # bring-your-own: the file or folder given
    generated: bool = True  # False for bring-your-own data (the key is then in report.json)
    format: str | None = None  # bring-your-own: the TRL preference form detected
    rows: int | None = None  # bring-your-own: rows in the snapshot
    prompts: int
    candidates: int | None = None
    pairs: int
    columns: list[str] | None = None  # bring-your-own: the snapshot's columns
    # Why a judged prompt made no pair: scores within generation.min_score_margin, one distinct
    # text, no text at all.
    ties: int | None = None
    identical: int | None = None
    empty: int | None = None
    mean_margin: float | None = None
    binarization: str | None = None
    min_score_margin: float | None = None
    judge: str | None = None  # "offline", ultrafeedback/<aspect>, or reward_model:<its folder or registry name>
    generators: list[GeneratorStats] | None = None
    content_sha256: str  # of the pairs' rows (generated), of the snapshot file (bring-your-own)
    pipeline_sha256: str | None = None
    judged: int | None = None
    failed: int | None = None  # prompts without scores (failed_rows.jsonl says why)
    success_rate: float | None = None
    min_success_rate: float | None = None
    failed_generations: int | None = None
    reused_rows: int | None = None  # judged by an earlier attempt with the same settings
    generated_rows: int | None = None
    rejudged_rows: int = 0  # only the judge ran again: their candidates were kept from an earlier attempt
    executor: str | None = None  # local, ray, or reused (nothing left to generate)
    # Where the local models of this attempt ran: one entry per process or Ray actor (step, node, pid, device, dtype)
    placements: list[dict[str, str]] | None = None
    seconds: float
    responses_per_s: float | None = None
    output_tokens: int | None = None
    tokens_per_s: float | None = None
    generation_phase_s: float | None = None  # first generator batch started to last one finished
    status: str | None = None  # ok, or failed (below min_success_rate)

    @model_serializer(mode="wrap")
    def _reported_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Fields the path never set are left out: a bring-your-own report.json has no ties, a
        # generated one no format, as before the report was typed.
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}
