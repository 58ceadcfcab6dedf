"""The offline base model: built without any download, deterministic, chat-capable."""

from __future__ import annotations

from conftest import small_config

from alignflow.tasks.runtime.state import sha256_file
from alignflow.tasks.runtime.tiny_model import build_tiny_model


def test_build_is_deterministic(tmp_path):
    tiny = small_config("training.tiny_model.warmup_steps=20").training.tiny_model
    first = build_tiny_model(tiny, tmp_path / "a")
    second = build_tiny_model(tiny, tmp_path / "b")
    assert sha256_file(first / "model.safetensors") == sha256_file(second / "model.safetensors")
    assert sha256_file(first / "tokenizer.json") == sha256_file(second / "tokenizer.json")


def test_resolved_model_chats_and_generates(tiny_model_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Why is the sky blue?"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|assistant|>\n")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    torch.manual_seed(0)
    out = model.generate(**ids, max_new_tokens=12, do_sample=True)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert (tiny_model_path / "alignflow_build.json").is_file()


def test_a_path_passes_through(tmp_path):
    from alignflow.tasks.runtime.models import resolve_model

    cfg = small_config()
    assert resolve_model("/models/llama", cfg.training.tiny_model, tmp_path) == "/models/llama"
