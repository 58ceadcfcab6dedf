"""Prompt text compared across places: inside the responses, and against the evaluation prompt set.

Both checks compare *normalised* text: lower-case, letters and digits only, words joined by one
space ("What's 2+2?" -> "what s 2 2"), so that case, punctuation and spacing never hide a repeat.
The normalisation runs vectorized in pyarrow (RE2's Unicode classes), the same for both sides.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

MIN_PROMPT_WORDS = 4  # shorter prompts ("Hi", "Tell me more") appear in answers by chance


def normalise(texts: list[str]) -> list[str]:
    """Lower-case alphanumeric words joined by single spaces, per text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not texts:
        return []
    words = pc.replace_substring_regex(pc.utf8_lower(pa.array(texts, type=pa.string())), r"[^\p{L}\p{N}]+", " ")
    return pc.utf8_trim_whitespace(words).to_pylist()


def eval_prompt_set(prompts: Iterable[str]) -> frozenset[str]:
    """The evaluation prompts as the validator compares them (empty normalisations dropped)."""
    return frozenset(p for p in normalise(list(prompts)) if p)


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


def in_eval_set(queries: list[str], eval_prompts: frozenset[str]) -> np.ndarray:
    """Per query: its normalisation is one of the evaluation prompts'."""
    if not eval_prompts or not queries:
        return np.zeros(len(queries), dtype=bool)
    return np.fromiter((q in eval_prompts for q in normalise(queries)), dtype=bool, count=len(queries))


def prompt_in_responses(queries: list[str], chosen: list[str], rejected: list[str]) -> np.ndarray:
    """Per row: chosen or rejected holds the whole (normalised, 4+ word) prompt as a run of words.

    Responses are only lower-cased for a first test on the prompt's longest word (cheap, in
    pyarrow); the few rows that pass it are normalised in full and compared word-aligned."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(queries)
    hits = np.zeros(n, dtype=bool)
    if not n:
        return hits
    norm = normalise(queries)
    candidates = []
    lower_c = pc.utf8_lower(pa.array(chosen, type=pa.string())).to_pylist()
    lower_r = pc.utf8_lower(pa.array(rejected, type=pa.string())).to_pylist()
    for i, q in enumerate(norm):
        words = q.split(" ")
        if len(words) < MIN_PROMPT_WORDS:
            continue
        probe = max(words, key=len)
        if probe in lower_c[i] or probe in lower_r[i]:
            candidates.append(i)
    if candidates:
        texts = normalise([chosen[i] for i in candidates] + [rejected[i] for i in candidates])
        k = len(candidates)
        for j, i in enumerate(candidates):
            needle = f" {norm[i]} "
            hits[i] = needle in f" {texts[j]} " or needle in f" {texts[k + j]} "
    return hits
