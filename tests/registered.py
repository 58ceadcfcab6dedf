"""A registered model for the tests that read one: the tiny model as version 1 and `champion` of its own
SQLite-backed MLflow store (a folder of the session's state directory)."""

from __future__ import annotations

from pathlib import Path


def tiny_champion(model_dir: Path, root: Path, name: str) -> tuple[str, str]:
    """Register `model_dir` as `name`'s champion in an MLflow store under `root`; (tracking URI, version)."""
    from mlflow import MlflowClient

    from alignflow.tasks.registry.tracking import start_run
    from alignflow.tasks.registry.versions import log_model_version

    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    run_id = start_run(uri, name, root.name, {}, {}, (root / "artifacts").as_uri())
    version = log_model_version(uri, run_id, name, model_dir)
    MlflowClient(uri).set_registered_model_alias(name, "champion", version)
    return uri, version


def tiny_reward_model(model_dir: Path, root: Path, name: str) -> tuple[str, str]:
    """A one-label classifier built from the tiny model `model_dir` (its score head as initialised, no training:
    seconds, not a Ray run), registered as `name`'s champion the way `alignflow reward-model` registers one (the
    reward pyfunc, its `hf_model` artifact); (tracking URI, version). For judge tests that need a registered
    reward model, not a good one; tests/integration/test_reward_model_flow.py trains one through the flow."""
    from mlflow import MlflowClient
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alignflow.tasks.registry.tracking import start_run
    from alignflow.tasks.reward.register import log_reward_version

    folder = root / f"{name}-hf"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, pad_token_id=pad).save_pretrained(
        folder
    )
    tokenizer.save_pretrained(folder)
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    run_id = start_run(uri, name, f"{root.name}-reward", {}, {}, (root / "artifacts").as_uri())
    version = log_reward_version(uri, run_id, name, folder)
    MlflowClient(uri).set_registered_model_alias(name, "champion", version)
    return uri, version
