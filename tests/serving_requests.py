"""Requests to the served model and what an answer must be: shared by the pyfunc's unit tests and the
`mlflow models serve` test."""

from __future__ import annotations

PROMPT = "Why is the sky blue?"
CHAT = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": PROMPT}]
ALLOWED_FIELDS = "allowed: prompt, messages, max_new_tokens, temperature, top_p, do_sample"
ALLOWED_PARAMS = "allowed: max_new_tokens, temperature, top_p, do_sample"


def assert_completion_only(text: object) -> None:
    """No prompt echoed, no chat-template markers, no surrounding whitespace."""
    assert isinstance(text, str)
    assert text == text.strip()
    assert not text.startswith(PROMPT[:8]) and PROMPT not in text
    assert "<|" not in text and "|>" not in text and "Answer briefly" not in text
