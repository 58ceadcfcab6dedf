"""conf/prompts/eval.jsonl: the fixed, versioned prompt set for the promotion gate's head-to-head evaluation.

It must stay disjoint from the training prompts in conf/prompts/default.jsonl, so the gate never
scores a model on questions it was trained to answer.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from pathlib import Path

import pytest

PROMPTS_DIR = Path(__file__).resolve().parents[2] / "conf" / "prompts"
EVAL = PROMPTS_DIR / "eval.jsonl"
DEFAULT = PROMPTS_DIR / "default.jsonl"

CATEGORIES = {
    "science", "history", "geography", "math", "programming", "cooking",
    "health", "language", "everyday", "technology", "nature", "economics",
}  # fmt: skip
PER_CATEGORY = 10
MIN_WORDS, MAX_WORDS = 35, 65
MAX_OVERLAP = 0.8

# Function words and the words that only give a prompt its form ("Explain...", "Give me a tip...").
_STOPWORDS = """a an the and or but of in on at to for from by with as into about than then so if
    is are was were be been being do does did done have has had can could should would will
    may might must i me my you your it its they them their we our he she his her this that
    these those there what which why how when where some any each every all
    one two few more most much many very really just also not no yes please
    explain describe define compare summarise summarize give tell list name show short simple
    simply terms plain words example examples explanation tip difference between mean means meaning"""
STOPWORDS = frozenset(_STOPWORDS.split())


def load(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def content_words(text: str) -> set[str]:
    words = set()
    for w in normalise(text).split():
        if w in STOPWORDS:
            continue
        if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]  # crude plural folding: "examples" and "example" count as one word
        words.add(w)
    return words


def overlap(a: set[str], b: set[str]) -> float:
    """Share of the smaller prompt's content words that the other prompt also has."""
    if not a or not b:
        return 0.0
    return len(a & b) / min(len(a), len(b))


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return load(EVAL)


@pytest.fixture(scope="module")
def train_rows() -> list[dict]:
    return load(DEFAULT)


def test_file_parses_with_the_expected_fields(rows):
    assert len(rows) == 120
    for row in rows:
        assert set(row) == {"id", "category", "prompt", "reference"}, row
        for key in row:
            assert isinstance(row[key], str) and row[key] == row[key].strip() != "", (row["id"], key)


def test_every_line_is_one_json_object_in_ascii():
    text = EVAL.read_text(encoding="utf-8")
    assert text.isascii()
    assert text.endswith("\n")
    lines = text.splitlines()
    assert all(line.strip() for line in lines)
    assert all(isinstance(json.loads(line), dict) for line in lines)


def test_ids_are_unique_and_e_prefixed(rows):
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"e\d{4}", i) for i in ids), ids
    assert ids == [f"e{n:04d}" for n in range(1, len(ids) + 1)]


def test_ten_prompts_per_category(rows):
    assert Counter(r["category"] for r in rows) == {c: PER_CATEGORY for c in CATEGORIES}


def test_reference_lengths(rows):
    lengths = {r["id"]: len(r["reference"].split()) for r in rows}
    bad = {i: n for i, n in lengths.items() if not MIN_WORDS <= n <= MAX_WORDS}
    assert not bad, bad
    assert 45 <= sum(lengths.values()) / len(lengths) <= 55


def test_plain_text_single_paragraph(rows):
    for row in rows:
        for field in ("prompt", "reference"):
            text = row[field]
            assert "\n" not in text, row["id"]
            assert not re.search(r"[*#`]|^\s*[-0-9]+[.)]\s", text), (row["id"], field)


def test_prompts_are_distinct_within_the_set(rows):
    normalised = [normalise(r["prompt"]) for r in rows]
    assert len(set(normalised)) == len(normalised)


def test_no_prompt_repeats_a_training_prompt(rows, train_rows):
    train = {normalise(r["prompt"]) for r in train_rows}
    clashes = [r["id"] for r in rows if normalise(r["prompt"]) in train]
    assert not clashes, clashes


def test_no_near_duplicates(rows, train_rows):
    evals = [(r["id"], content_words(r["prompt"])) for r in rows]
    train = [(r["id"], content_words(r["prompt"])) for r in train_rows]
    pairs = itertools.chain(itertools.combinations(evals, 2), itertools.product(evals, train))
    too_close = [(a, b, round(overlap(wa, wb), 2)) for (a, wa), (b, wb) in pairs if overlap(wa, wb) > MAX_OVERLAP]
    assert not too_close, too_close


def test_overlap_measure():
    assert content_words("What is a prime number? Please give a few examples.") == {"prime", "number"}
    assert overlap({"a", "b"}, {"a", "b", "c"}) == 1.0
    assert overlap({"a", "b"}, {"c"}) == 0.0
    assert overlap(set(), {"a"}) == 0.0
