"""The stack's services, one function each: Postgres, the S3 store, MLflow, Prefect, the Ray nodes.

Each starts its process (flows/ops/processes.py records it at once), waits until it answers, and fails with
its log's tail when it does not. Credentials come in as `creds` (flows/ops/stack.py reads them from the
environment); secrets reach the servers through environment variables or files of mode 600 under the
stack's folder, never through argv (which `ps` shows).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from alignflow.flows.ops.processes import (
    HOST,
    descendants,
    free_ports,
    http_status,
    run_checked,
    spawn,
    terminate,
    wait_for,
)
from alignflow.flows.ops.serve import LOCAL_SERVER_ENV, _bin

BUCKETS = ("mlflow", "alignflow")  # artifacts, checkpoints
DATABASES = ("prefect", "mlflow", "mlflow_auth")
WORKER_RESOURCE = "stack_worker"  # the worker node's own resource: a task may ask to run there


@dataclass(frozen=True)
class Ports:
    """The ports conf/stack.yaml names; Ray's and SeaweedFS's internal ports are picked free at start."""

    postgres: int = 5433
    s3: int = 8333
    mlflow: int = 5310
    prefect: int = 4310
    ray: int = 6390


def _secret_file(path: Path, text: str) -> None:
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(text)


# ---- Postgres --------------------------------------------------------------------------------------------


def _pg_ctl_paths() -> list[str]:
    return sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))


def postgres_bindir(install: bool = True) -> Path:
    """Debian's PostgreSQL binaries; `apt-get install postgresql` first when they are missing (as root)."""
    if not _pg_ctl_paths() and install and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install_cmd = ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"]
        if subprocess.run(install_cmd, env=env, capture_output=True).returncode:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True)
            subprocess.run(install_cmd, env=env, capture_output=True)
    found = _pg_ctl_paths()
    if not found:
        raise RuntimeError("PostgreSQL is not installed and could not be (Debian: apt-get install postgresql)")
    return Path(found[-1]).parent


def _as_postgres(args: list[str]) -> list[str]:
    """Postgres refuses to run as root: as root, its tools run as Debian's `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def start_postgres(root: Path, port: int, password: str) -> None:
    """A cluster under root/postgres (initdb on first use) on 127.0.0.1 only, TCP only; the databases."""
    bindir = postgres_bindir()
    data, log = root / "postgres", root / "logs" / "postgres.log"
    if os.geteuid() == 0:  # the postgres user must reach its folder through the state directory
        run_checked(_as_postgres(["test", "-x", str(root)]), f"the postgres user reaching {root} (chmod o+x)")
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        pwfile = root / ".pg-init-password"
        _secret_file(pwfile, password + "\n")
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        data.chmod(0o700)
        initdb = [
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "alignflow",
            "--pwfile",
            str(pwfile),
            "--auth-host=scram-sha-256",
            "--auth-local=peer",
            "-E",
            "UTF8",
        ]
        try:
            run_checked(_as_postgres(initdb), "initdb")
        finally:
            pwfile.unlink(missing_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    if os.geteuid() == 0:
        shutil.chown(log, "postgres", "postgres")
    if not (data / "postmaster.pid").exists():
        # Each log line names its database (%d): an error is then Prefect's, MLflow's or the auth app's.
        options = (
            f"-c listen_addresses={HOST} -p {port} -c unix_socket_directories='' -c max_connections=200"
            " -c log_line_prefix='%m [%p] %d '"
        )
        start = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"]
        run_checked(_as_postgres(start), "pg_ctl start")
    import psycopg2

    conn = psycopg2.connect(host=HOST, port=port, user="alignflow", password=password, dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        for name in DATABASES:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if not cur.fetchone():
                cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()


def stop_postgres(root: Path) -> bool:
    """pg_ctl stop -m fast; whether a server was running."""
    data = root / "postgres"
    if not (data / "postmaster.pid").exists():
        return False
    stop = [str(postgres_bindir(install=False) / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]
    subprocess.run(_as_postgres(stop), capture_output=True)
    return True


def pg_url(driver: str, creds: dict[str, str], port: int, db: str) -> str:
    return f"{driver}://alignflow:{creds['ALIGNFLOW_DB_PASSWORD']}@{HOST}:{port}/{db}"


# ---- S3, MLflow, Prefect ---------------------------------------------------------------------------------


def s3_client(env: dict[str, str]):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env.get("AWS_DEFAULT_REGION", "us-east-1"),
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def start_s3(root: Path, ports: Ports, env: dict[str, str]) -> dict:
    """SeaweedFS: master, volume, filer and S3 gateway in one process, data in root/s3; one identity."""
    identity = {
        "name": "alignflow",
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        "credentials": [{"accessKey": env["AWS_ACCESS_KEY_ID"], "secretKey": env["AWS_SECRET_ACCESS_KEY"]}],
    }
    _secret_file(root / "s3-identities.json", json.dumps({"identities": [identity]}))
    (root / "s3").mkdir(exist_ok=True)
    master, volume, filer, grpc = free_ports(4)
    args = [
        _bin("weed"),
        "server",
        f"-dir={root / 's3'}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-master.port={master}",
        "-master.volumeSizeLimitMB=256",
        f"-volume.port={volume}",
        "-volume.max=0",
        "-filer",
        f"-filer.port={filer}",
        f"-filer.localSocket={root / 's3' / 'filer.sock'}",
        "-s3",
        f"-s3.port={ports.s3}",
        f"-s3.port.grpc={grpc}",
        f"-s3.config={root / 's3-identities.json'}",
        f"-s3.localSocket={root / 's3' / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    # Its gRPC sockets have hard-coded paths in /tmp (not the state directory): removed when it stops.
    sockets = (
        f"/tmp/seaweedfs-{kind}-grpc-{port}.sock"
        for kind, port in (
            ("master", master + 10000),
            ("volume", volume + 10000),
            ("filer", filer + 10000),
            ("s3", grpc),
        )
    )
    record = spawn("s3", args, env, root, leaves=tuple(sockets))

    def buckets() -> bool:
        s3 = s3_client(env)
        have = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        for bucket in set(BUCKETS) - have:
            s3.create_bucket(Bucket=bucket)
        return True

    wait_for(buckets, "the S3 store", record, timeout=90)
    return record


def start_mlflow(root: Path, ports: Ports, creds: dict[str, str], env: dict[str, str]) -> dict:
    """MLflow's basic-auth app on Postgres, artifacts proxied to S3: every request needs a user (else 401)."""
    ini = root / "mlflow-auth.ini"
    _secret_file(
        ini,
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = {pg_url('postgresql', creds, ports.postgres, 'mlflow_auth')}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
    )
    server_env = {
        **env,
        "MLFLOW_BACKEND_STORE_URI": pg_url("postgresql", creds, ports.postgres, "mlflow"),
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_USERNAME": creds["MLFLOW_TRACKING_USERNAME"],  # the admin, created on first start
        "MLFLOW_AUTH_ADMIN_PASSWORD": creds["MLFLOW_TRACKING_PASSWORD"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": creds["MLFLOW_FLASK_SERVER_SECRET_KEY"],
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    args = [
        _bin("mlflow"),
        "server",
        "--app-name",
        "basic-auth",
        "--artifacts-destination",
        "s3://mlflow/artifacts",
        "--serve-artifacts",
        "--host",
        HOST,
        "--port",
        str(ports.mlflow),
        "--workers",
        "2",
    ]
    record = spawn("mlflow", args, server_env, root)
    wait_for(lambda: http_status(f"{env['MLFLOW_TRACKING_URI']}/health") == 200, "the MLflow server", record, 180)
    return record


def start_prefect(root: Path, ports: Ports, creds: dict[str, str], env: dict[str, str]) -> dict:
    """The Prefect server on Postgres; every API call but the health probe needs the auth string."""
    server_env = {
        **env,
        **LOCAL_SERVER_ENV,
        "PREFECT_HOME": str(root / "prefect-server"),
        "PREFECT_API_DATABASE_CONNECTION_URL": pg_url("postgresql+asyncpg", creds, ports.postgres, "prefect"),
        "PREFECT_SERVER_API_AUTH_STRING": env["PREFECT_API_AUTH_STRING"],
        "PREFECT_UI_API_URL": env["PREFECT_API_URL"],
    }
    args = [_bin("prefect"), "server", "start", "--host", HOST, "--port", str(ports.prefect)]
    record = spawn("prefect-server", args, server_env, root)
    wait_for(lambda: http_status(f"{env['PREFECT_API_URL']}/health") == 200, "the Prefect server", record, 240)
    return record


def start_prefect_worker(root: Path, pool: str, env: dict[str, str]) -> dict:
    args = [_bin("prefect"), "worker", "start", "--pool", pool, "--type", "process"]
    return spawn("prefect-worker", args, {**env, **LOCAL_SERVER_ENV}, root)


# ---- Ray -------------------------------------------------------------------------------------------------


def _node_ports() -> list[str]:
    """Every node on one machine needs its own agent ports: with the defaults the second node's agent fails."""
    names = (
        "--node-manager-port",
        "--object-manager-port",
        "--dashboard-agent-grpc-port",
        "--dashboard-agent-listen-port",
        "--metrics-export-port",
        "--runtime-env-agent-port",
    )
    return [f"{name}={port}" for name, port in zip(names, free_ports(len(names)))]


def ray_node_args(root: Path, ports: Ports, head: bool, cpus: int = 1) -> list[str]:
    common = [
        _bin("ray"),
        "start",
        f"--node-ip-address={HOST}",
        f"--num-cpus={cpus}",
        "--num-gpus=0",
        "--disable-usage-stats",
        "--block",
        *_node_ports(),
    ]
    if head:
        # No dashboard (as for the local Ray of the embedded default): it costs start-up time and memory.
        return [
            *common,
            "--head",
            f"--port={ports.ray}",
            "--include-dashboard=false",
            f"--temp-dir={root / 'ray' / 'h'}",
        ]
    return [
        *common,
        f"--address={HOST}:{ports.ray}",
        f'--resources={{"{WORKER_RESOURCE}": 1}}',
        f"--temp-dir={root / 'ray' / 'w'}",
    ]


def ray_node_count(address: str) -> int:
    """Alive nodes of the cluster at `address`, from `ray status` (no driver needed)."""
    done = subprocess.run([_bin("ray"), "status", f"--address={address}"], capture_output=True, text=True, timeout=60)
    if done.returncode:
        return 0
    active = done.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return sum(1 for line in active.splitlines() if line.strip().startswith("1 node_"))


# A node's raylet waits for its agents' ports file; on a loaded machine they take longer than the default.
NODE_ENV = {"RAY_agent_register_timeout_ms": "180000"}


def _start_node(name: str, args: list[str], env: dict[str, str], root: Path, ready, attempts: int = 5) -> dict:
    """`ray start --block` until `ready()`; again when it gives up (its own 30 s registration limit, which a
    machine busy with other work can exceed)."""
    # As root, start-up runs at a higher priority: the raylet gives its agents about 15 s to report their
    # ports, which a machine busy with other work can exceed. `normal_priority` once the nodes have joined.
    boost = ["nice", "-n", "-10"] if os.geteuid() == 0 and shutil.which("nice") else []
    for attempt in range(attempts):
        record = spawn(name, [*boost, *args], {**env, **NODE_ENV}, root)
        try:
            wait_for(ready, f"the Ray node {name}", record, 150)
            return record
        except (RuntimeError, TimeoutError):
            terminate(record)
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def normal_priority(record: dict) -> None:
    """A node started at a raised priority back to normal (its workers, started later, inherit this)."""
    for pid in [record["pid"], *descendants(record["pid"])]:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, 0)


def start_ray_head(root: Path, ports: Ports, env: dict[str, str]) -> dict:
    node_env = {**env, "HOME": str(root / "ray")}
    args = ray_node_args(root, ports, head=True)
    return _start_node("ray-head", args, node_env, root, lambda: ray_node_count(env["RAY_ADDRESS"]) >= 1)


def start_ray_worker(root: Path, ports: Ports, env: dict[str, str], name: str = "ray-worker") -> dict:
    """A second node with a home of its own (no state directory): what reaches it goes through Ray or S3."""
    worker_home = root / "ray" / f"{name}-home"
    worker_home.mkdir(parents=True, exist_ok=True)
    node_env = {**env, "HOME": str(worker_home), "ALIGNFLOW_HOME": str(worker_home)}
    before = ray_node_count(env["RAY_ADDRESS"])
    args = ray_node_args(root, ports, head=False)
    return _start_node(name, args, node_env, root, lambda: ray_node_count(env["RAY_ADDRESS"]) > before)
