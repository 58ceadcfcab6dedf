"""Stage 4, evaluate: held-out pair metrics, and the head-to-head the promotion gate decides on.

The opponent is the champion, or the base model when there is none. The evaluation prompt
set must share no prompt with the training split: checked here, before any answer is sampled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from alignflow.conf.evaluation import EvaluationConfig
from alignflow.tasks.evaluation.head_to_head import (
    HeadToHead,
    cached_answers,
    check_disjoint,
    judge_match,
    load_eval_set,
)
from alignflow.tasks.evaluation.judges import pair_judge
from alignflow.tasks.evaluation.metrics import HeldOutMetrics, evaluate_models
from alignflow.tasks.runtime.state import Ref


@dataclass(frozen=True)
class Evaluation:
    """What the gate reads: each model's held-out metrics and the candidate's record against the opponent."""

    held_out: HeldOutMetrics
    head_to_head: HeadToHead
    # The candidate against the original base model on the same prompts and seeds, when the head-to-head above
    # is against the champion: the trajectory of the rounds (the same as head_to_head when that is the base's).
    versus_base: HeadToHead | None = None

    @property
    def against_base(self) -> HeadToHead:
        return self.head_to_head if self.versus_base is None else self.versus_base

    @property
    def against(self) -> str:
        return self.head_to_head.against

    @property
    def opponent_metrics(self) -> dict[str, float] | None:
        return self.held_out.of(self.against)

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics: eval/<metric> for the candidate, eval/<who>/<metric> for each model, the win rate."""
        flat = {f"eval/{k}": v for k, v in self.held_out.candidate.items()}
        flat |= {f"eval/{who}/{k}": v for who, scores in self.held_out.table() for k, v in scores.items()}
        flat |= {f"eval/{k}": v for k, v in self.head_to_head.metrics().items()}
        flat |= {f"eval/vs_base/{k}": v for k, v in self.against_base.metrics().items() if k.startswith("win_rate")}
        return flat


def evaluate(
    config: EvaluationConfig,
    beta: float,
    candidate: Ref,
    base: Ref,
    test_path: str | Path,
    train_path: str | Path,
    champion: Ref | None,
    answers_cache: Path | None = None,
    chat_template: str | None = None,
) -> Evaluation:
    """Held-out metrics for candidate, base (and champion); then the candidate against the champion, else the base,
    and against the base as well when the champion was the opponent. Answers are sampled once per model and
    setting (`answers_cache`), so the base's answers are reused round after round.

    `chat_template` (training.chat_template's text) replaces the base model's own; the candidate's and the
    champion's folders hold the template each was trained with."""
    eval_set = load_eval_set(config)
    train_prompts = [
        p if isinstance(p, str) else list(p) for p in pd.read_parquet(train_path, columns=["prompt"])["prompt"]
    ]
    check_disjoint(eval_set, train_prompts, "the train split")
    held_out = evaluate_models(
        candidate.loadable,
        base.loadable,
        test_path,
        beta,
        config.batch_size,
        config.max_pairs,
        champion.loadable if champion else None,
        chat_template,
    )
    judge_name = config.judge.kind if config.judge.llm is None else f"{config.judge.kind}:{config.judge.llm.model}"
    judge = pair_judge(config.judge)

    def answers(model: Ref, template: str | None = None) -> list[list[str]]:
        return cached_answers(model.loadable, model.sha256, eval_set, config, answers_cache, template)

    mine = answers(candidate)
    if champion is None:
        return Evaluation(
            held_out, judge_match(mine, answers(base, chat_template), "base", eval_set, config, judge, judge_name)
        )
    record = judge_match(mine, answers(champion), "champion", eval_set, config, judge, judge_name)
    versus_base = judge_match(mine, answers(base, chat_template), "base", eval_set, config, judge, judge_name)
    return Evaluation(held_out, record, versus_base)
