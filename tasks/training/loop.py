"""What each Ray Train worker runs: build the stage's trainer (tasks/training/recipe.py), resume from Ray's
latest checkpoint if there is one, train, and hand the final model back as a Ray checkpoint with what it
cost (tasks/training/cost.py). Callbacks hand every HF checkpoint to Ray storage and log metrics to MLflow.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from alignflow.tasks.runtime.ray import quiet_ray_logs
from alignflow.tasks.training import cost, recipe, staging
from alignflow.tasks.training.job import WorkerInputs

FINAL_MODEL_DIR = "model"
RESULT_FILE = "result.json"  # next to FINAL_MODEL_DIR in the final checkpoint: the worker's outcome


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker (torch.distributed is already set up by Ray); config = {"inputs": WorkerInputs}."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    quiet_ray_logs()
    inputs: WorkerInputs = staging.localize(config["inputs"])
    scratch = Path(inputs.scratch_dir) / f"rank{rank}"
    scratch.mkdir(parents=True, exist_ok=True)

    resume_from = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        # The directory must outlive train(): it stays in scratch until the run ends.
        resume_from = checkpoint.to_directory(tempfile.mkdtemp(dir=scratch))
        if (Path(resume_from) / FINAL_MODEL_DIR).is_dir():
            # A re-run of a flow whose training had finished: hand the final model back as it is.
            done = json.loads((Path(resume_from) / RESULT_FILE).read_text())
            ray.train.report(done, checkpoint=checkpoint if rank == 0 else None)
            return

    prefix = "sft" if inputs.stage == recipe.SFT else "train"
    trainer, tokenizer = recipe.build_trainer(
        inputs.training,
        inputs.model_path,
        inputs.train_path,
        str(scratch),
        stage=inputs.stage,
        callbacks=callbacks(rank, inputs.tracking_uri, inputs.run_id, prefix),
        reference_cache=Path(inputs.reference_cache) if inputs.reference_cache else None,
    )
    if rank != 0:
        trainer.args.disable_tqdm = True
    counts = cost.watch(trainer)
    result = trainer.train(resume_from_checkpoint=resume_from)
    # A collective: every rank takes part, before rank 0 saves and reports.
    usage = cost.gather(cost.worker_usage(counts))

    metrics = {
        "step": trainer.state.global_step,
        "train_loss": float(result.training_loss or 0.0),
        "resumed_from_step": _step_of(resume_from),
        "reference_cache": getattr(trainer, "reference_cache", "off"),
        "train_runtime": float(result.metrics.get("train_runtime", 0.0)),
        "num_tokens": _logged(trainer, "num_tokens"),
        # Elastic training (scaling.min_workers) may finish on fewer workers than it started with.
        "world_size": ray.train.get_context().get_world_size(),
    }
    sharded = getattr(trainer, "is_fsdp_enabled", False)
    if rank == 0 or sharded:
        # Under FSDP saving gathers the full state dict, a collective: every rank saves, rank 0 alone writes.
        final_root = Path(tempfile.mkdtemp(dir=scratch))
        recipe.save_final(trainer, tokenizer, final_root / FINAL_MODEL_DIR)
    if rank == 0:
        steps_run = trainer.state.global_step - metrics["resumed_from_step"]
        (final_root / RESULT_FILE).write_text(json.dumps({**metrics, "cost": cost.stage_cost(usage, steps_run)}))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(final_root))
    else:
        ray.train.report(metrics)


def callbacks(rank: int, tracking_uri: str, run_id: str | None, prefix: str = "train") -> list:
    """Checkpoints to Ray storage on every worker; on rank 0, metrics to the MLflow run `run_id` under `prefix/`."""
    from transformers import TrainerCallback

    class RayCheckpointCallback(TrainerCallback):
        """Hands each HF checkpoint to Ray storage. Rank 0 saved it; the others report
        metrics only, so every worker reports the same number of times."""

        def on_save(self, args, state, control, **kwargs):
            import ray.train
            from transformers.trainer_utils import get_last_checkpoint

            metrics = {"step": state.global_step, "epoch": state.epoch or 0.0}
            last = get_last_checkpoint(args.output_dir) if rank == 0 else None
            if last:
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(last))
            else:
                ray.train.report(metrics)
            # Ray's controller registers a reported checkpoint only when it next polls the
            # workers; a worker that dies before then would restart from the checkpoint
            # before. The report queue holds one result, so this second report returns only
            # once the checkpoint above is registered: a failure redoes at most save_steps.
            ray.train.report({**metrics, "checkpoint_registered": 1})

    class MlflowMetricsCallback(TrainerCallback):
        """Rank 0 logs every logging step's metrics, at their step, to the flow's MLflow run."""

        def __init__(self):
            from mlflow import MlflowClient

            self.client = MlflowClient(tracking_uri)
            self.started = self.last_time = time.perf_counter()
            self.last_tokens = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            from mlflow.entities import Metric

            now = time.perf_counter()
            values = {f"{prefix}/{k}": float(v) for k, v in (logs or {}).items() if isinstance(v, int | float)}
            tokens = (logs or {}).get("num_tokens")
            if tokens is not None and self.last_tokens is not None and now > self.last_time:
                values[f"{prefix}/tokens_per_s"] = (float(tokens) - self.last_tokens) / (now - self.last_time)
            if tokens is not None:
                self.last_tokens, self.last_time = float(tokens), now
            values[f"{prefix}/elapsed_s"] = now - self.started
            stamp = int(time.time() * 1000)
            self.client.log_batch(run_id, metrics=[Metric(k, v, stamp, state.global_step) for k, v in values.items()])

    found: list = [RayCheckpointCallback()]
    if rank == 0 and run_id:
        found.append(MlflowMetricsCallback())
    return found


def _logged(trainer, key: str) -> float:
    """The last value of a logged metric (TRL logs num_tokens as a running total)."""
    values = [entry[key] for entry in trainer.state.log_history if key in entry]
    return float(values[-1]) if values else 0.0


def _step_of(checkpoint_dir: str | None) -> int:
    if not checkpoint_dir:
        return 0
    state = Path(checkpoint_dir) / "trainer_state.json"
    return int(json.loads(state.read_text())["global_step"]) if state.exists() else 0
