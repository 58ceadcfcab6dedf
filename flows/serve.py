"""`alignflow serve` and `alignflow deploy`: run the deployments the way users run them.

    alignflow serve [--home DIR] [--prefect-port 4200] [--mlflow-port 5000] [key.path=value ...]
        a local Prefect server (SQLite under the state directory) with its UI, the
        deployments of deploy/prefect.yaml, a process worker that runs them, and the MLflow
        UI, all on 127.0.0.1; Ctrl-C stops every one of them. `make serve` runs this.
    alignflow deploy [--profile NAME] [key.path=value ...]
        against $PREFECT_API_URL (any server, e.g. the docker-compose stack): the work pool,
        the concurrency limits (flows/limits.py) and the deployments; then start a worker with
        `prefect worker start --pool alignflow`.

key.path=value arguments (and --profile) become the default `overrides` (and `profile`) of the
deployments of deploy/prefect.yaml that take them, as if typed into their defaults in the UI:
`make serve ARGS="training.max_steps=20"`.

Nothing heavy is imported at module level: `alignflow` answers config errors in well under a second.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from alignflow.conf.loader import ConfigError, load_config

console = Console(stderr=True, soft_wrap=True)

REPO = Path(__file__).resolve().parents[1]
PREFECT_FILE = REPO / "deploy" / "prefect.yaml"
WORK_POOL = "alignflow"
# Local-server defaults: a single box reacts in seconds rather than Prefect's 10-30 s polls.
LOCAL_SERVER_ENV = {
    "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "5",
    "PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS": "5",
    "PREFECT_SERVER_TASKS_TAG_CONCURRENCY_SLOT_WAIT_SECONDS": "5",
    "PREFECT_WORKER_QUERY_SECONDS": "5",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # the MLflow UI's GenAI job runner: 8 idle processes
}


def _bin(name: str) -> str:
    """A console script of this environment (the venv's prefect, mlflow), else PATH's."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) != 0


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{Path(proc.args[0]).name} exited with {proc.returncode}; see {log}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s; see {log}:\n{_tail(log)}")


def _tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _start(args: list[str], log: Path | None, env: dict[str, str]) -> subprocess.Popen:
    """A child in its own process group, so stopping it stops what it started (flow runs, uvicorn workers)."""
    out = log.open("a") if log else None
    return subprocess.Popen(
        args, stdout=out, stderr=subprocess.STDOUT if out else None, env=env, cwd=REPO, start_new_session=True
    )


def _stop(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    """Worker first, server last, so runs being stopped can still report to the API."""
    for proc in reversed(procs):
        if proc.poll() is not None:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


async def _prepare_server(profile: str | None, overrides: list[str]) -> list[str]:
    """Work pool and train limit before `prefect deploy`, the default parameters after it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate, WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    from alignflow.flows.limits import ensure_limits

    async with get_client() as client:
        with contextlib.suppress(ObjectAlreadyExists):  # an existing pool keeps its settings
            await client.create_work_pool(
                WorkPoolCreate(
                    name=WORK_POOL, type="process", base_job_template=ProcessWorker.get_default_base_job_template()
                )
            )
        await ensure_limits(client)
    _prefect_deploy()
    import yaml

    ours = {d["name"] for d in yaml.safe_load(PREFECT_FILE.read_text())["deployments"]}
    names = []
    async with get_client() as client:
        for deployment in await client.read_deployments():
            if deployment.name not in ours:  # a shared server: leave other projects' deployments alone
                continue
            names.append(deployment.name)
            takes = deployment.parameter_openapi_schema.get("properties", {})
            defaults = {"profile": profile, "overrides": overrides or None}
            chosen = {k: v for k, v in defaults.items() if v is not None and k in takes}
            if chosen:
                await client.update_deployment(
                    deployment.id, DeploymentUpdate(parameters={**deployment.parameters, **chosen})
                )
    return sorted(names)


def _prefect_deploy() -> None:
    """`prefect deploy --prefect-file deploy/prefect.yaml --all`, from the repository root (entrypoints are modules)."""
    args = [_bin("prefect"), "--no-prompt", "deploy", "--prefect-file", str(PREFECT_FILE), "--all"]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def deploy_all(profile: str | None = None, overrides: list[str] | None = None) -> list[str]:
    """Pool, limits, deployments and their defaults on the server at $PREFECT_API_URL; the deployment names."""
    import asyncio

    return asyncio.run(_prepare_server(profile, list(overrides or [])))


def _check(profile: str | None, overrides: list[str]):
    """Validate the defaults the way a run will (exit 2 naming the key), before anything starts."""
    from alignflow.flows.profiles import profile_path

    try:
        return load_config(profile_path(profile) if profile else None, overrides)
    except ConfigError as exc:
        console.print(f"[red]config error[/red] {exc}")
        raise typer.Exit(2) from None


OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(help="key.path=value defaults for the deployments' `overrides`, e.g. training.max_steps=20"),
]
ProfileOption = Annotated[
    str | None, typer.Option("--profile", help="Default profile of the alignment deployments (a conf/ file stem).")
]


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
    # The server's SQLite database: the one `alignflow run` records into (PREFECT_HOME) unless set.
    for key, value in LOCAL_SERVER_ENV.items():
        os.environ.setdefault(key, value)
    api = f"http://{host}:{prefect_port}/api"
    ui, mlflow_ui = f"http://{host}:{prefect_port}", f"http://{host}:{mlflow_port}"
    tracking = tracking_uri(config)
    local_mlflow = not tracking.startswith(("http://", "https://"))
    busy = [p for p in (prefect_port, *([mlflow_port] if local_mlflow else [])) if not _port_free(host, p)]
    if busy:
        console.print(
            f"[red]port {busy[0]} on {host} is in use[/red]: stop what holds it or pick another port "
            "(--prefect-port / --mlflow-port)"
        )
        raise typer.Exit(2)
    logs = root / "serve"
    logs.mkdir(parents=True, exist_ok=True)
    os.environ["PREFECT_API_URL"] = api
    os.environ["PREFECT_UI_URL"] = ui
    os.environ.setdefault("ALIGNFLOW_MLFLOW_UI_URL", mlflow_ui if local_mlflow else tracking)
    env = os.environ.copy()

    procs: list[subprocess.Popen] = []
    stopping = False

    def _terminate(signum, frame):  # SIGTERM behaves like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        server_log = logs / "prefect-server.log"
        server = _start(
            [_bin("prefect"), "server", "start", "--host", host, "--port", str(prefect_port)], server_log, env
        )
        procs.append(server)
        if local_mlflow:
            mlflow_log = logs / "mlflow-ui.log"
            procs.append(_start(_mlflow_ui_command(tracking, host, mlflow_port), mlflow_log, env))
        console.print(f"starting the Prefect server (database {os.environ['PREFECT_HOME']}/prefect.db) ...")
        _wait_http(f"{api}/health", server, server_log, timeout=180)
        names = deploy_all(profile, overrides)
        procs.append(_start([_bin("prefect"), "worker", "start", "--pool", WORK_POOL, "--type", "process"], None, env))
        if local_mlflow:
            _wait_http(f"{mlflow_ui}/health", procs[1], mlflow_log, timeout=120)
        _announce(root, ui, names, mlflow_ui if local_mlflow else tracking, server_log)
        while True:
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{Path(proc.args[0]).name} {proc.args[1]} exited with {proc.returncode}")
            time.sleep(1)
    except KeyboardInterrupt:
        stopping = True
        console.print("stopping the worker, the MLflow UI and the Prefect server ...")
    except (RuntimeError, TimeoutError) as exc:
        console.print(f"[red]serve failed[/red]: {exc}")
    finally:
        _stop(procs)
    if not stopping:
        raise typer.Exit(1)


def _mlflow_ui_command(tracking: str, host: str, port: int) -> list[str]:
    return [
        _bin("mlflow"),
        "ui",
        "--backend-store-uri",
        tracking,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def _announce(root: Path, ui: str, names: list[str], mlflow_ui: str, server_log: Path) -> None:
    console.print(
        f"\n[bold]alignflow serve[/bold] (state {root})\n"
        f"  Prefect UI   {ui}   deployments: {', '.join(names)}\n"
        f"  MLflow UI    {mlflow_ui}\n"
        f"  worker       pool {WORK_POOL!r}, output below; server log {server_log}\n"
        "Ctrl-C stops all of them."
    )
    console.print("alignflow serve: ready", highlight=False)


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
        console.print(f"[red]deploy failed[/red]: {exc}")
        raise typer.Exit(1) from None
    console.print(
        f"deployed {', '.join(names)} to {os.environ['PREFECT_API_URL']}; "
        f"run them with: prefect worker start --pool {WORK_POOL}"
    )


def add_commands(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(deploy)


if __name__ == "__main__":
    cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    add_commands(cli)
    cli()
