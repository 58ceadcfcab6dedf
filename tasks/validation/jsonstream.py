"""An incremental parser for one big JSON array: its items one at a time, with their line numbers.

json.load would hold the whole file (and every row) in memory; this reads BLOCK characters at a
time and decodes one item at a time, so memory is bounded by the largest item. The caller owns
the file and the messages' file name: errors are JSONStreamError with the line where known.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TextIO

BLOCK = 2**20  # characters read at a time
_SPACE = " \t\r\n\ufeff"


class JSONStreamError(ValueError):
    """The text is not one well-formed JSON array; `line` (1-based) is where, when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def iter_array(handle: TextIO, max_item_chars: int) -> Iterator[tuple[object, int]]:
    """(item, line where the item starts) for each item of the JSON array in `handle`."""
    decoder = json.JSONDecoder()
    buf, pos, line, eof, item = "", 0, 1, False, 0

    def fill() -> bool:
        nonlocal buf, pos, line, eof
        if eof:
            return False
        if pos:  # drop what was consumed, counting its lines
            line += buf.count("\n", 0, pos)
            buf, pos = buf[pos:], 0
        more = handle.read(BLOCK)
        eof = not more
        buf += more
        return bool(more)

    def skip_ws() -> str:
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in _SPACE:
                pos += 1
            if pos < len(buf):
                return buf[pos]
            if not fill():
                return ""

    def here() -> int:
        return line + buf.count("\n", 0, pos)

    if skip_ws() != "[":
        raise JSONStreamError("not a JSON array")
    pos += 1
    if skip_ws() == "]":
        return
    while True:
        ch = skip_ws()
        if not ch:
            raise JSONStreamError("unexpected end of file (the JSON array is not closed)", here())
        while True:  # decode the item, reading more until it is complete (or too large)
            try:
                obj, end = decoder.raw_decode(buf, pos)
                break
            except json.JSONDecodeError as exc:
                error_line = line + exc.lineno - 1  # exc counts lines from the buffer's start
                if len(buf) - pos > max_item_chars:
                    raise JSONStreamError(f"item {item} larger than {max_item_chars // 2**20} MiB", here()) from None
                if not fill():
                    raise JSONStreamError(
                        f"malformed JSON in item {item} ({exc.msg} at column {exc.colno})", error_line
                    ) from None
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
                raise JSONStreamError("unexpected data after the end of the JSON array", here())
            return
        if not ch:
            raise JSONStreamError("unexpected end of file (the JSON array is not closed)", here())
        raise JSONStreamError(f"expected ',' or ']' after item {item - 1}, got {ch!r}", here())
