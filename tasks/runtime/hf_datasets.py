"""Hugging Face dataset ids: telling one from a file path, and finding it in the local datasets cache.

Preflight (before any compute) and the bring-your-own-data path both ask; neither imports `datasets` for it.
"""

from __future__ import annotations

import re
from pathlib import Path

# The data files alignflow reads (tasks/validation/readers.py), by suffix; a `.gz` of any of them too.
DATA_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
DATASET_ID = re.compile(r"^(?:hf:)?([A-Za-z0-9][\w.-]*(?:/[\w.-]+)?)(?::([\w.-]+))?$")


def is_dataset_id(source: str | Path) -> bool:
    """A dataset id for load_dataset (`owner/name[:split]`, `hf:` optional), not a path on this machine."""
    text = str(source)
    if text.startswith("hf:"):
        return DATASET_ID.match(text) is not None
    if Path(text).expanduser().exists() or text.startswith((".", "/", "~")):
        return False
    suffix = Path(text.split(":", 1)[0]).suffix.lower()
    return "/" in text and suffix not in (*DATA_SUFFIXES, ".gz") and DATASET_ID.match(text) is not None


def in_hf_cache(source: str, cache_dir: str | Path) -> bool:
    """Whether the HF datasets cache holds the id (a look at its folder: no `datasets` import, for preflight)."""
    match = DATASET_ID.match(source)
    if match is None:
        return False
    *namespace, name = match.group(1).split("/")
    # datasets' camelcase_to_snakecase, as load_dataset names the folder
    name = re.sub(r"([a-z\d])([A-Z])", r"\1_\2", re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)).lower()
    return (Path(cache_dir) / "___".join([*namespace, name])).is_dir()
