"""A reward model trained by the pipeline, then used by name as a judge (issue 28, items 1 and 2), on the tiny model.

The reward-model flow: the user's pairs (the shipped prompts' reference answers against a scrambled copy) validated
as the alignment flow validates them, two RewardTrainer steps on Ray, held-out accuracy, and a version of the
reward model's own registered model that downloads as a one-label classifier. Then an alignment run whose judge, in
generation and in the head-to-head, is `registry:<that name>@champion`: the rewards rank the candidates, and the
gate decides on the reward model's verdicts, scored on a Ray actor. One module: each flow costs ~30 s here."""

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
    "reward_model.min_accuracy=0.0",  # two steps make no good reward model: the judge run needs a champion
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


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prefect_harness, ray_session):
    from alignflow.flows.reward import reward_model

    data = shipped_pairs(tmp_path_factory.mktemp("reward") / "pairs.jsonl")
    config = small_config(f"generation.preference_data={data}", *TINY_REWARD)
    return config, reward_model(config)


def test_reward_model_flow_registers_a_one_label_classifier(trained, tmp_path):
    from mlflow import MlflowClient
    from transformers import AutoModelForSequenceClassification

    from alignflow.tasks.registry.serving import download_model_dir

    config, summary = trained
    assert summary.model == NAME and summary.steps == 2 and summary.n_pairs > 0 and summary.champion
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


def test_the_registered_reward_model_judges_generation_and_the_gate(trained, caplog):
    import logging
    import os
    import re
    from pathlib import Path

    import pyarrow.parquet as pq

    from alignflow.flows.alignment import alignment

    judge = f"{{kind: reward_model, model: 'registry:{NAME}@champion', batch_size: 16}}"
    config = small_config(
        "registry.model_name=test-reward-judged",
        f"generation.judge={judge}",
        f"evaluation.judge={judge}",
        "generation.max_prompts=12",
        "generation.min_score_margin=0.0",  # two training steps leave rewards close together; distinct is enough
        "evaluation.max_prompts=6",
    )
    with caplog.at_level(logging.INFO, logger="alignflow.tasks.evaluation.judges"):
        summary = alignment(config)

    assert summary.decision and summary.n_prompts == 6  # the gate decided on the reward model's verdicts
    label = f"reward_model:registry:{NAME}@champion"
    datasets = Path(config.runtime.home) / "datasets"
    [report] = [p for p in datasets.glob("*/pairs-*/report.json") if label in p.read_text()]
    judged = [r for r in pq.read_table(report.parent.parent / "candidates.parquet").to_pylist() if r["scores"]]
    assert judged and all(len(r["scores"]) == len(r["candidates"]) for r in judged)
    # The version was copied once into the state directory, and the head-to-head scored on a Ray actor: another
    # process, which loaded the weights there.
    assert (Path(config.runtime.home) / "models" / "reward" / f"{NAME}-v1" / "config.json").is_file()
    [pid] = re.findall(rf"reward model judge \S+{NAME}-v1 on a Ray actor: node \w+, pid (\d+), cpu", caplog.text)
    assert int(pid) != os.getpid()
