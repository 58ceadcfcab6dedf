"""alignflow.tasks.generation.binarize.binarize and pipeline.generator_labels: best vs worst, and the reasons no pair is made."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignflow.conf.generation import GenerationConfig, GeneratorConfig
from alignflow.tasks.generation.binarize import binarize
from alignflow.tasks.generation.pipeline import generator_labels


def labels_for(n: int) -> list[str]:
    return [f"g{i}" for i in range(n)]


def test_picks_best_vs_worst():
    candidates = ["middle answer", "best answer", "worst answer", "good answer"]
    scores = [0.5, 0.9, 0.1, 0.7]
    pair, reason = binarize(candidates, scores, labels_for(4), min_margin=0.05)
    assert reason == "pair"
    assert pair == {
        "chosen": "best answer",
        "rejected": "worst answer",
        "score_chosen": 0.9,
        "score_rejected": 0.1,
        "chosen_generator": "g1",
        "rejected_generator": "g2",
    }


def test_strips_whitespace_and_skips_blank_candidates():
    pair, reason = binarize(["  best \n", "", "   ", "\tworst"], [0.8, 1.0, 1.0, 0.2], labels_for(4), 0.05)
    assert reason == "pair"
    assert (pair["chosen"], pair["rejected"]) == ("best", "worst")
    assert (pair["score_chosen"], pair["score_rejected"]) == (0.8, 0.2)


def test_whitespace_variants_count_as_one_candidate_with_its_best_score():
    candidates = ["the  same answer", "the same\nanswer", "another one"]
    pair, reason = binarize(candidates, [0.2, 0.9, 0.5], labels_for(3), 0.05)
    assert reason == "pair"
    assert pair["chosen"] == "the same\nanswer"
    assert pair["score_chosen"] == 0.9
    assert pair["rejected"] == "another one"


@pytest.mark.parametrize(
    "candidates",
    [["same answer", "same answer"], ["same answer", "  same   answer \n"], ["a b", "a\tb", "", " a  b"]],
)
def test_identical_after_normalization(candidates):
    scores = [i / 10 for i in range(len(candidates))]
    assert binarize(candidates, scores, labels_for(len(candidates)), 0.05) == (None, "identical")


def test_tie_below_min_margin():
    assert binarize(["one", "two"], [0.50, 0.54], labels_for(2), 0.05) == (None, "tie")
    pair, reason = binarize(["one", "two"], [0.50, 0.56], labels_for(2), 0.05)
    assert reason == "pair"
    assert pair["chosen"] == "two"


def test_margin_exactly_at_min_margin_is_a_pair():
    pair, reason = binarize(["one", "two"], [0.25, 0.75], labels_for(2), 0.5)
    assert reason == "pair"
    assert pair["score_chosen"] - pair["score_rejected"] == 0.5


@pytest.mark.parametrize("candidates", [["", ""], ["  ", "\n\t"], []])
def test_empty(candidates):
    assert binarize(candidates, [0.0] * len(candidates), labels_for(len(candidates)), 0.05) == (None, "empty")


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        binarize(["a", "b"], [0.1], labels_for(2), 0.05)


candidate_text = st.text(alphabet=st.sampled_from(list("ab \n\t")), max_size=6)


@st.composite
def scored_candidates(draw):
    candidates = draw(st.lists(candidate_text, min_size=0, max_size=8))
    scores = draw(st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=len(candidates), max_size=len(candidates)))
    return candidates, scores


@settings(max_examples=300, deadline=None)
@given(data=scored_candidates(), min_margin=st.floats(0.0, 1.0, allow_nan=False))
def test_never_pairs_a_candidate_with_itself(data, min_margin):
    candidates, scores = data
    pair, reason = binarize(candidates, scores, labels_for(len(candidates)), min_margin)
    normalized = {" ".join(c.split()) for c in candidates} - {""}
    if pair is None:
        assert reason in {"empty", "identical", "tie"}
        expected = "empty" if not normalized else "identical" if len(normalized) == 1 else "tie"
        assert reason == expected
        return
    assert reason == "pair"
    assert pair["chosen"] != pair["rejected"]
    assert " ".join(pair["chosen"].split()) != " ".join(pair["rejected"].split())
    assert pair["chosen"] and pair["rejected"]
    assert pair["score_chosen"] - pair["score_rejected"] >= min_margin
    # chosen carries the best score of any candidate, rejected the worst distinct one's best score
    best_of = {}
    for text, value in zip(candidates, scores):
        key = " ".join(text.split())
        if key:
            best_of[key] = max(value, best_of.get(key, value))
    assert pair["score_chosen"] == max(best_of.values())
    assert pair["score_rejected"] == min(best_of.values())


def test_generator_labels_default():
    generation = GenerationConfig()
    labels = generator_labels(generation)
    # The embedded default: two generators (0.7 and 1.0), two candidates each, on the champion.
    assert len(labels) == sum(g.num_generations for g in generation.generators) == 4
    assert labels[0].startswith("g0:") and labels[2].startswith("g1:")
    assert len(set(labels)) == 2


@pytest.mark.parametrize("counts", [[2], [1, 1], [3, 2], [1, 4, 2]])
def test_generator_labels_one_per_generation(counts):
    generation = GenerationConfig(
        generators=[GeneratorConfig(model=f"/models/m{i}", num_generations=n) for i, n in enumerate(counts)]
    )
    labels = generator_labels(generation)
    assert len(labels) == sum(counts)
    expected_prefixes = [f"g{i}:m{i}@" for i, n in enumerate(counts) for _ in range(n)]
    assert all(label.startswith(prefix) for label, prefix in zip(labels, expected_prefixes))


def test_equal_scores_never_pair_even_with_zero_margin():
    assert binarize(["one", "two"], [0.5, 0.5], labels_for(2), 0.0) == (None, "tie")
    pair, reason = binarize(["one", "two", "three"], [0.5, 0.5, 0.2], labels_for(3), 0.0)
    assert reason == "pair" and pair["score_rejected"] == 0.2


def test_best_vs_random_lower_picks_a_seeded_candidate_below_the_margin():
    candidates = ["best", "close", "lower", "lowest"]
    scores = [0.9, 0.85, 0.5, 0.1]
    picked = set()
    for seed in range(30):
        pair, reason = binarize(candidates, scores, labels_for(4), 0.2, "best_vs_random_lower", random.Random(seed))
        assert reason == "pair" and pair["chosen"] == "best"
        picked.add(pair["rejected"])
        again, _ = binarize(candidates, scores, labels_for(4), 0.2, "best_vs_random_lower", random.Random(seed))
        assert again == pair  # the same seed, the same pair
    assert picked == {"lower", "lowest"}  # "close" is within the margin: never the rejected one


def test_best_vs_random_lower_counts_ties_and_identical_like_best_vs_worst():
    rng = random.Random(0)
    assert binarize(["a", "b"], [0.5, 0.45], labels_for(2), 0.1, "best_vs_random_lower", rng) == (None, "tie")
    assert binarize(["a b", "a  b"], [0.9, 0.1], labels_for(2), 0.1, "best_vs_random_lower", rng) == (None, "identical")


@settings(max_examples=200, deadline=None)
@given(data=scored_candidates(), min_margin=st.floats(0.0, 1.0, allow_nan=False), seed=st.integers(0, 10))
def test_random_lower_never_pairs_a_candidate_with_itself_or_within_the_margin(data, min_margin, seed):
    candidates, scores = data
    pair, reason = binarize(
        candidates, scores, labels_for(len(candidates)), min_margin, "best_vs_random_lower", random.Random(seed)
    )
    worst_pair, worst_reason = binarize(candidates, scores, labels_for(len(candidates)), min_margin)
    assert reason == worst_reason  # both strategies agree on whether a prompt makes a pair
    if pair:
        assert _norm(pair["chosen"]) != _norm(pair["rejected"])
        assert pair["score_chosen"] - pair["score_rejected"] >= min_margin
        assert pair["score_chosen"] > pair["score_rejected"]
        assert pair["chosen"] == worst_pair["chosen"]


def _norm(text: str) -> str:
    return " ".join(text.split())


def test_unknown_strategy_raises():
    with pytest.raises(ValueError, match="binarization"):
        binarize(["a", "b"], [0.9, 0.1], labels_for(2), 0.1, "best_vs_median")
