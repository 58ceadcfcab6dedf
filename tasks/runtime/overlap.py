"""The one rule for "the same prompt": what a prompt asks, normalised.

Validation (`eval_overlap`: a training row whose prompt is an evaluation prompt) and evaluation (the
head-to-head's prompt set must be disjoint from the train split) compare prompts the same way:
the last user turn of a conversation (else the prompt text), lower-cased, Unicode letters and digits
only, words joined by one space ("What's 2+2?" -> "what s 2 2"), so that case, punctuation and
spacing never hide a repeat, in any script.
"""

from __future__ import annotations

from collections.abc import Iterable


def normalise(texts: list[str]) -> list[str]:
    """Lower-case alphanumeric words joined by single spaces, per text (vectorized in pyarrow: RE2's Unicode classes)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not texts:
        return []
    words = pc.replace_substring_regex(pc.utf8_lower(pa.array(texts, type=pa.string())), r"[^\p{L}\p{N}]+", " ")
    return pc.utf8_trim_whitespace(words).to_pylist()


def asked(prompt: object) -> str:
    """What a prompt asks: the text itself, or a conversation's last user turn."""
    if isinstance(prompt, str):
        return prompt
    users = [str(m.get("content", "")) for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    return users[-1] if users else ""


def prompt_set(prompts: Iterable[object]) -> frozenset[str]:
    """The prompts as compared (empty normalisations dropped)."""
    return frozenset(p for p in normalise([asked(p) for p in prompts]) if p)
