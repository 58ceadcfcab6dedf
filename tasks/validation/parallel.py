"""Chunks checked in worker processes, merged in file order: `validation.workers`.

One Python thread running every row check was the bound (BENCHMARKS.md, issue 17): each
chunk's own checks (rowchecks.py: row checks, canonical texts, hashes, token lengths) now run
in a small process pool, and this process reads, merges the cross-row state (Validator.merge)
and writes the outputs, taking the results back in chunk order, so the report, the quarantine
and the split are those of one process. At most workers + 1 chunks are in flight: memory stays
bounded by the chunk size, not the file.

The pool forks: the workers inherit the loaded tokenizer (a loader the CLI passes need not be
picklable, and a tokenizer is not loaded or imported again per worker) and start in
milliseconds. Where fork is not offered (not Linux) the chunks are checked in this process.
Files under MIN_ROWS rows are checked in this process too: a pool would cost more than it saves.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np

from alignflow.tasks.validation.readers import REQUIRED, Chunk
from alignflow.tasks.validation.rowchecks import ChunkChecks, Settings, check_chunk
from alignflow.tasks.validation.tokens import TokenCounter

if TYPE_CHECKING:
    from alignflow.tasks.validation.validator import ChunkResult, Validator

MIN_ROWS = 30_000  # below this many rows in the file, no pool (module-level so tests can lower it)
MAX_AUTO_WORKERS = 3  # the merge, reading and writing in this process bound the speed-up beyond this

_worker: dict[str, Any] = {}  # in a worker: its settings and TokenCounter, set once by _start


def resolve_workers(workers: int | str) -> int:
    """`auto`: one per CPU this process may use, at most MAX_AUTO_WORKERS; 1 where fork is missing."""
    if sys.platform != "linux" or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    if workers == "auto":
        return max(1, min(len(os.sched_getaffinity(0)), MAX_AUTO_WORKERS))
    return max(1, int(workers))


def validate_chunks(
    validator: Validator, chunks: Iterable[tuple[Chunk, Chunk]], workers: int | str = 1
) -> Iterator[tuple[int, Chunk, Chunk, ChunkResult]]:
    """(first row, chunk as read, chunk as checked, result) for each (as read, as checked) pair, in order.

    With more than one worker, and a file of at least MIN_ROWS rows (the first chunks are held
    until that many are read, or the file ends), the chunks' own checks run in worker processes."""
    count = resolve_workers(workers)
    pending = iter(chunks)
    head: list[tuple[Chunk, Chunk]] = []
    rows = 0
    # The format must be known before chunks are checked apart (detected from the first rows).
    if count > 1 and validator.format is not None:
        for pair in pending:
            head.append(pair)
            rows += pair[1].n
            if rows >= MIN_ROWS:
                break
    if rows < MIN_ROWS:
        for raw, chunk in chain(head, pending):
            start = validator.rows
            yield start, raw, chunk, validator.feed(chunk)
        return
    tokenizer = validator.loaded_tokenizer() if validator.settings.tokens else None
    context = multiprocessing.get_context("fork")
    # The workers fork from this process (with a flow's or a tokenizer's imports): frozen, its objects
    # are left out of the workers' garbage collections, which would otherwise copy the pages they touch.
    pool = ProcessPoolExecutor(count, mp_context=context, initializer=_start, initargs=(validator.settings, tokenizer))
    gc.freeze()
    try:
        pool.submit(int)  # with fork, the first task forks every worker, before it returns
    finally:
        gc.unfreeze()
    with pool:
        try:
            cfg = validator.config
            unread = set(cfg.allowed_columns) - {*REQUIRED, *cfg.rating_columns}  # no check reads these
            in_order = _in_order(pool, chain(head, pending), validator.format, count + 1, unread)
            for raw, chunk, checks in in_order:
                start = validator.rows
                yield start, raw, chunk, validator.merge(chunk, checks)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _in_order(
    pool: ProcessPoolExecutor,
    chunks: Iterator[tuple[Chunk, Chunk]],
    dataset_format: int,
    depth: int,
    unread: set[str],
) -> Iterator[tuple[Chunk, Chunk, ChunkChecks]]:
    """Each chunk's checks from the pool, in submission order, with at most `depth` in flight."""
    flight: deque[tuple[Chunk, Chunk, Future]] = deque()

    def done() -> tuple[Chunk, Chunk, ChunkChecks]:
        raw, chunk, future = flight.popleft()
        checks = future.result()
        checks.columns = list(chunk.columns)
        checks.texts = _unpack(checks.texts, chunk, checks.usable)
        return raw, chunk, checks

    for raw, chunk in chunks:
        # Pickling is this process's CPU: only the columns a check reads travel (no line numbers, no
        # allowed columns such as prompt_id or split, which the merge and the writers read here).
        sent = Chunk({k: v for k, v in chunk.columns.items() if k not in unread}, chunk.n)
        flight.append((raw, chunk, pool.submit(_check, sent, dataset_format)))
        if len(flight) > depth:
            yield done()
    while flight:
        yield done()


def _start(settings: Settings, tokenizer: Any) -> None:
    _worker["settings"] = settings
    _worker["counter"] = TokenCounter(tokenizer) if tokenizer is not None else None


def _check(chunk: Chunk, dataset_format: int) -> ChunkChecks:
    counter = _worker["counter"]
    checks = check_chunk(chunk, _worker["settings"], dataset_format, (lambda: counter) if counter is not None else None)
    checks.texts = _pack(checks.texts, chunk, checks.usable)
    return checks


# The canonical texts are mostly the very strings read (standard format): rather than send them
# back, a worker sends the rows where they are not (U+FFFD replacements, conversations), or the
# whole list where most are.
def _pack(texts: tuple[list, list, list], chunk: Chunk, usable: np.ndarray) -> tuple:
    ok = usable.tolist()
    packed = []
    for name, text in zip(REQUIRED, texts, strict=True):
        column = chunk.columns.get(name)
        if column is None:
            packed.append(text)
            continue
        diff = {i: t for i, (t, v, u) in enumerate(zip(text, column, ok, strict=True)) if t is not (v if u else None)}
        packed.append(diff if len(diff) <= len(text) // 4 else text)
    return tuple(packed)


def _unpack(packed: tuple, chunk: Chunk, usable: np.ndarray) -> tuple[list, list, list]:
    ok = usable.tolist()
    texts = []
    for name, part in zip(REQUIRED, packed, strict=True):
        if isinstance(part, dict):
            text = [v if u else None for v, u in zip(chunk.columns[name], ok, strict=True)]
            for i, t in part.items():
                text[i] = t
            part = text
        texts.append(part)
    return tuple(texts)  # type: ignore[return-value]
