"""Pairwise judges for the head-to-head evaluation: which of two answers to a prompt is better.

A pairwise judge takes rows of (prompt, reference, first, second) and returns, per row, the
probability that `first` is the better answer: 1, 0 or 0.5 for a tie. The evaluation asks
every pair in both orders and averages, (j(a, b) + 1 - j(b, a)) / 2, so a judge that prefers
whatever it sees first gives 0.5 on identical models instead of a fake win.

- offline: the generate stage's reference-based scorer (tasks/generation/judge.py) scores each
  answer on its own; the order cannot matter to it, and asking twice costs microseconds.
- ultrafeedback: any LLM through distilabel's UltraFeedback task, rating both answers of a pair
  in one request, the pair shown once in each order.
- reward_model: a reward model on a Ray actor (tasks/reward/actor.py) scores each answer on its own; the
  higher reward wins, equal rewards tie. Each answer is scored once, whichever order asks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alignflow.conf.generation import JudgeConfig
from alignflow.tasks.generation import judge as offline_scorer


@dataclass(frozen=True)
class PairToJudge:
    prompt: str
    reference: str
    first: str
    second: str


PairJudge = Callable[[list[PairToJudge]], list[float]]


def _preference(first_score: float, second_score: float) -> float:
    if first_score > second_score:
        return 1.0
    return 0.5 if first_score == second_score else 0.0


def offline_judge(pairs: list[PairToJudge]) -> list[float]:
    """The offline scorer, pairwise: deterministic, free, and position-blind."""
    return [
        _preference(
            offline_scorer.score(p.prompt, p.first, p.reference), offline_scorer.score(p.prompt, p.second, p.reference)
        )
        for p in pairs
    ]


def ultrafeedback_judge(config: JudgeConfig) -> PairJudge:
    """A pairwise judge asking the configured LLM for UltraFeedback ratings of both answers at once.

    A pair whose answer never parses (after the step's re-asks) counts as a tie, and is counted
    in `judge_failures` of the result by the caller (the rows carry None)."""
    from alignflow.tasks.generation.llms import build_llm
    from alignflow.tasks.generation.steps import UltraFeedbackJudge

    assert config.llm is not None  # the schema requires an llm for ultrafeedback
    step = UltraFeedbackJudge(
        name="eval_judge",
        llm=build_llm(config.llm, "evaluation.judge.llm", None, seed=0, batch_size=8),
        aspect=config.aspect,
        parse_retries=config.parse_retries,
        retry_backoff=config.retry_backoff,
        input_batch_size=8,
    )
    step.load()

    def judge(pairs: list[PairToJudge]) -> list[float]:
        rows = [{"instruction": p.prompt, "candidates": [p.first, p.second], "row_error": None} for p in pairs]
        outcomes = []
        for out in next(step.process(rows)):
            scores = out.get("scores")
            outcomes.append(0.5 if not scores else _preference(scores[0], scores[1]))
        return outcomes

    return judge


def reward_model_judge(config: JudgeConfig, model_dir: Path) -> PairJudge:
    """A pairwise judge comparing the rewards the reward model at `model_dir` gives each answer (on a Ray actor)."""
    from alignflow.tasks.reward.actor import remote_reward_model

    score_remotely, where = remote_reward_model(config, model_dir)
    logging.getLogger(__name__).info(
        "reward model judge %s on a Ray actor: node %s, pid %s, %s",
        model_dir,
        where["node"],
        where["pid"],
        where["device"],
    )
    known: dict[tuple[str, str], float] = {}

    def judge(pairs: list[PairToJudge]) -> list[float]:
        asked = list(
            dict.fromkeys((p.prompt, a) for p in pairs for a in (p.first, p.second) if (p.prompt, a) not in known)
        )
        known.update(zip(asked, score_remotely(asked), strict=True))
        return [_preference(known[(p.prompt, p.first)], known[(p.prompt, p.second)]) for p in pairs]

    return judge


def judge_labels(configs: list[JudgeConfig]) -> list[str]:
    """A name per judge for reports: its kind and its LLM or reward model, numbered when two would read the same."""
    labels = [c.label for c in configs]
    return [f"{label}#{i + 1}" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


def pair_judge(config: JudgeConfig, model_dir: Path | None = None) -> PairJudge:
    """The judge `config` describes; `model_dir` is a reward_model judge's local folder."""
    if config.kind == "offline":
        return offline_judge
    if config.kind == "reward_model":
        if model_dir is None:
            raise ValueError("evaluation.judge: a reward_model judge needs its model folder")
        return reward_model_judge(config, model_dir)
    return ultrafeedback_judge(config)


def judge_both_orders(judge: PairJudge, pairs: list[PairToJudge]) -> list[float]:
    """P(first of each pair is better), averaged over showing the pair as (a, b) and as (b, a)."""
    forward = judge(pairs)
    swapped = judge([PairToJudge(p.prompt, p.reference, p.second, p.first) for p in pairs])
    return [(f + 1.0 - s) / 2.0 for f, s in zip(forward, swapped, strict=True)]
