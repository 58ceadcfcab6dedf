"""Layouts people publish, read into TRL's columns before any row is judged.

TRL's four formats (fields.FORMATS) are what the validator checks. Data as the ecosystem ships it
often differs in ways that are not errors, and a Layout rewrites each chunk into TRL's columns:

    column mapping      `generation.preference_columns: {prompt: question, chosen: response_j, ...}`
    system column       a `system` string column (Orca-style pairs) becomes the prompt's system turn
    prompt + transcripts  HuggingFaceH4/ultrafeedback_binarized: a `prompt` string, chosen/rejected as whole
                        conversations that repeat the user turn (and any system prompt or earlier turns);
                        the turns both sides share become the prompt, `messages` (a copy of chosen) is left out
    repeated prompt     a conversational prompt whose turns chosen and rejected repeat: stripped from both

The layout is decided once from the first rows, as the format is, so every chunk is read the same
way; `notes()` gives the report one line per thing it did. Rows that do not fit are passed on
unchanged, and the validator says what is wrong with them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from alignflow.tasks.validation.fields import K_LIST, K_MISSING, K_STR, kinds
from alignflow.tasks.validation.readers import MISSING, REQUIRED, Chunk, DatasetError

MAPPING_KEY = "generation.preference_columns"
FORMAT_NOTES = {
    "standard": "prompt, chosen and rejected strings",
    "conversational": "prompt, chosen and rejected message lists; the split holds their text",
    "standard_implicit_prompt": "chosen and rejected strings that start with the prompt: the prompt is the "
    "prefix they share (cut at a word)",
    "conversational_implicit_prompt": "chosen and rejected whole conversations: the prompt is the turns they "
    "share (a system prompt and earlier turns included)",
}
MAPPABLE = (*REQUIRED, "system")
ULTRAFEEDBACK = "ultrafeedback_binarized"  # the layout's name in notes and in the report


@dataclass
class Layout:
    """How to read one dataset into TRL's columns (see the module docstring)."""

    mapping: dict[str, str] = field(default_factory=dict)  # ours -> the file's, as configured
    system: str | None = None  # the column read as the system prompt
    transcripts: bool = False  # the ultrafeedback_binarized layout: a prompt string, whole conversations
    conversational: bool = False  # explicit conversational: strip prompt turns repeated in chosen/rejected
    dropped: tuple[str, ...] = ()  # columns left out of what the validator and the split see
    shadowed: tuple[str, ...] = ()  # columns of the file replaced by a mapped one of the same name
    counts: dict[str, int] = field(default_factory=dict)

    def apply(self, chunk: Chunk) -> Chunk:
        """The chunk in TRL's columns (the same object when there is nothing to do)."""
        if not (self.mapping or self.system or self.transcripts or self.conversational or self.dropped):
            return chunk
        cols = dict(chunk.columns)
        for ours, theirs in self.mapping.items():
            if theirs in cols and theirs != ours:
                cols[ours] = cols.pop(theirs)
        for name in self.dropped:
            cols.pop(name, None)
        system = cols.pop(self.system, None) if self.system else None
        if self.transcripts or self.conversational or system is not None:
            n = chunk.n
            prompts, chosen, rejected = (list(cols.get(k, [MISSING] * n)) for k in REQUIRED)
            for i in range(n):
                prompts[i], chosen[i], rejected[i] = self._row(
                    prompts[i], chosen[i], rejected[i], None if system is None else system[i]
                )
            cols.update(prompt=prompts, chosen=chosen, rejected=rejected)
        return Chunk(cols, chunk.n, chunk.lines)

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def _row(self, prompt: object, chosen: object, rejected: object, system: object) -> tuple:
        c, r = _messages(chosen), _messages(rejected)
        if self.transcripts and isinstance(prompt, str) and c is not None and r is not None:
            prompt, chosen, rejected = self._split_transcripts(prompt, c, r)
        elif self.conversational and c is not None and r is not None and (p := _messages(prompt)) is not None:
            k = len(p)
            if k and len(c) > k and len(r) > k and _same(c[:k], p) and _same(r[:k], p):
                chosen, rejected = c[k:], r[k:]
                self._count("repeated")
        elif system is not None and isinstance(prompt, str) and isinstance(chosen, str) and isinstance(rejected, str):
            # a system column turns every row of a standard dataset conversational (one format per file)
            prompt = [{"role": "user", "content": prompt}]
            chosen = [{"role": "assistant", "content": chosen}]
            rejected = [{"role": "assistant", "content": rejected}]
        p = _messages(prompt)
        has_system = bool(p) and isinstance(p[0], dict) and p[0].get("role") == "system"
        if isinstance(system, str) and system.strip() and p is not None and not has_system:
            prompt = [{"role": "system", "content": system}, *p]
            self._count("system")
        return prompt, chosen, rejected

    def _split_transcripts(self, prompt: str, c: list, r: list) -> tuple:
        """The turns chosen and rejected share (up to the last user turn) are the prompt; the rest the responses."""
        n = 0
        for a, b in zip(c, r, strict=False):
            if not _same([a], [b]):
                break
            n += 1
        if n == len(c) == len(r):
            n -= 1  # the same conversation twice: the last turns are the (identical) responses
        while n and isinstance(c[n - 1], dict) and c[n - 1].get("role") == "assistant":
            n -= 1  # the prompt ends on the user's turn
        if n == 0:  # the responses alone (or sides that share nothing): the prompt column is the user turn
            alone = all(isinstance(m, dict) and m.get("role") == "assistant" for m in (*c[:1], *r[:1]))
            self._count("responses_only" if alone else "unshared")
            return [{"role": "user", "content": prompt}], c, r
        shared = c[:n]
        self._count("stripped")
        if n > 1:
            self._count("history")
        last_user = next((m.get("content") for m in reversed(shared) if m.get("role") == "user"), None)
        if not isinstance(last_user, str) or last_user.strip() != prompt.strip():
            self._count("prompt_differs")
        return shared, c[n:], r[n:]

    def notes(self) -> list[str]:
        """One line per thing this layout did to the rows (the report's `notes`)."""
        out, k = [], self.counts
        if self.mapping:
            pairs = ", ".join(f"{ours} <- {theirs}" for ours, theirs in self.mapping.items())
            shadowed = f"; the file's own {', '.join(self.shadowed)} column left out" if self.shadowed else ""
            out.append(f"columns mapped by {MAPPING_KEY}: {pairs}{shadowed}")
        if self.transcripts:
            dropped = (
                f"; {', '.join(f'`{d}`' for d in self.dropped)} (a copy of chosen) left out" if self.dropped else ""
            )
            out.append(
                f"{ULTRAFEEDBACK} layout (a prompt string, chosen/rejected as whole conversations): the prompt turns "
                f"both sides repeat were stripped from them in {k.get('stripped', 0)} rows{dropped}"
            )
            if k.get("history"):
                out.append(
                    f"{k['history']} rows share a system prompt or earlier turns on both sides: they are part of "
                    "the prompt"
                )
            if k.get("unshared"):
                out.append(f"{k['unshared']} rows: chosen and rejected start differently (no shared prompt turn)")
            if k.get("responses_only"):
                out.append(f"{k['responses_only']} rows hold the responses alone: the prompt column is the user turn")
            if k.get("prompt_differs"):
                out.append(
                    f"{k['prompt_differs']} rows: the prompt column differs from the conversation's user turn "
                    "(the conversation is used)"
                )
        if k.get("repeated"):
            out.append(f"prompt turns repeated at the start of chosen and rejected stripped in {k['repeated']} rows")
        if self.system:
            out.append(f"system prompts read from the `{self.system}` column ({k.get('system', 0)} rows have one)")
        return out


def detect_layout(chunks: Iterable[Chunk], mapping: Mapping[str, str] | None = None, source: str = "") -> Layout:
    """The layout of a dataset, from its first rows that show one (DatasetError for a mapping that does not fit)."""
    mapping = {k: v for k, v in (mapping or {}).items() if v}
    unknown = sorted(set(mapping) - set(MAPPABLE))
    if unknown:
        raise DatasetError(f"{MAPPING_KEY}: unknown keys {', '.join(unknown)} (use {', '.join(MAPPABLE)})")
    for chunk in chunks:
        columns = set(chunk.columns)
        missing = {ours: theirs for ours, theirs in mapping.items() if theirs not in columns}
        if missing:
            listed = ", ".join(sorted(map(str, columns))[:12])
            raise DatasetError(
                f"{source}: {MAPPING_KEY} maps "
                + ", ".join(f"{ours} to {theirs!r}" for ours, theirs in missing.items())
                + f", which the file does not have (columns: {listed})"
            )
        layout = Layout(mapping=mapping)
        layout.shadowed = tuple(ours for ours, theirs in mapping.items() if ours != theirs and ours in columns)
        renamed = layout.apply(chunk).columns  # the mapping alone so far
        kp, kc, kr = (kinds(list(renamed.get(k, [MISSING] * chunk.n))) for k in REQUIRED)
        shows = (kc == K_STR) | (kc == K_LIST) | (kr == K_STR) | (kr == K_LIST)
        if not shows.any():
            continue
        i = int(np.argmax(shows))
        conv = kc[i] == K_LIST or (kc[i] != K_STR and kr[i] == K_LIST)
        layout.transcripts = bool(conv and kp[i] == K_STR)
        layout.conversational = bool(conv and kp[i] == K_LIST)
        if layout.transcripts and "messages" in renamed and "messages" not in mapping.values():
            layout.dropped = ("messages",)
        # A system column is read only where the prompt is explicit (implicit prompts carry their own).
        if "system" in renamed and kp[i] != K_MISSING and ("system" in mapping or _strings(renamed["system"])):
            layout.system = "system"
        return layout
    return Layout(mapping=mapping)


def _strings(values: list) -> bool:
    present = [v for v in values if v is not None and v is not MISSING]
    return bool(present) and all(isinstance(v, str) for v in present)


def _messages(value: object) -> list | None:
    """A list of messages (parquet gives arrays), or None when the value is not a list."""
    if isinstance(value, list):
        return value
    if isinstance(value, tuple | np.ndarray):
        return list(value)
    return None


def _same(a: list, b: list) -> bool:
    """The same turns (role and content; other keys, and their order, do not matter)."""
    return len(a) == len(b) and all(
        isinstance(x, dict)
        and isinstance(y, dict)
        and x.get("role") == y.get("role")
        and x.get("content") == y.get("content")
        for x, y in zip(a, b, strict=True)
    )


def format_note(dataset_format: str) -> str:
    """The report's one line for a detected format."""
    return f"format {dataset_format}: {FORMAT_NOTES.get(dataset_format, '')}".rstrip(": ")
