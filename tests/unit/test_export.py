"""`alignflow export`: references, and the refusals that write nothing (tests/integration/test_export_registered.py
exports a registered model and generates with it)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from alignflow.flows.cli import app
from alignflow.tasks.registry.export import ExportRefused, Reference, parse_reference


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("m@champion", Reference("m", alias="champion")),
        ("m@challenger", Reference("m", alias="challenger")),
        ("m/3", Reference("m", version="3")),
        ("models:/m/03", Reference("m", version="3")),
        ("models:/m@champion", Reference("m", alias="champion")),
        ("m", Reference("m", alias="champion")),  # a name alone: its champion
    ],
)
def test_references(text, expected):
    assert parse_reference(text) == expected


@pytest.mark.parametrize("text", ["m/", "m/three", "m/0", "@champion", "m@", "/3", ""])
def test_malformed_references_name_the_syntax(text):
    with pytest.raises(ExportRefused, match="NAME@ALIAS"):
        parse_reference(text)


def export(uri: str, *args: str):
    result = CliRunner().invoke(app, ["export", *args, "--tracking-uri", uri], env={"COLUMNS": "300"})
    return result.exit_code, " ".join(result.output.split())


def test_unknown_model_alias_version_and_a_full_dir_exit_2_and_write_nothing(sqlite_model, tmp_path):
    uri, client = sqlite_model
    client.set_registered_model_alias("m", "champion", "2")
    out = tmp_path / "out"
    code, said = export(uri, "nope@champion", str(out / "a"))
    assert code == 2 and "no registered model 'nope'" in said and "registered: m" in said
    code, said = export(uri, "m@staging", str(out / "a"))
    assert code == 2 and "m has no alias @staging" in said and "@champion -> version 2" in said
    code, said = export(uri, "m@3", str(out / "a"))  # a number after @ is an alias: say how to name a version
    assert code == 2 and "for version 3 write m/3" in said
    code, said = export(uri, "m/7", str(out / "a"))
    assert code == 2 and "m has no version 7 (versions: 1, 2, 3)" in said
    code, said = export(uri, "m/", str(out / "a"))
    assert code == 2 and "NAME/VERSION" in said
    assert not out.exists()

    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    code, said = export(uri, "m@champion", str(full))
    assert code == 2 and f"{full}: folder is not empty" in said and "remove this one first" in said
    assert [p.name for p in full.iterdir()] == ["keep.txt"]


def test_a_failed_export_leaves_no_half_folder(sqlite_model, tmp_path):
    # The fixture's versions point at a folder that holds no MLflow model: the download fails midway.
    uri, _ = sqlite_model
    out = tmp_path / "out"
    code, said = export(uri, "m/1", str(out / "model"))
    assert code == 1 and "failed" in said and "was not written" in said
    assert list(out.iterdir()) == []  # neither the folder nor the hidden staging folder beside it


def test_a_folder_without_weights_is_no_export_and_a_missing_generation_config_is_derived(tmp_path):
    from transformers import LlamaConfig

    from alignflow.tasks.registry.export import ExportFailed, complete_folder

    LlamaConfig(
        vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, eos_token_id=2
    ).save_pretrained(tmp_path)
    with pytest.raises(ExportFailed, match=r"has no weights \(\*.safetensors or .*\) and no tokenizer files"):
        complete_folder(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "tokenizer.json").write_text("{}")
    assert not complete_folder(tmp_path)  # no chat template: the CLI says what vLLM's chat endpoint then needs
    assert json.loads((tmp_path / "generation_config.json").read_text())["eos_token_id"] == 2
