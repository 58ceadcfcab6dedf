"""Before any compute: the registered model's champion was trained from the profile's base model.

A run starts from the champion (`training.start_from: champion`), generates with it (`registry:champion`)
and is judged against it. A profile that names another base model under the same `registry.model_name`
would do all three with another model's champion, and promote a model of one base over one of another.
Every version carries the base model it was trained from (its `base_model` lineage tag,
flows/bookkeeping.py); `foreign_champion` compares the champion's with the profile's, and names both when
they differ. `alignflow run` and `alignflow compare` exit 2 with that message; the flows (a deployment run
too) stop with it before their first stage.

MlflowClient reads the champion (importing mlflow is most of the ~2-3 s the CLI takes to stop here). A state
directory without its SQLite store has no champion, and no store is created to find that out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alignflow.conf.base import CHAMPION_MODEL
from alignflow.conf.evaluation import default_model_name
from alignflow.conf.schema import PipelineConfig
from alignflow.tasks.runtime.state import tracking_uri

BASE_MODEL_TAG = "base_model"  # the lineage tag registration writes: training.model_name_or_path as configured


class ForeignChampion(ValueError):
    """The champion was trained from another base model than the profile's: a config error (exit 2)."""


@dataclass(frozen=True)
class ChampionBase:
    """The champion's version and the base model it was trained from (None: the version has no such tag)."""

    version: str
    base_model: str | None


def _sqlite_path(uri: str) -> Path | None:
    """The file of a `sqlite:///...` store (SQLAlchemy's form: sqlite:////abs/path), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _from_client(uri: str, name: str) -> ChampionBase | None:
    from alignflow.tasks.registry.versions import current_champion

    current = current_champion(uri, name)
    return None if current is None else ChampionBase(str(current.version), current.tags.get(BASE_MODEL_TAG))


def champion_base(uri: str, name: str) -> ChampionBase | None:
    """The champion of `name` on the store at `uri` and its base model; None when it has no champion."""
    path = _sqlite_path(uri)
    if path is not None and not path.is_file():  # no store yet: no champion, and MLflow would create one to say so
        return None
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
