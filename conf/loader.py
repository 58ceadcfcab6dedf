"""Load a YAML profile, apply `key.path=value` overrides, validate into PipelineConfig.

Imports only pydantic and yaml, so a bad config fails in well under a second, before
Prefect, Ray or any model is imported.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from alignflow.conf.schema import PipelineConfig

CONF_DIR = Path(__file__).resolve().parent  # the profiles and prompt sets shipped with the package
DEFAULT_PROFILE = CONF_DIR / "pipeline.yaml"


class ConfigError(ValueError):
    """A config problem a user can fix; the message names the file and key path."""


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in nested dicts; the value is parsed as YAML (1e-4, true, [a, b])."""
    key, sep, raw = override.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {override!r}: expected key.path=value")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    node = data
    *parents, leaf = key.split(".")
    for depth, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parents[: depth + 1])}: is a value, not a section (override {override!r})")
        node = child
    node[leaf] = value


def _key_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


def format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config"]
    for err in exc.errors():
        path = _key_path(err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        given = err.get("input")
        shown = "" if err["type"] == "extra_forbidden" or isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"  {path}: {msg}{shown}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """The resolved config: profile file (default: the embedded one) plus overrides."""
    source = Path(path) if path else DEFAULT_PROFILE
    data = _read_yaml(source)
    for override in overrides:
        apply_override(data, override)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        label = f"{source} with overrides {' '.join(overrides)}" if overrides else str(source)
        raise ConfigError(format_errors(exc, label)) from None


def config_hash(config: PipelineConfig) -> str:
    """Stable hash of the resolved config (recorded on every model version)."""
    blob = json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def flatten(config: PipelineConfig) -> dict[str, str]:
    """`section.key` -> value strings, for MLflow params."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = json.dumps(value) if isinstance(value, list) else str(value)

    walk("", config.model_dump(mode="json"))
    return flat
