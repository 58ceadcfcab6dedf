"""Before any compute: the registered model's champion was trained from the profile's base model.

A run starts from the champion (`training.start_from: champion`), generates with it (`registry:champion`)
and is judged against it. A profile that names another base model under the same `registry.model_name`
would do all three with another model's champion, and promote a model of one base over one of another.
Every version carries the base model it was trained from (its `base_model` lineage tag,
flows/bookkeeping.py); `foreign_champion` compares the champion's with the profile's, and names both when
they differ. `alignflow run` and `alignflow compare` exit 2 with that message; the flows (a deployment run
too) stop with it before their first stage.

It must answer in well under the CLI's 5 s, so mlflow (seconds to import) is not imported for the two
stores alignflow sets up: the local SQLite store is read directly and read-only (a state directory without
one has no champion, and none is created), a tracking server through MLflow's REST API. Any other store, or
an answer this module does not expect, goes through MlflowClient.
"""

from __future__ import annotations

import json
import os
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from alignflow.conf.base import CHAMPION_MODEL
from alignflow.conf.evaluation import default_model_name
from alignflow.conf.schema import PipelineConfig
from alignflow.tasks.registry.promotion import CHAMPION
from alignflow.tasks.runtime.state import tracking_uri

BASE_MODEL_TAG = "base_model"  # the lineage tag registration writes: training.model_name_or_path as configured
TIMEOUT = 5.0  # seconds: a tracking server that answers slower than this fails the CLI's bound anyway


class ForeignChampion(ValueError):
    """The champion was trained from another base model than the profile's: a config error (exit 2)."""


@dataclass(frozen=True)
class ChampionBase:
    """The champion's version and the base model it was trained from (None: the version has no such tag)."""

    version: str
    base_model: str | None


class _Unread(Exception):
    """The light reader could not tell: ask MlflowClient."""


def _sqlite_path(uri: str) -> Path | None:
    """The file of a `sqlite:///...` store (SQLAlchemy's form: sqlite:////abs/path), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _from_sqlite(path: Path, name: str) -> ChampionBase | None:
    if not path.is_file():  # no store yet: no champion, and nothing is created to find that out
        return None
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=TIMEOUT)) as db:
            alias = db.execute(
                "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?", (name, CHAMPION)
            ).fetchone()
            if alias is None:
                return None
            tag = db.execute(
                "SELECT value FROM model_version_tags WHERE name = ? AND version = ? AND key = ?",
                (name, alias[0], BASE_MODEL_TAG),
            ).fetchone()
    except sqlite3.Error as exc:  # an empty file, another MLflow schema: let MLflow read it
        raise _Unread(str(exc)) from exc
    return ChampionBase(str(alias[0]), tag[0] if tag else None)


def _auth_headers() -> dict[str, str]:
    """The credentials MlflowClient would send: MLFLOW_TRACKING_USERNAME/PASSWORD, else MLFLOW_TRACKING_TOKEN."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user:
        return {"Authorization": "Basic " + b64encode(f"{user}:{password or ''}".encode()).decode()}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _no_champion(exc: urllib.error.HTTPError) -> bool:
    """MLflow's answer when there is nothing to check: 404 for a model it does not know, 400 for a model
    without the alias (INVALID_PARAMETER_VALUE "Registered model alias champion not found.")."""
    if exc.code == 404:
        return True
    try:
        error = json.loads(exc.read() or b"{}")
    except ValueError:
        return False
    message = str(error.get("message", ""))
    return (
        exc.code == 400
        and error.get("error_code") == "INVALID_PARAMETER_VALUE"
        and "alias" in message
        and "not found" in message
    )


def _from_server(uri: str, name: str) -> ChampionBase | None:
    query = urllib.parse.urlencode({"name": name, "alias": CHAMPION})
    request = urllib.request.Request(
        f"{uri.rstrip('/')}/api/2.0/mlflow/registered-models/alias?{query}", headers=_auth_headers()
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            version = json.load(response)["model_version"]
        tags = {t["key"]: t.get("value") for t in version.get("tags", [])}
        return ChampionBase(str(version["version"]), tags.get(BASE_MODEL_TAG))
    except urllib.error.HTTPError as exc:
        if _no_champion(exc):
            return None
        raise _Unread(f"answers {exc.code}") from exc
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # not the answer MLflow gives
        raise _Unread(str(exc)) from exc


def _from_client(uri: str, name: str) -> ChampionBase | None:
    from alignflow.tasks.registry.versions import current_champion

    current = current_champion(uri, name)
    return None if current is None else ChampionBase(str(current.version), current.tags.get(BASE_MODEL_TAG))


def champion_base(uri: str, name: str) -> ChampionBase | None:
    """The champion of `name` on the store at `uri` and its base model; None when it has no champion."""
    registry = os.environ.get("MLFLOW_REGISTRY_URI")
    if registry and registry != uri:  # the registry lives elsewhere: only MLflow knows how to reach it
        return _from_client(uri, name)
    try:
        path = _sqlite_path(uri)
        if path is not None:
            return _from_sqlite(path, name)
        if uri.startswith(("http://", "https://")):
            return _from_server(uri, name)
    except _Unread:
        pass
    return _from_client(uri, name)


def same_base(recorded: str, configured: str) -> bool:
    """One base model named twice: the same string, up to a trailing slash or how a local folder is written."""
    if recorded.rstrip("/") == configured.rstrip("/"):
        return True
    local = not any(n.startswith("builtin:") or "://" in n for n in (recorded, configured))
    return local and Path(recorded).expanduser().resolve() == Path(configured).expanduser().resolve()


def _roles(config: PipelineConfig) -> str:
    """What the run would do with the champion: always judge against it; maybe start from and generate with it."""
    roles = ["start from it"] if config.training.start_from == "champion" else []
    if any(g.model == CHAMPION_MODEL for g in config.generation.generators) and not config.generation.preference_data:
        roles.append("generate its data with it")
    return ", ".join(roles) + (" and " if roles else "") + "be judged against it"


def foreign_champion(config: PipelineConfig) -> str | None:
    """Why the run must not meet the registered model's champion (it came from another base model), or None."""
    name, base = config.registry.model_name, config.training.model_name_or_path
    current = champion_base(tracking_uri(config), name)
    # No champion yet, or one registered without lineage (by hand, elsewhere): nothing to compare.
    if current is None or current.base_model is None or same_base(current.base_model, base):
        return None
    own = default_model_name(base)
    rename = (
        f"registry.model_name={own}, the default when the profile sets none"
        if own != name
        else "set another registry.model_name"
    )
    return (
        f"registry.model_name: {name} v{current.version} is champion, trained from base model "
        f"{current.base_model}, but training.model_name_or_path is {base}: this run would {_roles(config)}. "
        f"Register this base model under a name of its own ({rename}), "
        f"or set training.model_name_or_path={current.base_model}."
    )


def check_champion_base(config: PipelineConfig) -> None:
    """Raise ForeignChampion (naming both base models) when the champion came from another base model."""
    problem = foreign_champion(config)
    if problem:
        raise ForeignChampion(problem)
