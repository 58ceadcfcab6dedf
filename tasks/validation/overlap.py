"""Prompt text compared across places: inside the responses, and against the evaluation prompt set.

Both checks compare *normalised* text by the one rule the evaluation's disjointness check uses too
(tasks/runtime/overlap.py): lower-case, Unicode letters and digits only, words joined by one space.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

from alignflow.tasks.runtime.overlap import normalise, prompt_set

__all__ = ["eval_prompt_set", "in_eval_set", "normalise", "prompt_in_responses", "query_texts"]

MIN_PROMPT_WORDS = 4  # shorter prompts ("Hi", "Tell me more") appear in answers by chance
_DIGIT_WORD = re.compile(r"[^ ]*[0-9][^ ]*")


def eval_prompt_set(prompts: Iterable[str]) -> frozenset[str]:
    """The evaluation prompts as the validator compares them (tasks/runtime/overlap.py: the one rule)."""
    return prompt_set(prompts)


def query_texts(rows: np.ndarray, tp: list, conversations: dict) -> list[str]:
    """What a row asks: a conversation's last user turn, else the prompt text."""
    out = []
    for i in rows:
        if i in conversations:
            users = [m["content"] for m in conversations[i][0] if m["role"] == "user"]
            out.append(users[-1] if users else tp[i])
        else:
            out.append(tp[i])
    return out


def in_eval_set(normalised: list[str], eval_prompts: frozenset[str]) -> np.ndarray:
    """Per normalised query: it is one of the evaluation prompts."""
    if not eval_prompts or not normalised:
        return np.zeros(len(normalised), dtype=bool)
    return np.fromiter((q in eval_prompts for q in normalised), dtype=bool, count=len(normalised))


def prompt_in_responses(normalised: list[str], chosen: list[str], rejected: list[str]) -> np.ndarray:
    """Per row: chosen or rejected holds the whole (normalised, 4+ word) prompt as a run of words.

    A first test is cheap: two of the prompt's words (a word with digits, else the last one, and
    the longest) must both occur in the lower-cased response. Only the rows that pass it are normalised in full and compared
    word-aligned, so the cost stays near two substring searches per row."""
    n = len(normalised)
    hits = np.zeros(n, dtype=bool)
    candidates = []
    for i, q in enumerate(normalised):
        words = q.split(" ")
        if len(words) < MIN_PROMPT_WORDS:
            continue
        digits = _DIGIT_WORD.search(q)  # a number is the rarest word in an answer
        first, second = (digits.group(), max(words, key=len)) if digits else (max(words, key=len), words[-1])
        c, r = chosen[i].lower(), rejected[i].lower()
        if (first in c and second in c) or (first in r and second in r):
            candidates.append(i)
    if candidates:
        texts = normalise([chosen[i] for i in candidates] + [rejected[i] for i in candidates])
        k = len(candidates)
        for j, i in enumerate(candidates):
            needle = f" {normalised[i]} "
            hits[i] = needle in f" {texts[j]} " or needle in f" {texts[k + j]} "
    return hits
