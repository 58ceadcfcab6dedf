"""The gate's statistics: the bootstrap interval covers a known win probability, length control, both orders."""

from __future__ import annotations

import numpy as np
import pytest

from alignflow.tasks.evaluation.judges import PairToJudge, judge_both_orders, offline_judge
from alignflow.tasks.evaluation.stats import bootstrap_win_rate, length_controlled_win_rate


def _simulate(rng: np.random.Generator, p: float, n_prompts: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompts differ in difficulty (a per-prompt win probability around p); k paired samples per prompt."""
    per_prompt = np.clip(rng.normal(p, 0.15, n_prompts), 0.0, 1.0)
    per_prompt += p - per_prompt.mean()  # the population of prompts has win probability p exactly
    per_prompt = np.clip(per_prompt, 0.0, 1.0)
    index = np.repeat(np.arange(n_prompts), k)
    outcomes = (rng.random(n_prompts * k) < per_prompt[index]).astype(float)
    return outcomes, index


@pytest.mark.parametrize("p", [0.5, 0.65])
def test_interval_covers_the_true_win_probability_about_95_percent_of_the_time(p: float) -> None:
    rng = np.random.default_rng(7)
    trials, covered = 300, 0
    for trial in range(trials):
        outcomes, index = _simulate(rng, p, n_prompts=60, k=4)
        interval = bootstrap_win_rate(outcomes, index, resamples=800, seed=trial)
        covered += interval.low <= p <= interval.high
    coverage = covered / trials
    # 300 trials: the binomial sd of a true 95% coverage is 1.3 points; the percentile bootstrap runs a little
    # narrow on 60 prompts, so the band is [0.90, 0.985].
    assert 0.90 <= coverage <= 0.985, coverage


def test_interval_is_reproducible_and_ties_count_half() -> None:
    outcomes = np.array([1.0, 0.5, 0.0, 0.5, 1.0, 1.0])
    index = np.array([0, 0, 1, 1, 2, 2])
    first, second = bootstrap_win_rate(outcomes, index, seed=3), bootstrap_win_rate(outcomes, index, seed=3)
    assert first == second
    assert first.estimate == pytest.approx((0.75 + 0.25 + 1.0) / 3)
    assert first.low <= first.estimate <= first.high


def test_length_control_removes_a_win_that_comes_from_length_alone() -> None:
    rng = np.random.default_rng(0)
    n_prompts, k = 80, 4
    index = np.repeat(np.arange(n_prompts), k)
    diff = rng.normal(10.0, 10.0, n_prompts * k)  # the candidate writes ~10 words more on average
    # The judge prefers the longer answer, and nothing else: at equal length it is a coin flip.
    p_win = 1.0 / (1.0 + np.exp(-2.0 * np.tanh(diff / diff.std())))
    outcomes = (rng.random(n_prompts * k) < p_win).astype(float)
    raw = bootstrap_win_rate(outcomes, index)
    lc = length_controlled_win_rate(outcomes, index, 40 + diff, np.full_like(diff, 40.0), resamples=200)
    assert raw.estimate > 0.6
    assert abs(lc.estimate - 0.5) < 0.08 and lc.low < 0.5 < lc.high


def test_a_judge_biased_to_the_first_position_gives_one_half_on_identical_models() -> None:
    def first_always_wins(pairs: list[PairToJudge]) -> list[float]:
        return [1.0] * len(pairs)

    pairs = [PairToJudge("Why is the sky blue?", "Rayleigh scattering.", "same answer", "same answer")] * 5
    assert judge_both_orders(first_always_wins, pairs) == [0.5] * 5
    assert judge_both_orders(offline_judge, pairs) == [0.5] * 5


def test_offline_judge_in_both_orders_keeps_a_clear_preference() -> None:
    ref = "Blue light is scattered more strongly by air molecules, which is called Rayleigh scattering."
    good = "Air molecules scatter blue light more strongly than red light: Rayleigh scattering."
    bad = "the the the the"
    pairs = [PairToJudge("Why is the sky blue?", ref, good, bad), PairToJudge("Why is the sky blue?", ref, bad, good)]
    assert judge_both_orders(offline_judge, pairs) == [1.0, 0.0]
