"""judge.kind reward_model through the whole flow (issue 28, item 1): a reward model rates the generated candidates
and judges the head-to-head the gate decides on, from a Ray actor; the driver never loads it."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import small_config

NAME = "test-reward-judge"


@pytest.fixture(scope="module")
def reward_model_folder(tiny_model_path: Path, tmp_path_factory) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("reward") / "model"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=1)
    with torch.no_grad():  # a head drawn at random gives every answer about the same reward: spread them apart
        model.score.weight.mul_(20.0)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(folder)
    return folder


@pytest.mark.integration
def test_a_reward_model_judges_generation_and_the_gate(reward_model_folder, prefect_harness, ray_session, caplog):
    import logging
    import os
    import re

    import pyarrow.parquet as pq

    from alignflow.flows.alignment import alignment

    judge = f"{{kind: reward_model, model: {reward_model_folder}, batch_size: 16}}"
    config = small_config(
        f"registry.model_name={NAME}",
        f"generation.judge={judge}",
        f"evaluation.judge={judge}",
        "generation.max_prompts=12",
        "evaluation.max_prompts=6",
    )
    with caplog.at_level(logging.INFO, logger="alignflow.tasks.evaluation.judges"):
        summary = alignment(config)

    assert summary.decision and summary.n_prompts == 6  # the gate decided on the reward model's verdicts
    label = f"reward_model:{reward_model_folder}"
    datasets = Path(config.runtime.home) / "datasets"
    [report] = [p for p in datasets.glob("*/pairs-*/report.json") if label in p.read_text()]
    candidates = pq.read_table(report.parent.parent / "candidates.parquet").to_pylist()
    judged = [r for r in candidates if r["scores"]]
    assert judged and all(len(r["scores"]) == len(r["candidates"]) for r in judged)
    assert len({s for r in judged for s in r["scores"]}) > len(judged)  # rewards, apart
    # The head-to-head's rewards came from a Ray actor: another process, which loaded the model there.
    [where] = re.findall(r"reward model judge .* on a Ray actor: node \w+, pid (\d+), cpu", caplog.text)
    assert int(where) != os.getpid()
