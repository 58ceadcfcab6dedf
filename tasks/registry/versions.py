"""Model versions in the MLflow registry: register a run's model, tag it, alias it, find the champion.

Every run's model becomes a new version with alias `challenger` and its lineage tags; when
the gate passes, `champion` moves to it through `promotion.promote` (lock, who/when/why,
history). Not being promoted is an outcome, recorded on the version, not an error.
"""

from __future__ import annotations

from collections.abc import Callable
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


def version_count(tracking_uri: str, name: str) -> int:
    """How many versions of `name` the registry holds (0 when there is no such model): the rounds run so far."""
    return len(mlflow_client(tracking_uri).search_model_versions(f"name = '{name}'"))


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

    Idempotent per training run (`register_logged`). The generation defaults fixed into the model are logged on the
    run too, as MLflow logs a model's config there."""
    from mlflow.entities import Param

    from alignflow.tasks.registry.serving import log_serving_model, model_defaults

    def log(model_id: str) -> None:
        client = mlflow_client(tracking_uri)
        run = client.get_run(run_id)
        log_serving_model(model_dir, model_id=model_id)
        defaults = [Param(f"defaults/{k}", str(v)) for k, v in model_defaults(model_dir).items()]
        if new := [p for p in defaults if p.key not in run.data.params]:
            client.log_batch(run_id, params=new)

    return register_logged(tracking_uri, run_id, name, log)


def register_logged(tracking_uri: str, run_id: str, name: str, log: Callable[[str], None]) -> str:
    """A new logged model of the run, filled by `log(model_id)` (a pyfunc's log_model), registered under `name`;
    the version.

    Idempotent per training run: when a version of `name` was already registered from `run_id` (a retried flow, a
    re-run register stage), that version is returned and nothing new is logged.

    The steps are MLflow's `log_model(registered_model_name=...)` inside the run, taken one by one
    so that nothing writes a row twice: inside a run, MLflow copies every step-0 metric of the run
    onto the model by logging it again (the model id is not part of the metrics' key, so each copy
    clashes with the metric already there), and it creates the registered model on every version.
    MLflow absorbs both clashes, but Postgres logs each one as an error.
    """
    existing = find_version(tracking_uri, name, run_id)
    if existing is not None:
        return str(existing.version)

    import mlflow
    from mlflow.entities import LoggedModelOutput

    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow_client(tracking_uri)
    run = client.get_run(run_id)
    model = client.create_logged_model(
        run.info.experiment_id, name="model", source_run_id=run_id, params=run.data.params
    )
    log(model.model_id)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    ensure_registered_model(tracking_uri, name)
    version = client.create_model_version(name, f"models:/{model.model_id}", run_id=run_id, model_id=model.model_id)
    client.set_model_version_tag(name, version.version, "training_run_id", run_id)
    return str(version.version)


def ensure_registered_model(tracking_uri: str, name: str) -> None:
    """Create the registered model `name` unless it exists (read first: a create that clashes is an error
    in Postgres's log; two runs registering their first version at the same moment still may)."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(tracking_uri)
    if promotion.registered_model(client, name) is not None:
        return
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


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
