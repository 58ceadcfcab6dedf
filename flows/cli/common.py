"""What the `alignflow` commands share: the console, the --config option, loading a profile with exit 2.

Only pydantic, yaml, typer and rich are imported here: a config error costs well under a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from alignflow.conf.loader import ConfigError, load_config
from alignflow.conf.schema import PipelineConfig

# Every command writes to stderr: stdout stays for what a script reads (history --json, stack env).
console = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML profile (default: the embedded conf/pipeline.yaml).")
]


def config_error(exc: ConfigError) -> typer.Exit:
    """Print a config error the way every command does; the exit (code 2) to raise."""
    console.print(f"[red]config error[/red] {escape(str(exc))}")  # not markup: keys like orpo[beta=0]
    console.print("Fix the key above (see conf/pipeline.yaml for every knob), then run again.")
    return typer.Exit(2)


def load(config: Path | None, overrides: list[str], trl_checks: bool = True) -> PipelineConfig:
    """The profile with its overrides, validated; exit 2 naming the key when it is not valid."""
    try:
        return load_config(config, overrides, trl_checks=trl_checks)
    except ConfigError as exc:
        raise config_error(exc) from None
