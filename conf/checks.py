"""The one registry of validation checks: each check's id, meaning, default level and kind.

Everything else derives from this list: conf/validation.py builds the config's Literal of
check ids and its default levels from it, the validator its report entries, and
tests/unit/test_validation_registry.py holds conf/pipeline.yaml's `errors`/`warnings` equal to it.
It is plain Python and imports nothing from alignflow: it lives in conf, which the config and the validation stage both import.

Kinds: an error-level `row` check quarantines the rows it hits (valid + quarantined == input);
a `dataset` check is about the file as a whole, never quarantines, and fails the gate instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Level = Literal["error", "warning", "off"]
Kind = Literal["row", "dataset"]


@dataclass(frozen=True)
class Check:
    id: str
    description: str
    level: Level  # the default level: "error" or "warning" ("off" only when a config leaves it out)
    kind: Kind
    gate: bool = False  # a row check whose errors also fail the gate (the rows are still quarantined)
    structural: bool = False  # a failing row has no usable text: the check can never be a warning or off


REGISTRY: tuple[Check, ...] = (
    Check(
        "missing_column",
        "prompt, chosen or rejected is absent (from the row or the whole file)",
        "error",
        "row",
        structural=True,
    ),
    Check(
        "extra_columns",
        "columns besides prompt/chosen/rejected, the ratings and validation.allowed_columns",
        "warning",
        "dataset",
    ),
    Check(
        "wrong_type",
        "a field of the wrong type (text must be a string; a conversation a list of {role, content})",
        "error",
        "row",
        structural=True,
    ),
    Check(
        "null_field",
        "prompt, chosen, rejected, a message's content or a rating is null",
        "error",
        "row",
        structural=True,
    ),
    Check("empty_field", "prompt, chosen, rejected or a message is empty or whitespace only", "error", "row"),
    Check("invalid_utf8", "text with bytes that are not UTF-8 (or lone surrogates)", "error", "row"),
    Check("control_chars", "text with control characters other than tab, newline and carriage return", "error", "row"),
    Check(
        "mixed_format",
        "the row's format (standard/conversational, explicit/implicit prompt) differs from the dataset's",
        "error",
        "row",
        gate=True,  # one file, one format: a stray row is a sign the file was assembled wrongly
        structural=True,
    ),
    Check(
        "conversation_structure",
        "roles out of order, an unknown role, or a conversation not ending on the assistant",
        "error",
        "row",
    ),
    Check("identical_pair", "chosen and rejected are the same text, or differ only in whitespace", "error", "row"),
    Check("rating_tie", "the chosen and rejected ratings are equal", "error", "row"),
    Check("low_margin", "the rating margin (chosen - rejected) is below validation.min_rating_margin", "error", "row"),
    Check("duplicate_pair", "the same (prompt, chosen, rejected) appeared earlier", "error", "row"),
    Check(
        "contradiction",
        "a swapped pair: the same prompt with chosen and rejected swapped appeared earlier (A over B, then B over A); "
        "the quarantine entry names the earlier row",
        "error",
        "row",
    ),
    Check(
        "prompt_in_response",
        "chosen or rejected repeats the whole prompt (lower-case alphanumeric words, prompts of 4+ words), "
        "as when a conversion left the prompt turn in the response",
        "error",
        "row",
    ),
    Check(
        "eval_overlap",
        "the prompt (a conversation's last user turn) is in the evaluation prompt set (evaluation.prompts) after "
        "normalisation to lower-case alphanumeric words: training on it would inflate the win rate",
        "error",
        "row",
    ),
    Check("too_long", "prompt + response exceeds validation.max_length tokens after the chat template", "error", "row"),
    Check(
        "double_bos",
        "the tokenizer's BOS token appears twice at the start of the templated text (the template adds one and the "
        "text starts with another)",
        "error",
        "row",
    ),
    Check(
        "length_bias",
        "chosen is systematically longer than rejected (a sign test over all valid pairs)",
        "warning",
        "dataset",
    ),
    Check(
        "split_leakage",
        "a prompt appears under two values of the dataset's own `split` column",
        "error",
        "dataset",
    ),
)

CHECKS: dict[str, Check] = {c.id: c for c in REGISTRY}  # in report order
CHECK_IDS: tuple[str, ...] = tuple(CHECKS)
DATASET_CHECKS: tuple[str, ...] = tuple(c.id for c in REGISTRY if c.kind == "dataset")
GATE_ROW_CHECKS: tuple[str, ...] = tuple(c.id for c in REGISTRY if c.kind == "row" and c.gate)
STRUCTURAL_CHECKS: tuple[str, ...] = tuple(c.id for c in REGISTRY if c.structural)
DEFAULT_ERRORS: tuple[str, ...] = tuple(c.id for c in REGISTRY if c.level == "error")
DEFAULT_WARNINGS: tuple[str, ...] = tuple(c.id for c in REGISTRY if c.level == "warning")
