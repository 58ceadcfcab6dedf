"""Notifications, with a real HTTP receiver on 127.0.0.1 as the webhook (issue 30).

A failed run marks its MLflow run FAILED and its `on_failure` hook POSTs to the webhook; a run the gate
does not promote POSTs one message carrying the win rate's interval. The webhook's URL is kept where the
config points (an environment variable, a Prefect Secret block), and after a run no trace of it is found
in MLflow (its SQLite store and artifacts), the state directory, the logs or the Prefect artifacts."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import pytest
from conftest import small_config
from webhook_receiver import webhook_receiver

from alignflow.tasks.runtime.state import tracking_uri

VARIABLE = "TEST_NOTIFY_WEBHOOK_URL"  # not ALIGNFLOW_*: nothing forwards it to Ray workers
BY_VARIABLE = f"runtime.notify_webhook_env={VARIABLE}"


@pytest.fixture
def receiver(monkeypatch):
    """The receiver, its URL in $TEST_NOTIFY_WEBHOOK_URL; the path carries a token to search for afterwards."""
    with webhook_receiver(f"/hooks/alignflow-{uuid.uuid4().hex}") as (url, received, behaviour):
        monkeypatch.setenv(VARIABLE, url)
        yield url, received, behaviour


def test_failed_stage_marks_the_mlflow_run_failed_and_notifies(receiver, prefect_harness):
    from mlflow import MlflowClient

    from alignflow.flows.alignment import alignment

    url, received, behaviour = receiver
    behaviour["fail"] = 1  # the first delivery gets a 503: the hook retries
    # A typo'd checkpoint store: generate and validate succeed, the MLflow run starts, training fails.
    config = small_config("registry.model_name=test-notify", "training.storage=nosuchproto://ckpt", BY_VARIABLE)
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


@pytest.mark.parametrize("kept_in", ["variable", "secret-block"])
def test_bad_knob_fails_before_compute_and_still_notifies(kept_in, receiver, prefect_harness):
    from prefect.blocks.system import Secret

    from alignflow.conf.loader import ConfigError
    from alignflow.flows.deployments import run_alignment

    url, received, _ = receiver
    where = BY_VARIABLE
    if kept_in == "secret-block":
        Secret(value=url).save("test-notify-webhook", overwrite=True)
        where = "runtime.notify_webhook_block=test-notify-webhook"
    with pytest.raises(ConfigError, match="training.beta"):
        run_alignment(overrides=[where, "training.beta=abc"])
    [message] = received
    assert message["flow"] == "run-alignment" and "training.beta" in message["message"]
    assert message["mlflow_run_id"] is None  # it stopped before anything started


def test_failures_not_in_notify_on_are_not_sent(receiver, prefect_harness):
    from alignflow.conf.loader import ConfigError
    from alignflow.flows.deployments import run_alignment

    _, received, _ = receiver
    with pytest.raises(ConfigError, match="training.beta"):
        run_alignment(overrides=[BY_VARIABLE, "runtime.notify_on=[promoted]", "training.beta=abc"])
    assert received == []


def test_a_dead_receiver_does_not_hide_the_failure(prefect_harness, monkeypatch):
    from alignflow.conf.loader import ConfigError
    from alignflow.flows.deployments import run_alignment

    # Nothing listens on port 9 (discard): delivery fails, is logged, and the run keeps its own error.
    monkeypatch.setenv(VARIABLE, "http://127.0.0.1:9/none")
    with pytest.raises(ConfigError, match="training.beta"):
        run_alignment(overrides=[BY_VARIABLE, "training.beta=abc"])


def _files_holding(root: Path, needle: bytes) -> list[str]:
    """Every file under `root` (SQLite databases included) whose bytes hold `needle`."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if needle in path.read_bytes():
                    found.append(str(path))
            except OSError:  # a socket or a file removed meanwhile (Ray's session files)
                continue
    return found


def _every_page(read, **kwargs) -> list:
    rows, offset = [], 0
    while True:
        page = read(limit=200, offset=offset, **kwargs)
        rows += page
        if len(page) < 200:
            return rows
        offset += 200


def _prefect_records() -> str:
    """The Prefect API's logs, artifacts and flow run parameters, as one text to search."""
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        logs = [log.message for log in _every_page(client.read_logs)]
        artifacts = [[a.key, a.description, a.data] for a in _every_page(client.read_artifacts)]
        parameters = [run.parameters for run in _every_page(client.read_flow_runs)]
    return json.dumps([logs, artifacts, parameters], default=str)


def test_a_run_not_promoted_posts_one_message_with_the_interval_and_leaves_no_trace_of_the_url(
    receiver, prefect_harness, ray_session, state_dir, caplog, capfd
):
    from mlflow import MlflowClient

    from alignflow.flows.alignment import alignment

    url, received, _ = receiver
    token = url.rsplit("/", 1)[-1]  # alignflow-<uuid>: the URL's secret part
    caplog.set_level(logging.INFO, logger="prefect")  # the flow run's INFO lines too, in caplog and the API
    # A margin of 0.5: promotion would need the interval's lower bound above 1, so the gate must refuse.
    config = small_config(
        "registry.model_name=test-notify-outcome", "registry.gate.min_win_rate_margin=0.5", BY_VARIABLE
    )
    summary = alignment(config)

    assert not summary.promoted
    [message] = received
    assert message["event"] == "alignflow.model.not-promoted" and message["promoted"] is False
    assert (message["win_rate_low"], message["win_rate_high"]) == (summary.win_rate_low, summary.win_rate_high)
    assert message["n_prompts"] == summary.n_prompts and message["model_version"] == summary.version
    assert message["mlflow_run_id"] == summary.mlflow_run_id and message["reason"] == summary.decision
    assert f"[{summary.win_rate_low:.3f}, {summary.win_rate_high:.3f}]" in message["text"]
    assert f"n={summary.n_prompts} prompts" in message["text"]
    version = summary.version  # the registry URI, or the MLflow UI's page when a UI address is known
    assert message["mlflow_version_url"].endswith(
        (f"models:/test-notify-outcome/{version}", f"/models/test-notify-outcome/versions/{version}")
    )
    assert f"sent to the webhook in ${VARIABLE}" in caplog.text  # the logs were captured, and name the variable

    # MLflow: the SQLite store and the artifacts live in the state directory (runtime.home), searched byte by byte.
    assert tracking_uri(config).startswith(f"sqlite:///{state_dir}")
    assert Path(state_dir, "mlflow.db").is_file() and any(Path(state_dir).rglob("resolved.yaml"))
    assert _files_holding(Path(state_dir), token.encode()) == []
    run = MlflowClient(tracking_uri(config)).get_run(summary.mlflow_run_id)
    assert run.data.params["runtime.notify_webhook_env"] == VARIABLE
    assert token not in json.dumps([run.data.params, run.data.tags])
    # The logs (Python logging, the console) and Prefect's records (API logs, artifacts, flow run parameters).
    assert token not in caplog.text and token not in "".join(capfd.readouterr())
    prefect_records = _prefect_records()
    assert "evaluation-summary" in prefect_records and f"webhook in ${VARIABLE}" in prefect_records
    assert token not in prefect_records
