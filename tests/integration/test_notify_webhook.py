"""Failure handling: a failed run marks its MLflow run FAILED and its `on_failure` hook POSTs to
runtime.notify_webhook, here a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import small_config

from alignflow.tasks.runtime.state import tracking_uri


@pytest.fixture
def receiver():
    """An HTTP server on 127.0.0.1 that records the JSON bodies POSTed to it; the first `fail` answers are 503."""
    received: list[dict] = []
    behaviour = {"fail": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if behaviour["fail"] > 0:
                behaviour["fail"] -= 1
                self.send_response(503)
            else:
                received.append(body)
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hooks/alignflow", received, behaviour
    server.shutdown()


def test_failed_stage_marks_the_mlflow_run_failed_and_notifies(receiver, prefect_harness):
    from mlflow import MlflowClient

    from alignflow.flows.alignment import alignment

    url, received, behaviour = receiver
    behaviour["fail"] = 1  # the first delivery gets a 503: the hook retries
    # A typo'd checkpoint store: generate and validate succeed, the MLflow run starts, training fails.
    config = small_config(
        "registry.model_name=test-notify", "training.storage=nosuchproto://ckpt", f"runtime.notify_webhook={url}"
    )
    with pytest.raises(ValueError, match="nosuchproto"):
        alignment(config)

    [message] = received
    assert message["event"] == "alignflow.flow-run.failed" and message["state"] == "Failed"
    assert message["flow"] == "alignment" and message["model_name"] == "test-notify"
    assert "nosuchproto" in message["message"] and "nosuchproto" in message["text"]
    assert message["mlflow_run_status"] == "FAILED"
    run = MlflowClient(tracking_uri(config)).get_run(message["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["prefect_flow_run_id"] == message["flow_run_id"]


def test_bad_knob_fails_before_compute_and_still_notifies(receiver, prefect_harness):
    from alignflow.conf.loader import ConfigError
    from alignflow.flows.deployments import run_alignment

    url, received, _ = receiver
    with pytest.raises(ConfigError, match="training.beta"):
        run_alignment(overrides=[f"runtime.notify_webhook={url}", "training.beta=abc"])
    [message] = received
    assert message["flow"] == "run-alignment" and "training.beta" in message["message"]
    assert message["mlflow_run_id"] is None  # it stopped before anything started


def test_a_dead_receiver_does_not_hide_the_failure(prefect_harness):
    from alignflow.conf.loader import ConfigError
    from alignflow.flows.deployments import run_alignment

    # Nothing listens on port 9 (discard): delivery fails, is logged, and the run keeps its own error.
    with pytest.raises(ConfigError, match="training.beta"):
        run_alignment(overrides=["runtime.notify_webhook=http://127.0.0.1:9/none", "training.beta=abc"])
