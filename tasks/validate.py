"""Stage 2, validate: preference-specific checks, a quarantine, a gate, a grouped split.

Each check has a stable id. A row that fails any check goes to the quarantine file with
every reason it failed, so valid + quarantined == input, always. The gate stops the flow
(exit 1) before training when too few valid pairs remain.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from conf.schema import ValidationConfig

REQUIRED = ("prompt", "chosen", "rejected")
CHECKS = {
    "missing_field": "prompt, chosen or rejected is missing or not a string",
    "empty_field": "prompt, chosen or rejected is empty or whitespace only",
    "identical_pair": "chosen and rejected are the same text (ignoring whitespace)",
    "duplicate_pair": "the same (prompt, chosen, rejected) appeared earlier",
    "too_long": "prompt + response exceeds max_length tokens after the chat template",
}
EXAMPLES_PER_CHECK = 3


def read_pairs(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dataset not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix in (".jsonl", ".json"):
        try:
            return pd.read_json(path, lines=suffix == ".jsonl")
        except ValueError as exc:
            raise ValueError(f"{path}: not valid JSON{' lines' if suffix == '.jsonl' else ''} ({exc})") from None
    if suffix == ".csv":
        return pd.read_csv(path, keep_default_na=False)
    raise ValueError(f"{path}: unsupported format {suffix!r} (use .parquet, .jsonl, .json or .csv)")


def _normalize(text: str) -> str:
    return " ".join(text.split())


def _token_lengths(tokenizer, prompts: list[str], responses: list[str]) -> list[int]:
    conversations = [
        [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
        for p, r in zip(prompts, responses, strict=True)
    ]
    texts = tokenizer.apply_chat_template(conversations, tokenize=False)
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def check_pairs(df: pd.DataFrame, config: ValidationConfig, tokenizer=None) -> tuple[pd.Series, pd.Series]:
    """Per-row failure reasons (list of check ids, empty when valid), and the longest length in tokens."""
    reasons: list[list[str]] = [[] for _ in range(len(df))]
    lengths = pd.Series([0] * len(df), index=df.index, dtype="int64")
    columns = {c: (df[c] if c in df.columns else pd.Series([None] * len(df), index=df.index)) for c in REQUIRED}
    is_text = pd.concat([columns[c].map(lambda v: isinstance(v, str)) for c in REQUIRED], axis=1).all(axis=1)
    for pos, ok in enumerate(is_text):
        if not ok:
            reasons[pos].append("missing_field")

    text = df.loc[is_text, list(REQUIRED)] if is_text.any() else pd.DataFrame(columns=list(REQUIRED))
    positions = {idx: pos for pos, idx in enumerate(df.index)}
    seen: set[tuple[str, str, str]] = set()
    usable: list[int] = []
    for idx, row in text.iterrows():
        pos = positions[idx]
        if any(not row[c].strip() for c in REQUIRED):
            reasons[pos].append("empty_field")
            continue
        if _normalize(row["chosen"]) == _normalize(row["rejected"]):
            reasons[pos].append("identical_pair")
        key = (row["prompt"], row["chosen"], row["rejected"])
        if key in seen:
            reasons[pos].append("duplicate_pair")
        seen.add(key)
        usable.append(idx)

    if tokenizer is not None and usable:
        sub = df.loc[usable]
        chosen = _token_lengths(tokenizer, sub["prompt"].tolist(), sub["chosen"].tolist())
        rejected = _token_lengths(tokenizer, sub["prompt"].tolist(), sub["rejected"].tolist())
        for idx, a, b in zip(usable, chosen, rejected, strict=True):
            lengths[idx] = max(a, b)
            if lengths[idx] > config.max_length:
                reasons[positions[idx]].append("too_long")
    return pd.Series(reasons, index=df.index), lengths


def split_by_prompt(df: pd.DataFrame, test_size: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deterministic split grouped by prompt: a prompt's pairs all land on one side."""

    def bucket(prompt: str) -> float:
        digest = hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    is_test = df["prompt"].map(bucket) < test_size
    return df[~is_test].reset_index(drop=True), df[is_test].reset_index(drop=True)


def validate_pairs(
    df: pd.DataFrame, config: ValidationConfig, tokenizer=None
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(valid rows, quarantined rows with `reasons`, report). Pure: writes nothing."""
    reasons, lengths = check_pairs(df, config, tokenizer)
    bad = reasons.map(bool)
    valid = df[~bad].reset_index(drop=True)
    quarantined = df[bad].copy()
    quarantined.insert(0, "row", quarantined.index)
    quarantined["reasons"] = reasons[bad]
    quarantined = quarantined.reset_index(drop=True)

    checks = {}
    for check_id, description in CHECKS.items():
        hits = [int(i) for i, r in reasons.items() if check_id in r]
        checks[check_id] = {"description": description, "count": len(hits), "example_rows": hits[:EXAMPLES_PER_CHECK]}
    total = len(df)
    fraction = len(valid) / total if total else 0.0
    failures = []
    if len(valid) < config.min_pairs:
        failures.append(f"{len(valid)} valid pairs < validation.min_pairs={config.min_pairs}")
    if fraction < config.min_valid_fraction:
        failures.append(f"valid fraction {fraction:.3f} < validation.min_valid_fraction={config.min_valid_fraction}")
    measured = lengths[lengths > 0]
    report = {
        "rows": total,
        "valid": len(valid),
        "quarantined": len(quarantined),
        "valid_fraction": round(fraction, 4),
        "checks": checks,
        "tokens": {
            "max_length": config.max_length,
            "longest": int(measured.max()) if len(measured) else None,
            "mean": round(float(measured.mean()), 1) if len(measured) else None,
        },
        "gate": {"passed": not failures, "failures": failures},
    }
    return valid, quarantined, report


def write_outputs(
    out_dir: Path, valid: pd.DataFrame, quarantined: pd.DataFrame, report: dict, config: ValidationConfig
) -> dict[str, Path]:
    """Report, quarantine and (when the gate passed) the train/test split, under out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"report": out_dir / "report.json", "quarantine": out_dir / "quarantine.jsonl"}
    quarantined.to_json(paths["quarantine"], orient="records", lines=True, force_ascii=False)
    if report["gate"]["passed"]:
        train, test = split_by_prompt(valid, config.test_size, config.split_seed)
        report["split"] = {"train": len(train), "test": len(test), "seed": config.split_seed}
        paths["train"], paths["test"] = out_dir / "train.parquet", out_dir / "test.parquet"
        train.to_parquet(paths["train"], index=False)
        test.to_parquet(paths["test"], index=False)
    paths["report"].write_text(json.dumps(report, indent=2))
    return paths
