"""A corpus of malformed inputs: each one must end in its own clear message and exit code, never a traceback.

Exit 2: the file cannot be read as a dataset (the message names the file, and the line for JSON).
Exit 1: the file reads, but the gate fails (the message names the check and example rows).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re

import pandas as pd
import pytest
from typer.testing import CliRunner

from alignflow.flows.cli import app

GOOD = [{"prompt": f"Question {i}?", "chosen": f"A careful answer {i}.", "rejected": f"Nope {i}"} for i in range(30)]


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def csv_bytes(text: str) -> bytes:
    return text.encode()


# (id, file name, content (bytes, or None for no file), exit code, regex the output must match)
CORPUS = [
    ("missing-file", "absent.jsonl", None, 2, r"absent\.jsonl: no such file"),
    ("unsupported-suffix", "pairs.txt", b"prompt,chosen,rejected\n", 2, r"pairs\.txt: unsupported file type '\.txt'"),
    ("no-suffix", "pairs", b"{}", 2, r"unsupported file type '\(no suffix\)'"),
    ("empty-jsonl", "empty.jsonl", b"", 2, r"empty\.jsonl: the file is empty \(0 bytes\)"),
    ("empty-csv", "empty.csv", b"", 2, r"empty\.csv: the file is empty \(0 bytes\)"),
    ("blank-lines-jsonl", "blank.jsonl", b"\n\n  \n", 2, r"blank\.jsonl: no rows"),
    ("blank-csv", "blank.csv", b"\n\n", 2, r"blank\.csv: no header and no rows"),
    ("header-only-csv", "header.csv", b"prompt,chosen,rejected\n", 2, r"header\.csv: no rows"),
    (
        "malformed-line",
        "bad.jsonl",
        jsonl(GOOD[:2]) + b'{"prompt": "x", chosen: "y"}\n',
        2,
        r"bad\.jsonl:3: malformed JSON line \(Expecting property name enclosed in double quotes at column 17\)",
    ),
    ("truncated-last-line", "cut.jsonl", jsonl(GOOD[:4])[:-20], 2, r"cut\.jsonl:4: malformed JSON line"),
    (
        "array-line",
        "arr.jsonl",
        jsonl(GOOD[:1]) + b"[1, 2]\n",
        2,
        r"arr\.jsonl:2: expected one JSON object per line, got an array",
    ),
    (
        "number-line",
        "num.jsonl",
        jsonl(GOOD[:2]) + b"42\n",
        2,
        r"num\.jsonl:3: expected one JSON object per line, got a number",
    ),
    ("string-line", "str.jsonl", b'"just text"\n', 2, r"str\.jsonl:1: expected one JSON object per line, got a string"),
    (
        "json-array-named-jsonl",
        "array.jsonl",
        json.dumps(GOOD[:3], indent=2).encode(),
        2,
        r"array\.jsonl:1: expected one JSON object per line, got an array \(name the file \.json\)",
    ),
    ("gzip-named-jsonl", "zipped.jsonl", gzip.compress(jsonl(GOOD)), 2, r"zipped\.jsonl:1: malformed JSON line"),
    (
        "utf16-jsonl",
        "utf16.jsonl",
        jsonl(GOOD[:2]).decode().encode("utf-16"),
        2,
        r"utf16\.jsonl:1: malformed JSON line",
    ),
    (
        "text-named-parquet",
        "fake.parquet",
        b"prompt,chosen,rejected\na,b,c\n",
        2,
        r"fake\.parquet: not a readable parquet file",
    ),
    (
        "truncated-parquet",
        "cut.parquet",
        parquet_bytes(pd.DataFrame(GOOD))[:200],
        2,
        r"cut\.parquet: not a readable parquet file",
    ),
    (
        "empty-parquet",
        "none.parquet",
        parquet_bytes(pd.DataFrame(columns=["prompt", "chosen", "rejected"], dtype=object)),
        2,
        r"none\.parquet: no rows",
    ),
    (
        "ragged-csv",
        "ragged.csv",
        csv_bytes("prompt,chosen,rejected\na,b,c\nd,e,f,g,h\n"),
        2,
        r"ragged\.csv: malformed CSV \(.*line 3",
    ),
    ("not-json", "text.json", b"prompt: hello\n", 2, r"text\.json: not JSON: expected an array of objects"),
    (
        "unclosed-array",
        "open.json",
        json.dumps(GOOD[:3], indent=1).encode()[:-2],
        2,
        r"open\.json:\d+: unexpected end of file",
    ),
    (
        "array-item-number",
        "items.json",
        b'[{"prompt": "a", "chosen": "b", "rejected": "c"},\n 7]',
        2,
        r"items\.json:2: item 1 of the JSON array is a number, not an object",
    ),
    (
        "malformed-array-item",
        "broken.json",
        b'[\n{"prompt": "a", "chosen": "b", "rejected": "c"},\n{"prompt": "a",\n "chosen": oops}\n]',
        2,
        r"broken\.json:4: malformed JSON in item 1",
    ),
    (
        "missing-comma",
        "comma.json",
        b'[{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "d"}]',
        2,
        r"comma\.json:2: expected ',' or '\]' after item 0",
    ),
    (
        "trailing-garbage",
        "tail.json",
        json.dumps(GOOD[:2]).encode() + b"\nextra",
        2,
        r"tail\.json:2: unexpected data after the end of the JSON array",
    ),
    ("empty-array", "none.json", b"[ ]", 2, r"none\.json: no rows"),
    (
        "wrongly-named-columns",
        "qa.jsonl",
        jsonl([{"question": f"q{i}", "answer": f"a{i}"} for i in range(30)]),
        1,
        r"no chosen/rejected columns at all \(columns found: question, answer\)",
    ),
    (
        "missing-rejected",
        "half.jsonl",
        jsonl([{"prompt": r["prompt"], "chosen": r["chosen"]} for r in GOOD]),
        1,
        r"rejected fraction 1\.000 > validation\.max_rejected_fraction=0\.5 \(missing_column: 30 rows \(rows 0, 1, 2, 3, 4, \.\.\.\)\)",
    ),
    (
        "mixed-formats",
        "mixed.jsonl",
        jsonl(
            GOOD[:29]
            + [
                {
                    "prompt": [{"role": "user", "content": "hi"}],
                    "chosen": [{"role": "assistant", "content": "hello"}],
                    "rejected": [{"role": "assistant", "content": "go"}],
                }
            ]
        ),
        1,
        r"mixed_format: 1 rows differ from the dataset's format standard \(standard: 29, conversational: 1\) \(rows 29\)",
    ),
    (
        "invalid-utf8-bytes",
        "latin1.jsonl",
        b"".join(
            f'{{"prompt": "Question {i}?", "chosen": "caf'.encode()
            + b"\xe9"
            + f' {i}", "rejected": "no {i}"}}\n'.encode()
            for i in range(30)
        ),
        1,
        r"invalid_utf8: 30 rows \(rows 0, 1, 2, 3, 4, \.\.\.\)",
    ),
    (
        "invalid-utf8-csv",
        "latin1.csv",
        b"prompt,chosen,rejected\n"
        + b"".join(f"q{i},caf".encode() + b"\xe9" + f",no {i}\n".encode() for i in range(30)),
        1,
        r"invalid_utf8: 30 rows",
    ),
    (
        "control-characters",
        "ctrl.jsonl",
        jsonl([{**r, "chosen": r["chosen"] + "\x1b[31m"} for r in GOOD]),
        1,
        r"control_chars: 30 rows",
    ),
    (
        "all-identical",
        "same.jsonl",
        jsonl([{**r, "rejected": " " + r["chosen"].upper().lower().capitalize() + "  "} for r in GOOD]),
        1,
        r"identical_pair: 30 rows",
    ),
    (
        "split-leakage",
        "leak.jsonl",
        jsonl([{**r, "split": "train"} for r in GOOD] + [{**GOOD[3], "chosen": "Other.", "split": "test"}]),
        1,
        r"split_leakage: 1 prompts in more than one split \(rows 30\)",
    ),
    (
        "too-few-pairs",
        "few.jsonl",
        jsonl(GOOD[:5]),
        1,
        r"5 valid pairs < validation\.min_pairs=20",
    ),
    (
        "conversation-roles",
        "roles.jsonl",
        jsonl(
            [
                {
                    "prompt": [{"role": "assistant", "content": f"Hi {i}"}],
                    "chosen": [{"role": "assistant", "content": "a"}],
                    "rejected": [{"role": "user", "content": "b"}],
                }
                for i in range(30)
            ]
        ),
        1,
        r"conversation_structure: 30 rows",
    ),
]


@pytest.mark.parametrize(("name", "filename", "content", "code", "message"), CORPUS, ids=[c[0] for c in CORPUS])
def test_malformed_input_gets_its_message(tmp_path, name, filename, content, code, message):
    path = tmp_path / filename
    if content is not None:
        path.write_bytes(content)
    result = CliRunner().invoke(app, ["validate", str(path), "--no-tokenizer", "--out", str(tmp_path / "out")])
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    output = " ".join(result.output.split())  # rich may wrap long lines
    assert re.search(message, output), output
    if code == 2:
        assert filename in output and "cannot read dataset" in output


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 25


def test_directory_is_not_a_dataset(tmp_path):
    (tmp_path / "data.jsonl").mkdir()
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "data.jsonl"), "--no-tokenizer"])
    assert result.exit_code == 2
    assert "is a directory, not a dataset file" in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    path = tmp_path / "secret.jsonl"
    path.write_bytes(jsonl(GOOD))
    path.chmod(0)
    try:
        result = CliRunner().invoke(app, ["validate", str(path), "--no-tokenizer"])
    finally:
        path.chmod(0o600)
    assert result.exit_code == 2
    assert "secret.jsonl: cannot read it (Permission denied)" in result.output


def test_line_too_long_is_refused_not_loaded(tmp_path, monkeypatch):
    import alignflow.tasks.validation.readers as readers

    monkeypatch.setattr(readers, "MAX_LINE_BYTES", 1000)
    path = tmp_path / "huge.jsonl"
    path.write_bytes(jsonl(GOOD[:3]) + b'{"prompt": "' + b"x" * 5000 + b'"}\n')
    result = CliRunner().invoke(app, ["validate", str(path), "--no-tokenizer", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "huge.jsonl:4: line longer than 0 MiB" in result.output or "huge.jsonl:4: line longer than" in result.output


def test_failed_read_leaves_no_partial_outputs(tmp_path):
    path = tmp_path / "late.jsonl"
    path.write_bytes(jsonl(GOOD * 10) + b"{oops\n")
    result = CliRunner().invoke(
        app, ["validate", str(path), "--no-tokenizer", "--out", str(tmp_path / "o"), "validation.chunk_rows=50"]
    )
    assert result.exit_code == 2
    assert "late.jsonl:301: malformed JSON line" in result.output
    assert not [p for p in (tmp_path / "o").iterdir() if p.suffix in (".tmp", ".parquet")]
