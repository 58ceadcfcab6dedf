"""Notifications: a JSON message to the team's webhook on the outcomes `runtime.notify_on` names.

- failed, crashed: a Prefect flow state hook (`failure_hook`), declared on the flow decorators
  (`on_failure`, `on_crashed`) of the alignment, comparison and deployments' entry flows;
- promoted, not promoted: sent by the flow when the gate has decided (`notify_outcome`), with the
  win rate, its 95% interval and n, the gate's reason and the MLflow model version's link.

Every message has a Slack/Teams-style `text` line plus the details a receiver can route on:

    {"text": "...", "event": "alignflow.flow-run.failed" | "alignflow.flow-run.crashed",
     "flow": "...", "flow_run_id": "...", "flow_run_name": "...", "deployment_id": "..." | null,
     "state": "Failed", "message": "<the state's message: which stage, which error>",
     "prefect_url": "..." | null, "run_name": "<config name>", "model_name": "...",
     "mlflow_run_id": "..." | null, "mlflow_run_status": "FAILED" | null, "mlflow_run_url": "..." | null}

    {"text": "...", "event": "alignflow.model.promoted" | "alignflow.model.not-promoted",
     "flow", "flow_run_id", "flow_run_name", "prefect_url", "run_name", "model_name", "model_version",
     "promoted": true | false, "against": "champion v3" | "base", "win_rate": 0.61, "win_rate_low": 0.52,
     "win_rate_high": 0.70, "n_prompts": 120, "reason": "<the gate's reason>", "mlflow_run_id": "...",
     "mlflow_version_url": "<the MLflow UI's page of the version, else models:/NAME/VERSION>"}

The webhook's URL is read where it is kept only when a message is sent (flows/webhook.py), and
is never logged: a log line names where it is kept. A notification never changes a run's outcome:
one that cannot be delivered is logged on the flow run, and the run keeps its own state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from alignflow.conf.runtime import NotifyEvent
from alignflow.conf.schema import PipelineConfig
from alignflow.flows.links import mlflow_run_url, mlflow_ui_url
from alignflow.flows.webhook import DeliveryFailed, WebhookUnavailable, post, resolve_webhook
from alignflow.tasks.registry.tracking import mlflow_client

if TYPE_CHECKING:
    from alignflow.flows.stages import Registration

EVENTS: dict[NotifyEvent, str] = {
    "failed": "alignflow.flow-run.failed",
    "crashed": "alignflow.flow-run.crashed",
    "promoted": "alignflow.model.promoted",
    "not_promoted": "alignflow.model.not-promoted",
}


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


class OutcomeMessage(BaseModel):
    """A promoted / not promoted message: the gate's decision with its evidence, and where to look."""

    flow: str | None
    flow_run_id: str | None
    flow_run_name: str | None
    prefect_url: str | None
    run_name: str
    model_name: str
    model_version: str
    promoted: bool
    against: str
    win_rate: float
    win_rate_low: float
    win_rate_high: float
    n_prompts: int
    reason: str
    mlflow_run_id: str
    mlflow_version_url: str

    @property
    def kind(self) -> NotifyEvent:
        return "promoted" if self.promoted else "not_promoted"

    def body(self) -> dict[str, Any]:
        verdict = "PROMOTED to champion" if self.promoted else "NOT PROMOTED"
        text = (
            f"alignflow {self.flow or 'alignment'} run {self.flow_run_name or self.run_name!r}: "
            f"{self.model_name} v{self.model_version} {verdict}\n"
            f"win rate against {self.against}: {self.win_rate:.3f} "
            f"[{self.win_rate_low:.3f}, {self.win_rate_high:.3f}] (95% interval, n={self.n_prompts} prompts)\n"
            f"gate: {self.reason[:500]}\n"
            f"MLflow: {self.mlflow_version_url}"
        )
        if self.prefect_url:
            text += f"\nPrefect: {self.prefect_url}"
        return {"text": text, "event": EVENTS[self.kind], **self.model_dump()}


def outcome_message(
    config: PipelineConfig, registration: Registration, mlflow_run_id: str, version_url: str | None
) -> OutcomeMessage:
    """The message of a registered version's gate decision, in the flow run that made it."""
    from prefect.runtime import flow_run

    decision = registration.decision
    return OutcomeMessage(
        flow=flow_run.flow_name,
        flow_run_id=str(flow_run.id) if flow_run.id else None,
        flow_run_name=flow_run.name,
        prefect_url=flow_run.ui_url,
        run_name=config.name,
        model_name=registration.model,
        model_version=str(registration.version),
        promoted=registration.promoted,
        against=decision.against,
        win_rate=decision.estimate,
        win_rate_low=decision.low,
        win_rate_high=decision.high,
        n_prompts=decision.n_prompts,
        reason=decision.reason,
        mlflow_run_id=mlflow_run_id,
        # Without a UI address (runtime.mlflow_ui_url), the version's registry URI still says which one it is.
        mlflow_version_url=version_url or f"models:/{registration.model}/{registration.version}",
    )


def notify_outcome(
    config: PipelineConfig, registration: Registration, mlflow_run_id: str, version_url: str | None
) -> bool:
    """Send the gate's outcome when runtime.notify_on names it; True when delivered. Never raises (see `send`)."""
    from prefect import get_run_logger

    try:
        logger: logging.Logger | logging.LoggerAdapter = get_run_logger()
    except Exception:  # noqa: BLE001 (outside a flow run: the module's logger)
        logger = logging.getLogger(__name__)
    try:
        message = outcome_message(config, registration, mlflow_run_id, version_url)
        body = message.body()
    except Exception as exc:  # noqa: BLE001
        logger.error("outcome notification not sent: cannot build it (%s: %s)", type(exc).__name__, exc)
        return False
    return send(config, message.kind, body, logger)


def send(
    config: PipelineConfig, kind: NotifyEvent, body: dict[str, Any], logger: logging.Logger | logging.LoggerAdapter
) -> bool:
    """POST `body` when `kind` is among runtime.notify_on and a webhook is configured; True when delivered.

    Never raises: a notification is news about the run, not part of it."""
    what = "failure" if kind in ("failed", "crashed") else "outcome"
    if kind not in config.runtime.notify_on:
        return False
    try:
        webhook = resolve_webhook(config.runtime)
        if webhook is None:
            return False
        post(webhook, {**body, "event": EVENTS[kind]})
    except (WebhookUnavailable, DeliveryFailed) as exc:  # their messages never hold the URL
        logger.error("%s notification (%s) not sent: %s", what, kind, exc)
        return False
    except Exception as exc:  # noqa: BLE001 (anything else is named by its kind only: its message might hold the URL)
        logger.error("%s notification (%s) not sent: %s", what, kind, type(exc).__name__)
        return False
    logger.info("%s notification (%s) sent to the webhook in %s", what, kind, webhook.source)
    return True


def failure_hook(config_of: Callable[[dict[str, Any]], PipelineConfig | None]) -> Callable[[Any, Any, Any], None]:
    """A state hook for `on_failure`/`on_crashed`; `config_of` rebuilds the run's config from its parameters."""

    def notify_webhook(flow: Any, flow_run: Any, state: Any) -> None:
        logger = _logger(flow_run, flow)
        try:
            config = config_of(dict(flow_run.parameters or {}))
        except Exception as exc:
            logger.warning("failure notification skipped: cannot rebuild the run's config (%s)", exc)
            return
        if config is None or config.runtime.webhook_source() is None:
            return
        kind = "crashed" if state.is_crashed() else "failed"
        if kind not in config.runtime.notify_on:
            return
        try:
            body = payload(flow, flow_run, state, config)
        except Exception as exc:  # noqa: BLE001 (a hook never raises)
            logger.error("failure notification not sent: cannot build it (%s)", type(exc).__name__)
            return
        send(config, kind, body, logger)

    return notify_webhook
