"""What a row's fields hold: value kinds, the format, conversations split into texts, text flags.

The validator asks these per chunk: which values are strings, lists, nulls or missing (`kinds`),
hence which of TRL's four formats a row is in (`formats`, `detect_format`), the ratings' margins,
what the prompt/chosen/rejected texts of a row are in any of TRL's formats (`split_row`), and
which texts are empty, hold control characters or lone surrogates (`text_flags`), vectorized
in pyarrow where the text allows it. Token lengths are tokens.py's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import numpy as np
import pandas as pd

from alignflow.tasks.validation.readers import MISSING, REQUIRED, Chunk

ROLES = ("system", "user", "assistant", "tool")
FORMATS = ("standard", "conversational", "standard_implicit_prompt", "conversational_implicit_prompt")

# Character classes written once, for Python's re and for RE2 (pyarrow), so both paths agree.
_WHITESPACE = [(0x09, 0x0D), (0x1C, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A)]
_WHITESPACE += [(0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000)]  # = str.isspace()
_CONTROLS = [(0x00, 0x08), (0x0B, 0x0C), (0x0E, 0x1F), (0x7F, 0x9F)]  # not tab, newline, carriage return


def _char_class(ranges: list[tuple[int, int]], re2: bool, negate: bool = False) -> str:
    def esc(c: int) -> str:
        return f"\\x{{{c:x}}}" if re2 else f"\\U{c:08x}"

    body = "".join(esc(a) + (f"-{esc(b)}" if b > a else "") for a, b in ranges)
    return f"[{'^' if negate else ''}{body}]"


_NOT_WS = {re2: _char_class(_WHITESPACE, re2, negate=True) for re2 in (False, True)}
_CONTROL_CLASS = {re2: _char_class(_CONTROLS, re2) for re2 in (False, True)}
_NOT_WS_PY = re.compile(_NOT_WS[False])
_CONTROL = re.compile(_CONTROL_CLASS[False])
SURROGATE = re.compile("[\ud800-\udfff]")

K_STR, K_LIST, K_NULL, K_MISSING, K_OTHER = 0, 1, 2, 3, 4
_KIND = {str: K_STR, list: K_LIST, tuple: K_LIST, np.ndarray: K_LIST, type(None): K_NULL, type(MISSING): K_MISSING}


def kinds(values: list) -> np.ndarray:
    """K_* per value; bytes are decoded in place (surrogates keep what is not UTF-8)."""
    out = np.fromiter((_KIND.get(type(v), K_OTHER) for v in values), dtype=np.int8, count=len(values))
    for i in np.flatnonzero(out == K_OTHER):  # NaN (pandas' null) and pd.NA are nulls
        v = values[i]
        if v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            out[i] = K_NULL
        elif isinstance(v, bytes):
            values[i] = v.decode("utf-8", "surrogateescape")
            out[i] = K_STR
    return out


def is_null(v: object) -> bool:
    return (
        v is None
        or v is MISSING
        or v is pd.NA
        or (isinstance(v, float) and math.isnan(v))
        or (isinstance(v, str) and not v.strip())
    )


def formats(kp: np.ndarray, kc: np.ndarray, kr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's format code (explicit or implicit prompt, standard or conversational), and
    whether the row shows one at all (a row with no usable chosen/rejected does not)."""
    explicit = kp != K_MISSING
    conv = (kc == K_LIST) | ((kc != K_STR) & (kr == K_LIST))
    std = ~conv & ((kc == K_STR) | (kr == K_STR))
    return np.where(explicit, 0, 2) + conv.astype(np.int64), conv | std


def detect_format(chunks: Iterable[Chunk]) -> int | None:
    """The dataset's format: that of its first row that shows one. Decided before any row is
    judged, so a row is checked against the same format whatever the chunk size."""
    for chunk in chunks:
        kp, kc, kr = (kinds(list(chunk.columns.get(k, [MISSING] * chunk.n))) for k in REQUIRED)
        fmt, known = formats(kp, kc, kr)
        if known.any():
            return int(fmt[np.argmax(known)])
    return None


def rating_margins(chosen: list, rejected: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(null, wrong type, chosen - rejected) per row of the two rating columns."""
    n = len(chosen)
    nums = []
    null = np.zeros(n, dtype=bool)
    wrong = np.zeros(n, dtype=bool)
    for values in (chosen, rejected):
        if set(map(type, values)) <= {float, int}:  # the common case: plain numbers
            numeric = np.asarray(values, dtype=np.float64)
            null |= np.isnan(numeric)
            nums.append(numeric)
            continue
        null_here = np.fromiter((is_null(v) for v in values), dtype=bool, count=n)
        is_bool = np.fromiter((isinstance(v, bool) for v in values), dtype=bool, count=n)
        series = pd.Series([None if (a or b) else v for v, a, b in zip(values, null_here, is_bool)], dtype=object)
        numeric = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        null |= null_here
        wrong |= ~null_here & (np.isnan(numeric) | is_bool)
        nums.append(numeric)
    return null, wrong, nums[0] - nums[1]


def _messages_text(messages: list[dict]) -> str:
    if len(messages) == 1:
        return messages[0]["content"]
    if all(m["role"] == "assistant" for m in messages):
        return "\n\n".join(m["content"] for m in messages)
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _check_messages(messages: object, reasons: set[str]) -> list[dict] | None:
    """The messages as plain dicts, or None (with the reasons) when they are not a conversation."""
    if isinstance(messages, np.ndarray | tuple):
        messages = list(messages)
    out = []
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            reasons.add("wrong_type")
            return None
        role, content = m["role"], m["content"]
        if content is None or (isinstance(content, float) and math.isnan(content)):
            reasons.add("null_field")
            return None
        if not isinstance(role, str) or not isinstance(content, str):
            reasons.add("wrong_type")
            return None
        if not content.strip():
            reasons.add("empty_field")
        out.append({"role": role, "content": content})
    return out


def _structure_ok(conversation: list[dict]) -> bool:
    """System only first; user and assistant alternate, starting with the user; the assistant speaks last."""
    previous = None
    for i, m in enumerate(conversation):
        role = m["role"]
        if role not in ROLES or (role == "system" and i > 0):
            return False
        if role in ("user", "assistant"):
            if role == previous or (previous is None and role == "assistant"):
                return False
            previous = role
    return bool(conversation) and conversation[-1]["role"] == "assistant"


def _common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def split_row(prompt, chosen, rejected, conversational: bool, explicit: bool):
    """(prompt, chosen, rejected) texts and the conversations (for the chat template), or reasons."""
    reasons: set[str] = set()
    if not conversational:  # standard, implicit prompt: the prompt is the shared prefix (as TRL extracts it)
        n = _common_prefix(chosen, rejected)
        if n and n < min(len(chosen), len(rejected)) and chosen[n - 1 : n] != " ":
            n = chosen.rfind(" ", 0, n) + 1
        p, c, r = chosen[:n], chosen[n:], rejected[n:]
        if not p.strip():
            reasons.add("empty_field")
        return (p.rstrip(), c, r), None, reasons
    msgs = [_check_messages(v, reasons) for v in ((prompt, chosen, rejected) if explicit else (chosen, rejected))]
    if any(m is None for m in msgs):
        return None, None, reasons
    if explicit:
        p_msgs, c_msgs, r_msgs = msgs
    else:
        c_full, r_full = msgs
        n = _common_prefix(c_full, r_full)
        if n == len(c_full) == len(r_full):
            n = max(n - 1, 0)  # the same conversation twice: compare the last turns (an identical pair)
        while n and c_full[n - 1]["role"] == "assistant":
            n -= 1  # the prompt ends on the user's turn
        p_msgs, c_msgs, r_msgs = c_full[:n], c_full[n:], r_full[n:]
    if not p_msgs or not c_msgs or not r_msgs:
        # explicit: an empty list is an empty field; implicit: no shared prompt or no completion
        reasons.add("empty_field" if explicit else "conversation_structure")
        return None, None, reasons
    if not (_structure_ok(p_msgs + c_msgs) and _structure_ok(p_msgs + r_msgs)):
        reasons.add("conversation_structure")
    texts = (_messages_text(p_msgs), _messages_text(c_msgs), _messages_text(r_msgs))
    return texts, (p_msgs, c_msgs, r_msgs), reasons


def text_flags(texts: tuple[list, list, list], check_prompt: bool) -> dict[str, np.ndarray]:
    """empty, control, surrogate per row (vectorized in pyarrow when the text is valid UTF-8)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(texts[1])
    columns = texts if check_prompt else texts[1:]
    try:
        arrays = [pa.array(t, type=pa.string()) for t in texts]
    except (UnicodeError, pa.ArrowException):
        arrays = None  # lone surrogates (invalid UTF-8 input): the Python path finds and names them
    if arrays is not None:
        empty = np.zeros(n, dtype=bool)
        for a in arrays if check_prompt else arrays[1:]:
            empty |= ~pc.match_substring_regex(a, _NOT_WS[True]).to_numpy(zero_copy_only=False)
        control = np.zeros(n, dtype=bool)
        for a in arrays:
            control |= pc.match_substring_regex(a, _CONTROL_CLASS[True]).to_numpy(zero_copy_only=False)
        return {"empty": empty, "control": control, "surrogate": np.zeros(n, dtype=bool)}
    empty = np.zeros(n, dtype=bool)
    for col in columns:
        empty |= np.fromiter((_NOT_WS_PY.search(t) is None for t in col), dtype=bool, count=n)
    control = np.zeros(n, dtype=bool)
    surrogate = np.zeros(n, dtype=bool)
    for col in texts:
        control |= np.fromiter((_CONTROL.search(t) is not None for t in col), dtype=bool, count=n)
        surrogate |= np.fromiter((SURROGATE.search(t) is not None for t in col), dtype=bool, count=n)
    return {"empty": empty, "control": control, "surrogate": surrogate}


def identical(chosen: list, rejected: list) -> tuple[np.ndarray, np.ndarray]:
    """(exactly equal, equal once all whitespace is removed) per row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    a, b = pa.array(chosen, type=pa.string()), pa.array(rejected, type=pa.string())
    exact = pc.equal(a, b).to_numpy(zero_copy_only=False)
    # str.split() cuts at exactly the str.isspace() characters (_WHITESPACE); in C, several times
    # faster than an RE2 replace over both columns.
    squeezed = (e or "".join(c.split()) == "".join(r.split()) for e, c, r in zip(exact, chosen, rejected, strict=True))
    return exact, np.fromiter(squeezed, dtype=bool, count=len(chosen))
