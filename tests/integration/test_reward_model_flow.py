"""The reward-model flow on the tiny model: the user's pairs (the shipped prompts' reference answers against a
scrambled copy) validated as the alignment flow validates them, two RewardTrainer steps on Ray, held-out accuracy,
and a version of the reward model's own registered model that downloads as a one-label classifier."""

from __future__ import annotations

import json

import pytest
from conftest import small_config

from alignflow.tasks.runtime.state import tracking_uri

pytestmark = pytest.mark.integration

NAME = "test-reward"
# The training section's tiny model, as the reward model's base; two steps of the embedded LoRA (SEQ_CLS: the score
# head trained, saved and merged) on one worker.
TINY_REWARD = [
    "reward_model.model_name_or_path=builtin:tiny-llama",
    "reward_model.tiny_model.vocab_size=512",
    "reward_model.tiny_model.hidden_size=32",
    "reward_model.tiny_model.intermediate_size=64",
    "reward_model.tiny_model.warmup_steps=120",
    "reward_model.scaling.num_workers=1",
    "reward_model.max_steps=2",
    "reward_model.save_steps=2",
    "reward_model.logging_steps=1",
    f"reward_model.registered_model={NAME}",
]


def shipped_pairs(path):
    """The shipped prompts with their reference answers as chosen and a scrambled reference as rejected."""
    from alignflow.tasks.generation.prompts import load_prompts

    rows = load_prompts(max_prompts=24)
    with path.open("w") as fh:
        for r in rows:
            rejected = " ".join(r["reference"].split()[::-1][:12])
            fh.write(json.dumps({"prompt": r["prompt"], "chosen": r["reference"], "rejected": rejected}) + "\n")
    return path


def test_reward_model_flow_registers_a_one_label_classifier(tmp_path, prefect_harness, ray_session):
    from mlflow import MlflowClient
    from transformers import AutoModelForSequenceClassification

    from alignflow.flows.reward import reward_model
    from alignflow.tasks.registry.serving import download_model_dir

    data = shipped_pairs(tmp_path / "pairs.jsonl")
    config = small_config(f"generation.preference_data={data}", *TINY_REWARD)
    summary = reward_model(config)

    assert summary.model == NAME and summary.steps == 2 and summary.n_pairs > 0
    assert summary.accuracy_low <= summary.accuracy <= summary.accuracy_high
    uri = tracking_uri(config)
    client = MlflowClient(uri)
    version = client.get_model_version(NAME, summary.version)
    for key in ("reward.accuracy", "reward.accuracy_low", "reward.accuracy_high", "reward.n_pairs", "gate.reason"):
        assert key in version.tags
    assert version.tags["method"] == "reward" and version.tags["dataset_sha256"] == summary.dataset_sha256
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == summary.version
    run = client.get_run(summary.mlflow_run_id)
    assert run.data.metrics["reward/n_pairs"] == summary.n_pairs and "train/loss" in run.data.metrics

    import mlflow

    mlflow.set_tracking_uri(uri)
    folder = download_model_dir(f"models:/{NAME}/{summary.version}", tmp_path / "rm")
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None
