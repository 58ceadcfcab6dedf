"""The checks engine: row and dataset checks over a stream of chunks, counts kept, rows not.

Each chunk is checked with vectorized numpy/pyarrow operations. A row that fails an error-level
row check is quarantined with every reason it failed, so valid + quarantined == input, always.
Dataset checks (checks.DATASET_CHECKS) fail the gate instead when they are errors. What grows
with the file is only 8-byte hashes (pairs for duplicates and contradictions, prompts for
leakage), never texts. The check ids, levels and meanings are those of checks.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from alignflow.tasks.validation import fields, overlap
from alignflow.tasks.validation.checks import CHECKS, DATASET_CHECKS
from alignflow.tasks.validation.fields import FORMATS, K_LIST, K_MISSING, K_NULL, K_STR, SURROGATE
from alignflow.tasks.validation.hashing import HashIndex, combine, hash_texts
from alignflow.tasks.validation.readers import MISSING, REQUIRED, Chunk
from alignflow.tasks.validation.report import CheckResult, Ratings, Tokens, ValidationReport, decide_gate
from alignflow.tasks.validation.tokens import TokenCounter, measure_rows

if TYPE_CHECKING:
    from alignflow.conf.validation import ValidationConfig


@dataclass
class ChunkResult:
    valid: np.ndarray  # bool per row
    reasons: dict[int, list[str]]  # row position in the chunk -> error check ids (quarantined rows)
    texts: tuple[list, list, list]  # canonical prompt/chosen/rejected strings (None where unusable)
    prompt_hashes: np.ndarray  # uint64 per row (0 where unusable)
    related: dict[int, dict[str, int]] = field(default_factory=dict)  # row -> the earlier row it repeats/reverses


@dataclass
class _Tally:
    count: int = 0
    examples: list[int] = field(default_factory=list)
    detail: dict = field(default_factory=dict)


class Validator:
    """Feed it chunks in order; it keeps counts and hashes, never rows. `report()` at the end.

    `tokenizer` may be a zero-argument function returning one: it is called when the first rows
    need measuring, so a file that fails to read costs no tokenizer. `eval_prompts` is the
    evaluation prompt set, normalised (overlap.eval_prompt_set); None skips `eval_overlap`."""

    def __init__(
        self,
        config: ValidationConfig,
        tokenizer=None,
        dataset_format: int | None = None,
        eval_prompts: frozenset[str] | None = None,
    ) -> None:
        self.config = config
        self.level = {c: "off" for c in CHECKS}
        self.level.update({c: "warning" for c in config.warnings})
        self.level.update({c: "error" for c in config.errors})
        token_checks = self.level["too_long"] != "off" or self.level["double_bos"] != "off"
        self.tokenizer = tokenizer if token_checks else None
        self.counter: TokenCounter | None = None
        self.eval_prompts = eval_prompts
        self.tally = {c: _Tally() for c in CHECKS}
        self.rows = self.valid = self.quarantined = 0
        self.format: int | None = dataset_format
        self.format_counts = [0] * len(FORMATS)
        self.columns: dict[str, None] = {}
        self.extra: dict[str, None] = {}
        self.pairs = HashIndex()
        self.split_prompts: dict[str, HashIndex] = {}
        self.leaked: list[np.ndarray] = []
        self.identical = {"exact": 0, "whitespace_only": 0}
        self.tokens = {"measured": 0, "sum": 0, "longest": 0}
        self.bias = {"pairs": 0, "chosen_longer": 0, "rejected_longer": 0, "sum_chosen": 0.0, "sum_rejected": 0.0}
        self.ratings = {"rows": 0, "sum_margin": 0.0}

    # Each check's hits go through here: a check that is off never counts.
    def _hit(self, check: str, mask: np.ndarray, hits: dict[str, np.ndarray]) -> None:
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
        kp, kc, kr = fields.kinds(P), fields.kinds(C), fields.kinds(R)

        known = {*REQUIRED, *cfg.rating_columns, *cfg.allowed_columns}
        extra = [k for k in cols if k not in known]
        if extra:
            mask = np.zeros(n, dtype=bool)
            for k in extra:
                present = np.fromiter((v is not MISSING for v in cols[k]), dtype=bool, count=n)
                if present.any():
                    self.extra.setdefault(k)
                mask |= present
            self._hit("extra_columns", mask, hits)

        fmt, known_fmt = fields.formats(kp, kc, kr)
        for code, count in zip(*np.unique(fmt[known_fmt], return_counts=True), strict=True):
            self.format_counts[int(code)] += int(count)
        if self.format is None and known_fmt.any():
            self.format = int(fmt[np.argmax(known_fmt)])
        ds = self.format if self.format is not None else 0
        ds_conv, ds_explicit = ds in (1, 3), ds in (0, 1)
        mixed = known_fmt & (fmt != ds)
        self._hit("mixed_format", mixed, hits)
        same = ~mixed

        want = K_LIST if ds_conv else K_STR
        fields_ok = same.copy()
        for k in ([kp] if ds_explicit else []) + [kc, kr]:
            self._hit("missing_column", same & (k == K_MISSING), hits)
            self._hit("null_field", same & (k == K_NULL), hits)
            self._hit("wrong_type", same & (k != want) & (k != K_MISSING) & (k != K_NULL), hits)
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
                texts, msgs, reasons = fields.split_row(P[i], C[i], R[i], ds_conv, ds_explicit)
                for reason in reasons:
                    slow.setdefault(reason, []).append(i)
                if texts is not None:
                    tp[i], tc[i], tr[i] = texts
                    if msgs is not None:
                        conversations[i] = msgs
            for reason, rows in slow.items():
                mask = np.zeros(n, dtype=bool)
                mask[rows] = True
                self._hit(reason, mask, hits)

        usable = np.fromiter((t is not None for t in tc), dtype=bool, count=n)
        related: dict[int, dict[str, int]] = {}
        u = np.flatnonzero(usable)
        lp, lc, lr = [tp[i] for i in u], [tc[i] for i in u], [tr[i] for i in u]
        prompt_hashes = np.zeros(n, dtype=np.uint64)

        def scatter(values: np.ndarray) -> np.ndarray:
            mask = np.zeros(n, dtype=bool)
            mask[u[values]] = True
            return mask

        if len(u):
            flags = fields.text_flags((lp, lc, lr), check_prompt=ds_explicit or ds == 3)
            self._hit("empty_field", scatter(flags["empty"]), hits)
            self._hit("control_chars", scatter(flags["control"]), hits)
            self._hit("invalid_utf8", scatter(flags["surrogate"]), hits)
            for j in np.flatnonzero(flags["surrogate"]):  # keep the text writable: U+FFFD for each bad byte
                i = u[j]
                tp[i], tc[i], tr[i] = (SURROGATE.sub("\ufffd", t) for t in (tp[i], tc[i], tr[i]))
                lp[j], lc[j], lr[j] = tp[i], tc[i], tr[i]
                if i in conversations:
                    conversations[i] = tuple(
                        [{**m, "content": SURROGATE.sub("\ufffd", m["content"])} for m in part]
                        for part in conversations[i]
                    )

            exact, identical = fields.identical(lc, lr)
            self.identical["exact"] += int(exact.sum())
            self.identical["whitespace_only"] += int((identical & ~exact).sum())
            self._hit("identical_pair", scatter(identical), hits)

            hp = hash_texts(lp)
            prompt_hashes[u] = hp
            if self.level["duplicate_pair"] != "off" or self.level["contradiction"] != "off":
                hc, hr = hash_texts(lc), hash_texts(lr)
                self._pairs(combine(hp, hc, hr), combine(hp, hr, hc), u, start, exact, scatter, hits, related)
            check_eval = self.level["eval_overlap"] != "off" and self.eval_prompts
            if self.level["prompt_in_response"] != "off" or check_eval:
                queries = overlap.normalise(overlap.query_texts(u, tp, conversations))
                if self.level["prompt_in_response"] != "off":
                    self._hit("prompt_in_response", scatter(overlap.prompt_in_responses(queries, lc, lr)), hits)
                if check_eval:
                    self._hit("eval_overlap", scatter(overlap.in_eval_set(queries, self.eval_prompts)), hits)
            if "split" in cols and self.level["split_leakage"] != "off":
                self._split_leakage(cols["split"], hp, u, start)

        rc, rr = cfg.rating_columns
        if rc in cols and rr in cols:
            self._ratings(cols[rc], cols[rr], same, hits)

        row_errors = np.zeros(n, dtype=bool)
        for check, mask in hits.items():
            if self.level[check] == "error" and check not in DATASET_CHECKS:
                row_errors |= mask
        row_errors |= ~usable  # a row without text always fails something above; never keep it

        measure = np.flatnonzero(usable & ~row_errors)
        if self.tokenizer is not None and len(measure):
            lengths, double = measure_rows(self._counter(), measure, tp, tc, tr, conversations)
            too_long = np.zeros(n, dtype=bool)
            longest = lengths.max(axis=1) if len(lengths) else np.zeros(0, dtype=np.int64)
            too_long[measure[longest > cfg.max_length]] = True
            double_bos = np.zeros(n, dtype=bool)
            double_bos[measure[double]] = True
            self.tokens["measured"] += len(measure)
            self.tokens["sum"] += int(longest.sum())
            self.tokens["longest"] = max(self.tokens["longest"], int(longest.max()) if len(longest) else 0)
            for check, mask in (("too_long", too_long), ("double_bos", double_bos)):
                self._hit(check, mask, hits)
                if self.level[check] == "error":
                    row_errors |= mask
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
        related = {i: r for i, r in related.items() if i in reasons}
        return ChunkResult(~row_errors, reasons, (tp, tc, tr), prompt_hashes, related)

    def _counter(self) -> TokenCounter:
        if self.counter is None:
            source = self.tokenizer
            tokenizer = source if hasattr(source, "apply_chat_template") else source()  # a loader: load it now
            self.tokenizer = tokenizer
            self.counter = TokenCounter(tokenizer)
        return self.counter

    def _pairs(self, forward, backward, u, start, exact, scatter, hits, related) -> None:
        """duplicate_pair (the same hash earlier) and contradiction (the reversed pair's hash earlier)."""
        rows = (start + u).astype(np.int64)
        earlier = self.pairs.lookup(forward)
        keys, first = np.unique(forward, return_index=True)
        first_here = first[np.searchsorted(keys, forward)]
        positions = np.arange(len(u))
        duplicate = (earlier >= 0) | (first_here < positions)
        if self.level["duplicate_pair"] != "off":
            self._hit("duplicate_pair", scatter(duplicate), hits)
            of = np.where(earlier >= 0, earlier, rows[first_here])
            detail = self.tally["duplicate_pair"].detail.setdefault("first_seen", [])
            for j in np.flatnonzero(duplicate)[: max(self.config.example_rows - len(detail), 0)]:
                detail.append([int(rows[j]), int(of[j])])
            for j in np.flatnonzero(duplicate):
                related.setdefault(int(u[j]), {})["duplicate_of"] = int(of[j])
        if self.level["contradiction"] != "off":
            reverse_before = self.pairs.lookup(backward)
            pos = np.searchsorted(keys, backward).clip(max=len(keys) - 1)
            here = (keys[pos] == backward) & (first[pos] < positions)
            contradiction = ((reverse_before >= 0) | here) & ~exact
            self._hit("contradiction", scatter(contradiction), hits)
            of = np.where(reverse_before >= 0, reverse_before, rows[first[pos]])
            detail = self.tally["contradiction"].detail.setdefault("reverses", [])
            for j in np.flatnonzero(contradiction)[: max(self.config.example_rows - len(detail), 0)]:
                detail.append([int(rows[j]), int(of[j])])
            for j in np.flatnonzero(contradiction):  # a swapped pair: the quarantine entry names the other row
                related.setdefault(int(u[j]), {})["reverses"] = int(of[j])
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
            index = self.split_prompts.setdefault(label, HashIndex())
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

    def _ratings(self, chosen: list, rejected: list, same: np.ndarray, hits) -> None:
        null, wrong, margin = fields.rating_margins(chosen, rejected)
        null &= same
        wrong &= same & ~null
        self._hit("null_field", null, hits)
        self._hit("wrong_type", wrong, hits)
        ok = same & ~null & ~wrong & np.isfinite(margin)
        tie = ok & np.isclose(margin, 0.0, atol=1e-12)
        low = ok & ~tie & (margin < self.config.min_rating_margin)
        self._hit("rating_tie", tie, hits)
        self._hit("low_margin", low, hits)
        self.ratings["rows"] += int(ok.sum())
        self.ratings["sum_margin"] += float(margin[ok].sum())

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

    def _finish_details(self) -> None:
        """The dataset checks' verdicts and every check's detail, from the counts kept."""
        cfg, b = self.config, self.bias
        decided = b["chosen_longer"] + b["rejected_longer"]
        share = b["chosen_longer"] / decided if decided else None
        z = (b["chosen_longer"] - decided / 2) / math.sqrt(decided / 4) if decided else None
        if share is not None and share > cfg.length_bias_threshold and z is not None and z > 2.0:
            self.tally["length_bias"] = _Tally(b["chosen_longer"], b.get("examples", []))
        self.tally["length_bias"].detail = {
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

    def _skipped(self, check: str) -> str | None:
        """Why a check that is on could not run."""
        if self.level[check] == "off":
            return None
        if check in ("too_long", "double_bos") and self.tokenizer is None:
            return "no tokenizer (token lengths not measured)"
        if check == "eval_overlap" and not self.eval_prompts:
            return "no evaluation prompt set given"
        return None

    def report(self) -> ValidationReport:
        cfg = self.config
        self._finish_details()
        checks = {
            check: CheckResult(
                level=self.level[check],
                description=spec.description,
                count=self.tally[check].count,
                example_rows=self.tally[check].examples,
                detail=self.tally[check].detail or None,
                skipped=self._skipped(check),
            )
            for check, spec in CHECKS.items()
        }
        dataset_format = FORMATS[self.format] if self.format is not None else None
        rejected_fraction = self.quarantined / self.rows if self.rows else 0.0
        measured, too_long = self.tokens["measured"], checks["too_long"].count
        rc, rr = cfg.rating_columns
        return ValidationReport(
            format=dataset_format,
            columns=list(self.columns),
            rows=self.rows,
            valid=self.valid,
            quarantined=self.quarantined,
            valid_fraction=round(self.valid / self.rows, 4) if self.rows else 0.0,
            rejected_fraction=round(rejected_fraction, 4),
            checks=checks,
            tokens=Tokens(
                measured=measured,
                max_length=cfg.max_length,
                longest=self.tokens["longest"] if measured else None,
                mean=round(self.tokens["sum"] / measured, 1) if measured else None,
                too_long=too_long,
                truncated_fraction=round(too_long / measured, 4) if measured else None,
            ),
            ratings=Ratings(
                columns=[rc, rr] if rc in self.columns and rr in self.columns else None,
                rows=self.ratings["rows"],
                mean_margin=round(self.ratings["sum_margin"] / self.ratings["rows"], 4)
                if self.ratings["rows"]
                else None,
                min_rating_margin=cfg.min_rating_margin,
            ),
            gate=decide_gate(
                checks,
                cfg,
                rows=self.rows,
                valid=self.valid,
                rejected_fraction=rejected_fraction,
                columns=list(self.columns),
                dataset_format=dataset_format,
            ),
        )
