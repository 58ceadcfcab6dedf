"""`evaluation` and `registry`: how a candidate is measured, and the gate it must pass to become champion."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from alignflow.conf.base import BUILTIN_EVAL_PROMPTS, BUILTIN_SMOLLM2, Section
from alignflow.conf.generation import JudgeConfig, judge_shorthand, size_judge_budget


class EvaluationConfig(Section):
    """Held-out pair metrics, and the head-to-head against the champion (else the base model) the gate decides on."""

    prompts: str = Field(
        BUILTIN_EVAL_PROMPTS,
        description="The head-to-head prompt set: `builtin:eval` (conf/prompts/eval.jsonl, disjoint from the "
        "training prompts) or a .jsonl/.parquet/.csv file with prompt and reference columns. Its sha256 is recorded.",
    )
    max_prompts: int | None = Field(
        48, ge=1, description="Use only the first N evaluation prompts (None: all 120 of builtin:eval)."
    )
    samples_per_prompt: int = Field(
        2, ge=1, le=64, description="Sampled answers per prompt and side, paired by seed (more: a tighter interval)."
    )
    judge: JudgeConfig = Field(
        default_factory=JudgeConfig,
        description="Who compares two answers: offline (the reference-based scorer) or an UltraFeedback LLM "
        "judge through distilabel, shown each pair in both orders.",
    )
    judges: list[JudgeConfig] = Field(
        default_factory=list,
        description="Two or more judges instead of `judge`: each judges the same pairs and gets its own win rate "
        "with its interval, and every two of them their agreement (share of pairs with the same verdict, Cohen's "
        "kappa, n). The first decides the gate, or all of them (registry.gate.judges). Empty: `judge` alone.",
    )
    workers: int = Field(
        2,
        ge=0,
        le=256,
        description="Ray workers the models run on (held-out log-probs, the head-to-head's answers), data-parallel "
        "by batch with the same seeds as in-process; the flow's process loads no model. 0: in the flow's process.",
    )
    resources: dict[str, float] = Field(
        default_factory=lambda: {"CPU": 1},
        description="Ray resources of each evaluation worker (e.g. {GPU: 1}: the models in bf16 on a GPU; memory "
        "in bytes).",
    )
    bootstrap_resamples: int = Field(2000, ge=100, le=100_000, description="Paired-bootstrap resamples over prompts.")
    max_pairs: int | None = Field(None, ge=1, description="Score at most this many held-out pairs (None: all).")
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(48, ge=1, le=4096, description="Tokens generated per answer in the head-to-head.")
    temperature: float = Field(0.7, ge=0.0, le=5.0, description="Sampling temperature (0: greedy).")
    seed: int = Field(0, description="Seeds the prompt sample and the sampling of every answer.")
    samples: int = Field(8, ge=0, description="Rows of (prompt, opponent, candidate) in the samples artifact.")

    @field_validator("judge", mode="before")
    @classmethod
    def _judge_shorthand(cls, value: object) -> object:
        return judge_shorthand(value)

    @field_validator("judges", mode="before")
    @classmethod
    def _judges_shorthand(cls, value: object) -> object:
        return [judge_shorthand(v) for v in value] if isinstance(value, list) else value

    @field_validator("resources")
    @classmethod
    def _known_resources(cls, value: dict[str, float]) -> dict[str, float]:
        if unknown := sorted(set(value) - {"CPU", "GPU", "memory"}):
            raise ValueError(f"{unknown} not among CPU, GPU, memory")
        return value

    @model_validator(mode="after")
    def _judge_or_judges(self) -> EvaluationConfig:
        # `judge` at its default (as a dumped config carries it) or equal to the first of `judges` is no conflict
        if self.judges and self.judge not in (JudgeConfig(), self.judges[0]):
            raise ValueError("evaluation.judge and evaluation.judges are both set: list every judge under judges")
        for judge in self.panel():
            size_judge_budget(judge, 2)  # the head-to-head shows a judge two answers at a time
        return self

    def panel(self) -> list[JudgeConfig]:
        """The judges of the head-to-head, the one the gate reads first."""
        return list(self.judges) or [self.judge]


GATE_THRESHOLD_METRICS = (
    "preference_accuracy",
    "reward_margin",
    "logp_accuracy",
    "win_rate",
    "win_rate_low",
    "win_rate_lc",
)


class GateConfig(Section):
    """challenger -> champion only on evidence: the head-to-head interval, and guard rails (tasks/registry/gate.py)."""

    min_win_rate_margin: float = Field(
        0.0,
        ge=0.0,
        le=0.5,
        description="Promote when the lower bound of the 95% win-rate interval against the champion (the base "
        "model when there is none) exceeds 0.5 plus this.",
    )
    max_nll_increase: float = Field(
        0.25,
        ge=0.0,
        description="Guard rail: the candidate's held-out chosen NLL (nats/token) may exceed the opponent's by at "
        "most this, so a model that wins by breaking its fluency is not promoted.",
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Minimum the candidate must reach on each named metric, whatever the opponent does: "
        f"keys among {', '.join(GATE_THRESHOLD_METRICS)}.",
    )
    judges: Literal["first", "all"] = Field(
        "first",
        description="With several evaluation.judges: the first judge's win rate decides, or every judge's must "
        "clear the bar (all).",
    )
    max_chosen_nll: float | None = Field(
        None,
        gt=0.0,
        description="The candidate's held-out NLL of chosen responses must not exceed this (None: no limit).",
    )

    @field_validator("thresholds")
    @classmethod
    def _known_threshold_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(GATE_THRESHOLD_METRICS))
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; expected some of {list(GATE_THRESHOLD_METRICS)}")
        return value


def default_model_name(base_model: str) -> str:
    """The registered model a profile gets when it names none: `alignflow-` + the base model's own name.

    So that two base models never share one registered model (and one champion) by default. The name is
    the last part of the builtin name, hub id, folder or storage prefix, lower-cased, with anything MLflow
    or a shell would stumble on made a dash: `builtin:smollm2-135m-instruct` -> alignflow-smollm2-135m-instruct,
    `HuggingFaceTB/SmolLM2-360M-Instruct` -> alignflow-smollm2-360m-instruct, `/data/models/base` ->
    alignflow-base."""
    last = base_model.removeprefix("builtin:").rstrip("/").rsplit("/", 1)[-1]
    slug = re.sub(r"[^a-z0-9._-]+", "-", last.lower()).strip("-._")
    if slug.startswith("alignflow-"):  # a folder already named after its registered model
        return slug
    return f"alignflow-{slug or 'model'}"


class RegistryConfig(Section):
    model_name: str = Field(
        default_model_name(BUILTIN_SMOLLM2),
        min_length=1,
        description="Registered model name in MLflow. Default: derived from training.model_name_or_path "
        "(alignflow-<the base model's name>), so that another base model never meets this one's champion.",
    )
    experiment: str = Field("alignflow", min_length=1)
    gate: GateConfig = Field(default_factory=GateConfig)
    auto_promote: bool = Field(
        True,
        description="A candidate that passes the gate becomes champion; false: it stays challenger until "
        "`alignflow promote` (the gate outcome is recorded either way).",
    )
