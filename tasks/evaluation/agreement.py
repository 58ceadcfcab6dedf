"""How far two judges agree on the same head-to-head pairs: should the gate trust one judge's votes?

Each judged pair has a verdict: the candidate's answer won (outcome > 0.5), tied (0.5) or lost.
For two judges of the same pairs (the same answers, prompts and seeds):

    agreement   share of pairs with the same verdict, with a paired-bootstrap 95% interval over
                prompts (pairs of one prompt are not independent; the win rate's interval is built
                the same way, tasks/evaluation/stats.py)
    kappa       Cohen's kappa over the three verdicts: agreement beyond what the two judges'
                own verdict rates would give by chance (1: always agree, 0: chance, < 0: worse);
                undefined (None) when both judges give one and the same verdict to every pair
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alignflow.tasks.evaluation.head_to_head import HeadToHead
from alignflow.tasks.evaluation.stats import Interval, bootstrap_win_rate


@dataclass(frozen=True)
class JudgeAgreement:
    """Two judges' verdicts on the same n pairs."""

    first: str
    second: str
    n_pairs: int
    n_prompts: int
    agreement: Interval
    kappa: float | None

    def line(self) -> str:
        kappa = "undefined (one verdict throughout)" if self.kappa is None else f"{self.kappa:.3f}"
        return (
            f"{self.first} and {self.second} agree on {self.agreement} of n={self.n_pairs} pairs "
            f"({self.n_prompts} prompts); Cohen's kappa {kappa}"
        )


def verdicts(outcomes: np.ndarray) -> np.ndarray:
    """Per pair: 1 the candidate won, 0 a tie, -1 it lost."""
    return np.sign(np.asarray(outcomes, dtype=float) - 0.5).astype(int)


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float | None:
    """Cohen's kappa of two raters' labels on the same items; None when chance agreement is already 1."""
    observed = float((a == b).mean())
    labels = np.union1d(a, b)
    chance = float(sum((a == label).mean() * (b == label).mean() for label in labels))
    if chance >= 1.0:
        return None
    return (observed - chance) / (1.0 - chance)


def judge_agreement(first: HeadToHead, second: HeadToHead, resamples: int, seed: int) -> JudgeAgreement:
    """The agreement of two judges' records of the same pairs (rows in the same order)."""
    if [(r["prompt_id"], r["sample"]) for r in first.rows] != [(r["prompt_id"], r["sample"]) for r in second.rows]:
        raise ValueError(f"judges {first.judge} and {second.judge} did not judge the same pairs")
    a = verdicts(np.asarray([r["outcome"] for r in first.rows]))
    b = verdicts(np.asarray([r["outcome"] for r in second.rows]))
    _, prompt_index = np.unique([r["prompt_id"] for r in first.rows], return_inverse=True)
    same = (a == b).astype(float)
    return JudgeAgreement(
        first=first.judge,
        second=second.judge,
        n_pairs=len(a),
        n_prompts=int(prompt_index.max()) + 1,
        agreement=bootstrap_win_rate(same, prompt_index, resamples, seed),
        kappa=cohen_kappa(a, b),
    )


def panel_markdown(records: tuple[HeadToHead, ...], agreements: tuple[JudgeAgreement, ...]) -> list[str]:
    """The judges' section of the evaluation artifact and the model card: each judge's win rate, then agreement."""
    if len(records) < 2:
        return []
    first = records[0]
    return [
        f"### Judges ({len(records)}, the same {first.pairs} pairs against the {first.against})",
        "",
        "| judge | win rate | 95% interval | wins / ties / losses |",
        "| --- | --- | --- | --- |",
        *(
            f"| {r.judge} | {r.win_rate.estimate:.3f} | [{r.win_rate.low:.3f}, {r.win_rate.high:.3f}] | "
            f"{r.wins} / {r.ties} / {r.losses} |"
            for r in records
        ),
        "",
        *(f"- {a.line()}" for a in agreements),
        "",
    ]
