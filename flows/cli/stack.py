"""`alignflow stack up|down|status|env`: the production topology on one machine (flows/ops/stack.py runs it).

    alignflow stack up [--home DIR] [--*-port P]   start it in the background; prints the URLs
    alignflow stack down [--home DIR]              stop every process it started; the data stays
    alignflow stack status [--home DIR]            what runs, and where (exit 1 when something is down)
    alignflow stack env [--home DIR]               `export` lines: eval "$(alignflow stack env)"

DIR: --home, else $ALIGNFLOW_HOME, else ./.alignflow; everything the stack keeps is under DIR/stack.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from alignflow.flows.cli.common import console
from alignflow.flows.ops.processes import alive, records
from alignflow.flows.ops.stack import busy_ports, saved_ports, stack_dir, stack_down, stack_up, urls
from alignflow.flows.ops.stack_services import Ports

stack_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="The production topology on this machine: Postgres, S3, MLflow, Prefect, Ray (alignflow stack up).",
)
HomeOption = Annotated[
    Path | None, typer.Option("--home", help="State directory (default: $ALIGNFLOW_HOME or ./.alignflow).")
]


def _home(home: Path | None) -> Path:
    from alignflow.tasks.runtime.state import home as state_home

    return home.expanduser().resolve() if home else state_home()


@stack_app.command("up")
def up(
    home: HomeOption = None,
    postgres_port: Annotated[int, typer.Option("--postgres-port")] = Ports.postgres,
    s3_port: Annotated[int, typer.Option("--s3-port")] = Ports.s3,
    mlflow_port: Annotated[int, typer.Option("--mlflow-port")] = Ports.mlflow,
    prefect_port: Annotated[int, typer.Option("--prefect-port")] = Ports.prefect,
    ray_port: Annotated[int, typer.Option("--ray-port")] = Ports.ray,
    no_ray: Annotated[bool, typer.Option("--no-ray", help="Start no Ray nodes (bring your own cluster).")] = False,
) -> None:
    """Start the stack in the background (a second `up` starts only what is not running)."""
    root_home = _home(home)
    root = stack_dir(root_home)
    ports = Ports(postgres_port, s3_port, mlflow_port, prefect_port, ray_port)
    busy = busy_ports(root, ports, ray=not no_ray)
    if busy:
        console.print(f"[red]in use[/red]: {', '.join(busy)}; stop what holds it or pick another port (--*-port)")
        raise typer.Exit(2)
    started = time.monotonic()
    try:
        stack_up(root_home, ports, ray=not no_ray)
    except Exception as exc:
        console.print(f"[red]stack up failed[/red] (everything it started is stopped again): {exc}")
        raise typer.Exit(1) from None
    console.print(f"[bold]alignflow stack[/bold] up in {time.monotonic() - started:.0f}s (state {root})")
    console.print(urls(root, ports), highlight=False)
    console.print("Stop it with: alignflow stack down\nalignflow stack: ready", highlight=False)


@stack_app.command("down")
def down(home: HomeOption = None) -> None:
    """Stop every process of the stack; its data stays in the state directory."""
    stopped = stack_down(_home(home))
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@stack_app.command("status")
def status(home: HomeOption = None) -> None:
    """Which services run, and where; exit 1 when one is down."""
    root = stack_dir(_home(home))
    found = records(root)
    for record in found:
        state = "[green]running[/green]" if alive(record["pid"]) else "[red]stopped[/red]"
        console.print(f"  {record['name']:<16} pid {record['pid']:<8} {state}")
    postgres = (root / "postgres" / "postmaster.pid").exists()
    console.print(f"  {'postgres':<16} {'':<12} {'[green]running[/green]' if postgres else '[red]stopped[/red]'}")
    if found:
        console.print(urls(root, saved_ports(root)), highlight=False)
    if not found or not postgres or not all(alive(r["pid"]) for r in found):
        raise typer.Exit(1)


@stack_app.command("env")
def env(home: HomeOption = None) -> None:
    """`export` lines for a shell that talks to the stack: eval "$(alignflow stack env)"."""
    file = stack_dir(_home(home)) / "env.sh"
    if not file.exists():
        console.print("[red]no stack here[/red]: run `alignflow stack up` first")
        raise typer.Exit(1)
    sys.stdout.write(file.read_text())


def add_commands(app: typer.Typer) -> None:
    app.add_typer(stack_app, name="stack")
