"""The profile a deployment run names, where its YAML text is read from, and how the run's knobs resolve.

A profile is one of:
  - an in-package name: `pipeline`, `cluster`, `recipes/orpo`, ... (a conf/ file without `.yaml`);
  - a path or fsspec URL of a YAML file readable where the run executes (the worker): `/etc/team/nightly.yaml`,
    `~/profiles/team.yaml`, `file:///...`, `s3://bucket/team.yaml`, or a relative `*.yaml` path (from the
    worker's working directory);
  - `variable:NAME`: a Prefect Variable holding the profile's YAML text (edited in the Prefect UI, no redeploy).

Light on purpose (alignflow.conf.loader and the standard library; fsspec and Prefect imported when a profile
needs them): `alignflow serve/deploy` check their defaults with it before anything starts.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from alignflow.conf.loader import DEFAULT_PROFILE, ConfigError, load_config_text
from alignflow.conf.schema import PipelineConfig

CONF_DIR = DEFAULT_PROFILE.parent
DEFAULT = DEFAULT_PROFILE.stem  # "pipeline", the embedded default
VARIABLE = "variable:"  # `variable:NAME`: the profile is the Prefect Variable NAME's text
FORMS = "an in-package name, a path or URL of a YAML file on the worker, or variable:NAME (a Prefect Variable)"


@dataclass(frozen=True)
class ProfileText:
    """A profile's YAML text and where it came from: `source` as the run named it, `where` as errors show it,
    `folder` the file's folder on this machine (None for a URL or a Variable): its relative paths are read from it."""

    source: str
    where: str
    text: str
    folder: Path | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def lineage(self) -> dict[str, str]:
        """The MLflow tags that say which profile ran: its source and the sha256 of its text."""
        return {"profile": self.source, "profile_sha256": self.sha256}


def profile_names() -> tuple[str, ...]:
    """`pipeline`, `cluster`, `recipes/orpo`, ...: the conf/ files without `.yaml`; the embedded default first."""
    names = sorted(p.relative_to(CONF_DIR).with_suffix("").as_posix() for p in CONF_DIR.rglob("*.yaml"))
    return (DEFAULT, *(n for n in names if n != DEFAULT))


def profile_path(profile: str) -> Path:
    """The conf/ file of an in-package profile name."""
    if profile not in profile_names():
        raise ConfigError(f"profile {profile!r}: not one of {', '.join(profile_names())} (files under {CONF_DIR})")
    return CONF_DIR / f"{profile}.yaml"


def is_location(profile: str) -> bool:
    """A path or URL of a YAML file, rather than an in-package name."""
    return "://" in profile or profile.startswith(("/", "~", "./", "../")) or profile.endswith((".yaml", ".yml"))


def read_profile(profile: str) -> ProfileText:
    """The profile's YAML text, from conf/, a file or URL, or a Prefect Variable; ConfigError naming it otherwise."""
    profile = profile.strip()
    if profile.startswith(VARIABLE):
        return ProfileText(profile, f"profile {profile!r} (Prefect Variable)", read_variable(profile))
    if profile in profile_names():
        path = CONF_DIR / f"{profile}.yaml"
        return ProfileText(profile, str(path), path.read_text(), path.parent)
    if is_location(profile):
        return ProfileText(profile, f"profile {profile!r}", read_location(profile), local_folder(profile))
    raise ConfigError(
        f"profile {profile!r}: not an in-package name ({', '.join(profile_names())}), a path or URL of a YAML "
        f"file, or {VARIABLE}NAME"
    )


def local_folder(profile: str) -> Path | None:
    """The folder of a profile file named by a plain path (a relative one from the working directory), else None."""
    if profile.startswith("file://"):
        return Path(unquote(profile.removeprefix("file://"))).resolve().parent
    if "://" in profile:
        return None
    return Path(os.path.expanduser(profile)).resolve().parent


def read_location(profile: str) -> str:
    """The text of a profile file named by path or fsspec URL; ConfigError naming the profile when unreadable."""
    import fsspec

    url = os.path.expanduser(profile) if profile.startswith("~") else profile
    try:
        with fsspec.open(url, "rt", encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        raise ConfigError(f"profile {profile!r}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"profile {profile!r}: is a directory, not a YAML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"profile {profile!r}: not a text (UTF-8) file") from None
    except (OSError, ValueError, ImportError) as exc:  # no such protocol, its package missing, access denied
        raise ConfigError(f"profile {profile!r}: cannot read it: {type(exc).__name__}: {exc}") from None


def read_variable(profile: str) -> str:
    """The YAML text a `variable:NAME` profile's Prefect Variable holds (a JSON object there: as YAML)."""
    import yaml
    from prefect.variables import Variable

    name = profile.removeprefix(VARIABLE).strip()
    try:
        value = Variable.get(name)
    except Exception as exc:  # noqa: BLE001 (the API unreachable, a bad name: said with the profile named)
        raise ConfigError(
            f"profile {profile!r}: cannot read Prefect Variable {name!r}: {type(exc).__name__}: {exc}"
        ) from None
    if value is None:
        raise ConfigError(f"profile {profile!r}: no Prefect Variable named {name!r} (Prefect UI: Variables)")
    if isinstance(value, dict):
        return yaml.safe_dump(value, sort_keys=False)
    if not isinstance(value, str):
        raise ConfigError(f"profile {profile!r}: Prefect Variable {name!r} holds a {type(value).__name__}, not YAML")
    return value


def knob_overrides(
    method: str | None = None,
    beta: float | None = None,
    learning_rate: float | None = None,
    max_steps: int | None = None,
    overrides: list[str] | None = None,
) -> list[str]:
    """`overrides`, then the knobs that are set (None: the profile's) as `key.path=value`: the later wins."""
    knobs = {
        "training.method": method,
        "training.beta": beta,
        "training.learning_rate": learning_rate,
        "training.max_steps": max_steps,
    }
    return [*(overrides or []), *(f"{key}={value}" for key, value in knobs.items() if value is not None)]


def config_of(profile: ProfileText, overrides: list[str] | None = None) -> PipelineConfig:
    """The profile's text with the overrides, validated; errors name the profile."""
    return load_config_text(profile.text, profile.where, overrides or [], folder=profile.folder)


def resolve_config(
    profile: str = DEFAULT,
    method: str | None = None,
    beta: float | None = None,
    learning_rate: float | None = None,
    max_steps: int | None = None,
    overrides: list[str] | None = None,
) -> PipelineConfig:
    """The run's config: the profile, then `overrides`, then the knobs that are set (None: the profile's)."""
    return config_of(read_profile(profile), knob_overrides(method, beta, learning_rate, max_steps, overrides))
