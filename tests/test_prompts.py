"""tasks.prompts: the shipped prompt set and a user's jsonl file."""

from __future__ import annotations

import json

import pytest

from conf.schema import BUILTIN_PROMPTS
from tasks.prompts import SHIPPED_PROMPTS, load_prompts, prompts_path


def test_shipped_set_is_large_unique_and_has_references():
    rows = load_prompts()
    assert len(rows) >= 200
    ids = [r["id"] for r in rows]
    prompts = [r["prompt"] for r in rows]
    assert len(set(ids)) == len(ids)
    assert len(set(prompts)) == len(prompts)
    assert len({p.lower() for p in prompts}) == len(prompts)
    for row in rows:
        assert set(row) == {"id", "prompt", "reference"}
        assert row["prompt"].strip() == row["prompt"] != ""
        assert isinstance(row["reference"], str) and row["reference"].strip(), row["id"]


def test_shipped_file_is_the_builtin_source():
    assert prompts_path(BUILTIN_PROMPTS) == SHIPPED_PROMPTS
    assert SHIPPED_PROMPTS.is_file()
    assert load_prompts(str(SHIPPED_PROMPTS)) == load_prompts(BUILTIN_PROMPTS)


def test_max_prompts():
    five = load_prompts(max_prompts=5)
    assert len(five) == 5
    assert five == load_prompts()[:5]
    assert len(load_prompts(max_prompts=10_000)) == len(load_prompts())


def write_jsonl(path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_user_file_without_ids_or_references(tmp_path):
    path = tmp_path / "mine.jsonl"
    write_jsonl(
        path,
        [
            json.dumps({"prompt": "  First question?  "}),
            "",
            json.dumps({"prompt": "Second?", "id": 7, "reference": None}),
            json.dumps({"prompt": "Third?", "reference": "An answer."}),
        ],
    )
    rows = load_prompts(str(path))
    assert rows == [
        {"id": "line1", "prompt": "First question?", "reference": ""},
        {"id": "7", "prompt": "Second?", "reference": ""},
        {"id": "line4", "prompt": "Third?", "reference": "An answer."},
    ]


def test_bad_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, [json.dumps({"prompt": "ok"}), json.dumps({"prompt": "fine"}), "{not json"])
    with pytest.raises(ValueError, match="not valid JSON") as info:
        load_prompts(str(path))
    assert f"{path}:3" in str(info.value)


@pytest.mark.parametrize(
    "bad",
    [json.dumps({"text": "no prompt key"}), json.dumps({"prompt": "   "}), json.dumps({"prompt": 5}), "[1, 2]"],
)
def test_row_without_a_prompt_names_file_and_line(tmp_path, bad):
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, [json.dumps({"prompt": "ok"}), bad])
    with pytest.raises(ValueError, match="prompt") as info:
        load_prompts(str(path))
    assert f"{path}:2" in str(info.value)


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError) as info:
        load_prompts(str(missing))
    assert str(missing) in str(info.value)
    assert "generation.prompts" in str(info.value)


def test_empty_file_raises(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(ValueError, match="no prompts"):
        load_prompts(str(path))
