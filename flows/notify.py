"""Failure notification: a Prefect flow state hook that POSTs to `runtime.notify_webhook`.

Declared on the flow decorators (`on_failure`, `on_crashed`) of the alignment flow and of
the deployments' entry flow. The message is JSON with a Slack/Teams-style `text` line plus
the details a receiver can route on:

    {"text": "...", "event": "alignflow.flow-run.failed" | "alignflow.flow-run.crashed",
     "flow": "...", "flow_run_id": "...", "flow_run_name": "...", "deployment_id": "..." | null,
     "state": "Failed", "message": "<the state's message: which stage, which error>",
     "prefect_url": "..." | null, "run_name": "<config name>", "model_name": "...",
     "mlflow_run_id": "..." | null, "mlflow_run_status": "FAILED" | null, "mlflow_run_url": "..." | null}

A hook never raises: a notification that cannot be delivered is logged on the flow run
and the run keeps its own state. No webhook configured: nothing is sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from alignflow.conf.schema import PipelineConfig
from alignflow.flows.links import mlflow_run_url, mlflow_ui_url
from alignflow.tasks.registry.tracking import mlflow_client

ATTEMPTS = 3


def _logger(flow_run: Any, flow: Any):
    from prefect.logging.loggers import flow_run_logger

    return flow_run_logger(flow_run, flow)


def _mlflow_run(config: PipelineConfig, flow_run_id: str) -> dict[str, str | None]:
    """The MLflow run this flow run started (tagged prefect_flow_run_id), if it got that far."""
    try:
        from alignflow.tasks.runtime.state import tracking_uri

        tracking = tracking_uri(config)
        client = mlflow_client(tracking)
        experiment = client.get_experiment_by_name(config.registry.experiment)
        if experiment is None:
            return {}
        runs = client.search_runs(
            [experiment.experiment_id], f"tags.prefect_flow_run_id = '{flow_run_id}'", max_results=1
        )
        if not runs:
            return {}
        info = runs[0].info
        return {
            "mlflow_run_id": info.run_id,
            "mlflow_run_status": info.status,
            "mlflow_run_url": mlflow_run_url(mlflow_ui_url(config, tracking), info.experiment_id, info.run_id),
        }
    except Exception:  # the registry may be what failed; the notification still goes out
        return {}


def payload(flow: Any, flow_run: Any, state: Any, config: PipelineConfig) -> dict[str, Any]:
    from prefect.utilities.urls import url_for

    kind = "crashed" if state.is_crashed() else "failed"
    prefect_url = url_for(flow_run)
    message = (state.message or "").strip()
    body: dict[str, Any] = {
        "event": f"alignflow.flow-run.{kind}",
        "flow": flow.name,
        "flow_run_id": str(flow_run.id),
        "flow_run_name": flow_run.name,
        "deployment_id": str(flow_run.deployment_id) if flow_run.deployment_id else None,
        "state": state.name,
        "message": message,
        "prefect_url": prefect_url,
        "run_name": config.name,
        "model_name": config.registry.model_name,
        **{"mlflow_run_id": None, "mlflow_run_status": None, "mlflow_run_url": None},
        **_mlflow_run(config, str(flow_run.id)),
    }
    text = f"alignflow {flow.name} run {flow_run.name!r} {kind.upper()}: {message[:500]}"
    for label, key in (("Prefect", "prefect_url"), ("MLflow", "mlflow_run_url")):
        if body[key]:
            text += f"\n{label}: {body[key]}"
    return {"text": text, **body}


def post(url: str, body: dict[str, Any], attempts: int = ATTEMPTS, timeout: float = 10.0) -> None:
    """POST JSON; retried on connection errors and 5xx, with a short back-off."""
    import requests

    for attempt in range(1, attempts + 1):
        try:
            response = requests.post(url, json=body, timeout=timeout)
            if response.status_code < 500:
                response.raise_for_status()
                return
            error: Exception = requests.HTTPError(f"{response.status_code} from {url}")
        except requests.ConnectionError as exc:
            error = exc
        if attempt == attempts:
            raise error
        time.sleep(attempt)


def failure_hook(config_of: Callable[[dict[str, Any]], PipelineConfig | None]) -> Callable[[Any, Any, Any], None]:
    """A state hook for `on_failure`/`on_crashed`; `config_of` rebuilds the run's config from its parameters."""

    def notify_webhook(flow: Any, flow_run: Any, state: Any) -> None:
        logger = _logger(flow_run, flow)
        try:
            config = config_of(dict(flow_run.parameters or {}))
        except Exception as exc:
            logger.warning("failure notification skipped: cannot rebuild the run's config (%s)", exc)
            return
        url = config.runtime.notify_webhook if config else None
        if not url:
            return
        try:
            post(url, payload(flow, flow_run, state, config))
            logger.info("failure notification sent to %s", url)
        except Exception as exc:
            logger.error("failure notification to %s failed: %s", url, exc)

    return notify_webhook
