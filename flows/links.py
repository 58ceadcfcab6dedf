"""Links into the MLflow UI for Prefect artifacts and failure notifications."""

from __future__ import annotations

import os
from urllib.parse import quote

from alignflow.conf.schema import PipelineConfig
from alignflow.tasks.registry.tracking import mlflow_client

MLFLOW_UI_ENV = "ALIGNFLOW_MLFLOW_UI_URL"  # set by `make serve` for the runs its worker starts


def mlflow_ui_url(config: PipelineConfig, tracking: str | None = None) -> str | None:
    """runtime.mlflow_ui_url, else $ALIGNFLOW_MLFLOW_UI_URL, else the tracking URI when it is a server."""
    tracking = tracking or config.runtime.tracking_uri or ""
    url = config.runtime.mlflow_ui_url or os.environ.get(MLFLOW_UI_ENV)
    if not url and tracking.startswith(("http://", "https://")):
        url = tracking  # an MLflow tracking server serves its UI at the same address
    return url.rstrip("/") if url else None


def mlflow_run_url(ui: str | None, experiment_id: str, run_id: str) -> str | None:
    return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}" if ui else None


def model_version_url(ui: str | None, name: str, version: str | int) -> str | None:
    return f"{ui}/#/models/{quote(name, safe='')}/versions/{version}" if ui else None


def experiment_of(tracking: str, run_id: str) -> str:
    return mlflow_client(tracking).get_run(run_id).info.experiment_id
