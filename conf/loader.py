"""Load a YAML profile, apply `key.path=value` overrides, validate into PipelineConfig.

Imports only pydantic and yaml, so a bad config fails in well under a second, before
Prefect, Ray or any model is imported.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from alignflow.conf import chat_template
from alignflow.conf.schema import PipelineConfig

CONF_DIR = Path(__file__).resolve().parent  # the profiles and prompt sets shipped with the package
DEFAULT_PROFILE = CONF_DIR / "pipeline.yaml"
SHIPPED_PROMPTS = CONF_DIR / "prompts" / "default.jsonl"  # builtin:default, the training prompts
SHIPPED_EVAL_PROMPTS = CONF_DIR / "prompts" / "eval.jsonl"  # builtin:eval, the gate's set (disjoint by construction)


class ConfigError(ValueError):
    """A config problem a user can fix; the message names the file and key path."""


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    """A profile's YAML text as its mapping of sections; ConfigError naming `source` when it is not one."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, not {type(data).__name__}")
    return data


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in nested dicts; the value is parsed as YAML (1e-4, true, [a, b])."""
    key, sep, raw = override.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {shown_override(override)!r}: expected key.path=value")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    node = data
    *parents, leaf = key.split(".")
    for depth, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(
                f"{'.'.join(parents[: depth + 1])}: is a value, not a section (override {shown_override(override)!r})"
            )
        node = child
    node[leaf] = value


def _key_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


# What a pasted credential looks like: provider prefixes, or a long run of letters and digits with both in it.
_SECRET_VALUE = re.compile(r"^(sk-|sk_|hf_|ghp_|xox[abp]-|AKIA|eyJ)|^(?=.*\d)(?=.*[A-Za-z])[A-Za-z0-9_\-+/=]{24,}$")
# A leaf key that names a credential (api_key, hf_token, secret, password), not one that merely contains
# the word (max_new_tokens, api_key_env: the NAME of a variable).
_SECRET_KEY = re.compile(r"^(.*_)?(api_?key|key|token|secret|password|passwd|credentials?)$", re.IGNORECASE)


def looks_secret(key: str, value: object) -> bool:
    """True when a config value should never be printed: a credential-shaped value, or a credential-named key."""
    if _SECRET_KEY.search(key.rsplit(".", 1)[-1]):
        return True
    if not isinstance(value, str):
        return False
    text = value.strip()
    # A webhook URL is a credential (it posts as its owner), whichever key it was given to: never shown,
    # though other URLs are (`runtime.notify_webhook=https://...`, `runtime={notify_webhook: https://...}`).
    if "://" in text and "webhook" in f"{key} {text}".lower():
        return True
    return not _is_location(text) and bool(_SECRET_VALUE.search(text))


def _is_location(text: str) -> bool:
    """A path or a URL is shown: it is what a user most often mistypes, and not a credential on its own."""
    text = text.strip()
    return text.startswith(("/", "~", ".")) or "://" in text


_TOKEN = re.compile(r"[A-Za-z0-9_\-+/=]{6,}")


def shown_override(override: str) -> str:
    """`key=value` as it may be printed: the value masked when it looks like a secret, and any credential-shaped
    word inside a structured value (`{llm: {api_key_env: sk-...}}`) masked too."""
    key, sep, raw = override.partition("=")
    if sep and looks_secret(key, raw):
        return f"{key}=***"
    if _is_location(raw):
        return override
    masked = _TOKEN.sub(lambda m: "***" if _SECRET_VALUE.search(m.group(0)) else m.group(0), raw)
    return f"{key}{sep}{masked}"


def format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config"]
    for err in exc.errors():
        path = _key_path(err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        given = err.get("input")
        hidden = err["type"] == "extra_forbidden" or isinstance(given, dict) or looks_secret(path, given)
        shown = "" if hidden else f" (got {given!r})"
        lines.append(f"  {path}: {msg}{shown}")
    return "\n".join(lines)


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), trl_checks: bool = True
) -> PipelineConfig:
    """The resolved config: profile file (default: the embedded one) plus overrides.

    `trl_checks`: also run TRL's own checks on the training knobs (check_trl). The CLI runs them
    itself, after the cheap checks (keys, paths, endpoints), so that those answer in a second."""
    source = Path(path) if path else DEFAULT_PROFILE
    return _validated(_read_yaml(source), str(source), overrides, trl_checks, source.resolve().parent)


def load_config_text(
    text: str,
    source: str,
    overrides: list[str] | tuple[str, ...] = (),
    trl_checks: bool = True,
    folder: Path | None = None,
) -> PipelineConfig:
    """As `load_config`, from a profile's YAML text read elsewhere (a URL, a Prefect Variable); errors name `source`.

    `folder`: the profile file's, when it has one on this machine (relative paths in the profile are read from it)."""
    return _validated(parse_yaml(text, source), source, overrides, trl_checks, folder)


def anchor_paths(data: dict[str, Any], folder: Path) -> None:
    """Make the profile's relative file paths that are read from its own folder absolute (training.chat_template
    and each recipe's), before the overrides apply: a path given on the command line is the working directory's."""
    sections = [data.get("training")]
    comparison = data.get("comparison")
    if isinstance(comparison, dict) and isinstance(comparison.get("recipes"), dict):
        sections += list(comparison["recipes"].values())
    for section in sections:
        if isinstance(section, dict) and "chat_template" in section:
            section["chat_template"] = chat_template.anchored(section["chat_template"], folder)


def _validated(
    data: dict[str, Any],
    source: str,
    overrides: list[str] | tuple[str, ...] = (),
    trl_checks: bool = True,
    folder: Path | None = None,
) -> PipelineConfig:
    """A profile's mapping with the overrides applied, validated into PipelineConfig; errors name `source`."""
    if folder is not None:
        anchor_paths(data, folder)
    for override in overrides:
        apply_override(data, override)
    label = f"{source} with overrides {' '.join(map(shown_override, overrides))}" if overrides else source
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, label)) from None
    if trl_checks:
        check_trl(config, label)
    return config


def check_trl(config: PipelineConfig, label: str = "config") -> None:
    """TRL's own checks (its config classes' __post_init__) on the training section and every recipe;
    ConfigError naming each rejected key. Imports TRL's config classes: seconds, the first time."""
    from alignflow.conf.comparison import check_with_trl

    try:
        check_with_trl(config.training, config.comparison)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, label)) from None


def config_hash(config: PipelineConfig) -> str:
    """Stable hash of the resolved config (recorded on every model version)."""
    blob = json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def flatten(config: PipelineConfig) -> dict[str, str]:
    """`section.key` -> value strings, for MLflow params."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if prefix.endswith(".chat_template") and isinstance(value, dict):
            # Its text can be longer than an MLflow param takes: its hash here, the text an artifact.
            value = {"source": value["source"], "sha256": hashlib.sha256(value["text"].encode()).hexdigest()}
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = json.dumps(value) if isinstance(value, list) else str(value)

    walk("", config.model_dump(mode="json"))
    return flat
