"""`alignflow export`: a registered version as a plain HF folder that transformers (so vLLM and TGI) loads,
and that generates the registered model's tokens."""

from __future__ import annotations

import json

import pytest
from registered import tiny_champion
from typer.testing import CliRunner

from alignflow.flows.cli import app

CHAT = [{"role": "user", "content": "Why is the sky blue?"}]


def greedy(model, tokenizer, prompt: str) -> list[int]:
    """16 new tokens, greedy and seeded (min_new_tokens: an early end of turn would compare nothing)."""
    import torch

    inputs = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=16, min_new_tokens=16, pad_token_id=pad)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


@pytest.mark.integration
def test_an_exported_folder_generates_the_registered_models_tokens(tiny_model_path, state_dir, tmp_path):
    import mlflow
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = "test-export"
    uri, version = tiny_champion(tiny_model_path, state_dir / "export", name)

    def export(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, ["export", *args, "--tracking-uri", uri], env={"COLUMNS": "300"})
        return result.exit_code, " ".join(result.output.split())

    folders = {"champion": tmp_path / "champion", "number": tmp_path / "serving" / f"v{version}"}
    code, said = export(f"{name}@champion", str(folders["champion"]))
    assert code == 0, said
    assert f"exported {name} version {version} (@champion)" in said and "config.json" in said
    assert f"vllm serve {folders['champion']} --served-model-name {name}" in said
    folders["number"].mkdir(parents=True)  # an empty folder is a fine DIR: it is replaced
    code, said = export(f"{name}/{version}", str(folders["number"]))
    assert code == 0, said

    mlflow.set_tracking_uri(uri)
    registered = mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model()
    prompt = registered.tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    expected = greedy(registered.model, registered.tokenizer, prompt)
    for folder in folders.values():
        for needed in ("config.json", "generation_config.json", "model.safetensors", "tokenizer_config.json"):
            assert (folder / needed).is_file(), needed
        tokenizer = AutoTokenizer.from_pretrained(folder)
        assert tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == prompt
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        assert greedy(model, tokenizer, prompt) == expected and len(expected) == 16
        record = json.loads((folder / "alignflow-export.json").read_text())
        assert (record["name"], record["version"], record["aliases"]) == (name, version, ["champion"])
    assert [p.name for p in (tmp_path / "serving").iterdir()] == [f"v{version}"]  # no staging folder left

    code, said = export(f"{name}@nightly", str(tmp_path / "other"))
    assert code == 2 and f"{name} has no alias @nightly (its aliases: @champion -> version {version})" in said
    code, said = export(f"{name}@champion", str(folders["champion"]))
    assert code == 2 and "folder is not empty" in said
    assert not (tmp_path / "other").exists()
