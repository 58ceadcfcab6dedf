"""Reading a preference dataset in chunks: JSON lines, a JSON array, parquet or CSV (gzipped or not).

Each reader yields Chunks of at most `chunk_rows` rows, so memory is bounded by the chunk, not
the file. Anything that cannot be read as a dataset is a DatasetError whose message names the
file (and the line, for JSON): the CLI prints it and exits 2, the flow stops before training.
JSON lines, JSON and CSV may be gzip-compressed (`.jsonl.gz`, as the Hub serves many datasets):
they are decompressed as they are read, never onto disk.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from alignflow.tasks.runtime.hf_datasets import DATA_SUFFIXES
from alignflow.tasks.validation.jsonstream import JSONStreamError, iter_array

REQUIRED = ("prompt", "chosen", "rejected")
SUFFIXES = DATA_SUFFIXES
GZIP_MAGIC = b"\x1f\x8b"
MAX_LINE_BYTES = 64 * 2**20  # one JSON line (or JSON array item) larger than this is refused, memory stays bounded


class DatasetError(ValueError):
    """The input cannot be read as a preference dataset; the message names the file (and line)."""


class DatasetNotFound(DatasetError, FileNotFoundError):
    pass


class _Missing:
    """A key the row does not have (distinct from an explicit null)."""

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        return "MISSING"  # unpickled as this module's one MISSING: rows are tested with `is MISSING`


MISSING = _Missing()


@dataclass
class Chunk:
    """Rows `start`.. of the input: column -> values (MISSING where a row lacks the key)."""

    columns: dict[str, list]
    n: int
    lines: list[int] | None = None  # 1-based line numbers (JSON lines / JSON array)


def check_readable(path: str | Path) -> str:
    """The reader kind for `path` (jsonl, json, parquet, csv; gzipped or not), or a DatasetError saying why not."""
    path = Path(path)
    named_gzip = path.suffix.lower() == ".gz"
    inner = Path(path.stem).suffix.lower() if named_gzip else path.suffix.lower()
    kind = SUFFIXES.get(inner)
    if not path.exists():
        raise DatasetNotFound(f"{path}: no such file")
    if path.is_dir():
        raise DatasetError(f"{path}: is a directory, not a dataset file")
    if kind is None or (named_gzip and kind == "parquet"):
        shown = "".join(path.suffixes[-2:]) if named_gzip else path.suffix
        raise DatasetError(
            f"{path}: unsupported file type {shown or '(no suffix)'!r}; use .jsonl, .json, .parquet or .csv "
            "(the text ones may be gzipped: .jsonl.gz, .json.gz, .csv.gz)"
        )
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: the file is empty (0 bytes)")
    if named_gzip and head != GZIP_MAGIC:
        raise DatasetError(f"{path}: named .gz but not gzip-compressed (rename it without .gz)")
    if kind == "parquet" and head == GZIP_MAGIC:
        raise DatasetError(f"{path}: a gzip-compressed file named .parquet (parquet compresses itself: gunzip it)")
    if head == GZIP_MAGIC and not named_gzip:  # compressed data is read only when the name says so
        where = f"{path}:1: malformed JSON line" if kind in ("jsonl", "json") else f"{path}: not {kind} text"
        raise DatasetError(f"{where} (the file is gzip-compressed: name it {path.name}.gz)")
    return kind


def compression(path: str | Path) -> str | None:
    """`gzip` for a file named .gz (check_readable holds that it is gzip data), else None."""
    return "gzip" if Path(path).suffix.lower() == ".gz" else None


def open_binary(path: Path) -> io.BufferedIOBase:
    """The file's bytes, decompressed on the fly when it is gzipped."""
    if compression(path) == "gzip":
        return io.BufferedReader(gzip.open(path, "rb"), buffer_size=1 << 20)  # type: ignore[arg-type]
    return open(path, "rb")  # noqa: SIM115  (the caller closes it)


def _open_text(path: Path) -> io.TextIOBase:
    return io.TextIOWrapper(open_binary(path), encoding="utf-8", errors="surrogateescape")


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
    except EOFError:
        raise DatasetError(f"{path}: the gzip stream ends early (a truncated download?)") from None
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
        if record.keys() != last:  # rows of one file mostly share their keys: compare, do not merge each
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
    with open_binary(path) as handle:
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
    with _open_text(path) as handle:
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
    with _open_text(path) as handle:
        try:
            for item, (obj, line) in enumerate(iter_array(handle, MAX_LINE_BYTES)):
                if not isinstance(obj, dict):
                    raise DatasetError(
                        f"{path}:{line}: item {item} of the JSON array is {_json_kind(obj)}, not an object"
                    )
                records.append(obj)
                lines.append(line)
                if len(records) >= chunk_rows:
                    yield _chunk_from_records(records, lines)
                    records, lines = [], []
        except JSONStreamError as exc:
            where = f"{path}:{exc.line}" if exc.line is not None else str(path)
            raise DatasetError(f"{where}: {exc}") from None
    if records:
        yield _chunk_from_records(records, lines)


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
    with open_binary(path) as handle:
        try:
            reader = pd.read_csv(
                handle,
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
