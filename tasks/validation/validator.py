"""The checks engine: row and dataset checks over a stream of chunks, counts kept, rows not.

Each chunk is checked with vectorized numpy/pyarrow operations: first what it decides alone
(rowchecks.py, here or in a worker process, parallel.py), then merged in file order with what
came before (duplicates, contradictions, split leakage, tallies). A row that fails an error-level
row check is quarantined with every reason it failed, so valid + quarantined == input, always.
Dataset checks (checks.DATASET_CHECKS) fail the gate instead when they are errors. What grows
with the file is only 8-byte hashes (pairs for duplicates and contradictions, prompts for
leakage), never texts. The check ids, levels and meanings are those of checks.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from alignflow.conf.checks import CHECKS, DATASET_CHECKS
from alignflow.tasks.validation.fields import FORMATS
from alignflow.tasks.validation.hashing import HashIndex
from alignflow.tasks.validation.readers import Chunk
from alignflow.tasks.validation.report import (
    CheckResult,
    Ratings,
    Tokens,
    ValidationReport,
    decide_gate,
    length_percentiles,
)
from alignflow.tasks.validation.rowchecks import ChunkChecks, Settings, check_chunk, hit
from alignflow.tasks.validation.tokens import TokenCounter, token_notes

if TYPE_CHECKING:
    from alignflow.conf.validation import ValidationConfig


@dataclass
class ChunkResult:
    valid: np.ndarray  # bool per row
    reasons: dict[int, list[str]]  # row position in the chunk -> error check ids (quarantined rows)
    texts: tuple[list, list, list]  # canonical prompt/chosen/rejected strings (None where unusable)
    prompt_hashes: np.ndarray  # uint64 per row (0 where unusable)
    related: dict[int, dict[str, int]] = field(default_factory=dict)  # row -> the earlier row it repeats/reverses
    # row -> (prompt, chosen, rejected) messages of a conversational row: the split files keep the turns
    conversations: dict[int, tuple] = field(default_factory=dict)


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
        self.settings = Settings(config, dict(self.level), eval_prompts, self.tokenizer is not None)
        self.token_stats: dict[str, int] = {}  # the TokenCounters' stats, summed over chunks (and processes)
        self.additive: bool | None = None
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
        self.length_counts: dict[int, int] = {}  # pairs per length (percentiles, suggested max_length)
        self.bias = {"pairs": 0, "chosen_longer": 0, "rejected_longer": 0, "sum_chosen": 0.0, "sum_rejected": 0.0}
        self.ratings = {"rows": 0, "sum_margin": 0.0}

    def feed(self, chunk: Chunk) -> ChunkResult:
        """Check the next chunk in this process: its own checks, then the merge."""
        counter = self._counter if self.settings.tokens else None
        return self.merge(chunk, check_chunk(chunk, self.settings, self.format, counter))

    def merge(self, chunk: Chunk, checks: ChunkChecks) -> ChunkResult:
        """Add the next chunk's own findings (checked here or in a worker) to what came before:
        the cross-row checks, the counts, the example rows. Chunks must come in file order."""
        n, start, level = checks.n, self.rows, self.level
        self.rows += n
        hits = checks.hits
        for k in checks.columns:
            self.columns.setdefault(k)
        for k in checks.extra:
            self.extra.setdefault(k)
        for code, count in enumerate(checks.format_counts):
            self.format_counts[code] += count
        if self.format is None and checks.format is not None:
            self.format = checks.format
        self.identical["exact"] += checks.identical[0]
        self.identical["whitespace_only"] += checks.identical[1]
        self.ratings["rows"] += checks.ratings[0]
        self.ratings["sum_margin"] += checks.ratings[1]
        for k, v in checks.token_stats.items():
            self.token_stats[k] = self.token_stats.get(k, 0) + v
        if checks.token_stats.get("texts"):
            self.additive = checks.additive

        u = np.flatnonzero(checks.usable)
        related: dict[int, dict[str, int]] = {}

        def scatter(values: np.ndarray) -> np.ndarray:
            mask = np.zeros(n, dtype=bool)
            mask[u[values]] = True
            return mask

        if checks.pairs is not None:
            forward, backward, exact = checks.pairs
            self._pairs(forward, backward, u, start, exact, scatter, hits, related)
        if len(u) and "split" in chunk.columns and level["split_leakage"] != "off":
            self._split_leakage(chunk.columns["split"], checks.prompt_hashes[u], u, start)

        row_errors = checks.row_errors(level)
        # Lengths were measured for the rows no check of their own chunk rejected; keep the survivors.
        kept = ~row_errors[checks.measured]
        rows, lengths = checks.measured[kept], checks.lengths[kept]
        if checks.double_bos is not None and len(rows):
            double = checks.double_bos[kept]
            too_long = np.zeros(n, dtype=bool)
            longest = lengths.max(axis=1)
            too_long[rows[longest > self.config.max_length]] = True
            double_bos = np.zeros(n, dtype=bool)
            double_bos[rows[double]] = True
            self.tokens["measured"] += len(rows)
            self.tokens["sum"] += int(longest.sum())
            self.tokens["longest"] = max(self.tokens["longest"], int(longest.max()))
            self._count_lengths(longest)
            for check, mask in (("too_long", too_long), ("double_bos", double_bos)):
                hit(level, check, mask, hits)
                if level[check] == "error":
                    row_errors |= mask
        keep = ~row_errors[rows]
        self._length_bias(rows[keep], lengths[keep], start)

        for check, mask in hits.items():
            tally = self.tally[check]
            tally.count += int(mask.sum())
            room = self.config.example_rows - len(tally.examples)
            if room > 0:
                tally.examples.extend(int(start + i) for i in np.flatnonzero(mask)[:room])

        reasons: dict[int, list[str]] = {int(i): [] for i in np.flatnonzero(row_errors)}
        for check in CHECKS:
            if check in hits and level[check] == "error" and check not in DATASET_CHECKS:
                for i in np.flatnonzero(hits[check] & row_errors):
                    reasons[int(i)].append(check)
        for r in reasons.values():
            if not r:  # unreachable by construction; never lose a row silently
                r.append("wrong_type")
        self.valid += int(n - row_errors.sum())
        self.quarantined += int(row_errors.sum())
        related = {i: r for i, r in related.items() if i in reasons}
        return ChunkResult(~row_errors, reasons, checks.texts, checks.prompt_hashes, related, checks.conversations)

    def _count_lengths(self, longest: np.ndarray) -> None:
        values, counts = np.unique(longest, return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist(), strict=True):
            self.length_counts[value] = self.length_counts.get(value, 0) + count

    def loaded_tokenizer(self) -> Any:
        """The tokenizer, loaded now if a loader was given (None when the token checks are off)."""
        source = self.tokenizer
        if source is not None and not hasattr(source, "apply_chat_template"):
            self.tokenizer = source()  # a loader: load it now
        return self.tokenizer

    def _counter(self) -> TokenCounter:
        if self.counter is None:
            self.counter = TokenCounter(self.loaded_tokenizer())
        return self.counter

    def notes(self) -> list[str]:
        """How the token lengths were counted (empty when none were)."""
        return token_notes(self.token_stats, self.additive)

    def _pairs(self, forward, backward, u, start, exact, scatter, hits, related) -> None:
        """duplicate_pair (the same hash earlier) and contradiction (the reversed pair's hash earlier)."""
        rows = (start + u).astype(np.int64)
        earlier = self.pairs.lookup(forward)
        keys, first = np.unique(forward, return_index=True)
        first_here = first[np.searchsorted(keys, forward)]
        positions = np.arange(len(u))
        duplicate = (earlier >= 0) | (first_here < positions)
        if self.level["duplicate_pair"] != "off":
            hit(self.level, "duplicate_pair", scatter(duplicate), hits)
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
            hit(self.level, "contradiction", scatter(contradiction), hits)
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
                percentiles=length_percentiles(self.length_counts, cfg.max_length),
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
