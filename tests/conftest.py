"""Shared fixtures: one small config, one state directory, real Ray/Prefect/MLflow.

Tests use the real components on small inputs: a smaller offline tiny model, a couple
dozen prompts, two-step training runs. The state directory is a temporary folder, so a
test run never touches the developer's .alignflow/.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from alignflow.conf.loader import load_config
from alignflow.conf.schema import PipelineConfig

STATE = Path(tempfile.mkdtemp(prefix="alignflow-test-"))

# The fast tests train the tiny model built from nothing (the embedded default's SmolLM2 is ~25 s a DPO step on
# 2 cores): its shape, and the full-fine-tuning knobs it was tuned with. tests/integration/test_smollm2.py and the
# real-model flow test (tests/integration/test_flow_real_model.py) take the real model.
TINY = [
    "training.model_name_or_path=builtin:tiny-llama",
    "registry.model_name=alignflow-tiny",
    "training.use_peft=false",
    "training.precompute_ref_log_probs=false",
    "training.learning_rate=2e-4",
    "training.loss_type=[sigmoid, sft]",
]

SMALL = [
    f"runtime.home={STATE}",
    *TINY,
    "generation.max_prompts=24",
    "generation.input_batch_size=8",
    "generation.min_score_margin=0.01",
    "generation.generators=[{temperature: 0.5, max_new_tokens: 24}, {temperature: 1.2, max_new_tokens: 24}]",
    "training.tiny_model.vocab_size=512",
    "training.tiny_model.hidden_size=32",
    "training.tiny_model.intermediate_size=64",
    "training.tiny_model.warmup_steps=120",
    "training.per_device_train_batch_size=4",
    "training.scaling.num_workers=1",  # one Ray worker (each imports torch and TRL); test_train_distributed runs two
    # The tiny model's evaluation is about a second of work, which two Ray workers' start-up would outweigh, and in the
    # comparison test they would wait for the CPUs its recipes hold: in the flow's process. The Ray path (the default)
    # is tests/integration/test_evaluate_on_ray.py's, and the real-model flow test's.
    "evaluation.workers=0",
    # Likewise generation: the tiny model's generation is under a second, and distilabel's RayPipeline starts an actor
    # per step (~25 s on 2 cores). The Ray path (the default) is tests/integration/test_generate_ray.py's, and the
    # real-model flow test's.
    "generation.ray=false",
    "evaluation.max_prompts=12",  # a small head-to-head (default: 120 prompts x 4 samples a side)
    "evaluation.samples_per_prompt=2",
    "evaluation.max_new_tokens=12",
    "training.max_steps=2",
    "training.save_steps=1",
    "training.logging_steps=1",
    "validation.min_pairs=4",
    "validation.max_rejected_fraction=0.8",
    "validation.test_size=0.25",
]


def small_config(*overrides: str) -> PipelineConfig:
    return load_config(None, [*SMALL, *overrides])


# Point every library at the temporary state directory before any of them is imported.
from alignflow.tasks.runtime.state import configure_environment  # noqa: E402

configure_environment(small_config())
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"


@pytest.fixture(scope="session")
def state_dir() -> Path:
    return STATE


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    from alignflow.tasks.runtime.models import resolve_model

    cfg = small_config()
    return Path(resolve_model(cfg.training.model_name_or_path, cfg.training.tiny_model, STATE / "models"))


@pytest.fixture(scope="session")
def pairs_frame():
    """A small, valid preference dataset in the shape the generate stage writes."""
    import pandas as pd

    from alignflow.tasks.generation.prompts import load_prompts

    rows = load_prompts(max_prompts=24)
    return pd.DataFrame(
        {
            "prompt_id": [r["id"] for r in rows],
            "prompt": [r["prompt"] for r in rows],
            "chosen": [r["reference"] for r in rows],
            "rejected": [" ".join(r["reference"].split()[::-1][:12]) for r in rows],
        }
    )


@pytest.fixture
def sqlite_model(tmp_path):
    """A registered model `m` with three versions on a SQLite tracking store of its own."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_registered_model("m")
    for _ in range(3):
        client.create_model_version("m", str(tmp_path))
    return uri, client


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from alignflow.tasks.runtime.ray import ensure_ray

    ensure_ray(None, {k: v for k, v in os.environ.items() if k.startswith(("HF_", "TRL_", "ALIGNFLOW", "RAY_TRAIN"))})
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


# Integration tests (tests/integration/) start Ray, a server (Prefect, MLflow, the fake OpenAI endpoint), a browser,
# distilabel's step processes or a whole flow; tests/unit/ holds the fast ones (`pytest tests/unit`, about a minute).
# A test elsewhere that uses a Ray or Prefect fixture is marked integration too.
INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"
INTEGRATION_FIXTURES = {"ray_session", "prefect_harness"}


def pytest_collection_modifyitems(config, items):
    # The production-stack tests (a node killed mid-training, S3 storage, Postgres) take minutes each and
    # start servers and Ray nodes of their own: they run when asked for (`pytest -m stack`), not in `make test`.
    stack_asked = "stack" in (config.getoption("markexpr", "") or "")
    skip_stack = pytest.mark.skip(
        reason="production-stack test: run with `.venv/bin/pytest -m stack` (docs/testing.md)"
    )
    for item in items:
        in_dir = INTEGRATION_DIR in Path(str(item.path)).parents
        if in_dir or INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        if "stack" in item.keywords and not stack_asked:
            item.add_marker(skip_stack)


def pytest_sessionfinish(session, exitstatus):
    import shutil

    if not os.environ.get("ALIGNFLOW_KEEP_TEST_STATE"):
        shutil.rmtree(STATE, ignore_errors=True)
