"""Deep merge of nested mappings: a recipe's keys over the profile's `training` section."""

from __future__ import annotations

from typing import Any


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`; nested mappings merge key by key, anything else in `top` replaces."""
    merged = dict(base)
    for key, value in top.items():
        both_sections = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = deep_merge(merged[key], value) if both_sections else value
    return merged
