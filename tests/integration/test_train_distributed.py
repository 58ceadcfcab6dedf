"""Distributed training guarantees: 1 vs 2 workers agree, a killed worker resumes, a killed run resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import SMALL, STATE, small_config

from alignflow.tasks.registry.tracking import start_run
from alignflow.tasks.runtime.state import Ref, sha256_file, tracking_uri
from alignflow.tasks.training.driver import train_model
from alignflow.tasks.training.job import TrainJob

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def eight_pairs(pairs_frame, tmp_path_factory) -> Ref:
    path = tmp_path_factory.mktemp("distributed") / "train.parquet"
    pairs_frame.head(8).to_parquet(path, index=False)
    return Ref(uri=path.as_uri(), sha256=sha256_file(path))


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    return [(m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key)]


def test_one_and_two_workers_agree_at_the_same_global_batch(ray_session, tiny_model_path, eight_pairs, state_dir):
    from transformers import AutoModelForCausalLM

    # 8 rows, global batch 8: every step sees the whole set whatever the sharding, so the
    # gradient and the loss after one update must match across worker counts.
    results = {}
    for workers, per_device in ((1, 8), (2, 4)):
        cfg = small_config(
            f"training.scaling.num_workers={workers}",
            f"training.per_device_train_batch_size={per_device}",
            "training.max_steps=2",
            "training.warmup_steps=0",
            "training.num_train_epochs=5",
        )
        uri = tracking_uri(cfg)
        run_id = start_run(uri, "test-equivalence", f"{workers}-workers", {}, {})
        trained = train_model(
            TrainJob(
                cfg.training, str(tiny_model_path), eight_pairs, str(state_dir / "ray"), f"equiv-{workers}", uri, run_id
            )
        )
        # What tests/integration/test_compare_flow.py checks of ORPO's fit on one worker, here for DPO on one and two.
        assert trained.steps == 2 and trained.stage == "dpo" and trained.num_workers == workers
        assert trained.model.path.is_dir() and len(trained.model.sha256) == 64
        AutoModelForCausalLM.from_pretrained(trained.model.path)  # the final model loads
        assert [s for s, _ in _history(uri, run_id, "train/loss")] == [1, 2]
        assert _history(uri, run_id, "train/rewards/accuracies")
        results[workers] = {
            "grad_norm_1": dict(_history(uri, run_id, "train/grad_norm"))[1],
            "loss_2": dict(_history(uri, run_id, "train/loss"))[2],
        }
    assert results[1]["grad_norm_1"] == pytest.approx(results[2]["grad_norm_1"], rel=1e-4)
    assert results[1]["loss_2"] == pytest.approx(results[2]["loss_2"], rel=1e-4)


def _train_workers() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "name"]):
        text = " ".join(proc.info["cmdline"] or []) + " " + (proc.info["name"] or "")
        if "RayTrainWorker" in text:
            found.append(proc)
    return found


def _wait_for_step(uri: str, run_id: str, step: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = [s for s, _ in _history(uri, run_id, "train/loss")]
        if steps and max(steps) >= step:
            return max(steps)
        time.sleep(0.05)
    raise TimeoutError(f"training did not reach step {step} in {timeout}s")


def test_a_killed_worker_restarts_from_the_last_checkpoint(ray_session, tiny_model_path, eight_pairs, state_dir):
    cfg = small_config(
        "training.scaling.num_workers=2",
        "training.per_device_train_batch_size=2",
        "training.max_steps=40",
        "training.save_steps=5",
        "training.max_failures=1",
        "training.num_train_epochs=100",
    )
    uri = tracking_uri(cfg)
    run_id = start_run(uri, "test-fault", "kill-a-worker", {}, {})
    killed: dict = {}

    def kill_one_worker():
        killed["at_step"] = _wait_for_step(uri, run_id, 12, timeout=120)
        victims = _train_workers()
        killed["pids"] = [p.pid for p in victims]
        victims[-1].send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    trained = train_model(
        TrainJob(
            cfg.training, str(tiny_model_path), eight_pairs, str(state_dir / "ray"), "fault-kill-worker", uri, run_id
        )
    )
    killer.join(timeout=5)

    assert killed.get("pids"), "no Ray Train worker process was found to kill"
    assert trained.steps == 40  # the planned number of steps
    resumed = trained.resumed_from_step
    assert resumed > 0, "the restarted workers did not resume from a checkpoint"
    steps = [s for s, _ in _history(uri, run_id, "train/loss")]  # in logging order
    restart = next(i for i in range(1, len(steps)) if steps[i] <= steps[i - 1])
    last_before_kill = steps[restart - 1]
    assert steps[restart] == resumed + 1  # training went on right after the checkpoint
    assert last_before_kill - resumed <= cfg.training.knob("save_steps", float)  # at most save_steps steps redone


def test_a_killed_flow_run_resumes_from_its_checkpoint_when_run_again(prefect_harness, ray_session, state_dir):
    from mlflow import MlflowClient

    from alignflow.flows.alignment import alignment

    overrides = [
        "registry.model_name=test-resume",
        "training.max_steps=24",
        "training.save_steps=5",
        "training.per_device_train_batch_size=2",
        "training.num_train_epochs=100",
    ]
    cfg = small_config(*overrides)
    uri = tracking_uri(cfg)
    from prefect.settings import PREFECT_API_URL

    # The killed run reports to this session's Prefect server (as a deployment's run reports to the
    # server's) instead of starting a temporary one of its own (~15 s); the re-run finds its flow run there.
    env = {**os.environ, "ALIGNFLOW_HOME": str(STATE), "PREFECT_API_URL": PREFECT_API_URL.value()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "alignflow.flows.cli", "run", *SMALL, *overrides],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        client = MlflowClient(uri)
        deadline = time.monotonic() + 300
        run_id = None
        while time.monotonic() < deadline and proc.poll() is None:
            runs = client.search_runs(
                [e.experiment_id for e in client.search_experiments()],
                filter_string="params.`registry.model_name` = 'test-resume'",
            )
            if runs and max((s for s, _ in _history(uri, runs[0].info.run_id, "train/loss")), default=0) >= 8:
                run_id = runs[0].info.run_id
                break
            time.sleep(0.2)
        assert run_id, "the first flow run never reached step 8"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, its Ray cluster and workers
        proc.wait(timeout=30)

    result = alignment(cfg)
    assert result.steps == 24
    assert result.resumed_from_step >= 5  # continued from the killed run's checkpoint
    # The killed driver's MLflow run did not stay RUNNING: the re-run ended it, saying why.
    killed = MlflowClient(uri).get_run(run_id)
    assert killed.info.status == "KILLED", killed.info.status
    assert "driver process gone" in killed.data.tags["alignflow.ended"]
    # ... and its Prefect flow run, on the same server, no longer shows Running.
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(killed.data.tags["prefect_flow_run_id"]).state
    assert state.type.value == "CRASHED" and "is gone" in (state.message or ""), state
