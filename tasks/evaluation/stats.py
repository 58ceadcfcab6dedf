"""Win-rate statistics for the promotion gate: a paired bootstrap over prompts and a length-controlled estimate.

Each evaluation prompt gets k sampled answers from each side, paired by seed, and each pair is
judged (in both orders when the judge sees both answers). A pair's outcome is 1 (candidate
wins), 0.5 (tie) or 0 (loss). Pairs of one prompt are not independent (same question, same
reference), so the unit of resampling is the prompt: the bootstrap draws prompts with
replacement and keeps all of a drawn prompt's pairs together. The interval is the percentile
interval of the resampled win rates; the seed makes it reproducible.

Length control, in the spirit of AlpacaEval's length-controlled win rate: judges (and the
offline scorer's length term) reward length, so a candidate can "win" by writing more. We fit
a logistic model of the outcome on the normalised length difference,

    P(candidate wins) = sigmoid(theta + phi * tanh((len_candidate - len_opponent) / sd))

and report sigmoid(theta): the win rate the candidate would have at equal length. Its
interval comes from refitting on the same bootstrap resamples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """An estimate with its (1 - alpha) interval."""

    estimate: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _per_prompt_means(outcomes: np.ndarray, prompt_index: np.ndarray, n_prompts: int) -> np.ndarray:
    sums = np.bincount(prompt_index, weights=outcomes, minlength=n_prompts)
    counts = np.bincount(prompt_index, minlength=n_prompts)
    return sums / np.maximum(counts, 1)


def _resampled_prompts(n_prompts: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_prompts) prompt indices drawn with replacement: the same draws for every statistic."""
    return np.random.default_rng(seed).integers(0, n_prompts, size=(resamples, n_prompts))


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_win_rate(
    outcomes: np.ndarray,
    prompt_index: np.ndarray,
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> Interval:
    """Win rate (ties count half) with a paired-bootstrap percentile interval over prompts.

    `outcomes[i]` is pair i's outcome in {0, 0.5, 1}; `prompt_index[i]` the prompt it belongs to
    (0..n_prompts-1). Every prompt weighs the same, however many pairs it has.
    """
    outcomes = np.asarray(outcomes, dtype=float)
    prompt_index = np.asarray(prompt_index, dtype=int)
    if outcomes.size == 0:
        raise ValueError("no judged pairs: nothing to estimate a win rate from")
    n_prompts = int(prompt_index.max()) + 1
    per_prompt = _per_prompt_means(outcomes, prompt_index, n_prompts)
    draws = _resampled_prompts(n_prompts, resamples, seed)
    rates = per_prompt[draws].mean(axis=1)
    return Interval(float(per_prompt.mean()), *_percentiles(rates, confidence))


def _fit_length_logit(outcomes: np.ndarray, x: np.ndarray, weights: np.ndarray, iterations: int = 25) -> float:
    """theta of sigmoid(theta + phi * x) fitted by weighted Newton steps (fractional targets: ties are 0.5).

    A small ridge on both coefficients keeps the fit finite when one side wins every pair."""
    design = np.stack([np.ones_like(x), x], axis=1)
    beta = np.zeros(2)
    ridge = 1e-3 * weights.sum()
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(design @ beta)))
        grad = design.T @ (weights * (outcomes - p)) - ridge * beta
        hess = (design * (weights * p * (1 - p))[:, None]).T @ design + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        beta += step
        if np.abs(step).max() < 1e-8:
            break
    return float(beta[0])


def _sigmoid(value: float) -> float:
    return float(1.0 / (1.0 + np.exp(-value)))


def length_controlled_win_rate(
    outcomes: np.ndarray,
    prompt_index: np.ndarray,
    candidate_lengths: np.ndarray,
    opponent_lengths: np.ndarray,
    resamples: int = 500,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> Interval:
    """The win rate at equal answer length, with an interval from the same prompt bootstrap."""
    outcomes = np.asarray(outcomes, dtype=float)
    prompt_index = np.asarray(prompt_index, dtype=int)
    diff = np.asarray(candidate_lengths, dtype=float) - np.asarray(opponent_lengths, dtype=float)
    scale = diff.std() or 1.0
    x = np.tanh(diff / scale)
    n_prompts = int(prompt_index.max()) + 1
    # Each prompt weighs the same in the fit as in the raw win rate.
    per_prompt_pairs = np.bincount(prompt_index, minlength=n_prompts)
    base_weights = 1.0 / per_prompt_pairs[prompt_index]
    estimate = _sigmoid(_fit_length_logit(outcomes, x, base_weights))
    fits = []
    for draw in _resampled_prompts(n_prompts, resamples, seed + 1):
        times_drawn = np.bincount(draw, minlength=n_prompts)
        weights = base_weights * times_drawn[prompt_index]
        keep = weights > 0
        fits.append(_sigmoid(_fit_length_logit(outcomes[keep], x[keep], weights[keep])))
    return Interval(estimate, *_percentiles(np.asarray(fits), confidence))
