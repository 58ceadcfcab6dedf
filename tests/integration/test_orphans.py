"""A run whose driver was killed is ended by the next run: MLflow KILLED with the reason, its Prefect flow
run Crashed; runs of a live driver or of another host are left alone."""

from __future__ import annotations

import socket
import subprocess

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.states import Running

from alignflow.flows.bookkeeping import end_orphans
from alignflow.tasks.registry import tracking as mlflow_runs
from alignflow.tasks.registry.orphans import ENDED_TAG
from alignflow.tasks.runtime.process_id import DRIVER_TAG, driver_gone, driver_tag

pytestmark = pytest.mark.integration


@flow(name="orphan-test-victim")
def victim() -> None:
    pass


@flow(name="orphan-test-next-run")
def next_run(tracking: str, experiment: str) -> list[str]:
    return [o.run_id for o in end_orphans(tracking, experiment)]


def dead_driver() -> str:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return f"{socket.gethostname()}:{proc.pid}:1700000000"


def test_driver_tags_tell_a_gone_process_from_a_live_one():
    assert not driver_gone(driver_tag())
    assert driver_gone(dead_driver())
    assert not driver_gone("another-host:1:1700000000")  # cannot be checked from here
    # A live pid with another start time is a reused pid: the driver it named is gone.
    host, pid, started = driver_tag().rsplit(":", 2)
    assert driver_gone(f"{host}:{pid}:{int(started) - 100}")


def test_the_next_run_ends_a_killed_drivers_runs(tmp_path, prefect_harness):
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = "orphans"
    with get_client(sync_client=True) as client:
        crashed_run = client.create_flow_run(victim, state=Running())
        live_run = client.create_flow_run(victim, state=Running())

    def start(name: str, driver: str, flow_run_id: str | None = None) -> str:
        tags = {"prefect_flow_run_id": str(flow_run_id)} if flow_run_id else {}
        run_id = mlflow_runs.start_run(tracking, experiment, name, {}, tags, (tmp_path / "art").as_uri())
        mlflow_runs.set_tags(tracking, run_id, {DRIVER_TAG: driver})
        return run_id

    killed = start("killed", dead_driver(), crashed_run.id)
    alive = start("alive", driver_tag(), live_run.id)
    elsewhere = start("elsewhere", "another-host:4242:1700000000")
    finished = start("finished", dead_driver())
    mlflow_runs.end_run(tracking, finished, "FINISHED")

    assert next_run(tracking, experiment) == [killed]

    client = mlflow_runs.mlflow_client(tracking)
    assert client.get_run(killed).info.status == "KILLED"
    assert "driver process gone" in client.get_run(killed).data.tags[ENDED_TAG]
    assert {client.get_run(r).info.status for r in (alive, elsewhere)} == {"RUNNING"}
    assert client.get_run(finished).info.status == "FINISHED"
    with get_client(sync_client=True) as prefect:
        assert prefect.read_flow_run(crashed_run.id).state.type.value == "CRASHED"
        assert "is gone" in prefect.read_flow_run(crashed_run.id).state.message
        assert prefect.read_flow_run(live_run.id).state.type.value == "RUNNING"
    assert next_run(tracking, experiment) == []  # ended once
