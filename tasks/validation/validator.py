"""Stage 2, validate: preference-specific checks, a quarantine, a gate, a grouped split.

Streaming: the dataset is read `validation.chunk_rows` rows at a time (line chunks for
JSON lines and CSV, an incremental parser for a JSON array, record batches for parquet),
each chunk is checked with vectorized pandas operations, and valid rows, the quarantine
and the train/test split are written as they go. What grows with the file is only 8-byte
hashes (pairs for duplicates and contradictions, prompts for leakage), never texts.

Each check has a stable id (CHECKS). A row that fails an error-level row check goes to the
quarantine file with every reason it failed, so valid + quarantined == input, always.
Dataset checks (DATASET_CHECKS) fail the gate instead when they are errors. The gate also
stops the flow (exit 1) before training when too few valid pairs remain or too many rows
were rejected. The report's schema is documented in README.md, "Validation report".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from alignflow.conf.validation import ValidationConfig

REPORT_VERSION = 1
REQUIRED = ("prompt", "chosen", "rejected")
CHECKS = {
    "missing_column": "prompt, chosen or rejected is absent (from the row or the whole file)",
    "extra_columns": "columns besides prompt/chosen/rejected, the ratings and validation.allowed_columns",
    "wrong_type": "a field of the wrong type (text must be a string; a conversation a list of {role, content})",
    "null_field": "prompt, chosen, rejected, a message's content or a rating is null",
    "empty_field": "prompt, chosen, rejected or a message is empty or whitespace only",
    "invalid_utf8": "text with bytes that are not UTF-8 (or lone surrogates)",
    "control_chars": "text with control characters other than tab, newline and carriage return",
    "mixed_format": "the row's format (standard/conversational, explicit/implicit prompt) differs from the dataset's",
    "conversation_structure": "roles out of order, an unknown role, or a conversation not ending on the assistant",
    "identical_pair": "chosen and rejected are the same text, or differ only in whitespace",
    "rating_tie": "the chosen and rejected ratings are equal",
    "low_margin": "the rating margin (chosen - rejected) is below validation.min_rating_margin",
    "duplicate_pair": "the same (prompt, chosen, rejected) appeared earlier",
    "contradiction": "the same prompt with chosen and rejected swapped appeared earlier (A over B, then B over A)",
    "too_long": "prompt + response exceeds validation.max_length tokens after the chat template",
    "length_bias": "chosen is systematically longer than rejected (a sign test over all valid pairs)",
    "split_leakage": "a prompt appears under two values of the dataset's own `split` column",
}
# Checks about the dataset as a whole: never quarantine rows; as errors they fail the gate.
DATASET_CHECKS = ("extra_columns", "length_bias", "split_leakage")
# Row checks that, besides quarantining their rows, fail the gate when they are errors.
GATE_ROW_CHECKS = ("mixed_format",)
FORMATS = ("standard", "conversational", "standard_implicit_prompt", "conversational_implicit_prompt")
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
MAX_LINE_BYTES = 64 * 2**20  # one JSON line (or JSON array item) larger than this is refused, memory stays bounded
BLOCK = 2**20
ROLES = ("system", "user", "assistant", "tool")

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
_WS_RUN = {re2: _char_class(_WHITESPACE, re2) + "+" for re2 in (False, True)}
_CONTROL_CLASS = {re2: _char_class(_CONTROLS, re2) for re2 in (False, True)}
_NOT_WS_PY = re.compile(_NOT_WS[False])
_WS_RUN_PY = re.compile(_WS_RUN[False])
_CONTROL = re.compile(_CONTROL_CLASS[False])
_SURROGATE = re.compile("[\ud800-\udfff]")


class DatasetError(ValueError):
    """The input cannot be read as a preference dataset; the message names the file (and line)."""


class DatasetNotFound(DatasetError, FileNotFoundError):
    pass


class _Missing:
    """A key the row does not have (distinct from an explicit null)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()


def code_version() -> str:
    """Hash of this module: a change to the checks is a new validation (a cache miss in the flow)."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


# --- reading ---------------------------------------------------------------------------------------


@dataclass
class Chunk:
    """Rows `start`.. of the input: column -> values (MISSING where a row lacks the key)."""

    columns: dict[str, list]
    n: int
    lines: list[int] | None = None  # 1-based line numbers (JSON lines / JSON array)


def check_readable(path: str | Path) -> str:
    """The reader kind for `path`, or a DatasetError that says what is wrong with it."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if not path.exists():
        raise DatasetNotFound(f"{path}: no such file")
    if path.is_dir():
        raise DatasetError(f"{path}: is a directory, not a dataset file")
    if kind is None:
        raise DatasetError(
            f"{path}: unsupported file type {path.suffix or '(no suffix)'!r}; use .jsonl, .json, .parquet or .csv"
        )
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: the file is empty (0 bytes)")
    return kind


def iter_chunks(path: str | Path, chunk_rows: int = 10000) -> Iterator[Chunk]:
    """The dataset in chunks of at most `chunk_rows` rows; DatasetError on anything unreadable."""
    path = Path(path)
    kind = check_readable(path)
    reader = {"jsonl": _read_jsonl, "json": _read_json, "parquet": _read_parquet, "csv": _read_csv}[kind]
    try:
        yield from reader(path, chunk_rows)
    except DatasetError:
        raise
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except (OSError, MemoryError) as exc:
        raise DatasetError(f"{path}: cannot read it ({type(exc).__name__}: {exc})") from None


def read_pairs(path: str | Path, chunk_rows: int = 10000) -> pd.DataFrame:
    """The whole dataset as one frame (small files, tests); use iter_chunks for large ones."""
    frames = []
    for chunk in iter_chunks(path, chunk_rows):
        frames.append(
            pd.DataFrame(
                {
                    k: pd.Series([None if v is MISSING else v for v in vals], dtype=object)
                    for k, vals in chunk.columns.items()
                }
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(REQUIRED))


def _chunk_from_records(records: list[dict], lines: list[int] | None) -> Chunk:
    keys: dict[str, None] = {}
    last = None
    for record in records:
        if record.keys() != last:
            last = record.keys()
            for k in last:
                keys[k] = None
    columns = {k: [r.get(k, MISSING) for r in records] for k in keys}
    return Chunk(columns, len(records), lines)


def _parse_json_line(raw: bytes, path: Path, lineno: int) -> dict:
    import orjson

    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # Slow path: lone surrogate escapes, NaN, or bytes that are not UTF-8 (kept as
        # surrogates so the row is reported as invalid_utf8 instead of failing the file).
        text = raw.decode("utf-8", "surrogateescape")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{lineno}: malformed JSON line ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        hint = " (this looks like a JSON array: name the file .json)" if lineno == 1 and isinstance(obj, list) else ""
        if lineno == 1 and raw.strip() == b"[":
            hint = " (this looks like a JSON array: name the file .json)"
        raise DatasetError(f"{path}:{lineno}: expected one JSON object per line, got {_json_kind(obj)}{hint}")
    return obj


def _json_kind(obj: object) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(obj), "a number")


def _read_jsonl(path: Path, chunk_rows: int) -> Iterator[Chunk]:
    records: list[dict] = []
    lines: list[int] = []
    with open(path, "rb") as handle:
        lineno = 0
        while True:
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                break
            lineno += 1
            if len(raw) > MAX_LINE_BYTES:
                raise DatasetError(
                    f"{path}:{lineno}: line longer than {MAX_LINE_BYTES // 2**20} MiB; is this JSON lines?"
                )
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            if lineno == 1 and raw.strip() == b"[":
                raise DatasetError(f"{path}:1: expected one JSON object per line, got an array (name the file .json)")
            records.append(_parse_json_line(raw, path, lineno))
            lines.append(lineno)
            if len(records) >= chunk_rows:
                yield _chunk_from_records(records, lines)
                records, lines = [], []
    if records:
        yield _chunk_from_records(records, lines)


def _read_json(path: Path, chunk_rows: int) -> Iterator[Chunk]:
    """A JSON array of objects, parsed incrementally; a .json holding JSON lines (as HF datasets writes) works too."""
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        head = handle.read(4096).lstrip("\ufeff \t\r\n")
    if not head:
        raise DatasetError(f"{path}: no rows (only whitespace)")
    if head[0] == "{":
        yield from _read_jsonl(path, chunk_rows)
        return
    if head[0] != "[":
        raise DatasetError(
            f"{path}: not JSON: expected an array of objects ('[') or JSON lines ('{{'), got {head[0]!r}"
        )
    records: list[dict] = []
    lines: list[int] = []
    for obj, line in _json_array_items(path):
        records.append(obj)
        lines.append(line)
        if len(records) >= chunk_rows:
            yield _chunk_from_records(records, lines)
            records, lines = [], []
    if records:
        yield _chunk_from_records(records, lines)


def _json_array_items(path: Path) -> Iterator[tuple[dict, int]]:
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        buf, pos, line, eof, item = "", 0, 1, False, 0

        def fill() -> bool:
            nonlocal buf, pos, line, eof
            if eof:
                return False
            if pos:
                line += buf.count("\n", 0, pos)
                buf, pos = buf[pos:], 0
            more = handle.read(BLOCK)
            eof = not more
            buf += more
            return bool(more)

        def skip_ws() -> str:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n\ufeff":
                    pos += 1
                if pos < len(buf):
                    return buf[pos]
                if not fill():
                    return ""

        def here() -> int:
            return line + buf.count("\n", 0, pos)

        if skip_ws() != "[":
            raise DatasetError(f"{path}: not a JSON array")
        pos += 1
        if skip_ws() == "]":
            return
        while True:
            ch = skip_ws()
            if not ch:
                raise DatasetError(f"{path}:{here()}: unexpected end of file (the JSON array is not closed)")
            while True:
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as exc:
                    error_line = line + exc.lineno - 1  # exc counts lines from the buffer's start
                    if len(buf) - pos > MAX_LINE_BYTES:
                        raise DatasetError(
                            f"{path}:{here()}: item {item} larger than {MAX_LINE_BYTES // 2**20} MiB"
                        ) from None
                    if not fill():
                        raise DatasetError(
                            f"{path}:{error_line}: malformed JSON in item {item} ({exc.msg} at column {exc.colno})"
                        ) from None
            if not isinstance(obj, dict):
                raise DatasetError(
                    f"{path}:{here()}: item {item} of the JSON array is {_json_kind(obj)}, not an object"
                )
            yield obj, here()
            pos = end
            item += 1
            ch = skip_ws()
            if ch == ",":
                pos += 1
                continue
            if ch == "]":
                pos += 1
                if skip_ws():
                    raise DatasetError(f"{path}:{here()}: unexpected data after the end of the JSON array")
                return
            if not ch:
                raise DatasetError(f"{path}:{here()}: unexpected end of file (the JSON array is not closed)")
            raise DatasetError(f"{path}:{here()}: expected ',' or ']' after item {item - 1}, got {ch!r}")


def _read_parquet(path: Path, chunk_rows: int) -> Iterator[Chunk]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{path}: not a readable parquet file ({exc})") from None
    try:
        for batch in parquet.iter_batches(batch_size=chunk_rows):
            columns = {name: batch.column(i).to_pylist() for i, name in enumerate(batch.schema.names)}
            yield Chunk(columns, batch.num_rows)
    except pa.ArrowException as exc:
        raise DatasetError(f"{path}: corrupt parquet data ({exc})") from None


def _read_csv(path: Path, chunk_rows: int) -> Iterator[Chunk]:
    try:
        reader = pd.read_csv(
            path,
            dtype=object,
            keep_default_na=False,
            na_values=[],
            encoding="utf-8",
            encoding_errors="surrogateescape",
            chunksize=chunk_rows,
        )
        for frame in reader:
            columns = {str(c): frame[c].tolist() for c in frame.columns}
            for name in REQUIRED:  # a conversational CSV holds JSON lists of messages in its cells
                if name in columns:
                    columns[name] = [_maybe_messages(v) for v in columns[name]]
            yield Chunk(columns, len(frame))
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path}: no header and no rows (the file is blank)") from None
    except pd.errors.ParserError as exc:
        raise DatasetError(f"{path}: malformed CSV ({str(exc).strip()})") from None


def _maybe_messages(value: object) -> object:
    if isinstance(value, str) and value.startswith("[{"):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        if isinstance(parsed, list) and all(isinstance(m, dict) for m in parsed):
            return parsed
    return value


# --- per-row helpers -------------------------------------------------------------------------------

K_STR, K_LIST, K_NULL, K_MISSING, K_OTHER = 0, 1, 2, 3, 4
_KIND = {str: K_STR, list: K_LIST, tuple: K_LIST, np.ndarray: K_LIST, type(None): K_NULL, _Missing: K_MISSING}


def _kinds(values: list) -> np.ndarray:
    kinds = np.fromiter((_KIND.get(type(v), K_OTHER) for v in values), dtype=np.int8, count=len(values))
    for i in np.flatnonzero(kinds == K_OTHER):  # NaN (pandas' null) and pd.NA are nulls
        v = values[i]
        if v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            kinds[i] = K_NULL
        elif isinstance(v, bytes):
            values[i] = v.decode("utf-8", "surrogateescape")
            kinds[i] = K_STR
    return kinds


def _is_null(v: object) -> bool:
    return (
        v is None
        or v is MISSING
        or v is pd.NA
        or (isinstance(v, float) and math.isnan(v))
        or (isinstance(v, str) and not v.strip())
    )


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


def _split_row(prompt, chosen, rejected, conversational: bool, explicit: bool):
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


def _col_hash(values: list) -> np.ndarray:
    """A stable 64-bit hash per string (pandas' SipHash with its fixed key)."""
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return pd.util.hash_array(array, categorize=False)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: spreads combined hashes over all 64 bits."""
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


def _combine(*hashes: np.ndarray) -> np.ndarray:
    """One hash per row over several column hashes, order-sensitive ((p, c, r) != (p, r, c))."""
    out = np.zeros(len(hashes[0]), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k, h in enumerate(hashes):
            out = _mix(out * np.uint64(0x100000001B3) + h + np.uint64(k + 1))
    return out


def _buckets_from_hashes(prompt_hashes: np.ndarray, seed: int) -> np.ndarray:
    salt = np.uint64(int.from_bytes(hashlib.sha256(f"alignflow-split-{seed}".encode()).digest()[:8], "big"))
    return (_mix(prompt_hashes ^ salt) >> np.uint64(11)).astype(np.float64) / float(2**53)


def prompt_buckets(prompts: list[str], seed: int) -> np.ndarray:
    """A number in [0, 1) per prompt, from a seeded hash of its text: the split's only input."""
    if not prompts:
        return np.zeros(0)
    return _buckets_from_hashes(_col_hash(prompts), seed)


def _text_flags(texts: tuple[list, list, list], check_prompt: bool) -> dict[str, np.ndarray]:
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
        surrogate |= np.fromiter((_SURROGATE.search(t) is not None for t in col), dtype=bool, count=n)
    return {"empty": empty, "control": control, "surrogate": surrogate}


def _identical(chosen: list, rejected: list) -> tuple[np.ndarray, np.ndarray]:
    """(exactly equal, equal once all whitespace is removed) per row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    a, b = pa.array(chosen, type=pa.string()), pa.array(rejected, type=pa.string())
    exact = pc.equal(a, b).to_numpy(zero_copy_only=False)
    squeezed = pc.equal(
        pc.replace_substring_regex(a, _WS_RUN[True], ""), pc.replace_substring_regex(b, _WS_RUN[True], "")
    ).to_numpy(zero_copy_only=False)
    return exact, exact | squeezed


class _HashIndex:
    """uint64 hash -> first row number, as sorted runs merged geometrically: 16 bytes per entry."""

    def __init__(self) -> None:
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []

    def __len__(self) -> int:
        return sum(len(h) for h, _ in self.runs)

    def lookup(self, hashes: np.ndarray) -> np.ndarray:
        out = np.full(len(hashes), -1, dtype=np.int64)
        for keys, rows in self.runs:
            pos = np.searchsorted(keys, hashes).clip(max=len(keys) - 1)
            found = (keys[pos] == hashes) & (out < 0)
            out[found] = rows[pos[found]]
        return out

    def add(self, hashes: np.ndarray, rows: np.ndarray) -> None:
        """Add hashes not yet present (the caller passes each hash with its first row)."""
        if not len(hashes):
            return
        order = np.argsort(hashes, kind="stable")
        self.runs.append((hashes[order], rows[order]))
        while len(self.runs) > 1 and len(self.runs[-1][0]) * 2 >= len(self.runs[-2][0]):
            (k2, r2), (k1, r1) = self.runs.pop(), self.runs.pop()
            keys, rows = np.concatenate([k1, k2]), np.concatenate([r1, r2])
            order = np.argsort(keys, kind="stable")
            self.runs.append((keys[order], rows[order]))


# --- the checks ------------------------------------------------------------------------------------


@dataclass
class ChunkResult:
    valid: np.ndarray  # bool per row
    reasons: dict[int, list[str]]  # row position in the chunk -> error check ids (quarantined rows)
    texts: tuple[list, list, list]  # canonical prompt/chosen/rejected strings (None where unusable)
    prompt_hashes: np.ndarray  # uint64 per row (0 where unusable)


@dataclass
class _Tally:
    count: int = 0
    examples: list[int] = field(default_factory=list)
    detail: dict = field(default_factory=dict)


def _formats(kp: np.ndarray, kc: np.ndarray, kr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
        kinds = [_kinds(list(chunk.columns.get(k, [MISSING] * chunk.n))) for k in REQUIRED]
        fmt, known = _formats(*kinds)
        if known.any():
            return int(fmt[np.argmax(known)])
    return None


class Validator:
    """Feed it chunks in order; it keeps counts and hashes, never rows. `report()` at the end."""

    def __init__(self, config: ValidationConfig, tokenizer=None, dataset_format: int | None = None) -> None:
        self.config = config
        self.level = {c: "off" for c in CHECKS}
        self.level.update({c: "warning" for c in config.warnings})
        self.level.update({c: "error" for c in config.errors})
        self.tokenizer = tokenizer if self.level["too_long"] != "off" else None
        self.tally = {c: _Tally() for c in CHECKS}
        self.rows = self.valid = self.quarantined = 0
        self.format: int | None = dataset_format
        self.format_counts = [0] * len(FORMATS)
        self.columns: dict[str, None] = {}
        self.extra: dict[str, None] = {}
        self.pairs = _HashIndex()
        self.split_prompts: dict[str, _HashIndex] = {}
        self.leaked: list[np.ndarray] = []
        self.identical = {"exact": 0, "whitespace_only": 0}
        self.tokens = {"measured": 0, "sum": 0, "longest": 0}
        self.bias = {"pairs": 0, "chosen_longer": 0, "rejected_longer": 0, "sum_chosen": 0.0, "sum_rejected": 0.0}
        self.ratings = {"rows": 0, "sum_margin": 0.0}

    # Each check's hits go through here: counts and example rows for the report.
    def _hit(self, check: str, mask: np.ndarray, start: int, hits: dict[str, np.ndarray]) -> None:
        if self.level[check] == "off" or not mask.any():
            return
        hits[check] = hits[check] | mask if check in hits else mask.copy()

    def feed(self, chunk: Chunk) -> ChunkResult:
        n, start, cfg = chunk.n, self.rows, self.config
        self.rows += n
        cols = chunk.columns
        hits: dict[str, np.ndarray] = {}
        for k in cols:
            self.columns.setdefault(k)

        def column(name: str) -> list:
            return cols[name] if name in cols else [MISSING] * n

        P, C, R = (column(k) for k in REQUIRED)
        kp, kc, kr = _kinds(P), _kinds(C), _kinds(R)

        known = {*REQUIRED, *cfg.rating_columns, *cfg.allowed_columns}
        extra = [k for k in cols if k not in known]
        if extra:
            mask = np.zeros(n, dtype=bool)
            for k in extra:
                present = np.fromiter((v is not MISSING for v in cols[k]), dtype=bool, count=n)
                if present.any():
                    self.extra.setdefault(k)
                mask |= present
            self._hit("extra_columns", mask, start, hits)

        fmt, known_fmt = _formats(kp, kc, kr)
        for code, count in zip(*np.unique(fmt[known_fmt], return_counts=True), strict=True):
            self.format_counts[int(code)] += int(count)
        if self.format is None and known_fmt.any():
            self.format = int(fmt[np.argmax(known_fmt)])
        ds = self.format if self.format is not None else 0
        ds_conv, ds_explicit = ds in (1, 3), ds in (0, 1)
        mixed = known_fmt & (fmt != ds)
        self._hit("mixed_format", mixed, start, hits)
        same = ~mixed

        want = K_LIST if ds_conv else K_STR
        fields = ([kp] if ds_explicit else []) + [kc, kr]
        fields_ok = same.copy()
        for k in fields:
            self._hit("missing_column", same & (k == K_MISSING), start, hits)
            self._hit("null_field", same & (k == K_NULL), start, hits)
            self._hit("wrong_type", same & (k != want) & (k != K_MISSING) & (k != K_NULL), start, hits)
            fields_ok &= k == want

        # Canonical texts: strings for every format (what the split files hold).
        tp: list = [None] * n
        tc: list = [None] * n
        tr: list = [None] * n
        conversations: dict[int, tuple] = {}
        ok_rows = np.flatnonzero(fields_ok)
        if ds == 0:
            for i in ok_rows:
                tp[i], tc[i], tr[i] = P[i], C[i], R[i]
        else:
            slow: dict[str, list[int]] = {}
            for i in ok_rows:
                texts, msgs, reasons = _split_row(P[i], C[i], R[i], ds_conv, ds_explicit)
                for reason in reasons:
                    slow.setdefault(reason, []).append(i)
                if texts is not None:
                    tp[i], tc[i], tr[i] = texts
                    if msgs is not None:
                        conversations[i] = msgs
            for reason, rows in slow.items():
                mask = np.zeros(n, dtype=bool)
                mask[rows] = True
                self._hit(reason, mask, start, hits)

        usable = np.fromiter((t is not None for t in tc), dtype=bool, count=n)
        u = np.flatnonzero(usable)
        lp, lc, lr = [tp[i] for i in u], [tc[i] for i in u], [tr[i] for i in u]
        prompt_hashes = np.zeros(n, dtype=np.uint64)

        def scatter(values: np.ndarray) -> np.ndarray:
            mask = np.zeros(n, dtype=bool)
            mask[u[values]] = True
            return mask

        if len(u):
            flags = _text_flags((lp, lc, lr), check_prompt=ds_explicit or ds == 3)
            self._hit("empty_field", scatter(flags["empty"]), start, hits)
            self._hit("control_chars", scatter(flags["control"]), start, hits)
            self._hit("invalid_utf8", scatter(flags["surrogate"]), start, hits)
            for j in np.flatnonzero(flags["surrogate"]):  # keep the text writable: U+FFFD for each bad byte
                i = u[j]
                tp[i], tc[i], tr[i] = (_SURROGATE.sub("\ufffd", t) for t in (tp[i], tc[i], tr[i]))
                lp[j], lc[j], lr[j] = tp[i], tc[i], tr[i]
                if i in conversations:
                    conversations[i] = tuple(
                        [{**m, "content": _SURROGATE.sub("\ufffd", m["content"])} for m in part]
                        for part in conversations[i]
                    )

            exact, identical = _identical(lc, lr)
            self.identical["exact"] += int(exact.sum())
            self.identical["whitespace_only"] += int((identical & ~exact).sum())
            self._hit("identical_pair", scatter(identical), start, hits)

            hp = _col_hash(lp)
            prompt_hashes[u] = hp
            if self.level["duplicate_pair"] != "off" or self.level["contradiction"] != "off":
                hc, hr = _col_hash(lc), _col_hash(lr)
                self._pairs(_combine(hp, hc, hr), _combine(hp, hr, hc), u, start, exact, scatter, hits)
            if "split" in cols and self.level["split_leakage"] != "off":
                self._split_leakage(cols["split"], hp, u, start)

        rc, rr = cfg.rating_columns
        if rc in cols and rr in cols:
            self._ratings(cols[rc], cols[rr], same, start, hits)

        row_errors = np.zeros(n, dtype=bool)
        for check, mask in hits.items():
            if self.level[check] == "error" and check not in DATASET_CHECKS:
                row_errors |= mask
        row_errors |= ~usable  # a row without text always fails something above; never keep it

        if self.tokenizer is not None:
            measure = np.flatnonzero(usable & ~row_errors)
            lengths = self._token_lengths(measure, tp, tc, tr, conversations)
            too_long = np.zeros(n, dtype=bool)
            longest = lengths.max(axis=1) if len(lengths) else np.zeros(0, dtype=np.int64)
            too_long[measure[longest > cfg.max_length]] = True
            self.tokens["measured"] += len(measure)
            self.tokens["sum"] += int(longest.sum())
            self.tokens["longest"] = max(self.tokens["longest"], int(longest.max()) if len(longest) else 0)
            self._hit("too_long", too_long, start, hits)
            if self.level["too_long"] == "error":
                row_errors |= too_long
            bias_rows, bias_lengths = measure, lengths
        else:
            bias_rows = np.flatnonzero(usable & ~row_errors)
            bias_lengths = np.column_stack(
                [
                    np.fromiter((len(tc[i]) for i in bias_rows), dtype=np.int64, count=len(bias_rows)),
                    np.fromiter((len(tr[i]) for i in bias_rows), dtype=np.int64, count=len(bias_rows)),
                ]
            ).reshape(-1, 2)
        keep = ~row_errors[bias_rows]
        self._length_bias(bias_rows[keep], bias_lengths[keep], start)

        for check, mask in hits.items():
            tally = self.tally[check]
            tally.count += int(mask.sum())
            room = self.config.example_rows - len(tally.examples)
            if room > 0:
                tally.examples.extend(int(start + i) for i in np.flatnonzero(mask)[:room])

        reasons: dict[int, list[str]] = {int(i): [] for i in np.flatnonzero(row_errors)}
        for check in CHECKS:
            if check in hits and self.level[check] == "error" and check not in DATASET_CHECKS:
                for i in np.flatnonzero(hits[check] & row_errors):
                    reasons[int(i)].append(check)
        for r in reasons.values():
            if not r:  # unreachable by construction; never lose a row silently
                r.append("wrong_type")
        self.valid += int(n - row_errors.sum())
        self.quarantined += int(row_errors.sum())
        return ChunkResult(~row_errors, reasons, (tp, tc, tr), prompt_hashes)

    def _pairs(self, forward, backward, u, start, exact, scatter, hits) -> None:
        rows = (start + u).astype(np.int64)
        earlier = self.pairs.lookup(forward)
        keys, first = np.unique(forward, return_index=True)
        first_here = first[np.searchsorted(keys, forward)]
        positions = np.arange(len(u))
        duplicate = (earlier >= 0) | (first_here < positions)
        if self.level["duplicate_pair"] != "off":
            self._hit("duplicate_pair", scatter(duplicate), start, hits)
            of = np.where(earlier >= 0, earlier, rows[first_here])
            detail = self.tally["duplicate_pair"].detail.setdefault("first_seen", [])
            for j in np.flatnonzero(duplicate)[: max(self.config.example_rows - len(detail), 0)]:
                detail.append([int(rows[j]), int(of[j])])
        if self.level["contradiction"] != "off":
            reverse_before = self.pairs.lookup(backward)
            pos = np.searchsorted(keys, backward).clip(max=len(keys) - 1)
            here = (keys[pos] == backward) & (first[pos] < positions)
            contradiction = ((reverse_before >= 0) | here) & ~exact
            self._hit("contradiction", scatter(contradiction), start, hits)
            of = np.where(reverse_before >= 0, reverse_before, rows[first[pos]])
            detail = self.tally["contradiction"].detail.setdefault("reverses", [])
            for j in np.flatnonzero(contradiction)[: max(self.config.example_rows - len(detail), 0)]:
                detail.append([int(rows[j]), int(of[j])])
        new = earlier[first] < 0
        self.pairs.add(keys[new], rows[first[new]])

    def _split_leakage(self, split_values: list, hashes: np.ndarray, u: np.ndarray, start: int) -> None:
        labels = np.array([str(split_values[i]) for i in u], dtype=object)
        for label in pd.unique(labels):
            mine = labels == label
            h, rows = hashes[mine], (start + u[mine]).astype(np.int64)
            leaked = np.zeros(len(h), dtype=bool)
            for other, index in self.split_prompts.items():
                if other != label:
                    leaked |= index.lookup(h) >= 0
            index = self.split_prompts.setdefault(label, _HashIndex())
            keys, first = np.unique(h, return_index=True)
            new = index.lookup(keys) < 0
            index.add(keys[new], rows[first[new]])
            if leaked.any():
                tally = self.tally["split_leakage"]
                tally.count += int(leaked.sum())
                room = self.config.example_rows - len(tally.examples)
                tally.examples.extend(int(r) for r in rows[leaked][: max(room, 0)])
                self.leaked.append(np.unique(h[leaked]))
        # Prompts seen first under one label and later under another are caught when the later one comes.

    def _ratings(self, chosen: list, rejected: list, same: np.ndarray, start: int, hits) -> None:
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
            is_null = np.fromiter((_is_null(v) for v in values), dtype=bool, count=n)
            is_bool = np.fromiter((isinstance(v, bool) for v in values), dtype=bool, count=n)
            series = pd.Series([None if (a or b) else v for v, a, b in zip(values, is_null, is_bool)], dtype=object)
            numeric = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            null |= is_null
            wrong |= ~is_null & (np.isnan(numeric) | is_bool)
            nums.append(numeric)
        null &= same
        wrong &= same & ~null
        self._hit("null_field", null, start, hits)
        self._hit("wrong_type", wrong, start, hits)
        margin = nums[0] - nums[1]
        ok = same & ~null & ~wrong & np.isfinite(margin)
        tie = ok & np.isclose(margin, 0.0, atol=1e-12)
        low = ok & ~tie & (margin < self.config.min_rating_margin)
        self._hit("rating_tie", tie, start, hits)
        self._hit("low_margin", low, start, hits)
        self.ratings["rows"] += int(ok.sum())
        self.ratings["sum_margin"] += float(margin[ok].sum())

    def _token_lengths(self, rows: np.ndarray, tp, tc, tr, conversations) -> np.ndarray:
        """Tokens of prompt+chosen and prompt+rejected after the chat template, per row: shape (len(rows), 2)."""
        if not len(rows):
            return np.zeros((0, 2), dtype=np.int64)
        convs = []
        for i in rows:
            if i in conversations:
                p, c, r = conversations[i]
                convs += [p + c, p + r]
            else:
                user = {"role": "user", "content": tp[i]}
                convs += [
                    [user, {"role": "assistant", "content": tc[i]}],
                    [user, {"role": "assistant", "content": tr[i]}],
                ]
        texts = self.tokenizer.apply_chat_template(convs, tokenize=False)
        backend = getattr(self.tokenizer, "backend_tokenizer", None)  # a fast tokenizer: skip the Python wrapper
        if backend is not None:
            encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
            counts = (len(e.ids) for e in encode(texts, add_special_tokens=False))
        else:
            counts = (len(x) for x in self.tokenizer(texts, add_special_tokens=False)["input_ids"])
        return np.fromiter(counts, dtype=np.int64, count=len(texts)).reshape(-1, 2)

    def _length_bias(self, rows: np.ndarray, lengths: np.ndarray, start: int) -> None:
        if not len(rows) or self.level["length_bias"] == "off":
            return
        chosen_longer = lengths[:, 0] > lengths[:, 1]
        b = self.bias
        b["pairs"] += len(rows)
        b["chosen_longer"] += int(chosen_longer.sum())
        b["rejected_longer"] += int((lengths[:, 0] < lengths[:, 1]).sum())
        b["sum_chosen"] += float(lengths[:, 0].sum())
        b["sum_rejected"] += float(lengths[:, 1].sum())
        examples = b.setdefault("examples", [])
        room = self.config.example_rows - len(examples)
        if room > 0:
            examples.extend(int(start + r) for r in rows[chosen_longer][:room])

    def report(self) -> dict:
        cfg = self.config
        checks = {}
        b = self.bias
        decided = b["chosen_longer"] + b["rejected_longer"]
        share = b["chosen_longer"] / decided if decided else None
        z = (b["chosen_longer"] - decided / 2) / math.sqrt(decided / 4) if decided else None
        bias_fires = share is not None and share > cfg.length_bias_threshold and z is not None and z > 2.0
        bias_detail = {
            "unit": "tokens" if self.tokenizer is not None else "characters",
            "pairs": b["pairs"],
            "chosen_longer": b["chosen_longer"],
            "rejected_longer": b["rejected_longer"],
            "chosen_longer_fraction": round(share, 4) if share is not None else None,
            "sign_test_z": round(z, 2) if z is not None else None,
            "mean_chosen_length": round(b["sum_chosen"] / b["pairs"], 1) if b["pairs"] else None,
            "mean_rejected_length": round(b["sum_rejected"] / b["pairs"], 1) if b["pairs"] else None,
            "threshold": cfg.length_bias_threshold,
        }
        if bias_fires:
            self.tally["length_bias"] = _Tally(b["chosen_longer"], b.get("examples", []))
        self.tally["length_bias"].detail = bias_detail
        self.tally["identical_pair"].detail = dict(self.identical)
        if self.extra:
            self.tally["extra_columns"].detail = {"columns": list(self.extra)}
        if self.leaked:
            self.tally["split_leakage"].detail = {
                "leaked_prompts": int(len(np.unique(np.concatenate(self.leaked)))),
                "splits": sorted(self.split_prompts),
            }
        if self.tally["mixed_format"].count:
            self.tally["mixed_format"].detail = {FORMATS[i]: c for i, c in enumerate(self.format_counts) if c}
        for check, description in CHECKS.items():
            t = self.tally[check]
            item = {
                "level": self.level[check],
                "description": description,
                "count": t.count,
                "example_rows": t.examples,
            }
            if t.detail:
                item["detail"] = t.detail
            if check == "too_long" and self.tokenizer is None and self.level[check] != "off":
                item["skipped"] = "no tokenizer (token lengths not measured)"
            checks[check] = item

        rejected_fraction = self.quarantined / self.rows if self.rows else 0.0
        failures, warnings = [], []
        if self.valid < cfg.min_pairs:
            failures.append(f"{self.valid} valid pairs < validation.min_pairs={cfg.min_pairs}")
        if rejected_fraction > cfg.max_rejected_fraction:
            top = sorted(
                (c for c in CHECKS if checks[c]["count"] and self.level[c] == "error" and c not in DATASET_CHECKS),
                key=lambda c: -checks[c]["count"],
            )[:3]
            failures.append(
                f"rejected fraction {rejected_fraction:.3f} > validation.max_rejected_fraction="
                f"{cfg.max_rejected_fraction} (" + ", ".join(_describe(c, checks[c]) for c in top) + ")"
            )
        for check, item in checks.items():
            if not item["count"]:
                continue
            if item["level"] == "error" and check in (*DATASET_CHECKS, *GATE_ROW_CHECKS):
                failures.append(_describe(check, item, self))
            elif item["level"] == "warning":
                warnings.append(_describe(check, item, self))
        if self.rows and not any(c in self.columns for c in ("chosen", "rejected")):
            failures.append(
                "no chosen/rejected columns at all (columns found: " + ", ".join(list(self.columns)[:10]) + ")"
            )

        tokens = {
            "measured": self.tokens["measured"],
            "max_length": cfg.max_length,
            "longest": self.tokens["longest"] if self.tokens["measured"] else None,
            "mean": round(self.tokens["sum"] / self.tokens["measured"], 1) if self.tokens["measured"] else None,
            "too_long": checks["too_long"]["count"],
            "truncated_fraction": round(checks["too_long"]["count"] / self.tokens["measured"], 4)
            if self.tokens["measured"]
            else None,
        }
        rc, rr = cfg.rating_columns
        return {
            "schema_version": REPORT_VERSION,
            "format": FORMATS[self.format] if self.format is not None else None,
            "columns": list(self.columns),
            "rows": self.rows,
            "valid": self.valid,
            "quarantined": self.quarantined,
            "valid_fraction": round(self.valid / self.rows, 4) if self.rows else 0.0,
            "rejected_fraction": round(rejected_fraction, 4),
            "checks": checks,
            "tokens": tokens,
            "ratings": {
                "columns": [rc, rr] if rc in self.columns and rr in self.columns else None,
                "rows": self.ratings["rows"],
                "mean_margin": round(self.ratings["sum_margin"] / self.ratings["rows"], 4)
                if self.ratings["rows"]
                else None,
                "min_rating_margin": cfg.min_rating_margin,
            },
            "gate": {
                "passed": not failures,
                "failures": failures,
                "warnings": warnings,
                "min_pairs": cfg.min_pairs,
                "max_rejected_fraction": cfg.max_rejected_fraction,
            },
        }


def _describe(check: str, item: dict, validator: Validator | None = None) -> str:
    rows = ", ".join(str(r) for r in item["example_rows"])
    more = f" (rows {rows}{', ...' if item['count'] > len(item['example_rows']) else ''})" if rows else ""
    detail = item.get("detail") or {}
    if check == "mixed_format" and validator is not None and validator.format is not None:
        return (
            f"mixed_format: {item['count']} rows differ from the dataset's format "
            f"{FORMATS[validator.format]} ({', '.join(f'{k}: {v}' for k, v in detail.items())}){more}"
        )
    if check == "length_bias":
        return (
            f"length_bias: chosen is longer in {detail['chosen_longer_fraction']:.0%} of pairs "
            f"(sign test z={detail['sign_test_z']}, threshold {detail['threshold']})"
        )
    if check == "extra_columns":
        return f"extra_columns: {', '.join(detail.get('columns', []))} in {item['count']} rows"
    if check == "split_leakage":
        return f"split_leakage: {detail.get('leaked_prompts', '?')} prompts in more than one split{more}"
    return f"{check}: {item['count']} rows{more}"


# --- outputs ---------------------------------------------------------------------------------------


def _json_safe(value: object) -> object:
    if value is MISSING:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.ndarray):
        return [_json_safe(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _dumps(obj: dict) -> str:
    try:
        line = json.dumps(obj, ensure_ascii=False, default=str)
        line.encode("utf-8")
        return line
    except UnicodeEncodeError:  # lone surrogates (invalid UTF-8 input): escape them
        return json.dumps(obj, ensure_ascii=True, default=str)


class Outputs:
    """Quarantine (JSON lines) and the train/test split (parquet), written chunk by chunk."""

    def __init__(self, out_dir: Path, config: ValidationConfig, split: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.split = split
        self.quarantine_path = self.out_dir / "quarantine.jsonl"
        self._quarantine = open(self.out_dir / "quarantine.jsonl.tmp", "w", encoding="utf-8")  # noqa: SIM115
        self._writers: dict[str, object] = {}
        self._schema = None
        self.counts = {"train": 0, "test": 0}
        self._prompts = {"train": _HashIndex(), "test": _HashIndex()}
        self.leaked_prompts = 0

    def write(self, chunk: Chunk, result: ChunkResult, start: int) -> None:
        cols = chunk.columns
        lines = []
        for i, reasons in sorted(result.reasons.items()):
            record = {k: _json_safe(v[i]) for k, v in cols.items() if v[i] is not MISSING}
            entry = {"row": start + i}
            if chunk.lines is not None:
                entry["line"] = chunk.lines[i]
            entry.update({"reasons": reasons, "record": record})
            lines.append(_dumps(entry))
        if lines:
            self._quarantine.write("\n".join(lines) + "\n")
        if self.split:
            self._write_split(chunk, result, start)

    def _write_split(self, chunk: Chunk, result: ChunkResult, start: int) -> None:
        import pyarrow as pa

        keep = np.flatnonzero(result.valid)
        if not len(keep):
            return
        tp, tc, tr = result.texts
        prompts = [tp[i] for i in keep]
        data = {
            "prompt": prompts,
            "chosen": [tc[i] for i in keep],
            "rejected": [tr[i] for i in keep],
        }
        extras = [k for k in chunk.columns if k not in REQUIRED]
        if self._schema is None:
            fields = [pa.field(k, pa.string()) for k in REQUIRED]
            for k in extras:
                try:
                    kind = pa.array([_json_safe(chunk.columns[k][i]) for i in keep]).type
                except (pa.ArrowException, ValueError, TypeError, OverflowError, UnicodeError):
                    kind = pa.string()
                if pa.types.is_null(kind) or pa.types.is_nested(kind):
                    kind = pa.string()
                fields.append(pa.field(k, kind))
            fields.append(pa.field("source_row", pa.int64()))
            self._schema = pa.schema(fields)
        arrays = [pa.array(data[k], type=pa.string()) for k in REQUIRED]
        for f in self._schema:
            if f.name in REQUIRED or f.name == "source_row":
                continue
            column = chunk.columns.get(f.name)
            values = [None] * len(keep) if column is None else [column[i] for i in keep]
            try:
                arrays.append(pa.array([None if v is MISSING else v for v in values], type=f.type, from_pandas=True))
            except (pa.ArrowException, ValueError, TypeError, OverflowError, UnicodeError):
                values = [_json_safe(v) for v in values]
                if pa.types.is_string(f.type):
                    values = [v if v is None or isinstance(v, str) else json.dumps(v, default=str) for v in values]
                    arrays.append(pa.array(values, type=f.type))
                else:
                    arrays.append(pa.nulls(len(keep), type=f.type))
        arrays.append(pa.array((start + keep).astype(np.int64)))
        table = pa.Table.from_arrays(arrays, schema=self._schema)
        hashes = result.prompt_hashes[keep]
        is_test = _buckets_from_hashes(hashes, self.config.split_seed) < self.config.test_size
        for side, mask in (("train", ~is_test), ("test", is_test)):
            if not mask.any():
                continue
            other = "test" if side == "train" else "train"
            self.leaked_prompts += int((self._prompts[other].lookup(hashes[mask]) >= 0).sum())
            keys, first = np.unique(hashes[mask], return_index=True)
            new = self._prompts[side].lookup(keys) < 0
            self._prompts[side].add(keys[new], first[new].astype(np.int64))
            self._writer(side).write_table(table.filter(pa.array(mask)))
            self.counts[side] += int(mask.sum())

    def _writer(self, side: str):
        import pyarrow.parquet as pq

        if side not in self._writers:
            self._writers[side] = pq.ParquetWriter(self.out_dir / f"{side}.parquet.tmp", self._schema)
        return self._writers[side]

    def close(self, keep_split: bool) -> dict[str, Path]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._quarantine.close()
        os.replace(self.out_dir / "quarantine.jsonl.tmp", self.quarantine_path)
        paths = {"quarantine": self.quarantine_path}
        for side in ("train", "test"):
            tmp, final = self.out_dir / f"{side}.parquet.tmp", self.out_dir / f"{side}.parquet"
            if side in self._writers:
                self._writers[side].close()
            if self.split and keep_split:
                if not tmp.exists():  # no rows on this side: an empty file with the right columns
                    schema = self._schema or pa.schema([pa.field(k, pa.string()) for k in REQUIRED])
                    pq.write_table(schema.empty_table(), tmp)
                os.replace(tmp, final)
                paths[side] = final
            else:
                tmp.unlink(missing_ok=True)
                final.unlink(missing_ok=True)
        return paths

    def abort(self) -> None:
        self._quarantine.close()
        for writer in self._writers.values():
            with contextlib.suppress(Exception):  # best effort cleanup of partial files
                writer.close()
        for name in ("quarantine.jsonl.tmp", "train.parquet.tmp", "test.parquet.tmp"):
            (self.out_dir / name).unlink(missing_ok=True)

    def split_summary(self) -> dict:
        return {
            "train": self.counts["train"],
            "test": self.counts["test"],
            "train_prompts": len(self._prompts["train"]),
            "test_prompts": len(self._prompts["test"]),
            "leaked_prompts": self.leaked_prompts,
            "seed": self.config.split_seed,
            "test_size": self.config.test_size,
        }


def validate_file(
    path: str | Path, config: ValidationConfig, out_dir: str | Path, tokenizer=None, *, split: bool = True
) -> dict:
    """Check a dataset file chunk by chunk; write quarantine, report, summary and (gate passed) the split.

    Raises DatasetError when the file cannot be read; returns the report (with `files`).
    """
    started = time.perf_counter()
    path, out_dir = Path(path), Path(out_dir)
    kind = check_readable(path)
    validator = Validator(config, tokenizer, detect_format(iter_chunks(path, config.chunk_rows)))
    outputs = Outputs(out_dir, config, split)
    try:
        for chunk in iter_chunks(path, config.chunk_rows):
            start = validator.rows
            outputs.write(chunk, validator.feed(chunk), start)
        if validator.rows == 0:
            raise DatasetError(f"{path}: no rows (the file holds no records)")
    except BaseException:
        outputs.abort()
        raise
    report = validator.report()
    report["source"] = {"path": str(path), "type": kind, "bytes": path.stat().st_size}
    paths = outputs.close(report["gate"]["passed"])
    if split and report["gate"]["passed"]:
        report["split"] = outputs.split_summary()
        if report["split"]["leaked_prompts"]:
            raise AssertionError(f"split leaked {report['split']['leaked_prompts']} prompts (a bug: it is by prompt)")
    report["seconds"] = round(time.perf_counter() - started, 3)
    report["rows_per_second"] = round(validator.rows / max(report["seconds"], 1e-9))
    paths["report"] = out_dir / "report.json"
    paths["summary"] = out_dir / "summary.md"
    report["files"] = {k: str(v) for k, v in paths.items()}
    paths["summary"].write_text(summary_markdown(report), encoding="utf-8")
    paths["report"].write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def validate_pairs(
    df: pd.DataFrame, config: ValidationConfig, tokenizer=None
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """In memory: (valid rows as given, quarantined rows with `row` and `reasons`, report). Writes nothing."""
    step = max(config.chunk_rows, 1)

    def chunks() -> Iterator[Chunk]:
        for start in range(0, len(df), step):
            part = df.iloc[start : start + step]
            yield Chunk({str(c): part[c].tolist() for c in part.columns}, len(part))

    validator = Validator(config, tokenizer, detect_format(chunks()))
    valid = np.zeros(len(df), dtype=bool)
    reasons: dict[int, list[str]] = {}
    for start, chunk in zip(range(0, len(df), step), chunks(), strict=True):
        result = validator.feed(chunk)
        valid[start : start + chunk.n] = result.valid
        reasons.update({start + i: r for i, r in result.reasons.items()})
    quarantined = df[~valid].copy()
    quarantined.insert(0, "row", np.flatnonzero(~valid))
    quarantined["reasons"] = [reasons[i] for i in np.flatnonzero(~valid)]
    return df[valid].reset_index(drop=True), quarantined.reset_index(drop=True), validator.report()


def split_by_prompt(df: pd.DataFrame, test_size: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deterministic split grouped by prompt: a prompt's pairs all land on one side (as validate_file does)."""
    is_test = prompt_buckets(df["prompt"].tolist(), seed) < test_size
    return df[~is_test].reset_index(drop=True), df[is_test].reset_index(drop=True)


def summary_markdown(report: dict) -> str:
    """A short human summary of a report (Prefect artifact, MLflow, the CLI's --report neighbour)."""
    gate = report["gate"]
    lines = [
        f"## Validation: {report['valid']}/{report['rows']} pairs valid, gate "
        + ("passed" if gate["passed"] else "**FAILED**"),
        "",
        f"Format `{report['format']}`; rejected {report['rejected_fraction']:.1%} "
        f"(max {gate['max_rejected_fraction']:.0%}); minimum pairs {gate['min_pairs']}.",
        "",
    ]
    fired = [(k, v) for k, v in report["checks"].items() if v["count"]]
    if fired:
        lines += ["| check | level | count | example rows |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['level']} | {v['count']} | {v['example_rows']} |" for k, v in fired]
        lines.append("")
    else:
        lines += ["No check found anything.", ""]
    for title, items in (("Gate failures", gate["failures"]), ("Warnings", gate["warnings"])):
        if items:
            lines += [f"**{title}**", *(f"- {x}" for x in items), ""]
    tokens = report["tokens"]
    if tokens["measured"]:
        lines.append(
            f"Tokens (chat template): longest {tokens['longest']}, mean {tokens['mean']}, "
            f"{tokens['truncated_fraction']:.1%} over max_length={tokens['max_length']}."
        )
    bias = report["checks"]["length_bias"].get("detail") or {}
    if bias.get("chosen_longer_fraction") is not None:
        lines.append(
            f"Length: chosen longer in {bias['chosen_longer_fraction']:.0%} of pairs "
            f"(z={bias['sign_test_z']}, {bias['unit']})."
        )
    if "split" in report:
        s = report["split"]
        lines.append(
            f"Split: {s['train']} train / {s['test']} test pairs, {s['leaked_prompts']} prompts on both sides."
        )
    return "\n".join(lines).rstrip() + "\n"
