"""A flow run's MLflow run, as the stages see it: where it lives, its lineage tags, and logging into it.

Handed to the train and register tasks (and to each recipe of a comparison, as a nested run), so
a stage logs into the flow's run by id without knowing how it was opened (flows/bookkeeping.py).
`with book:` ends the run, FAILED when the body raised, before the flow's failure hook notifies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignflow.tasks.registry import tracking as mlflow_runs


@dataclass(frozen=True)
class RunBook:
    """One MLflow run of a flow: where it lives and the lineage tags every model version of it carries."""

    tracking: str
    run_id: str
    tags: dict[str, str]
    run_prefix: str
    scratch: Path
    ray_address: str | None = None
    flow_run_url: str | None = None
    children: dict[str, str] = field(default_factory=dict)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        mlflow_runs.log_metrics(self.tracking, self.run_id, metrics)

    def log_text(self, text: str, artifact_file: str) -> None:
        mlflow_runs.log_text(self.tracking, self.run_id, text, artifact_file)

    def log_files(self, files: dict[str, Path]) -> None:
        mlflow_runs.log_artifacts(self.tracking, self.run_id, files)

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        mlflow_runs.log_table(self.tracking, self.run_id, rows, artifact_file)

    def for_child(self, run_id: str) -> RunBook:
        """The same lineage, logging into a nested run (a recipe of a comparison)."""
        tags = {**self.tags, "training_run_id": run_id}
        return RunBook(self.tracking, run_id, tags, self.run_prefix, self.scratch, self.ray_address, self.flow_run_url)

    def __enter__(self) -> RunBook:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for run_id in [*self.children.values(), self.run_id]:
            if mlflow_runs.run_status(self.tracking, run_id) == "RUNNING":
                mlflow_runs.end_run(self.tracking, run_id, "FAILED" if exc_type else "FINISHED")
