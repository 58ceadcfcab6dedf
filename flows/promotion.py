"""Manual promotion and rollback as Prefect flows, so they can be triggered from the UI.

    promote_model(name, version, reason)   a version becomes `champion` (even one that failed
                                           the gate: a person decided, and said why)
    rollback_model(name, reason)           `champion` goes back to the previous champion

Both record who (the `user` parameter, else $ALIGNFLOW_USER or the OS user), when and why
on the model version and in the model's champion history, with this flow run's URL. The
change runs in the `champion-change` task, one at a time on a server (flows/limits.py). The
CLI (`alignflow promote|rollback|history`) calls the same functions without Prefect.
"""

from __future__ import annotations

from functools import partial

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from alignflow.flows.limits import champion_change
from alignflow.tasks.registry import promotion


def _flow_run_ref() -> str | None:
    url = getattr(flow_run, "ui_url", None)
    return url or (str(flow_run.id) if flow_run.id else None)


def _report(result: dict, title: str) -> None:
    create_markdown_artifact(
        f"## {title}\n\n"
        f"`{result['model']}` @champion: version {result.get('previous')} -> **{result['version']}**\n\n"
        f"by {result.get('by')} at {result.get('at', '-')}: {result.get('reason', '')}",
        key="champion-change",
    )


@flow(name="promote-model", description="Make a registered model version the champion, with a reason.")
def promote_model(
    name: str, version: int, reason: str, tracking_uri: str | None = None, user: str | None = None
) -> dict:
    """Move `champion` of `name` to `version`; `reason` is recorded with who and when.

    Args:
        name: The registered model (MLflow), e.g. alignflow-smollm2-135m-instruct (the default: alignflow-<base model>).
        version: The model version to make champion; one that failed the gate can be promoted too, and is then
            tagged promotion_gate_overridden=true.
        reason: Why, in words a colleague reads later: recorded on the version and in the champion history.
        tracking_uri: The MLflow tracking server (default: $MLFLOW_TRACKING_URI, else the state directory's SQLite).
        user: Who decided (default: the authenticated user, else $ALIGNFLOW_USER, else the OS user).
    """
    uri = tracking_uri or promotion.default_tracking_uri()
    result = champion_change(
        partial(
            promotion.promote, uri, name, str(version), reason, user=user, source="manual", flow_run=_flow_run_ref()
        )
    )
    if result["changed"]:
        overridden = " (gate overridden: it had not passed)" if result.get("gate_overridden") else ""
        _report(result, f"promoted {name} version {version}{overridden}")
    get_run_logger().info("%s version %s is champion (was %s)", name, version, result.get("previous"))
    return result


@flow(name="rollback-model", description="Give the champion alias back to the previous champion.")
def rollback_model(
    name: str, reason: str = "rollback", tracking_uri: str | None = None, user: str | None = None
) -> dict:
    """Move `champion` of `name` back to the version that held it before the current one.

    Args:
        name: The registered model (MLflow), e.g. alignflow-smollm2-135m-instruct (the default: alignflow-<base model>).
        reason: Why the current champion is withdrawn: recorded on the version and in the champion history.
        tracking_uri: The MLflow tracking server (default: $MLFLOW_TRACKING_URI, else the state directory's SQLite).
        user: Who decided (default: the authenticated user, else $ALIGNFLOW_USER, else the OS user).
    """
    uri = tracking_uri or promotion.default_tracking_uri()
    result = champion_change(partial(promotion.rollback, uri, name, reason, user=user, flow_run=_flow_run_ref()))
    _report(result, f"rolled back {name} to version {result['version']}")
    get_run_logger().info("%s rolled back from version %s to %s", name, result["previous"], result["version"])
    return result
