"""Manual promotion and rollback as Prefect flows, so they can be triggered from the UI.

    promote_model(name, version, reason)   a version becomes `champion` (even one that failed
                                           the gate: a person decided, and said why)
    rollback_model(name, reason)           `champion` goes back to the previous champion

Both record who (the `user` parameter, else $ALIGNFLOW_USER or the OS user), when and why
on the model version and in the model's champion history, with this flow run's URL. The
CLI (`alignflow promote|rollback|history`) calls the same functions without Prefect.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

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
    """Move `champion` of `name` to `version`; `reason` is recorded with who and when."""
    uri = tracking_uri or promotion.default_tracking_uri()
    result = promotion.promote(uri, name, str(version), reason, user=user, source="manual", flow_run=_flow_run_ref())
    if result["changed"]:
        _report(result, f"promoted {name} version {version}")
    get_run_logger().info("%s version %s is champion (was %s)", name, version, result.get("previous"))
    return result


@flow(name="rollback-model", description="Give the champion alias back to the previous champion.")
def rollback_model(
    name: str, reason: str = "rollback", tracking_uri: str | None = None, user: str | None = None
) -> dict:
    """Move `champion` of `name` back to the version that held it before the current one."""
    uri = tracking_uri or promotion.default_tracking_uri()
    result = promotion.rollback(uri, name, reason, user=user, flow_run=_flow_run_ref())
    _report(result, f"rolled back {name} to version {result['version']}")
    get_run_logger().info("%s rolled back from version %s to %s", name, result["previous"], result["version"])
    return result
