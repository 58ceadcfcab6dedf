"""Preference rows and files in the layouts users bring (UltraFeedback's), shared by the unit
tests of the readers and the flow test that trains on them."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd

from alignflow.conf.validation import ValidationConfig
from alignflow.tasks.generation.prompts import load_prompts

ROWS = load_prompts(max_prompts=24)


def lenient(**kw) -> ValidationConfig:
    return ValidationConfig(**{"min_pairs": 1, "max_rejected_fraction": 1.0, **kw})


def bad(text: str) -> str:
    return " ".join(text.split()[::-1][:12])


def turn(role: str, content: str) -> dict:
    return {"content": content, "role": role}  # the key order the Hub's parquet files have


def ultrafeedback(rows: list[dict] = ROWS) -> list[dict]:
    """Rows in the layout of HuggingFaceH4/ultrafeedback_binarized (train_prefs)."""
    out = []
    for i, r in enumerate(rows):
        chosen = [turn("user", r["prompt"]), turn("assistant", r["reference"])]
        out.append(
            {
                "prompt": r["prompt"],
                "prompt_id": f"{i:064x}",
                "chosen": chosen,
                "rejected": [turn("user", r["prompt"]), turn("assistant", bad(r["reference"]))],
                "messages": chosen,
                "score_chosen": 8.0,
                "score_rejected": 3.5,
            }
        )
    return out


def write(path: Path, rows: list[dict]) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if path.name.endswith(".json.gz"):
        path.write_bytes(gzip.compress(json.dumps(rows).encode()))
    elif path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    elif path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    else:
        path.write_text(text)
    return path
