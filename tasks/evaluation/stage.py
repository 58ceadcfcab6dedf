"""Stage 4, evaluate: held-out pair metrics, and the head-to-head the promotion gate decides on.

The opponent is the champion, or the base model when there is none. The evaluation prompt
set must share no prompt with the training split: checked here, before any answer is sampled.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alignflow.conf.evaluation import EvaluationConfig
from alignflow.tasks.evaluation.agreement import JudgeAgreement, judge_agreement
from alignflow.tasks.evaluation.head_to_head import (
    HeadToHead,
    cached_answers,
    check_disjoint,
    judge_match,
    load_eval_set,
)
from alignflow.tasks.evaluation.judges import judge_labels, pair_judge
from alignflow.tasks.evaluation.metrics import HeldOutMetrics, evaluate_models
from alignflow.tasks.evaluation.workers import RayEvaluation
from alignflow.tasks.runtime.state import Ref
from alignflow.tasks.runtime.turns import split_prompts


@dataclass(frozen=True)
class Evaluation:
    """What the gate reads: each model's held-out metrics and the candidate's record against the opponent."""

    held_out: HeldOutMetrics
    head_to_head: HeadToHead
    # The candidate against the original base model on the same prompts and seeds, when the head-to-head above
    # is against the champion: the trajectory of the rounds (the same as head_to_head when that is the base's).
    versus_base: HeadToHead | None = None
    # With several evaluation.judges: the other judges' records of the same pairs, and every two judges' agreement.
    other_judges: tuple[HeadToHead, ...] = ()
    agreements: tuple[JudgeAgreement, ...] = ()
    # Where each Ray task of the evaluation's model work ran (node, pid, device); empty when it ran in the flow's
    # process (evaluation.workers: 0).
    placements: tuple[dict[str, str], ...] = ()

    @property
    def judges(self) -> tuple[HeadToHead, ...]:
        """Every judge's record against the opponent, the first judge's (head_to_head) first."""
        return (self.head_to_head, *self.other_judges)

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
        flat["eval/ray_tasks"] = float(len(self.placements))  # 0: the models ran in the flow's process
        for i, record in enumerate(self.other_judges, start=2):  # judge 1 is eval/win_rate*
            flat |= {f"eval/judge{i}/{k}": v for k, v in record.metrics().items() if k.startswith("win_rate")}
        for agreement in self.agreements:
            pair = f"{self._judge_number(agreement.first)}_{self._judge_number(agreement.second)}"
            flat[f"eval/agreement/{pair}"] = agreement.agreement.estimate
            flat[f"eval/agreement/{pair}_low"] = agreement.agreement.low
            flat[f"eval/agreement/{pair}_high"] = agreement.agreement.high
            flat[f"eval/agreement/{pair}_n_pairs"] = float(agreement.n_pairs)
            if agreement.kappa is not None:
                flat[f"eval/agreement/{pair}_kappa"] = agreement.kappa
        return flat

    def _judge_number(self, label: str) -> str:
        return f"judge{[r.judge for r in self.judges].index(label) + 1}"


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
    judge_models: Sequence[Path | None] = (),
) -> Evaluation:
    """Held-out metrics for candidate, base (and champion); then the candidate against the champion, else the base,
    and against the base as well when the champion was the opponent. Answers are sampled once per model and
    setting (`answers_cache`), so the base's answers are reused round after round.

    `chat_template` (training.chat_template's text) replaces the base model's own; the candidate's and the
    champion's folders hold the template each was trained with. `judge_models[i]` is the local folder of the
    panel's judge i when it is a reward model."""
    eval_set = load_eval_set(config)
    # a conversation's last user turn is what it asks (tasks/runtime/overlap.py), not its flattened text
    check_disjoint(eval_set, split_prompts(train_path), "the train split")
    ray = RayEvaluation(config) if config.workers else None  # else in this process (the models load here)
    held_out = evaluate_models(
        candidate.loadable,
        base.loadable,
        test_path,
        beta,
        config.batch_size,
        config.max_pairs,
        champion.loadable if champion else None,
        chat_template,
        ray.scorer() if ray else None,
    )

    def answers(model: Ref, template: str | None = None) -> list[list[str]]:
        sampler = ray.sampler() if ray else None
        return cached_answers(model.loadable, model.sha256, eval_set, config, answers_cache, template, sampler)

    mine = answers(candidate)
    opponent, against, template = (base, "base", chat_template) if champion is None else (champion, "champion", None)
    theirs = answers(opponent, template)
    # The judges start once the answers are drawn: a reward model's actor holds its Ray resources while it lives.
    panel = config.panel()
    labels = judge_labels(panel)
    folders = [*judge_models, *[None] * len(panel)]
    judges = [pair_judge(j, folder) for j, folder in zip(panel, folders)]
    # every judge judges the same answers: their records differ only by the judge, so they can be compared
    records = [
        judge_match(mine, theirs, against, eval_set, config, j, label) for j, label in zip(judges, labels, strict=True)
    ]
    agreements = tuple(
        judge_agreement(a, b, config.bootstrap_resamples, config.seed) for a, b in itertools.combinations(records, 2)
    )
    versus_base = None
    if champion is not None:  # the rounds' trajectory, by the first judge
        versus_base = judge_match(mine, answers(base, chat_template), "base", eval_set, config, judges[0], labels[0])
    placements = tuple(ray.placements) if ray else ()
    return Evaluation(held_out, records[0], versus_base, tuple(records[1:]), agreements, placements)
