"""Stage 4, evaluate: held-out pair metrics, and the head-to-head the promotion gate decides on.

The opponent is the champion, or the base model when there is none. The evaluation prompt
set must share no prompt with the training split: checked here, before any answer is sampled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from alignflow.conf.evaluation import EvaluationConfig
from alignflow.tasks.evaluation.head_to_head import HeadToHead, check_disjoint, head_to_head, load_eval_set
from alignflow.tasks.evaluation.judges import pair_judge
from alignflow.tasks.evaluation.metrics import HeldOutMetrics, evaluate_models


@dataclass(frozen=True)
class Evaluation:
    """What the gate reads: each model's held-out metrics and the candidate's record against the opponent."""

    held_out: HeldOutMetrics
    head_to_head: HeadToHead

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
        return flat


def _prompt_text(prompt: object) -> str:
    """A prompt as text: itself, or a conversation's user turns joined."""
    if isinstance(prompt, str):
        return prompt
    return " ".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict) and m.get("role") == "user")


def evaluate(
    config: EvaluationConfig,
    beta: float,
    candidate: str | Path,
    base: str | Path,
    test_path: str | Path,
    train_path: str | Path,
    champion: str | Path | None,
) -> Evaluation:
    """Held-out metrics for candidate, base (and champion); then the candidate against the champion, else the base."""
    eval_set = load_eval_set(config)
    train_prompts = [_prompt_text(p) for p in pd.read_parquet(train_path, columns=["prompt"])["prompt"]]
    check_disjoint(eval_set, train_prompts, "the train split")
    held_out = evaluate_models(candidate, base, test_path, beta, config.batch_size, config.max_pairs, champion)
    opponent, against = (champion, "champion") if champion is not None else (base, "base")
    judge_name = config.judge.kind if config.judge.llm is None else f"{config.judge.kind}:{config.judge.llm.model}"
    record = head_to_head(candidate, opponent, against, eval_set, config, pair_judge(config.judge), judge_name)
    return Evaluation(held_out, record)
