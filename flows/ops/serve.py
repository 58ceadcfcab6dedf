"""What `alignflow serve` and `alignflow deploy` run (the commands are flows/cli/serve.py's).

- `serve_locally`: a local Prefect server (SQLite under the state directory) with its UI, the
  deployments of deploy/prefect.yaml, a process worker that runs them, and the MLflow UI, all
  as children of this process; Ctrl-C (or SIGTERM) stops every one of them.
- `deploy_all`: against $PREFECT_API_URL (any server, e.g. the docker-compose stack): the work
  pool, the concurrency limits (flows/limits.py) and the deployments, with the default `profile`
  and `overrides` of those that take them, as if typed into their defaults in the UI.

Nothing heavy is imported at module level: `alignflow` answers config errors in well under a second.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alignflow.flows.ops.processes import port_free, tail

REPO = Path(__file__).resolve().parents[2]
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


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{Path(proc.args[0]).name} exited with {proc.returncode}; see {log}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s; see {log}:\n{tail(log)}")


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


@dataclass(frozen=True)
class LocalServe:
    """Where `alignflow serve` runs: the state directory, the tracking URI, the interface and the ports."""

    root: Path
    tracking: str
    host: str = "127.0.0.1"
    prefect_port: int = 4200
    mlflow_port: int = 5000

    @property
    def local_mlflow(self) -> bool:
        """A tracking server elsewhere has a UI of its own: only a local store gets an MLflow UI started."""
        return not self.tracking.startswith(("http://", "https://"))

    @property
    def prefect_ui(self) -> str:
        return f"http://{self.host}:{self.prefect_port}"

    @property
    def mlflow_ui(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}" if self.local_mlflow else self.tracking

    def busy_ports(self) -> list[int]:
        """The ports this would bind that something else holds already."""
        ports = (self.prefect_port, *([self.mlflow_port] if self.local_mlflow else []))
        return [p for p in ports if not port_free(p, self.host)]


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


def _announce(where: LocalServe, names: list[str], server_log: Path) -> str:
    return (
        f"\nalignflow serve (state {where.root})\n"
        f"  Prefect UI   {where.prefect_ui}   deployments: {', '.join(names)}\n"
        f"  MLflow UI    {where.mlflow_ui}\n"
        f"  worker       pool {WORK_POOL!r}, output below; server log {server_log}\n"
        "Ctrl-C stops all of them.\n"
        "alignflow serve: ready"  # what a caller waits for (tests/integration/test_deploy_server.py)
    )


def _terminate(signum, frame):  # SIGTERM behaves like Ctrl-C
    raise KeyboardInterrupt


def serve_locally(
    where: LocalServe, profile: str | None, overrides: list[str], say: Callable[[str], None] = print
) -> None:
    """Start the Prefect server, the MLflow UI, the deployments and a worker; block until Ctrl-C or SIGTERM.

    Every child is stopped again on the way out. Raises RuntimeError or TimeoutError when one fails to
    start or exits on its own; returns when stopped on purpose. `say`: progress lines for a person."""
    # The server's SQLite database: the one `alignflow run` records into (PREFECT_HOME) unless set.
    for key, value in LOCAL_SERVER_ENV.items():
        os.environ.setdefault(key, value)
    logs = where.root / "serve"
    logs.mkdir(parents=True, exist_ok=True)
    api = f"{where.prefect_ui}/api"
    os.environ["PREFECT_API_URL"] = api
    os.environ["PREFECT_UI_URL"] = where.prefect_ui
    os.environ.setdefault("ALIGNFLOW_MLFLOW_UI_URL", where.mlflow_ui)
    env = os.environ.copy()
    procs: list[subprocess.Popen] = []
    signal.signal(signal.SIGTERM, _terminate)
    try:
        server_log = logs / "prefect-server.log"
        server_args = [_bin("prefect"), "server", "start", "--host", where.host, "--port", str(where.prefect_port)]
        procs.append(_start(server_args, server_log, env))
        if where.local_mlflow:
            mlflow_log = logs / "mlflow-ui.log"
            procs.append(_start(_mlflow_ui_command(where.tracking, where.host, where.mlflow_port), mlflow_log, env))
        say(f"starting the Prefect server (database {os.environ['PREFECT_HOME']}/prefect.db) ...")
        _wait_http(f"{api}/health", procs[0], server_log, timeout=180)
        names = deploy_all(profile, overrides)
        procs.append(_start([_bin("prefect"), "worker", "start", "--pool", WORK_POOL, "--type", "process"], None, env))
        if where.local_mlflow:
            _wait_http(f"{where.mlflow_ui}/health", procs[1], mlflow_log, timeout=120)
        say(_announce(where, names, server_log))
        while True:
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{Path(proc.args[0]).name} {proc.args[1]} exited with {proc.returncode}")
            time.sleep(1)
    except KeyboardInterrupt:
        say("stopping the worker, the MLflow UI and the Prefect server ...")
    finally:
        _stop(procs)
