"""The YAML profiles under conf/ and how a deployment run's knobs resolve into a config.

Light on purpose (alignflow.conf.loader and the standard library only): `alignflow serve/deploy`
check their defaults with it before anything starts.
"""

from __future__ import annotations

from pathlib import Path

from alignflow.conf.loader import DEFAULT_PROFILE, ConfigError, load_config
from alignflow.conf.schema import PipelineConfig

CONF_DIR = DEFAULT_PROFILE.parent
DEFAULT = DEFAULT_PROFILE.stem  # "pipeline", the embedded default


def profile_names() -> tuple[str, ...]:
    """`pipeline`, `cluster`, `recipes/orpo`, ...: the conf/ files without `.yaml`; the embedded default first."""
    names = sorted(p.relative_to(CONF_DIR).with_suffix("").as_posix() for p in CONF_DIR.rglob("*.yaml"))
    return (DEFAULT, *(n for n in names if n != DEFAULT))


def profile_path(profile: str) -> Path:
    if profile not in profile_names():
        raise ConfigError(f"profile {profile!r}: not one of {', '.join(profile_names())} (files under {CONF_DIR})")
    return CONF_DIR / f"{profile}.yaml"


def resolve_config(
    profile: str = DEFAULT,
    method: str | None = None,
    beta: float | None = None,
    learning_rate: float | None = None,
    max_steps: int | None = None,
    overrides: list[str] | None = None,
) -> PipelineConfig:
    """The run's config: the profile, then `overrides`, then the knobs that are set (None: the profile's)."""
    knobs = {
        "training.method": method,
        "training.beta": beta,
        "training.learning_rate": learning_rate,
        "training.max_steps": max_steps,
    }
    chosen = [f"{key}={value}" for key, value in knobs.items() if value is not None]
    return load_config(profile_path(profile), [*(overrides or []), *chosen])
