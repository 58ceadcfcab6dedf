"""`alignflow serve` and `alignflow deploy`: run the deployments the way users run them.

    alignflow serve [--home DIR] [--prefect-port 4200] [--mlflow-port 5000] [key.path=value ...]
        a local Prefect server (SQLite under the state directory) with its UI, the
        deployments of deploy/prefect.yaml, a process worker that runs them, and the MLflow
        UI, all on 127.0.0.1; Ctrl-C stops every one of them. `make serve` runs this.
    alignflow deploy [--profile NAME|PATH|variable:NAME] [key.path=value ...]
        against $PREFECT_API_URL (any server, e.g. the docker-compose stack): the work pool,
        the concurrency limits (flows/limits.py) and the deployments; then start a worker with
        `prefect worker start --pool alignflow`.

key.path=value arguments (and --profile) become the default `overrides` (and `profile`) of the
deployments of deploy/prefect.yaml that take them, as if typed into their defaults in the UI:
`make serve ARGS="training.max_steps=20"`. The processes themselves are flows/ops/serve.py's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from alignflow.conf.loader import ConfigError
from alignflow.conf.schema import PipelineConfig
from alignflow.flows.cli.common import config_error, console, load
from alignflow.flows.ops.serve import WORK_POOL, LocalServe, deploy_all, serve_locally

OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(help="key.path=value defaults for the deployments' `overrides`, e.g. training.max_steps=20"),
]
ProfileOption = Annotated[
    str | None,
    typer.Option(
        "--profile",
        help="Default profile of the alignment deployments: a conf/ file stem, a path or URL of a YAML file on the "
        "worker, or variable:NAME (a Prefect Variable).",
    ),
]


def _check(profile: str | None, overrides: list[str]) -> PipelineConfig:
    """Validate the defaults the way a run will (exit 2 naming the key), before anything starts."""
    from alignflow.flows.profiles import VARIABLE, config_of, read_profile

    try:
        if profile and not profile.startswith(VARIABLE):  # a Variable is read by each run: the server may be down now
            return config_of(read_profile(profile), overrides)
    except ConfigError as exc:  # --profile names no conf/ file, no readable file, or its config is not valid
        raise config_error(exc) from None
    return load(None, overrides)


def serve(
    overrides: OverridesArg = None,
    profile: ProfileOption = None,
    home: Annotated[
        Path | None, typer.Option("--home", help="State directory (default: $ALIGNFLOW_HOME or ./.alignflow).")
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Interface every server binds to.")] = "127.0.0.1",
    prefect_port: Annotated[int, typer.Option("--prefect-port")] = 4200,
    mlflow_port: Annotated[int, typer.Option("--mlflow-port")] = 5000,
) -> None:
    """Local Prefect server + UI, the deployments and a worker, and the MLflow UI; Ctrl-C stops them all."""
    overrides = list(overrides or [])
    config = _check(profile, [*overrides, *([f"runtime.home={home}"] if home else [])])
    from alignflow.tasks.runtime.state import configure_environment, tracking_uri

    if home:  # the worker's runs fall back to $ALIGNFLOW_HOME: make it the one asked for
        os.environ["ALIGNFLOW_HOME"] = str(home.expanduser().resolve())
    root = configure_environment(config)
    where = LocalServe(root, tracking_uri(config), host, prefect_port, mlflow_port)
    busy = where.busy_ports()
    if busy:
        console.print(
            f"[red]port {busy[0]} on {host} is in use[/red]: stop what holds it or pick another port "
            "(--prefect-port / --mlflow-port)"
        )
        raise typer.Exit(2)
    try:
        serve_locally(where, profile, overrides, say=lambda text: console.print(escape(text), highlight=False))
    except (RuntimeError, TimeoutError) as exc:  # everything it started is stopped again by now
        console.print(f"[red]serve failed[/red]: {escape(str(exc))}")
        raise typer.Exit(1) from None


def deploy(overrides: OverridesArg = None, profile: ProfileOption = None) -> None:
    """Create the work pool, the train concurrency limit and the deployments on $PREFECT_API_URL."""
    overrides = list(overrides or [])
    _check(profile, overrides)
    if not os.environ.get("PREFECT_API_URL"):
        console.print("[red]PREFECT_API_URL is not set[/red]: point it at the server, e.g. http://prefect:4200/api")
        raise typer.Exit(2)
    try:
        names = deploy_all(profile, overrides)
    except Exception as exc:
        console.print(f"[red]deploy failed[/red]: {escape(str(exc))}")
        raise typer.Exit(1) from None
    console.print(
        f"deployed {', '.join(names)} to {os.environ['PREFECT_API_URL']}; "
        f"run them with: prefect worker start --pool {WORK_POOL}"
    )


def add_commands(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(deploy)
