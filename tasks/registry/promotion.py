"""Champion promotion, rollback and history in the MLflow model registry.

The alias `champion` says which version serves. Every change of it goes through
`promote` or `rollback`, which

- hold a per-model promotion lock while they read the current champion, move the alias
  and append to the history, so that changes of one model's champion are serialized;
- record who (`$ALIGNFLOW_USER` or the OS user), when and why as tags on the version
  (`promoted_by`, `promoted_at`, `promotion_reason`, `promotion_source`, ...);
- append one event to the history: a registered-model tag
  `champion_history.<seq>.<id>` = JSON {seq, action, version, previous, by, at, reason, ...}.
  Each event is its own tag (a new key), so writing one never overwrites another.

The lock is a registered model named `<NAME>.promotion-lock` that exists only while a
promotion holds it: creating a registered model is atomic in MLflow's database (a unique
name), so of two clients only one can create it, whether they talk to a tracking server or
share a SQLite file. A lock older than `LOCK_STALE_S` (its holder died) is broken.

Guarantees: the alias is single-valued, so there is never more than one champion; no
operation here deletes it, so once there is a champion there is always one; under the
lock, history events are numbered in the order the alias moved, and the newest event names
the current champion (`history` reports a mismatch, e.g. after an edit in the MLflow UI).
After moving the alias, the promotion reads it back and fails loudly if it does not hold
its version (someone moved it outside this protocol).
"""

from __future__ import annotations

import getpass
import json
import os
import random
import socket
import time
import uuid
from contextlib import contextmanager, suppress
from datetime import UTC, datetime

from alignflow.tasks.registry.tracking import mlflow_client

# The registered model's aliases: `champion` serves; every new version is `challenger`.
CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_PREFIX = "champion_history."
LOCK_SUFFIX = ".promotion-lock"
LOCK_STALE_S = 30.0
LOCK_TIMEOUT_S = 60.0


class PromotionRefused(RuntimeError):
    """The request cannot be carried out (unknown version, nothing to roll back to, ...)."""


def whoami() -> str:
    user = os.environ.get("ALIGNFLOW_USER")
    if user:
        return user
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the embedded default's (SQLite in the state directory)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    from alignflow.conf.loader import load_config
    from alignflow.tasks.runtime.state import tracking_uri

    return tracking_uri(load_config())


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _error_code(exc: Exception) -> str:
    return getattr(exc, "error_code", "")


def champion_version(client, name: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def _get_version(client, name: str, version: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        return None


@contextmanager
def promotion_lock(client, name: str, timeout: float = LOCK_TIMEOUT_S, stale_after: float = LOCK_STALE_S):
    """Hold the model's promotion lock (see the module docstring) for the `with` block."""
    from mlflow.exceptions import MlflowException

    lock = f"{name}{LOCK_SUFFIX}"
    owner = uuid.uuid4().hex
    holder = json.dumps({"owner": owner, "by": whoami(), "host": socket.gethostname(), "pid": os.getpid()})
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        # Look before taking: a create that clashes is an error in the database's log (Postgres logs
        # every unique-key violation), so a held lock is only read; a create clashes only on a true race.
        held = registered_model(client, lock)
        if held is None:
            try:
                client.create_registered_model(lock, description=holder)
                break
            except MlflowException as exc:
                # MLflow's SQL store answers a name clash by reading the model it clashed with: when its
                # holder deleted the lock in between, that read fails with RESOURCE_DOES_NOT_EXIST.
                if _error_code(exc) not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                    raise
                continue  # lost a race, or the lock was released in between: look again
        if owner in (held.description or ""):
            break  # our create went through although its reply was lost (a client retry)
        age_s = time.time() - held.creation_timestamp / 1000
        if age_s > stale_after:
            try:
                again = client.get_registered_model(lock)
                if again.creation_timestamp == held.creation_timestamp:
                    client.delete_registered_model(lock)
            except MlflowException:
                pass
            continue
        if time.monotonic() > deadline:
            raise PromotionRefused(
                f"{name}: another promotion holds the lock {lock!r} ({held.description}); try again later"
            )
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 1.0)
    try:
        yield
    finally:
        with suppress(MlflowException):
            client.delete_registered_model(lock)


def registered_model(client, name: str):
    """The registered model `name`, or None when it does not exist (for the lock: while nobody holds it)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if _error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def history(tracking_uri: str, name: str) -> list[dict]:
    """The champion changes of `name`, oldest first."""
    from mlflow.exceptions import MlflowException

    try:
        tags = mlflow_client(tracking_uri).get_registered_model(name).tags
    except MlflowException as exc:
        raise PromotionRefused(f"no registered model {name!r}") from exc
    return _events(tags)


def _events(tags: dict[str, str]) -> list[dict]:
    events = []
    for key, value in tags.items():
        if key.startswith(HISTORY_PREFIX):
            try:
                events.append(json.loads(value))
            except json.JSONDecodeError:
                continue
    return sorted(events, key=lambda e: (int(e.get("seq", 0)), e.get("at", "")))


def champion_stack(events: list[dict]) -> list[str]:
    """Replay the history: promotions push a version, a rollback pops back to its target."""
    stack: list[str] = []
    for event in events:
        version = str(event["version"])
        if event.get("action") == "rollback":
            while stack and stack[-1] != version:
                stack.pop()
            if not stack:
                stack.append(version)
        else:
            stack.append(version)
    return stack


def _record(client, name: str, events: list[dict], event: dict) -> dict:
    seq = max((int(e.get("seq", 0)) for e in events), default=0) + 1
    event = {"seq": seq, **event}
    client.set_registered_model_tag(name, f"{HISTORY_PREFIX}{seq:06d}.{uuid.uuid4().hex[:8]}", json.dumps(event))
    return event


def _move_alias(client, name: str, version: str) -> None:
    client.set_registered_model_alias(name, CHAMPION, version)
    now_serving = champion_version(client, name)
    if now_serving != version:
        raise RuntimeError(
            f"{name}: set @champion to version {version} but it reads {now_serving}: "
            "the alias was moved outside alignflow's promotion lock"
        )


def promote(
    tracking_uri: str,
    name: str,
    version: str | int,
    reason: str,
    user: str | None = None,
    source: str = "manual",
    expected_champion: str | None | bool = False,
    flow_run: str | None = None,
) -> dict:
    """Make `version` the champion of `name`; record who, when and why.

    `source`: `manual` (a person; needs a reason, and is the only way a version that failed
    the gate can become champion) or `gate` (the pipeline, only for a version that passed).
    `expected_champion` (a version, or None for "no champion"; False: do not check) makes
    it a compare-and-set: refused when the champion changed since the caller looked.
    """
    if source not in ("manual", "gate"):
        raise ValueError(f"source must be manual or gate, not {source!r}")
    reason = (reason or "").strip()
    if not reason:
        raise PromotionRefused("a reason is required to promote a model")
    version = str(version)
    user = user or whoami()
    client = mlflow_client(tracking_uri)
    found = _get_version(client, name, version)
    if found is None:
        raise PromotionRefused(f"{name} has no version {version}")
    if str(found.status) not in ("READY", "ModelVersionStatus.READY", "1"):
        raise PromotionRefused(f"{name} version {version} is not ready ({found.status})")
    outcome = found.tags.get("gate.outcome")
    if source == "gate" and outcome == "not promoted":
        raise PromotionRefused(f"{name} version {version} did not pass the gate ({found.tags.get('gate.reason')})")
    with promotion_lock(client, name):
        events = _events(client.get_registered_model(name).tags)
        previous = champion_version(client, name)
        if expected_champion is not False and previous != (
            None if expected_champion is None else str(expected_champion)
        ):
            raise PromotionRefused(
                f"{name}: the champion changed from {expected_champion} to {previous} since the candidate "
                "was evaluated; evaluate again or promote by hand"
            )
        if previous == version:
            return {"model": name, "version": version, "previous": previous, "changed": False, "by": user}
        _move_alias(client, name, version)
        at = _now()
        tags = {
            "promoted_by": user,
            "promoted_at": at,
            "promotion_reason": reason[:5000],
            "promotion_source": source,
            "promotion_previous_champion": previous or "",
        }
        if outcome == "not promoted":
            tags["promotion_gate_overridden"] = "true"
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        event = _record(
            client,
            name,
            events,
            {
                "action": "promote" if source == "manual" else "gate",
                "version": version,
                "previous": previous,
                "by": user,
                "at": at,
                "reason": reason[:1000],
                "flow_run": flow_run,
            },
        )
    overridden = outcome == "not promoted"
    return {
        "model": name,
        "changed": True,
        **event,
        "gate_overridden": overridden,
        "gate_reason": found.tags.get("gate.reason", "") if overridden else "",
    }


def versions(tracking_uri: str, name: str) -> list[dict]:
    """Every version of `name`, newest first, with its aliases and the gate's outcome and evidence."""
    client = mlflow_client(tracking_uri)
    aliases: dict[str, list[str]] = {}
    for alias, version in (client.get_registered_model(name).aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    found = client.search_model_versions(f"name = '{name}'")
    return [
        {
            "version": str(v.version),
            "aliases": sorted(aliases.get(str(v.version), [])),
            "created": datetime.fromtimestamp(v.creation_timestamp / 1000, tz=UTC).isoformat(timespec="seconds"),
            "gate": v.tags.get("gate.outcome", "-"),
            "against": v.tags.get("gate.against", "-"),
            "win_rate": v.tags.get("gate.win_rate", "-"),
            "ci95": v.tags.get("gate.win_rate_ci95", "-"),
            "n_prompts": v.tags.get("gate.n_prompts", "-"),
            "vs_base": v.tags.get("vs_base.win_rate", "-"),
            "vs_base_ci95": f"[{v.tags['vs_base.low']}, {v.tags['vs_base.high']}]" if "vs_base.low" in v.tags else "-",
            "overridden": v.tags.get("promotion_gate_overridden") == "true",
        }
        for v in sorted(found, key=lambda v: int(v.version), reverse=True)
    ]


def rollback(
    tracking_uri: str, name: str, reason: str | None = None, user: str | None = None, flow_run: str | None = None
) -> dict:
    """Give `champion` back to the version that held it before the current one."""
    user = user or whoami()
    reason = (reason or "").strip() or "rollback"
    client = mlflow_client(tracking_uri)
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        raise PromotionRefused(f"no registered model {name!r}") from exc
    with promotion_lock(client, name):
        events = _events(client.get_registered_model(name).tags)
        current = champion_version(client, name)
        if current is None:
            raise PromotionRefused(f"{name} has no champion to roll back")
        stack = champion_stack(events)
        if not stack or stack[-1] != current:
            stack.append(current)  # the alias was moved outside alignflow: treat it as the latest
        stack.pop()
        while stack and (stack[-1] == current or _get_version(client, name, stack[-1]) is None):
            stack.pop()  # deleted versions cannot serve
        if not stack:
            raise PromotionRefused(f"{name}: nothing to roll back to (version {current} is the first champion)")
        target = stack[-1]
        _move_alias(client, name, target)
        at = _now()
        for key, value in {
            "promoted_by": user,
            "promoted_at": at,
            "promotion_reason": f"rollback from version {current}: {reason}"[:5000],
            "promotion_source": "rollback",
            "promotion_previous_champion": current,
        }.items():
            client.set_model_version_tag(name, target, key, value)
        for key, value in {"rolled_back_by": user, "rolled_back_at": at, "rollback_reason": reason[:5000]}.items():
            client.set_model_version_tag(name, current, key, value)
        event = _record(
            client,
            name,
            events,
            {
                "action": "rollback",
                "version": target,
                "previous": current,
                "by": user,
                "at": at,
                "reason": reason[:1000],
                "flow_run": flow_run,
            },
        )
    return {"model": name, "changed": True, **event}
