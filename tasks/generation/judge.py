"""The offline judge: a deterministic scorer of a response against a reference answer.

It stands in for an LLM judge where none can be reached (the embedded default, CI). It is
real scoring, never random: the same (prompt, reference, response) always gets the same
score. A score in [0, 1] is a weighted sum of four signals, times a repetition factor:

    0.45 * unigram F1 with the reference   (content words the answer should contain)
    0.20 * bigram F1 with the reference    (phrasing and word order)
    0.15 * prompt relevance                 (share of the prompt's content words echoed)
    0.20 * length fit                       (sqrt of the shorter/longer length ratio)
    x  repetition factor                    (distinct bigrams / bigrams: loops score low),
                                            relative to the reference's own ratio, so that
                                            phrasing the reference itself repeats costs nothing

Without a reference (a user's prompt set), the weights of the two F1 terms move to
relevance and length fit against a 40-word target. An empty response scores 0.
`rating` maps the score to UltraFeedback's 1-5 scale for people reading the data.
"""

from __future__ import annotations

import math
import re
from collections import Counter

_STOPWORDS_TEXT = """
    a an the and or but if of to in on at by for with from as is are was were be been being it its this
    that these those there here what which who whom how why when where do does did can could should
    would will shall may might must i you he she we they me him her us them my your his our their not
    no so than then too very just also into about over under up down out more most some any each other
    such only own same s t
"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())
_WORD = re.compile(r"[a-z0-9]+")
TARGET_WORDS_WITHOUT_REFERENCE = 40


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _content(tokens: list[str]) -> list[str]:
    return [t for t in tokens if t not in STOPWORDS]


def _f1(candidate: Counter, reference: Counter) -> float:
    overlap = sum((candidate & reference).values())
    if not overlap:
        return 0.0
    precision = overlap / sum(candidate.values())
    recall = overlap / sum(reference.values())
    return 2 * precision * recall / (precision + recall)


def _bigrams(tokens: list[str]) -> Counter:
    return Counter(zip(tokens, tokens[1:]))


def _length_fit(n: int, target: int) -> float:
    if n == 0 or target == 0:
        return 0.0
    return math.sqrt(min(n, target) / max(n, target))


def _repetition_factor(tokens: list[str]) -> float:
    pairs = list(zip(tokens, tokens[1:]))
    return len(set(pairs)) / len(pairs) if pairs else 1.0


def score(prompt: str, response: str, reference: str = "") -> float:
    tokens = words(response)
    if not tokens:
        return 0.0
    prompt_terms = set(_content(words(prompt)))
    relevance = len(prompt_terms & set(tokens)) / len(prompt_terms) if prompt_terms else 0.0
    ref_tokens = words(reference)
    if ref_tokens:
        unigram = _f1(Counter(_content(tokens)), Counter(_content(ref_tokens)))
        bigram = _f1(_bigrams(tokens), _bigrams(ref_tokens))
        length = _length_fit(len(tokens), len(ref_tokens))
        raw = 0.45 * unigram + 0.20 * bigram + 0.15 * relevance + 0.20 * length
        repetition = min(1.0, _repetition_factor(tokens) / _repetition_factor(ref_tokens))
    else:
        length = _length_fit(len(tokens), TARGET_WORDS_WITHOUT_REFERENCE)
        raw = 0.5 * relevance + 0.5 * length
        repetition = _repetition_factor(tokens)
    return round(raw * repetition, 6)


def rating(value: float) -> int:
    """UltraFeedback-style 1-5 rating of a score in [0, 1]."""
    return 1 + min(4, int(value * 5))


# --- the UltraFeedback LLM judge's answers -----------------------------------------------------

_RATING = re.compile(r"Rating\s*:\s*\**\s*\[?\s*(\d+)")


def valid_ratings(ratings: object, n: int) -> list[int] | None:
    """`ratings` when it is exactly n integer ratings in 1-5, else None."""
    if not isinstance(ratings, list | tuple) or len(ratings) != n:
        return None
    if not all(isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= 5 for r in ratings):
        return None
    return [int(r) for r in ratings]


def parse_ultrafeedback(text: str | None, n: int) -> list[int] | None:
    """The n ratings in an UltraFeedback-style answer ("Rating: 4" once per text, in order), or None.

    A fallback for answers distilabel's stricter parser rejects (a preamble, markdown bold, a
    missing blank line between texts); any other count than n, or a rating outside 1-5, is None.
    """
    if not text:
        return None
    return valid_ratings([int(m) for m in _RATING.findall(text)], n)


def rating_to_score(value: int) -> float:
    """An UltraFeedback rating 1-5 on the offline judge's [0, 1] scale (one step = 0.25)."""
    return (value - 1) / 4
