"""What a training is given: the flow's `TrainJob` (driver side) and each stage's `WorkerInputs` (worker side).

Both the driver (tasks/training/driver.py) and the workers (loop.py, staging.py) import this module, and
it imports none of them: no circle.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from alignflow.conf.training import TrainingConfig
from alignflow.tasks.runtime.state import Ref


@dataclass(frozen=True)
class TrainJob:
    """One training: the config, the starting model and the data; where its Ray run lives (the same storage and
    run name resume from that run's checkpoints) and which MLflow run its metrics go to."""

    training: TrainingConfig
    model: str  # what from_pretrained takes: a local folder or a hub id
    train_data: Ref
    storage_path: str
    run_name: str
    tracking_uri: str
    mlflow_run_id: str | None = None
    ray_address: str | None = None

    def replace(self, **changes) -> TrainJob:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class WorkerInputs:
    """One stage's inputs, the same on every worker (Ray pickles them into train_loop_config)."""

    training: TrainingConfig
    stage: str  # "preference" (training.method) or "sft"
    model_path: str
    train_path: str
    scratch_dir: str
    tracking_uri: str
    run_id: str | None
    reference_cache: str | None
    train_sha256: str = ""
    # (field, sha256) of inputs uploaded to remote storage (tasks/training/staging.py): each worker fetches them
    # to its own node before use, and relative scratch_dir/reference_cache are under that node's folder.
    staged: tuple[tuple[str, str], ...] = ()
