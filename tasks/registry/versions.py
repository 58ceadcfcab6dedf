"""Model versions in the MLflow registry: register a run's model, tag it, alias it, find the champion.

Every run's model becomes a new version with alias `challenger` and its lineage tags; when
the gate passes, `champion` moves to it through `promotion.promote` (lock, who/when/why,
history). Not being promoted is an outcome, recorded on the version, not an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from alignflow.tasks.registry import promotion
from alignflow.tasks.registry.promotion import CHALLENGER, CHAMPION
from alignflow.tasks.registry.tracking import mlflow_client

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion


def current_champion(tracking_uri: str, name: str) -> ModelVersion | None:
    """The champion ModelVersion, or None when the model has none yet."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client(tracking_uri).get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def export_champion(tracking_uri: str, name: str, dest: Path) -> Path | None:
    """Save the champion's weights and tokenizer as a plain HF folder (for evaluation).

    None when there is no champion, or when its artifacts cannot be loaded (then the gate
    falls back to the metrics recorded when the champion was registered).
    """
    import logging

    import mlflow
    from mlflow.exceptions import MlflowException

    from alignflow.tasks.registry.serving import download_model_dir

    if current_champion(tracking_uri, name) is None:
        return None
    mlflow.set_tracking_uri(tracking_uri)
    try:
        return download_model_dir(f"models:/{name}@{CHAMPION}", dest)
    except (MlflowException, OSError, KeyError) as exc:
        logging.getLogger(__name__).warning(
            "champion of %s could not be loaded (%s); the gate uses its recorded metrics", name, exc
        )
        return None


def find_version(tracking_uri: str, name: str, run_id: str) -> ModelVersion | None:
    """The version of `name` already registered from this MLflow run, or None."""
    from mlflow.exceptions import MlflowException

    try:
        found = mlflow_client(tracking_uri).search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:
        return None
    return min(found, key=lambda v: int(v.version)) if found else None


def log_model_version(tracking_uri: str, run_id: str, name: str, model_dir: Path) -> str:
    """Log the model as the serving pyfunc (alignflow.tasks.registry.serving) and register it; the version.

    Idempotent per training run: when a version of `name` was already registered from
    `run_id` (a retried flow, a re-run register stage), that version is returned and
    nothing new is logged.
    """
    existing = find_version(tracking_uri, name, run_id)
    if existing is not None:
        return str(existing.version)

    import mlflow

    from alignflow.tasks.registry.serving import log_serving_model

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = log_serving_model(model_dir, registered_model_name=name)
    version = str(info.registered_model_version)
    mlflow_client(tracking_uri).set_model_version_tag(name, version, "training_run_id", run_id)
    return version


def tag_and_alias(
    tracking_uri: str,
    name: str,
    version: str,
    tags: dict[str, str],
    promote: bool,
    expected_champion: str | None | bool = False,
    flow_run: str | None = None,
) -> None:
    """Tag the version, make it `challenger`, and when `promote` hand it `champion`.

    Promotion goes through alignflow.tasks.registry.promotion (lock, who/when/why tags, history) as source
    `gate`; `expected_champion` makes it refuse when the champion moved since evaluation.
    """
    client = mlflow_client(tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, CHALLENGER, version)
    if promote:
        promotion.promote(
            tracking_uri,
            name,
            version,
            reason=f"gate: {tags.get('gate.reason', 'passed')}",
            source="gate",
            expected_champion=expected_champion,
            flow_run=flow_run,
        )
