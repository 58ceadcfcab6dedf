"""Registry against a real `mlflow server` (SQLite backend, proxied artifacts) on 127.0.0.1.

Register (idempotent per run), gate, manual promote, rollback and history through the CLI,
parallel promotions from threads and processes, the whole flow logging to the server, and
`mlflow models serve` answering a generation request for the champion.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
from conftest import small_config
from servers import free_port, wait_http

from alignflow.tasks.registry import promotion
from alignflow.tasks.registry.card import write_model_card
from alignflow.tasks.registry.tracking import log_metrics, start_run
from alignflow.tasks.registry.versions import (
    log_model_version,
    tag_and_alias,
)

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
NAME = "test-server"


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` on a free port; yields its tracking URI."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = root / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{root / 'mlflow.db'}",
                "--artifacts-destination",
                str(root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "2",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"},
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", proc, 90, log)
        yield uri
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def two_versions(server, tiny_model_path):
    """v1 registered and promoted by the gate; v2 registered, failed the gate. Returns the run ids."""
    runs = []
    # The gate's decisions, as tasks/registry/gate.py would reach them on these win-rate intervals.
    for metrics, promote in (({"win_rate_low": 0.55}, True), ({"win_rate_low": 0.41}, False)):
        run_id = start_run(server, "test-server", "server", {"a": "1"}, {"dataset_sha256": "abc"})
        log_metrics(server, run_id, {f"eval/{k}": v for k, v in metrics.items()})
        reason = f"win rate lower bound {metrics['win_rate_low']} {'>' if promote else '<='} 0.50"
        version = log_model_version(server, run_id, NAME, tiny_model_path)
        tags = {
            "dataset_sha256": "abc",
            "gate.outcome": "promoted" if promote else "not promoted",
            "gate.reason": reason,
        }
        tag_and_alias(server, NAME, version, tags, promote, expected_champion=None if promote else False)
        runs.append((run_id, version, promote))
    return runs


def test_register_is_idempotent_and_gated(server, two_versions, tiny_model_path):
    from mlflow import MlflowClient

    (run1, v1, promoted1), (run2, v2, promoted2) = two_versions
    assert (v1, v2) == ("1", "2") and promoted1 and not promoted2
    # Registering the same training run again reuses its version.
    assert log_model_version(server, run1, NAME, tiny_model_path) == "1"
    client = MlflowClient(server)
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 2
    assert client.get_model_version(NAME, "1").tags["training_run_id"] == run1
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "2"
    failed = client.get_model_version(NAME, "2").tags
    assert failed["gate.outcome"] == "not promoted" and "lower bound 0.41 <= 0.50" in failed["gate.reason"]
    # The pipeline (source=gate) cannot promote a version that failed the gate.
    with pytest.raises(promotion.PromotionRefused, match="did not pass the gate"):
        promotion.promote(server, NAME, "2", "gate says so", source="gate")
    [event] = promotion.history(server, NAME)
    assert event["action"] == "gate" and event["version"] == "1" and event["previous"] is None
    # The model card lives next to MLmodel in the version's artifacts.
    write_model_card(server, NAME, "1", f"# {NAME} version 1\n\nGate: {failed['gate.outcome']}\n")
    model_id = client.get_model_version(NAME, "1").source.removeprefix("models:/")
    assert "README.md" in {a.path for a in client.list_logged_model_artifacts(model_id)}


def test_champion_of_another_base_on_a_server_stops_the_run(server, tmp_path):
    """The guard on the champion's base (issue 30, item 6) reads a tracking server's champion, and `alignflow run`
    stops on it with exit 2."""
    from mlflow import MlflowClient

    from alignflow.tasks.registry import base_guard

    client = MlflowClient(server)
    for name, tags, champion in (("base-smollm2", {"base_model": "builtin:smollm2-135m-instruct"}, True),
                                 ("base-unpromoted", {}, False)):  # fmt: skip
        client.create_registered_model(name)
        client.create_model_version(name, f"s3://bucket/{name}", tags=tags)
        if champion:
            client.set_registered_model_alias(name, "champion", "1")
    for name in ("base-unpromoted", "base-no-such-model"):
        assert base_guard.champion_base(server, name) is None, name
    assert base_guard.champion_base(server, "base-smollm2") == base_guard.ChampionBase(
        "1", "builtin:smollm2-135m-instruct"
    )
    done = subprocess.run(
        [
            str(BIN / "alignflow"),
            "run",
            "--home",
            str(tmp_path / "home"),
            f"runtime.tracking_uri={server}",
            "registry.model_name=base-smollm2",
            "training.model_name_or_path=builtin:tiny-llama",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, out
    assert "builtin:smollm2-135m-instruct" in out and "builtin:tiny-llama" in out


def cli(server: str, *args: str, user: str = "alice") -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "alignflow"), *args, "--tracking-uri", server],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "ALIGNFLOW_USER": user},
    )


def test_cli_promote_rollback_history(server, two_versions):
    from mlflow import MlflowClient

    client = MlflowClient(server)
    done = cli(server, "promote", NAME, "2", "--reason", "better answers on the support prompts")
    assert done.returncode == 0, done.stderr
    assert "gate overridden" in done.stderr and "did not pass the gate" in done.stderr
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
    tags = client.get_model_version(NAME, "2").tags
    assert tags["promoted_by"] == "alice" and tags["promotion_reason"] == "better answers on the support prompts"
    assert tags["promotion_gate_overridden"] == "true" and tags["promoted_at"]

    assert cli(server, "promote", NAME, "99", "--reason", "typo").returncode == 1
    assert cli(server, "promote", NAME, "1", "--reason", " ").returncode == 2
    assert cli(server, "promote", NAME, "1").returncode == 2  # --reason is required

    done = cli(server, "rollback", NAME, "--reason", "regression in prod", user="bob")
    assert done.returncode == 0, done.stderr
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert client.get_model_version(NAME, "2").tags["rolled_back_by"] == "bob"
    assert client.get_model_version(NAME, "1").tags["promotion_source"] == "rollback"
    refused = cli(server, "rollback", NAME)
    assert refused.returncode == 1 and "nothing to roll back to" in refused.stderr

    shown = cli(server, "history", NAME, "--json")
    assert shown.returncode == 0, shown.stderr
    listed = json.loads(shown.stdout)
    events = listed["champion_changes"]
    assert [(v["version"], v["aliases"]) for v in listed["versions"]] == [("2", ["challenger"]), ("1", ["champion"])]
    assert [v["gate"] for v in listed["versions"]] == ["not promoted", "promoted"] and listed["versions"][0][
        "overridden"
    ]
    assert [(e["action"], e["version"], e["previous"]) for e in events] == [
        ("gate", "1", None),
        ("promote", "2", "1"),
        ("rollback", "1", "2"),
    ]
    assert [e["by"] for e in events[1:]] == ["alice", "bob"]
    assert cli(server, "history", "no-such-model").returncode == 1


def test_parallel_promotions_end_with_one_champion(server, two_versions):
    from mlflow import MlflowClient

    client = MlflowClient(server)
    source = client.get_model_version(NAME, "1")
    for _ in range(4):  # more versions of the same weights, cheaply
        client.create_model_version(
            NAME, source.source, run_id=source.run_id, model_id=source.source.removeprefix("models:/")
        )
    versions = [str(v) for v in range(1, 7)]
    before = len(promotion.history(server, NAME))

    barrier = threading.Barrier(len(versions))
    errors: list[BaseException] = []

    def promote(version: str) -> None:
        try:
            barrier.wait(timeout=30)
            promotion.promote(server, NAME, version, f"parallel {version}", user=f"thread-{version}")
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    # ... and two processes at the same time, through the CLI.
    procs = [
        subprocess.Popen(
            [str(BIN / "alignflow"), "promote", NAME, v, "--reason", "from a process", "--tracking-uri", server],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for v in ("5", "6")
    ]
    for t in threads:
        t.join(timeout=120)
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    assert not errors, errors

    champion = str(client.get_model_version_by_alias(NAME, "champion").version)
    holders = [v for v in versions if "champion" in client.get_model_version(NAME, v).aliases]
    assert holders == [champion]
    history = promotion.history(server, NAME)
    # Serialized: numbered without gaps, and each change starts from the champion the one before left.
    assert [e["seq"] for e in history] == list(range(1, len(history) + 1))
    for earlier, later in zip(history, history[1:]):
        assert later["previous"] == earlier["version"], (earlier, later)
    assert history[-1]["version"] == champion
    assert 1 <= len(history) - before <= len(versions) + 2
    # The lock is gone.
    assert not client.search_registered_models(f"name = '{NAME}{promotion.LOCK_SUFFIX}'")


def test_champion_serves_generation_over_http(server, two_versions, tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": server, "PATH": f"{BIN}:{os.environ['PATH']}"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "models",
                "serve",
                "-m",
                f"models:/{NAME}@champion",
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=tmp_path,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, 120, log)
        answer = requests.post(
            f"http://127.0.0.1:{port}/invocations",
            json={"inputs": ["Why is the sky blue?"] * 6, "params": {"max_new_tokens": 8}},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        # The completion alone, sampled: one of a few answers of the tiny test model may be empty.
        texts = answer.json()["predictions"]
        assert all(isinstance(t, str) and not t.startswith("Why is the sky") for t in texts) and any(texts)
        assert "Ignoring provided params" not in log.read_text()  # the signature declares them
    finally:
        stop(proc)


def test_flow_registers_with_lineage_on_the_server(server, prefect_harness, ray_session):
    from mlflow import MlflowClient

    from alignflow.flows.alignment import alignment

    name = "test-server-flow"
    result = alignment(
        small_config(
            f"registry.model_name={name}",
            f"runtime.tracking_uri={server}",
            "evaluation.max_prompts=8",
            "evaluation.samples_per_prompt=1",
        )
    )
    client = MlflowClient(server)
    version = client.get_model_version(name, result.version)
    tags = version.tags
    run_id = result.mlflow_run_id
    for key in (
        "dataset_uri",
        "dataset_sha256",
        "validation_report",
        "config_hash",
        "config_uri",
        "git_commit",
        "base_model",
        "method",
        "prefect_flow_run_id",
        "prefect_flow_run_url",
        "gate.outcome",
        "gate.reason",
        "gate.win_rate_ci95",
    ):
        assert key in tags, key
    assert tags["training_run_id"] == run_id and tags["dataset_sha256"] == result.dataset_sha256
    # Train and test splits are the run's dataset inputs, digest = their sha256.
    inputs = {
        next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset
        for d in client.get_run(run_id).inputs.dataset_inputs
    }
    assert set(inputs) == {"train", "test"}
    assert inputs["test"].digest == tags["test_dataset_sha256"][:36]
    # Resolved config, validation report and every judged pair of the head-to-head are run artifacts.
    listed = {a.path for folder in ("config", "validate", "eval") for a in client.list_artifacts(run_id, folder)}
    assert {"config/resolved.yaml", "validate/report.json", "eval/head_to_head.json"} <= listed
    assert result.against == "base" and result.win_rate_low <= result.win_rate <= result.win_rate_high
    assert client.get_run(run_id).data.metrics["eval/win_rate"] == result.win_rate
    card = client.list_logged_model_artifacts(version.source.removeprefix("models:/"))
    assert "README.md" in {a.path for a in card}
    if result.promoted:
        assert promotion.history(server, name)[-1]["version"] == result.version


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
