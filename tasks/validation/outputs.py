"""What the stage writes: the quarantine (JSON lines), the train/test split (parquet), the summary.

Written chunk by chunk into `.tmp` files and renamed at the end, so a failed read leaves no
partial outputs. The split is grouped by prompt: a prompt's pairs all land on one side.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from alignflow.tasks.runtime.turns import MESSAGE_COLUMNS
from alignflow.tasks.validation.hashing import HashIndex, buckets_from_hashes
from alignflow.tasks.validation.readers import MISSING, REQUIRED, Chunk
from alignflow.tasks.validation.report import SplitSummary, ValidationReport, length_lines

if TYPE_CHECKING:
    from alignflow.conf.validation import ValidationConfig
    from alignflow.tasks.validation.validator import ChunkResult


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


def _turns_type():
    import pyarrow as pa

    return pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


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
        self._prompts = {"train": HashIndex(), "test": HashIndex()}
        self.leaked_prompts = 0

    def write(self, chunk: Chunk, result: ChunkResult, start: int, raw: Chunk | None = None) -> None:
        """`chunk` as checked (TRL's columns), `raw` as read: the quarantine keeps what the file holds."""
        cols = (raw or chunk).columns
        lines = []
        for i, reasons in sorted(result.reasons.items()):
            record = {k: _json_safe(v[i]) for k, v in cols.items() if v[i] is not MISSING}
            entry = {"row": start + i}
            if chunk.lines is not None:
                entry["line"] = chunk.lines[i]
            entry["reasons"] = reasons
            entry.update(result.related.get(i, {}))  # duplicate_of / reverses: the earlier row of the pair
            entry["record"] = record
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
        data = {"prompt": [tp[i] for i in keep], "chosen": [tc[i] for i in keep], "rejected": [tr[i] for i in keep]}
        turns = [result.conversations.get(int(i)) for i in keep]
        for k, name in enumerate(MESSAGE_COLUMNS.values()):  # the turns, where the file has conversations
            data[name] = [None if t is None else t[k] for t in turns]
        extras = [k for k in chunk.columns if k not in REQUIRED and k not in MESSAGE_COLUMNS.values()]
        if self._schema is None:  # the first chunk with valid rows fixes the columns and their types
            fields = [pa.field(k, pa.string()) for k in REQUIRED]
            if result.conversations:  # one format per file: a conversational file's chunks all have turns
                fields += [pa.field(name, _turns_type()) for name in MESSAGE_COLUMNS.values()]
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
        arrays += [pa.array(data[f.name], type=f.type) for f in self._schema if f.name in MESSAGE_COLUMNS.values()]
        for f in self._schema:
            if f.name in REQUIRED or f.name == "source_row" or f.name in MESSAGE_COLUMNS.values():
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
        is_test = buckets_from_hashes(hashes, self.config.split_seed) < self.config.test_size
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

    def split_summary(self) -> SplitSummary:
        return SplitSummary(
            train=self.counts["train"],
            test=self.counts["test"],
            train_prompts=len(self._prompts["train"]),
            test_prompts=len(self._prompts["test"]),
            leaked_prompts=self.leaked_prompts,
            seed=self.config.split_seed,
            test_size=self.config.test_size,
        )


def summary_markdown(report: ValidationReport) -> str:
    """A short human summary of a report (Prefect artifact, MLflow, the CLI's --report neighbour)."""
    gate = report.gate
    lines = [
        f"## Validation: {report.valid}/{report.rows} pairs valid, gate " + ("passed" if gate.passed else "**FAILED**"),
        "",
        f"Format `{report.format}`; rejected {report.rejected_fraction:.1%} "
        f"(max {gate.max_rejected_fraction:.0%}); minimum pairs {gate.min_pairs}.",
        "",
    ]
    if report.notes:
        lines += ["**How the data was read**", *(f"- {note}" for note in report.notes), ""]
    fired = [(k, v) for k, v in report.checks.items() if v.count]
    if fired:
        lines += ["| check | level | count | example rows |", "|---|---|---|---|"]
        lines += [f"| {k} | {v.level} | {v.count} | {v.example_rows} |" for k, v in fired]
        lines.append("")
    else:
        lines += ["No check found anything.", ""]
    for title, items in (("Gate failures", gate.failures), ("Warnings", gate.warnings)):
        if items:
            lines += [f"**{title}**", *(f"- {x}" for x in items), ""]
    tokens = report.tokens
    if tokens.measured:
        lines.append(
            f"Tokens (chat template): longest {tokens.longest}, mean {tokens.mean}, "
            f"{tokens.truncated_fraction:.1%} over max_length={tokens.max_length}."
        )
        # A list, not more sentences: the percentiles and the suggestion are what a person acts on.
        lines += ["", *(f"- {line}" for line in length_lines(tokens)[1:]), ""]
    bias = report.checks["length_bias"].detail or {}
    if bias.get("chosen_longer_fraction") is not None:
        lines.append(
            f"Length: chosen longer in {bias['chosen_longer_fraction']:.0%} of pairs "
            f"(z={bias['sign_test_z']}, {bias['unit']})."
        )
    if report.split is not None:
        s = report.split
        lines.append(f"Split: {s.train} train / {s.test} test pairs, {s.leaked_prompts} prompts on both sides.")
    return "\n".join(lines).rstrip() + "\n"
