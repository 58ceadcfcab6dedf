"""Token lengths after the chat template, at the speed of the rest of the checks.

Exact counts, made cheap in two steps, each checked against the slow path it replaces:

1. The template is rendered once per conversation shape (the sequence of roles) with placeholder
   contents, and rows are formatted into that skeleton: no Jinja per row. Used only when the
   template only prints each message's content (no filter, no test on it), and each shape's
   first rows are compared with apply_chat_template; any difference sends that shape to Jinja.
2. A text's token count is the sum of the counts of its "units": the text cut before every space
   that follows a non-space character. The pre-tokenizers of byte-level BPE models (GPT-2, Llama 3,
   Qwen, the offline tiny model) never put a token across such a cut, so a unit is tokenized the
   same alone as in context, and a unit is counted once per dataset (a bounded cache), not once
   per row. Texts where a cut would follow whitespace are counted whole. Whether the tokenizer
   really is additive is checked on the first texts (and a few of every batch) against
   tokenizing them whole; a tokenizer that is not (SentencePiece without pre-tokenization) is
   counted whole throughout, as before.

Counts are what TRL's DPOTrainer sees: the conversation through the chat template, tokenized
without added special tokens (trl.data_utils._tokenize). `double_bos` flags texts that start with
the BOS token twice (a template that adds one, and a text that starts with another).
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from alignflow.conf.training import TinyModelConfig

CACHE_LIMIT = 1 << 19  # units remembered per cache (about 50 MB at most); cleared when full: memory stays flat
FIRST_CHECK = 256  # texts compared with whole-text tokenization before trusting the unit sums
BATCH_CHECK = 8  # texts compared again in every later batch
SHAPE_CHECK = 8  # rows of each conversation shape compared with apply_chat_template
_SENTINEL = "\ue000{}\ue001"  # private-use characters: never produced by a template
_CONTENT_OUTPUT = re.compile(r"\{\{-?\s*\w+(?:\[\s*['\"]content['\"]\s*\]|\.content)\s*-?\}\}")


class TokenCounter:
    """Token counts of (prompt + chosen, prompt + rejected) per row, through one tokenizer's chat template."""

    def __init__(self, tokenizer: Any, seed: int = 0) -> None:
        self.tokenizer = tokenizer
        self.backend = getattr(tokenizer, "backend_tokenizer", None)  # a fast tokenizer: skip the Python wrapper
        template = getattr(tokenizer, "chat_template", None)
        # Only a template that prints content as is can be rendered as a skeleton.
        self.opaque = isinstance(template, str) and "content" not in _CONTENT_OUTPUT.sub("", template)
        self.skeletons: dict[tuple[str, ...], list[str] | None] = {}
        self.shape_checked: dict[tuple[str, ...], int] = {}
        self.additive: bool | None = None if self.backend is not None else False
        self.words: dict[str, int] = {}  # count of " " + key
        self.heads: dict[str, int] = {}  # count of key (a text's first unit)
        self.bos = getattr(tokenizer, "bos_token", None) or None
        self.rng = random.Random(seed)
        self.stats = {"texts": 0, "whole": 0, "jinja_rows": 0}

    def measure(self, conversations: list[tuple[list[dict], list[dict], list[dict]]]) -> tuple[np.ndarray, np.ndarray]:
        """(token counts, shape (n, 2)) and (double BOS, shape (n,)) for (prompt, chosen, rejected) turns."""
        if not conversations:
            return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=bool)
        texts = self.render(conversations)
        counts = self.count(texts).reshape(-1, 2)
        return counts, self._double_bos(texts).reshape(-1, 2).any(axis=1)

    def measure_strings(
        self, prompts: list[str], chosen: list[str], rejected: list[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """As `measure`, for plain strings: the prompt a user turn, each response an assistant turn."""
        if not prompts:
            return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=bool)
        shape = ("user", "assistant")
        checked = self.shape_checked.get(shape, 0)
        head = min(max(SHAPE_CHECK - checked, 0), len(prompts))
        # The first rows go through _formatted (compared with Jinja); the rest straight into the skeleton.
        texts = self.render(
            [
                (
                    [{"role": "user", "content": p}],
                    [{"role": "assistant", "content": c}],
                    [{"role": "assistant", "content": r}],
                )
                for p, c, r in zip(prompts[:head], chosen[:head], rejected[:head], strict=True)
            ]
        )
        pieces = self.skeletons.get(shape) if self.opaque else None
        rest = range(head, len(prompts))
        if pieces is not None:
            a, b, c = pieces
            for i in rest:
                texts += (f"{a}{prompts[i]}{b}{chosen[i]}{c}", f"{a}{prompts[i]}{b}{rejected[i]}{c}")
        else:
            texts += self.render(
                [
                    (
                        [{"role": "user", "content": prompts[i]}],
                        [{"role": "assistant", "content": chosen[i]}],
                        [{"role": "assistant", "content": rejected[i]}],
                    )
                    for i in rest
                ]
            )
        counts = self.count(texts).reshape(-1, 2)
        return counts, self._double_bos(texts).reshape(-1, 2).any(axis=1)

    def render(self, conversations: list[tuple[list[dict], list[dict], list[dict]]]) -> list[str]:
        """The templated text of prompt+chosen and prompt+rejected, two per row, in order."""
        texts: list[str | None] = []
        slow: list[int] = []
        for p, c, r in conversations:
            for side in (c, r):
                messages = p + side
                text = self._formatted(messages)
                if text is None:
                    slow.append(len(texts))
                texts.append(text)
        if slow:
            self.stats["jinja_rows"] += len(slow)
            convs = [self._conversation(conversations, k) for k in slow]
            for k, text in zip(slow, self.tokenizer.apply_chat_template(convs, tokenize=False), strict=True):
                texts[k] = text
        return texts  # type: ignore[return-value]

    @staticmethod
    def _conversation(conversations: list, k: int) -> list[dict]:
        p, c, r = conversations[k // 2]
        return p + (c if k % 2 == 0 else r)

    def _formatted(self, messages: list[dict]) -> str | None:
        """The text from the shape's skeleton, or None where Jinja must render it."""
        if not self.opaque:
            return None
        shape = tuple(m["role"] for m in messages)
        if shape not in self.skeletons:
            self.skeletons[shape] = self._skeleton(shape)
        pieces = self.skeletons[shape]
        if pieces is None:
            return None
        parts = [pieces[0]]
        for m, piece in zip(messages, pieces[1:], strict=True):
            parts += (m["content"], piece)
        text = "".join(parts)
        checked = self.shape_checked.get(shape, 0)
        if checked < SHAPE_CHECK:  # the first rows of each shape: the skeleton must agree with Jinja
            self.shape_checked[shape] = checked + 1
            if text != self.tokenizer.apply_chat_template([messages], tokenize=False)[0]:
                self.skeletons[shape] = None
                return None
        return text

    def _skeleton(self, shape: tuple[str, ...]) -> list[str] | None:
        marks = [_SENTINEL.format(i) for i in range(len(shape))]
        try:
            text = self.tokenizer.apply_chat_template(
                [[{"role": role, "content": mark} for role, mark in zip(shape, marks, strict=True)]], tokenize=False
            )[0]
        except Exception:  # a template that refuses this shape: Jinja says why, row by row
            return None
        pieces, rest = [], text
        for mark in marks:
            if rest.count(mark) != 1:
                return None  # content printed twice, or not at all: not a plain skeleton
            head, rest = rest.split(mark)
            pieces.append(head)
        return [*pieces, rest]

    def count(self, texts: list[str]) -> np.ndarray:
        """Exact token counts of the texts (no special tokens added)."""
        self.stats["texts"] += len(texts)
        if self.additive is False or len(texts) == 0:
            return self._whole(texts)
        counts, whole = self._unit_sums(texts)
        if len(whole):
            self.stats["whole"] += len(whole)
            counts[whole] = self._whole([texts[i] for i in whole])
        checks = self._check_sample(len(texts), whole)
        if len(checks):
            exact = self._whole([texts[i] for i in checks])
            if not np.array_equal(exact, counts[checks]):
                self.additive = False  # not a tokenizer the unit sums hold for: whole texts from now on
                self.words.clear()
                self.heads.clear()
                return self._whole(texts)
            if self.additive is None and len(checks) >= min(FIRST_CHECK, len(texts) - len(whole)):
                self.additive = True
        return counts

    def _check_sample(self, n: int, whole: np.ndarray) -> np.ndarray:
        candidates = np.setdiff1d(np.arange(n), whole, assume_unique=True)
        size = FIRST_CHECK if self.additive is None else BATCH_CHECK
        if len(candidates) <= size:
            return candidates
        return np.sort(np.array(self.rng.sample(candidates.tolist(), size)))

    def _whole(self, texts: list[str]) -> np.ndarray:
        if self.backend is not None:
            encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
            return np.fromiter((len(e) for e in encode(texts, add_special_tokens=False)), np.int64, len(texts))
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return np.fromiter((len(x) for x in ids), np.int64, len(texts))

    def _unit_sums(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per text, the sum of its units' counts; and the texts that must be counted whole.

        A text split at its spaces gives its units: the first as it is, every other one with the
        space in front. Two caches hold their counts: `heads` by the text, `words` by what follows
        the space. The split and the lookups of each distinct part run in pyarrow (measured 2.5x
        faster than str.split and dict lookups per part)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        lists = pc.split_pattern(pa.array(texts, type=pa.large_string()), " ")
        offsets = lists.offsets.to_numpy()
        flat = lists.flatten()
        starts, lasts = offsets[:-1], offsets[1:] - 1
        for cache in (self.words, self.heads):
            if len(cache) > CACHE_LIMIT:
                cache.clear()  # memory stays flat (a cache holds at most the limit plus one batch's units)
        encoded = pc.dictionary_encode(flat)
        indices = encoded.indices.to_numpy()
        word = self._lookup(self.words, encoded.dictionary.to_pylist(), " ")[indices]
        head = self._lookup(self.heads, flat.take(pa.array(starts)).to_pylist(), "")
        cumulative = np.concatenate([[0], np.cumsum(word)])
        sums = cumulative[offsets[1:]] - cumulative[starts] - word[starts] + head
        # A cut right after whitespace (two spaces, a space after a newline) is not a token boundary.
        lengths = pc.binary_length(flat).to_numpy()
        blank = pc.binary_length(pc.utf8_rtrim_whitespace(flat)).to_numpy() < lengths
        blank |= lengths == 0
        blank[starts] &= lengths[starts] > 0  # a text may start with a space
        blank[lasts] = False  # and end as it likes
        whole = np.flatnonzero(np.add.reduceat(blank.astype(np.int64), starts) > 0)
        return sums, whole

    def _lookup(self, cache: dict[str, int], keys: list[str], prefix: str) -> np.ndarray:
        """Counts of prefix + key, from the cache; the missing ones tokenized in one batch."""
        counts = np.fromiter((cache.get(k, -1) for k in keys), dtype=np.int64, count=len(keys))
        missing = np.flatnonzero(counts < 0)
        if len(missing):
            new = list(dict.fromkeys(keys[j] for j in missing))
            cache.update(zip(new, self._whole([prefix + k for k in new]).tolist(), strict=True))
            counts[missing] = [cache[keys[j]] for j in missing]
        return counts

    def _double_bos(self, texts: list[str]) -> np.ndarray:
        out = np.zeros(len(texts), dtype=bool)
        bos = self.bos
        if not bos:
            return out
        for i, text in enumerate(texts):
            if text.startswith(bos) and text[len(bos) :].lstrip().startswith(bos):
                out[i] = True
        return out

    def notes(self) -> list[str]:
        return token_notes(self.stats, self.additive)


def token_notes(stats: dict[str, int], additive: bool | None) -> list[str]:
    """The report's note on how token lengths were counted, from TokenCounter stats (summed over
    the counters of several processes when chunks were checked in parallel)."""
    texts, whole, jinja = stats.get("texts", 0), stats.get("whole", 0), stats.get("jinja_rows", 0)
    if not texts:
        return []
    how = "summed over space-separated units" if additive else "tokenized whole"
    line = f"token lengths: {texts} templated texts {how}"
    if additive and whole:
        line += f" ({whole} with runs of whitespace tokenized whole)"
    if jinja:
        line += f"; {jinja} rendered by the chat template row by row"
    return [line]


def measure_rows(
    counter: TokenCounter, rows: np.ndarray, tp: list, tc: list, tr: list, conversations: dict
) -> tuple[np.ndarray, np.ndarray]:
    """Token counts (len(rows), 2) and double BOS (len(rows),) of a chunk's rows: conversations as
    they are, plain strings as a user turn and an assistant turn (as the train stage feeds TRL)."""
    conv = np.fromiter((i in conversations for i in rows), dtype=bool, count=len(rows))
    lengths = np.zeros((len(rows), 2), dtype=np.int64)
    double = np.zeros(len(rows), dtype=bool)
    if conv.any():
        lengths[conv], double[conv] = counter.measure([conversations[i] for i in rows[conv]])
    plain = rows[~conv]
    if len(plain):
        lengths[~conv], double[~conv] = counter.measure_strings(
            [tp[i] for i in plain], [tc[i] for i in plain], [tr[i] for i in plain]
        )
    return lengths, double


def load_tokenizer(name_or_path: str, tiny: TinyModelConfig, models_dir: Path, chat_template: str | None = None) -> Any:
    """The tokenizer the train stage will use, with no model built or loaded; `chat_template`
    (training.chat_template's text) in place of the model's own, as the train stage applies it.

    For the offline tiny model only its BPE tokenizer is trained (a second or two of CPU, on the
    same shipped text and vocabulary size as the model's build, so the same tokenizer) and kept
    under `models_dir`; building the whole model would take a minute on a fresh state directory."""
    from alignflow.conf.base import BUILTIN_TINY_MODEL
    from alignflow.tasks.runtime.chat_template import load_tokenizer as with_template

    if name_or_path.startswith("builtin:") and name_or_path != BUILTIN_TINY_MODEL:  # converted once, then read
        from alignflow.tasks.runtime.models import resolve_model

        name_or_path = str(resolve_model(name_or_path, tiny, Path(models_dir)))
    if name_or_path != BUILTIN_TINY_MODEL:
        return with_template(name_or_path, chat_template)
    from alignflow.tasks.runtime.tiny_model import tokenizer_dir

    return with_template(tokenizer_dir(tiny, Path(models_dir)), chat_template)
