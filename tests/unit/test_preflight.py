"""Fail fast on a cluster profile: every model, endpoint and service it names answers, or exit 2 naming the key.

Real listeners on 127.0.0.1 stand in for the services (an HTTP server answering like MLflow with basic
auth, and like an OpenAI-compatible endpoint; a TCP listener for the Ray head); nothing here reaches
another address.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from alignflow.conf.loader import load_config
from alignflow.tasks.runtime import preflight as pf

REPO = Path(__file__).resolve().parents[2]
# No credentials and no instance metadata: a storage check must say so, never ask a cloud address.
NO_CLOUD = {"AWS_EC2_METADATA_DISABLED": "true", "HF_HUB_OFFLINE": "1"}


class _Handler(BaseHTTPRequestHandler):
    """/health is open; /api/... wants Basic alignflow:secret (MLflow's auth app); /v1/models answers 200."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path == "/health" or self.path.startswith("/v1/models"):
            status = 200
        elif self.path.startswith("/api/2.0/mlflow/"):
            status = 200 if self.headers.get("Authorization") == "Basic YWxpZ25mbG93OnNlY3JldA==" else 401
        else:
            status = 404
        body = json.dumps({"status": status}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture()
def listener():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_embedded_default_names_nothing_to_reach():
    started = time.monotonic()
    assert pf.preflight(load_config(None)) == []
    assert time.monotonic() - started < 1.0


def test_models_folders_hub_ids_and_builtins(tmp_path, monkeypatch):
    for key, value in NO_CLOUD.items():
        monkeypatch.setenv(key, value)
    model = tmp_path / "base"
    model.mkdir()
    assert "no such folder" in pf.check_model(str(tmp_path / "missing"), tmp_path)
    assert "no config.json" in pf.check_model(str(model), tmp_path)
    (model / "config.json").write_text("{}")
    assert pf.check_model(str(model), tmp_path) is None
    assert pf.check_model("builtin:tiny-llama", tmp_path) is None
    # A hub id, offline: only the user's hub cache counts (HF's layout: models--org--name).
    assert "not in the offline cache" in pf.check_model("org/some-model", tmp_path)
    (tmp_path / "models--org--some-model").mkdir(parents=True)
    assert pf.check_model("org/some-model", tmp_path) is None


def test_services_answer_or_name_why(server, listener, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    assert "answers 401" in pf.check_tracking(server)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alignflow")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret")
    assert pf.check_tracking(server) is None
    assert "does not answer" in pf.check_tracking(f"http://127.0.0.1:{_closed_port()}")
    assert pf.check_tracking("sqlite:///x.db") is None
    assert pf.check_endpoint(f"{server}/v1", None) is None
    assert "does not answer" in pf.check_endpoint(f"http://127.0.0.1:{_closed_port()}/v1", None)
    assert pf.check_ray(listener) is None
    assert pf.check_ray(f"ray://{listener}") is None
    assert "does not answer" in pf.check_ray(f"127.0.0.1:{_closed_port()}")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if not Path("/tmp/ray/ray_current_cluster").exists():
        assert "no Ray cluster on this node" in pf.check_ray("auto")
    monkeypatch.setenv("RAY_ADDRESS", listener)
    assert pf.check_ray("auto") is None


def test_s3_storage_without_credentials_is_named_not_asked(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert "no S3 credentials here" in pf.check_storage("s3://alignflow/checkpoints")
    assert pf.check_storage(str(tmp_path)) is None


def test_every_unreachable_part_in_pipeline_order(server, listener, tmp_path, monkeypatch):
    for key, value in NO_CLOUD.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alignflow")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret")
    closed = _closed_port()
    cfg = load_config(
        None,
        [
            f"runtime.home={tmp_path / 'home'}",
            f"training.model_name_or_path={tmp_path / 'no-model'}",
            f"runtime.ray_address=127.0.0.1:{closed}",
            f"runtime.tracking_uri={server}",
        ],
    )
    found = pf.preflight(cfg)
    assert [u.key for u in found] == ["training.model_name_or_path", "runtime.ray_address"]
    assert "no such folder" in found[0].reason and str(closed) in found[1].target
    ok = load_config(None, [f"runtime.ray_address={listener}", f"runtime.tracking_uri={server}"])
    assert pf.preflight(ok) == []
    assert not (tmp_path / "home").exists()


def test_cluster_profile_here_exits_2_fast_and_writes_nothing(tmp_path):
    """The issue's check: `alignflow run --config conf/cluster.yaml` on a machine without that cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS", "MLFLOW_", "PREFECT_"))}
    env.update(NO_CLOUD, ALIGNFLOW_HOME=str(tmp_path / "home"), HOME=str(tmp_path / "user"))
    (tmp_path / "user").mkdir()
    work = tmp_path / "cwd"
    work.mkdir()
    data_existed = Path("/data").exists()
    started = time.monotonic()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "alignflow"), "run", "--config", str(REPO / "conf" / "cluster.yaml")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert "unreachable generation.generators.0.model: /data/models/base" in done.stderr
    assert "Fix generation.generators.0.model" in done.stderr
    for key in ("training.model_name_or_path", "runtime.ray_address", "runtime.tracking_uri", "training.storage"):
        assert f"also {key}" in done.stderr
    # The bound; most of it is loading the config (TRL's config classes, ~13 s of CPU here).
    assert seconds < 30, f"{seconds:.0f}s"
    # Nothing written: not the state directory, not /data, not the working directory or the user's home.
    assert not (tmp_path / "home").exists()
    assert Path("/data").exists() == data_existed
    assert list(work.iterdir()) == [] and list((tmp_path / "user").iterdir()) == []
