"""Multi-turn pairs keep their structure from the data file to the chat template (issue 30, item 7): the system
prompt and the earlier turns reach training and the held-out evaluation as turns, not flattened text."""

from __future__ import annotations

import json

import pandas as pd
from conftest import small_config

from alignflow.tasks.generation.prompts import load_prompts
from alignflow.tasks.runtime.turns import split_prompts
from alignflow.tasks.validation.stage import validate_file

SYSTEM = {"role": "system", "content": "You are a terse assistant. Answer in one sentence."}


def conversations() -> list[dict]:
    """Explicit-prompt pairs whose prompts carry a system prompt and an earlier exchange."""
    rows = load_prompts(max_prompts=16)
    out = []
    for earlier, row in zip(rows[::-1], rows, strict=True):
        prompt = [
            SYSTEM,
            {"role": "user", "content": earlier["prompt"]},
            {"role": "assistant", "content": earlier["reference"]},
            {"role": "user", "content": row["prompt"]},
        ]
        good, bad = row["reference"], " ".join(row["reference"].split()[::-1][:10])
        chosen, rejected = [{"role": "assistant", "content": good}], [{"role": "assistant", "content": bad}]
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return out


def test_multi_turn_pairs_train_on_exactly_the_chat_template_of_their_messages(tmp_path, tiny_model_path):
    from alignflow.tasks.training.recipe import build_trainer

    source = tmp_path / "multiturn.jsonl"
    originals = conversations()
    source.write_text("".join(json.dumps(r) + "\n" for r in originals))
    result = validate_file(source, small_config("validation.test_size=0.25").validation, tmp_path / "validation")
    assert result.gate.passed and result.valid == len(originals)

    # The split files keep the turns beside the texts; the disjointness check reads the last user turn.
    train = pd.read_parquet(result.files["train"])
    by_last_turn = {r["prompt"][-1]["content"]: r for r in originals}
    assert split_prompts(result.files["train"])[0][0] == SYSTEM

    training = small_config("training.max_steps=1", "training.per_device_train_batch_size=2").training
    trainer, tokenizer = build_trainer(training, str(tiny_model_path), result.files["train"], str(tmp_path / "trl"))
    assert len(trainer.train_dataset) == len(train)
    for row, tokenized in zip(train.to_dict("records"), trainer.train_dataset, strict=True):
        original = by_last_turn[row["prompt_messages"][-1]["content"]]
        for side in ("chosen", "rejected"):
            expected = tokenizer.apply_chat_template(original["prompt"] + original[side], tokenize=False)
            ids = tokenized["prompt_ids"] + tokenized[f"{side}_ids"]
            assert ids == tokenizer(expected, add_special_tokens=False)["input_ids"]
            assert tokenizer.decode(ids) == expected
    assert trainer.train().global_step == 1


def test_held_out_log_probs_condition_on_the_conversation(tmp_path, tiny_model_path, monkeypatch):
    from alignflow.tasks.evaluation import metrics

    source = tmp_path / "multiturn.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in conversations()))
    result = validate_file(source, small_config("validation.test_size=0.5").validation, tmp_path / "validation")
    model, tokenizer = metrics.load_causal_lm(tiny_model_path)
    heads = []
    template = tokenizer.apply_chat_template

    def recorded(messages, **kwargs):
        heads.append(messages)
        return template(messages, **kwargs)

    monkeypatch.setattr(tokenizer, "apply_chat_template", recorded)
    pairs = pd.read_parquet(result.files["test"])
    scores = metrics.score_model(model, tokenizer, pairs, batch_size=4)
    assert len(scores) == len(pairs) > 0
    assert all(messages[0] == SYSTEM and len(messages) == 4 for messages in heads)
