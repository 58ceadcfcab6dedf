"""The turns of a conversational pair, as the validated split files hold them.

Every split file has `prompt`, `chosen` and `rejected` as text (what reports, hashes and overlap
checks read). A conversational dataset's files also keep the turns themselves, so training and
evaluation hand the chat template the system prompt, the earlier turns and the last user turn
as the data file had them, not a flattened "role: content" text:

    prompt_messages    [{role, content}, ...]: the system prompt, earlier turns, the last user turn
    chosen_messages    [{role: assistant, content}, ...]
    rejected_messages  [{role: assistant, content}, ...]

Validation writes them; training (tasks/training/recipe.py) and evaluation read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

MESSAGE_COLUMNS = {"prompt": "prompt_messages", "chosen": "chosen_messages", "rejected": "rejected_messages"}


def messages(value: object) -> list[dict[str, str]] | None:
    """A column's value as plain [{role, content}] (parquet gives arrays of dicts), or None for a text row."""
    if value is None or isinstance(value, str):
        return None
    turns = [{"role": str(m["role"]), "content": str(m["content"])} for m in value]  # type: ignore[attr-defined]
    return turns or None


def row_turns(row: Mapping[str, object], part: str) -> list[dict[str, str]] | None:
    """The turns of `part` ("prompt", "chosen", "rejected") in a split row, or None when the row has only text."""
    return messages(row.get(MESSAGE_COLUMNS[part]))


def split_prompts(path: str | Path) -> list[str | list[dict[str, str]]]:
    """Each row's prompt in a split file: its turns where the file keeps them, else its text."""
    import pyarrow.parquet as pq

    name = MESSAGE_COLUMNS["prompt"]
    columns = ["prompt", name] if name in pq.read_schema(path).names else ["prompt"]
    table = pq.read_table(path, columns=columns).to_pydict()
    turns = table.get(name, [None] * len(table["prompt"]))
    return [messages(t) or p for p, t in zip(table["prompt"], turns, strict=True)]
