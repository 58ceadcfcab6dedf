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
