"""The prompt set: the shipped one, or a user's jsonl file with a `prompt` column."""

from __future__ import annotations

import json
from pathlib import Path

from conf.schema import BUILTIN_PROMPTS

SHIPPED_PROMPTS = Path(__file__).resolve().parent.parent / "conf" / "prompts" / "default.jsonl"


def prompts_path(source: str) -> Path:
    return SHIPPED_PROMPTS if source == BUILTIN_PROMPTS else Path(source).expanduser()


def load_prompts(source: str = BUILTIN_PROMPTS, max_prompts: int | None = None) -> list[dict]:
    """Rows with `id`, `prompt` and, where the set has one, `reference` (used by the offline judge)."""
    path = prompts_path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prompt file not found (generation.prompts)")
    rows: list[dict] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            prompt = row.get("prompt") if isinstance(row, dict) else None
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"{path}:{lineno}: needs a non-empty string `prompt`")
            rows.append(
                {
                    "id": str(row.get("id", f"line{lineno}")),
                    "prompt": prompt.strip(),
                    "reference": str(row.get("reference") or ""),
                }
            )
    if not rows:
        raise ValueError(f"{path}: no prompts")
    return rows[:max_prompts] if max_prompts else rows
