"""MLflow runs whose driver died: found and ended when the next run starts.

A `kill -9` of `alignflow run` (or a machine losing power) leaves the flow's MLflow run RUNNING
for ever: nothing in the killed process gets to end it. Every run therefore records which
process drives it (`alignflow.driver`: host, pid and that process's start time, so a reused pid
is not mistaken for it), and each new run first looks for RUNNING runs of its experiment whose
driver is gone from this host, and ends them KILLED with the reason. A driver on another host
cannot be checked from here: its runs are left alone (the reason says so when asked).

Ray's checkpoints of a killed run are not orphans: training storage is named by content, so the
re-run resumes from them (tasks/training/driver.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from alignflow.tasks.registry.tracking import mlflow_client
from alignflow.tasks.runtime.process_id import DRIVER_TAG, driver_gone

ENDED_TAG = "alignflow.ended"


@dataclass(frozen=True)
class Orphan:
    run_id: str
    run_name: str
    driver: str  # host:pid:start
    prefect_flow_run_id: str | None


def reap_orphans(tracking_uri: str, experiment: str) -> list[Orphan]:
    """End as KILLED every RUNNING run of `experiment` whose driver on this host is gone; returns them."""
    client = mlflow_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    reaped = []
    runs = client.search_runs([found.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=500)
    for run in runs:
        tag = run.data.tags.get(DRIVER_TAG)
        if not tag or not driver_gone(tag):
            continue
        reason = f"driver process gone ({tag}); ended at {time.strftime('%Y-%m-%d %H:%M:%S')} by the next run"
        client.set_tag(run.info.run_id, ENDED_TAG, reason)
        client.set_terminated(run.info.run_id, "KILLED")
        reaped.append(
            Orphan(run.info.run_id, run.info.run_name or "", tag, run.data.tags.get("prefect_flow_run_id") or None)
        )
    return reaped
