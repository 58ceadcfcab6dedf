"""A reward model's held-out pairwise accuracy: the share of test pairs whose chosen answer it scores higher.

Each pair of the validated test split is scored as TRL's RewardTrainer saw pairs in training (the prompt's turns
and the answer as the assistant's turn, tasks/reward/scorer.py). A tie counts half, so a model that scores
everything alike reads 0.5, chance. The interval is Wilson's score interval at 95%: pairs are independent draws
here (one pair per prompt after validation's grouped split), and Wilson's stays inside [0, 1] and honest at the
few dozen pairs a small run holds out, where the normal approximation is not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from alignflow.tasks.reward.scorer import Prompt, load_reward_model
from alignflow.tasks.runtime.turns import row_turns

Z95 = 1.959964  # the normal quantile of a two-sided 95% interval


@dataclass(frozen=True)
class RewardAccuracy:
    """Held-out pairwise accuracy with its 95% interval over `n_pairs` pairs."""

    accuracy: float
    low: float
    high: float
    n_pairs: int
    mean_margin: float  # mean of r(chosen) - r(rejected): how far apart the model puts the two

    def metrics(self) -> dict[str, float]:
        """MLflow metrics (the gate reads accuracy_low)."""
        return {
            "reward/accuracy": self.accuracy,
            "reward/accuracy_low": self.low,
            "reward/accuracy_high": self.high,
            "reward/n_pairs": float(self.n_pairs),
            "reward/mean_margin": self.mean_margin,
        }

    def __str__(self) -> str:
        return f"{self.accuracy:.3f} [{self.low:.3f}, {self.high:.3f}] on {self.n_pairs} held-out pairs"


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval of a proportion (`successes` may hold halves: ties)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def pair_accuracy(chosen: list[float], rejected: list[float]) -> RewardAccuracy:
    """Accuracy of paired rewards: r(chosen) > r(rejected) counts 1, a tie 1/2."""
    if len(chosen) != len(rejected):
        raise ValueError(f"{len(chosen)} chosen rewards for {len(rejected)} rejected")
    n = len(chosen)
    wins = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected, strict=True))
    low, high = wilson_interval(wins, n)
    margin = sum(c - r for c, r in zip(chosen, rejected, strict=True)) / n if n else 0.0
    return RewardAccuracy(round(wins / n, 6) if n else 0.0, round(low, 6), round(high, 6), n, round(margin, 6))


def _answer(row: dict, part: str) -> str:
    """The answer's text: its last assistant turn where the split keeps turns, else the column's text."""
    turns = row_turns(row, part)
    return turns[-1]["content"] if turns else str(row[part])


def split_pairs(path: str | Path) -> list[tuple[Prompt, str, str]]:
    """(prompt, chosen, rejected) of each row of a validated split file; the prompt as its turns where kept."""
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    return [(row_turns(r, "prompt") or str(r["prompt"]), _answer(r, "chosen"), _answer(r, "rejected")) for r in rows]


def held_out_accuracy(
    model_dir: str | Path, test_path: str | Path, use_gpu: bool = False, max_length: int = 1024
) -> RewardAccuracy:
    """The reward model's pairwise accuracy on the test split at `test_path`."""
    pairs = split_pairs(test_path)
    scorer = load_reward_model(model_dir, use_gpu=use_gpu, max_length=max_length)
    rewards = scorer.scores([(p, c) for p, c, _ in pairs] + [(p, r) for p, _, r in pairs])
    return pair_accuracy(rewards[: len(pairs)], rewards[len(pairs) :])
