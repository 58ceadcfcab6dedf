"""One wrapper around MLflow's tracking API: runs, params, metrics, artifacts, tags, lineage.

Every function takes the tracking URI and talks through `mlflow_client(uri)`, the one MlflowClient
per URI this process holds. MLflow caches the stores behind a client per URI already, so a
shared client changes nothing on the server; it only stops each call re-resolving them.
mlflow is imported inside the functions: importing it takes seconds, and the CLI's usage
errors must not wait for that.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run


@functools.cache
def mlflow_client(tracking_uri: str) -> MlflowClient:
    """The process's MlflowClient for `tracking_uri` (tracking and model registry)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri)


def git_commit() -> str:
    """The code that runs (a lineage tag): the checkout's commit, or the package version + a hash of its code
    (tasks/runtime/code_version.py; read where the code lies, so a deployment's worker records it too)."""
    from alignflow.tasks.runtime.code_version import code_version

    return code_version()


def config_yaml(config) -> str:
    """The resolved config (profile + overrides + defaults) as YAML, logged with every run."""
    import yaml

    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def start_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    params: dict[str, str],
    tags: dict[str, str],
    artifact_location: str | None = None,
) -> str:
    """Create the flow's MLflow run (stages log into it by id) and return its id.

    A new experiment's artifacts go to `artifact_location` (the state directory by default):
    MLflow's own default is ./mlruns in whatever directory the process runs in.
    """
    from mlflow.entities import Param

    client = mlflow_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = (
        found.experiment_id if found else client.create_experiment(experiment, artifact_location=artifact_location)
    )
    from alignflow.tasks.runtime.code_version import context_tags

    # MLflow's source and user tags (its fluent API sets them, create_run does not); the caller's win.
    from alignflow.tasks.runtime.process_id import DRIVER_TAG, driver_tag

    # The driver tag lets the next run end this one if this process is killed (orphans.py).
    run = client.create_run(experiment_id, run_name=run_name, tags={**context_tags(), DRIVER_TAG: driver_tag(), **tags})
    items = [Param(k, v[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[start : start + 100])
    return run.info.run_id


def start_child_run(
    tracking_uri: str,
    experiment: str,
    parent_run_id: str,
    run_name: str,
    params: dict[str, str],
    tags: dict[str, str],
    artifact_location: str | None = None,
) -> str:
    """A run nested under `parent_run_id` (MLflow's `mlflow.parentRunId` tag: the UI shows it under the parent)."""
    return start_run(
        tracking_uri, experiment, run_name, params, {**tags, "mlflow.parentRunId": parent_run_id}, artifact_location
    )


def child_runs(tracking_uri: str, parent_run_id: str) -> list[Run]:
    """The runs nested under `parent_run_id`, oldest first."""
    client = mlflow_client(tracking_uri)
    parent = client.get_run(parent_run_id)
    found = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=1000
    )
    return sorted(found, key=lambda r: r.info.start_time)


def set_tags(tracking_uri: str, run_id: str, tags: dict[str, str]) -> None:
    client = mlflow_client(tracking_uri)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def run_status(tracking_uri: str, run_id: str) -> str:
    return mlflow_client(tracking_uri).get_run(run_id).info.status


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    mlflow_client(tracking_uri).set_terminated(run_id, status=status)


def log_metrics(tracking_uri: str, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    import time

    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    batch = [Metric(k, float(v), stamp, step) for k, v in metrics.items() if v is not None]
    mlflow_client(tracking_uri).log_batch(run_id, metrics=batch)


def log_artifacts(tracking_uri: str, run_id: str, files: dict[str, Path]) -> None:
    """Log files into the run, each under the artifact folder given as its key."""
    client = mlflow_client(tracking_uri)
    for folder, path in files.items():
        if Path(path).exists():
            client.log_artifact(run_id, str(path), artifact_path=folder)


def log_text(tracking_uri: str, run_id: str, text: str, artifact_file: str) -> None:
    mlflow_client(tracking_uri).log_text(run_id, text, artifact_file)


def log_table(tracking_uri: str, run_id: str, rows: list[dict], artifact_file: str) -> None:
    """A table artifact (MLflow's UI shows it in the run's evaluation view)."""
    import pandas as pd

    mlflow_client(tracking_uri).log_table(run_id, pd.DataFrame(rows), artifact_file)


def log_datasets(tracking_uri: str, run_id: str, splits: dict[str, tuple[str, str]], name: str) -> None:
    """Record the train/test parquet files as the run's MLflow dataset inputs.

    `splits` maps a context (`train`, `test`) to (URI, sha256); the digest MLflow shows is
    the file's sha256 (its first 36 hex digits, MLflow's limit).
    """
    import warnings

    import mlflow.data
    import pandas as pd
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for context, (uri, sha) in splits.items():
        frame = pd.read_parquet(uri.removeprefix("file://"))
        with warnings.catch_warnings():  # schema-inference hints about integer columns
            warnings.simplefilter("ignore")
            dataset = mlflow.data.from_pandas(frame, source=uri, name=f"{name}-{context}", digest=sha[:36])
            entity = dataset._to_mlflow_entity()
        inputs.append(DatasetInput(entity, [InputTag("mlflow.data.context", context)]))
    mlflow_client(tracking_uri).log_inputs(run_id, datasets=inputs)
