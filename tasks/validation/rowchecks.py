"""The checks one chunk decides alone: a function of the chunk and the settings, nothing else.

Nothing here reads another chunk, so chunks can be checked in any process in any order
(parallel.py); what needs the rows before (duplicates, contradictions, split leakage, the
tallies and example rows) is the Validator's merge, in file order. Token lengths are measured
for every row no row check of its own chunk rejects; the merge keeps those of the rows that
survive the cross-row checks too, so the report is the same whoever measured them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from alignflow.conf.checks import DATASET_CHECKS
from alignflow.tasks.validation import fields, overlap
from alignflow.tasks.validation.fields import FORMATS, K_LIST, K_MISSING, K_NULL, K_STR, SURROGATE
from alignflow.tasks.validation.hashing import combine, hash_texts
from alignflow.tasks.validation.readers import MISSING, REQUIRED, Chunk
from alignflow.tasks.validation.tokens import TokenCounter, measure_rows

if TYPE_CHECKING:
    from alignflow.conf.validation import ValidationConfig


@dataclass(frozen=True)
class Settings:
    """What a chunk's checks read: picklable, the same in every process."""

    config: ValidationConfig
    level: dict[str, str]  # check id -> off / warning / error
    eval_prompts: frozenset[str] | None
    tokens: bool  # measure token lengths (a tokenizer is given and a token check is on)


@dataclass
class ChunkChecks:
    """One chunk's own findings; row positions are the chunk's (0..n-1)."""

    n: int
    columns: list[str]
    extra: list[str]  # unknown columns some row of the chunk has
    hits: dict[str, np.ndarray]  # check id -> bool per row
    format: int | None  # the dataset format this chunk decided (None: it was given, or no row shows one)
    format_counts: list[int]
    identical: tuple[int, int]  # exact, whitespace only
    ratings: tuple[int, float]  # rows with a margin, their sum
    texts: tuple[list, list, list]  # canonical prompt/chosen/rejected strings (None where unusable)
    conversations: dict[int, tuple]  # row -> (prompt, chosen, rejected) messages, for conversational rows
    usable: np.ndarray  # bool per row: has texts
    prompt_hashes: np.ndarray  # uint64 per row (0 where unusable)
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None  # forward, backward hashes, exact; per usable row
    measured: np.ndarray  # rows measured: usable, no error of this chunk's own checks
    lengths: np.ndarray  # (len(measured), 2): tokens, or characters without a tokenizer
    double_bos: np.ndarray | None  # per measured row; None when lengths are characters
    token_stats: dict[str, int]  # the TokenCounter's stats for this chunk (what its note counts)
    additive: bool | None  # the TokenCounter's verdict after this chunk

    def row_errors(self, level: dict[str, str]) -> np.ndarray:
        """Rows an error-level row check of this chunk rejects (every unusable row among them)."""
        errors = ~self.usable
        for check, mask in self.hits.items():
            if level[check] == "error" and check not in DATASET_CHECKS:
                errors = errors | mask
        return errors


def hit(level: dict[str, str], check: str, mask: np.ndarray, hits: dict[str, np.ndarray]) -> None:
    """Record a check's hits; a check that is off never counts."""
    if level[check] == "off" or not mask.any():
        return
    hits[check] = hits[check] | mask if check in hits else mask.copy()


@dataclass
class _Texts:
    """A chunk's canonical texts: strings for every format (what the split files hold), None where unusable."""

    tp: list
    tc: list
    tr: list
    conversations: dict[int, tuple]  # row -> (prompt messages, chosen messages, rejected messages)


def check_chunk(
    chunk: Chunk, settings: Settings, dataset_format: int | None, counter: Callable[[], TokenCounter] | None
) -> ChunkChecks:
    """The chunk's row checks, canonical texts, hashes and lengths. `dataset_format` None: the
    first row that shows one decides (returned in `format`). `counter` gives the TokenCounter
    when rows need measuring (called then, so a file with no measurable rows loads nothing)."""
    n, cfg, level, cols = chunk.n, settings.config, settings.level, chunk.columns
    hits: dict[str, np.ndarray] = {}
    extra_present = _extra_columns(cols, {*REQUIRED, *cfg.rating_columns, *cfg.allowed_columns}, n, level, hits)
    P, C, R = (cols[k] if k in cols else [MISSING] * n for k in REQUIRED)
    decided, ds, format_counts, same, fields_ok = _formats(P, C, R, dataset_format, level, hits)
    texts = _canonical_texts(P, C, R, np.flatnonzero(fields_ok), ds, n, level, hits)
    usable = np.fromiter((t is not None for t in texts.tc), dtype=bool, count=n)
    identical, prompt_hashes, pairs = _text_checks(texts, np.flatnonzero(usable), ds, n, settings, hits)
    ratings = (0, 0.0)
    rc, rr = cfg.rating_columns
    if rc in cols and rr in cols:
        ratings = _ratings(cols[rc], cols[rr], same, settings, hits)
    checks = ChunkChecks(
        n=n,
        columns=list(cols),
        extra=extra_present,
        hits=hits,
        format=decided,
        format_counts=format_counts,
        identical=identical,
        ratings=ratings,
        texts=(texts.tp, texts.tc, texts.tr),
        conversations=texts.conversations,
        usable=usable,
        prompt_hashes=prompt_hashes,
        pairs=pairs,
        measured=np.zeros(0, dtype=np.int64),
        lengths=np.zeros((0, 2), dtype=np.int64),
        double_bos=np.zeros(0, dtype=bool) if settings.tokens else None,
        token_stats={},
        additive=None,
    )
    _measure(checks, texts, settings, counter)
    return checks


def _extra_columns(cols: dict, known: set[str], n: int, level: dict[str, str], hits: dict) -> list[str]:
    """`extra_columns`: the unknown columns some row of the chunk has."""
    present_in: list[str] = []
    extra = [k for k in cols if k not in known]
    if extra:
        mask = np.zeros(n, dtype=bool)
        for k in extra:
            present = np.fromiter((v is not MISSING for v in cols[k]), dtype=bool, count=n)
            if present.any():
                present_in.append(k)
            mask |= present
        hit(level, "extra_columns", mask, hits)
    return present_in


def _formats(P: list, C: list, R: list, dataset_format: int | None, level: dict[str, str], hits: dict):
    """Each row's format against the dataset's (`mixed_format`), and its fields' types (`missing_column`,
    `null_field`, `wrong_type`): (the format this chunk decided, the dataset's, counts per format, rows of the
    dataset's format, rows whose fields have the right types)."""
    kp, kc, kr = fields.kinds(P), fields.kinds(C), fields.kinds(R)
    fmt, known_fmt = fields.formats(kp, kc, kr)
    format_counts = [0] * len(FORMATS)
    for code, count in zip(*np.unique(fmt[known_fmt], return_counts=True), strict=True):
        format_counts[int(code)] += int(count)
    decided = None
    if dataset_format is None and known_fmt.any():
        decided = dataset_format = int(fmt[np.argmax(known_fmt)])
    ds = dataset_format if dataset_format is not None else 0
    ds_conv, ds_explicit = ds in (1, 3), ds in (0, 1)
    mixed = known_fmt & (fmt != ds)
    hit(level, "mixed_format", mixed, hits)
    same = ~mixed
    want = K_LIST if ds_conv else K_STR
    fields_ok = same.copy()
    for k in ([kp] if ds_explicit else []) + [kc, kr]:
        hit(level, "missing_column", same & (k == K_MISSING), hits)
        hit(level, "null_field", same & (k == K_NULL), hits)
        hit(level, "wrong_type", same & (k != want) & (k != K_MISSING) & (k != K_NULL), hits)
        fields_ok &= k == want
    return decided, ds, format_counts, same, fields_ok


def _canonical_texts(
    P: list, C: list, R: list, ok_rows: np.ndarray, ds: int, n: int, level: dict[str, str], hits: dict
) -> _Texts:
    """Strings for every format; a conversation's structure problems are hits of their own checks."""
    texts = _Texts([None] * n, [None] * n, [None] * n, {})
    if ds == 0:
        for i in ok_rows:
            texts.tp[i], texts.tc[i], texts.tr[i] = P[i], C[i], R[i]
        return texts
    slow: dict[str, list[int]] = {}
    for i in ok_rows:
        split, msgs, reasons = fields.split_row(P[i], C[i], R[i], ds in (1, 3), ds in (0, 1))
        for reason in reasons:
            slow.setdefault(reason, []).append(i)
        if split is not None:
            texts.tp[i], texts.tc[i], texts.tr[i] = split
            if msgs is not None:
                texts.conversations[i] = msgs
    for reason, rows in slow.items():
        mask = np.zeros(n, dtype=bool)
        mask[rows] = True
        hit(level, reason, mask, hits)
    return texts


def _text_checks(texts: _Texts, u: np.ndarray, ds: int, n: int, settings: Settings, hits: dict):
    """The checks on the usable rows' texts (empty, control characters, bad UTF-8, identical pair, prompt in a
    response, evaluation overlap) and their hashes: (identical counts, prompt hashes per row, pair hashes)."""
    level = settings.level
    prompt_hashes = np.zeros(n, dtype=np.uint64)
    if not len(u):
        return (0, 0), prompt_hashes, None
    tp, tc, tr, conversations = texts.tp, texts.tc, texts.tr, texts.conversations
    lp, lc, lr = [tp[i] for i in u], [tc[i] for i in u], [tr[i] for i in u]

    def scatter(values: np.ndarray) -> np.ndarray:
        mask = np.zeros(n, dtype=bool)
        mask[u[values]] = True
        return mask

    flags = fields.text_flags((lp, lc, lr), check_prompt=ds in (0, 1) or ds == 3)
    hit(level, "empty_field", scatter(flags["empty"]), hits)
    hit(level, "control_chars", scatter(flags["control"]), hits)
    hit(level, "invalid_utf8", scatter(flags["surrogate"]), hits)
    for j in np.flatnonzero(flags["surrogate"]):  # keep the text writable: U+FFFD for each bad byte
        i = u[j]
        tp[i], tc[i], tr[i] = (SURROGATE.sub("\ufffd", t) for t in (tp[i], tc[i], tr[i]))
        lp[j], lc[j], lr[j] = tp[i], tc[i], tr[i]
        if i in conversations:
            conversations[i] = tuple(
                [{**m, "content": SURROGATE.sub("\ufffd", m["content"])} for m in part] for part in conversations[i]
            )
    exact, same_text = fields.identical(lc, lr)
    identical = (int(exact.sum()), int((same_text & ~exact).sum()))
    hit(level, "identical_pair", scatter(same_text), hits)
    hp = hash_texts(lp)
    prompt_hashes[u] = hp
    pairs = None
    if level["duplicate_pair"] != "off" or level["contradiction"] != "off":
        hc, hr = hash_texts(lc), hash_texts(lr)
        pairs = (combine(hp, hc, hr), combine(hp, hr, hc), exact)
    check_eval = level["eval_overlap"] != "off" and settings.eval_prompts
    if level["prompt_in_response"] != "off" or check_eval:
        queries = overlap.normalise(overlap.query_texts(u, tp, conversations))
        if level["prompt_in_response"] != "off":
            hit(level, "prompt_in_response", scatter(overlap.prompt_in_responses(queries, lc, lr)), hits)
        if check_eval:
            hit(level, "eval_overlap", scatter(overlap.in_eval_set(queries, settings.eval_prompts)), hits)
    return identical, prompt_hashes, pairs


def _measure(
    checks: ChunkChecks, texts: _Texts, settings: Settings, counter: Callable[[], TokenCounter] | None
) -> None:
    """Token lengths (characters without a tokenizer) of the rows no row check of this chunk rejects. Rows a
    cross-row check may still reject are measured too: the merge drops their lengths."""
    tp, tc, tr = texts.tp, texts.tc, texts.tr
    measure = np.flatnonzero(~checks.row_errors(settings.level))
    checks.measured = measure
    if settings.tokens and counter is not None and len(measure):
        token_counter = counter()
        before = dict(token_counter.stats)
        checks.lengths, checks.double_bos = measure_rows(token_counter, measure, tp, tc, tr, texts.conversations)
        checks.token_stats = {k: v - before.get(k, 0) for k, v in token_counter.stats.items()}
        checks.additive = token_counter.additive
    elif not settings.tokens:
        checks.lengths = np.column_stack(
            [
                np.fromiter((len(tc[i]) for i in measure), dtype=np.int64, count=len(measure)),
                np.fromiter((len(tr[i]) for i in measure), dtype=np.int64, count=len(measure)),
            ]
        ).reshape(-1, 2)


def _ratings(chosen: list, rejected: list, same: np.ndarray, settings: Settings, hits) -> tuple[int, float]:
    level = settings.level
    null, wrong, margin = fields.rating_margins(chosen, rejected)
    null &= same
    wrong &= same & ~null
    hit(level, "null_field", null, hits)
    hit(level, "wrong_type", wrong, hits)
    ok = same & ~null & ~wrong & np.isfinite(margin)
    tie = ok & np.isclose(margin, 0.0, atol=1e-12)
    low = ok & ~tie & (margin < settings.config.min_rating_margin)
    hit(level, "rating_tie", tie, hits)
    hit(level, "low_margin", low, hits)
    return int(ok.sum()), float(margin[ok].sum())
