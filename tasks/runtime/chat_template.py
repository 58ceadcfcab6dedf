"""The tokenizer of a model with `training.chat_template` (its Jinja text) in place of the model's own.

Every stage that loads the tokenizer of the trained model's family (generation on the base model or the champion,
validation's token counts, the training recipe, evaluation of the base model) loads it here, so the override is
applied the same way everywhere. The trained model's folder is saved with the tokenizer, template included: the
registered version, its serving model and the next round's champion carry it without being told.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alignflow.tasks.runtime.state import sha256_text


def load_tokenizer(name_or_path: str | Path, chat_template: str | None = None) -> Any:
    """AutoTokenizer.from_pretrained, with `chat_template` (None: the model's own) as its chat template."""
    from transformers import AutoTokenizer

    return with_chat_template(AutoTokenizer.from_pretrained(str(name_or_path)), chat_template)


def with_chat_template(tokenizer: Any, chat_template: str | None) -> Any:
    """`tokenizer` with `chat_template` as its only chat template (a model's named ones, `tool_use`, ..., go too:
    the override is the one format the model is trained and served in); unchanged when it is None."""
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def key_parts(chat_template: str | None) -> tuple[str, ...]:
    """What a cache key adds for the template that shaped the cached text: nothing for the model's own (the model's
    folder, already in the key, holds it; so keys made without an override stay what they were)."""
    return () if chat_template is None else (sha256_text("chat_template", chat_template),)
