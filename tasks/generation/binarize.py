"""Binarization: from a prompt's judged candidates to one chosen/rejected pair, or the reason there is none.

distilabel's FormatTextGenerationDPO picks the max and min rating with no guard against ties or
identical responses; this one counts those prompts instead of making pairs of them.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from alignflow.conf.generation import GenerationConfig
from alignflow.tasks.generation.pipeline import step_labels
from alignflow.tasks.generation.report import GeneratorStats

OUTCOMES = ("pair", "tie", "identical", "empty")


def _normalize(text: str) -> str:
    return " ".join(text.split())


def binarize(
    candidates: list[str],
    scores: list[float],
    labels: list[str],
    min_margin: float,
    strategy: str = "best_vs_worst",
    rng: random.Random | None = None,
) -> tuple[dict | None, str]:
    """A chosen/rejected pair, or None with the reason ('identical', 'tie', 'empty').

    Candidates equal once whitespace is collapsed count as one (with their best score).
    Chosen is the best; rejected the worst (best_vs_worst), or a random candidate at least
    `min_margin` below the best (best_vs_random_lower, seeded by `rng`). Equal scores never
    make a pair, whatever the margin.
    """
    distinct: dict[str, tuple[float, str, str]] = {}
    for text, value, label in zip(candidates, scores, labels, strict=True):
        key = _normalize(text)
        if key and (key not in distinct or value > distinct[key][0]):
            distinct[key] = (value, text.strip(), label)
    if not distinct:
        return None, "empty"
    if len(distinct) < 2:
        return None, "identical"
    ranked = sorted(distinct.values(), key=lambda item: item[0], reverse=True)
    best, chosen, chosen_by = ranked[0]
    lower = [item for item in ranked[1:] if item[0] < best and best - item[0] >= min_margin]
    if not lower:
        return None, "tie"
    if strategy == "best_vs_worst":
        worst, rejected, rejected_by = lower[-1]
    elif strategy == "best_vs_random_lower":
        worst, rejected, rejected_by = (rng or random.Random(0)).choice(lower)
    else:
        raise ValueError(f"unknown binarization {strategy!r}")
    return {
        "chosen": chosen,
        "rejected": rejected,
        "score_chosen": best,
        "score_rejected": worst,
        "chosen_generator": chosen_by,
        "rejected_generator": rejected_by,
    }, "pair"


@dataclass(frozen=True)
class Binarized:
    """The pairs of a set of scored rows, what became of every judged prompt, and each generator's share."""

    pairs: list[dict]  # prompt_id, prompt and binarize()'s pair
    outcomes: Counter  # pair / tie / identical / empty -> prompts
    generators: list[GeneratorStats]

    @property
    def mean_margin(self) -> float:
        margins = [p["score_chosen"] - p["score_rejected"] for p in self.pairs]
        return round(sum(margins) / len(margins), 4) if margins else 0.0


def binarize_rows(scored: list[dict], generation: GenerationConfig, seed: int) -> Binarized:
    """Binarize every judged row (a failed row only adds to its generators' `failed`).

    `best_vs_random_lower` draws from a generator seeded by (seed, row), so a row's pair does
    not depend on which other rows were judged."""
    pairs, outcomes = [], Counter(dict.fromkeys(OUTCOMES, 0))
    per_generator: dict[str, Counter] = {label: Counter() for label in step_labels(generation)}
    scores: dict[str, list[float]] = {label: [] for label in per_generator}
    for r in scored:
        for err in r.get("generation_errors") or []:
            per_generator.setdefault(err["generator"], Counter())["failed"] += 1
        if r.get("scores") is None:
            continue
        for label, value in zip(r["candidate_generators"], r["scores"], strict=True):
            per_generator.setdefault(label, Counter())["candidates"] += 1
            scores.setdefault(label, []).append(value)
        rng = random.Random(f"{seed}:{r['row']}")
        pair, outcome = binarize(
            r["candidates"],
            r["scores"],
            r["candidate_generators"],
            generation.min_score_margin,
            generation.binarization,
            rng,
        )
        outcomes[outcome] += 1
        if pair:
            pairs.append({"prompt_id": r["prompt_id"], "prompt": r["instruction"], **pair})
            per_generator[pair["chosen_generator"]]["chosen"] += 1
            per_generator[pair["rejected_generator"]]["rejected"] += 1
    stats = [
        GeneratorStats(
            generator=label,
            candidates=counts["candidates"],
            failed=counts["failed"],
            chosen=counts["chosen"],
            rejected=counts["rejected"],
            mean_score=round(sum(scores[label]) / len(scores[label]), 4) if scores.get(label) else None,
        )
        for label, counts in per_generator.items()
    ]
    return Binarized(pairs, outcomes, stats)
