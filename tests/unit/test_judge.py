"""alignflow.tasks.generation.judge: the offline judge ranks the reference above degraded answers, deterministically, in [0, 1]."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignflow.tasks.generation.judge import parse_ultrafeedback, rating, rating_to_score, score, valid_ratings
from alignflow.tasks.generation.prompts import load_prompts

PROMPT = "Why is the sky blue on a clear sunny day?"
REFERENCE = (
    "Sunlight contains all visible colors. As it passes through the atmosphere, shorter blue wavelengths "
    "are scattered by gas molecules much more strongly than longer red wavelengths, an effect called "
    "Rayleigh scattering, so blue light reaches our eyes from every direction of the sky."
)
UNRELATED = (
    "A good sourdough starter needs flour, water and patience. Feed it every day, keep it warm, and bake "
    "once it doubles within a few hours of feeding."
)
SHIPPED = load_prompts()


def shuffled(text: str, seed: int = 0) -> str:
    tokens = text.split()
    random.Random(seed).shuffle(tokens)
    return " ".join(tokens)


def test_reference_beats_shuffled_unrelated_and_looping():
    best = score(PROMPT, REFERENCE, REFERENCE)
    assert best > score(PROMPT, shuffled(REFERENCE), REFERENCE)
    assert best > score(PROMPT, UNRELATED, REFERENCE)
    assert best > score(PROMPT, " ".join(["blue light scattering"] * 20), REFERENCE)
    assert best > score(PROMPT, "blue " * 50, REFERENCE)


def test_loop_scores_low():
    loop = " ".join(["the sky is blue because"] * 20)
    assert score(PROMPT, loop, REFERENCE) < 0.5 * score(PROMPT, REFERENCE, REFERENCE)


@pytest.mark.parametrize("row", SHIPPED, ids=[r["id"] for r in SHIPPED])
def test_every_shipped_reference_beats_its_degradations(row):
    prompt, ref = row["prompt"], row["reference"]
    best = score(prompt, ref, ref)
    for seed in range(3):
        assert best > score(prompt, shuffled(ref, seed), ref)
    other = SHIPPED[(SHIPPED.index(row) + len(SHIPPED) // 2) % len(SHIPPED)]["reference"]
    assert best > score(prompt, other, ref)
    assert best > score(prompt, " ".join(ref.split()[:4] * 15), ref)


@pytest.mark.parametrize("empty", ["", "   ", "\n\t", "!!! ... ???"])
def test_empty_response_scores_zero(empty):
    assert score(PROMPT, empty, REFERENCE) == 0.0
    assert score(PROMPT, empty) == 0.0


def test_without_reference_relevant_beats_irrelevant():
    relevant = (
        "The sky is blue on a clear sunny day because air molecules scatter the short blue wavelengths of "
        "sunlight much more than the red ones, so blue light comes at us from every direction."
    )
    assert score(PROMPT, relevant) > score(PROMPT, UNRELATED)
    assert score(PROMPT, relevant, "") == score(PROMPT, relevant)


text_strategy = st.text(
    alphabet=st.sampled_from(list("abcdefghij XYZ019.,!?\n\téü")), min_size=0, max_size=200
) | st.text(max_size=100)


@settings(max_examples=200, deadline=None)
@given(prompt=text_strategy, response=text_strategy, reference=text_strategy)
def test_score_in_unit_interval_and_deterministic(prompt, response, reference):
    value = score(prompt, response, reference)
    assert 0.0 <= value <= 1.0
    assert score(prompt, response, reference) == value


@settings(max_examples=100, deadline=None)
@given(prompt=text_strategy, response=text_strategy)
def test_score_without_reference_in_unit_interval(prompt, response):
    value = score(prompt, response)
    assert 0.0 <= value <= 1.0
    assert score(prompt, response) == value


def test_rating_maps_to_one_to_five_monotonically():
    grid = [i / 1000 for i in range(1001)]
    ratings = [rating(v) for v in grid]
    assert ratings[0] == 1
    assert ratings[-1] == 5
    assert set(ratings) == {1, 2, 3, 4, 5}
    assert all(a <= b for a, b in zip(ratings, ratings[1:]))


@pytest.mark.parametrize(
    ("value", "expected"), [(0.0, 1), (0.19, 1), (0.2, 2), (0.5, 3), (0.79, 4), (0.8, 5), (1.0, 5)]
)
def test_rating_bands(value, expected):
    assert rating(value) == expected


# --- the UltraFeedback LLM judge's answers -----------------------------------------------------

UF_ANSWER = (
    "#### Output for Text 1\nRating: 4\nRationale: accurate.\n\n"
    "#### Output for Text 2\nRating: 2\nRationale: vague.\n\n"
    "#### Output for Text 3\nRating: 5\nRationale: complete."
)


@pytest.mark.parametrize(
    ("text", "n", "expected"),
    [
        (UF_ANSWER, 3, [4, 2, 5]),
        ("Sure! Here are my ratings.\n" + UF_ANSWER.replace("\n\n", "\n"), 3, [4, 2, 5]),  # preamble, no blank lines
        ("Rating: **3**\nRationale: ok\nRating: [1]\nRationale: bad", 2, [3, 1]),  # markdown bold, brackets
        (UF_ANSWER, 2, None),  # more ratings than texts
        (UF_ANSWER, 4, None),  # fewer
        ("Rating: 6\nRationale: ?\n\nRating: 0\nRationale: ?", 2, None),  # outside 1-5
        ("I cannot grade these texts.", 2, None),
        ("", 2, None),
        (None, 2, None),
    ],
)
def test_parse_ultrafeedback(text, n, expected):
    assert parse_ultrafeedback(text, n) == expected


def test_valid_ratings_and_scale():
    assert valid_ratings([1, 5], 2) == [1, 5]
    assert (
        valid_ratings([1, None], 2) is None and valid_ratings([True, 2], 2) is None and valid_ratings(None, 1) is None
    )
    assert [rating_to_score(r) for r in range(1, 6)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [rating(rating_to_score(r)) for r in range(1, 6)] == [1, 2, 3, 4, 5]  # the two scales agree
