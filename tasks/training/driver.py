"""The training driver: a Ray Train TorchTrainer per stage, with the scaling, storage and failure settings.

`train_model` runs one stage (tasks/training/loop.py on every worker) and returns a `TrainResult`;
`train_stages` runs the optional SFT stage and then the preference stage from its model. Runs are
named by content (`content_run_name`): the same (storage, run name) resumes from that run's latest
checkpoint, and a finished run leaves a done marker holding its result, so a re-run of a failed
flow continues instead of starting over and reuses a finished SFT stage.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from pydantic import BaseModel, Field

from alignflow.conf.training import TrainingConfig
from alignflow.tasks.runtime.chat_template import key_parts
from alignflow.tasks.runtime.ray import start_ray
from alignflow.tasks.runtime.state import Ref, home, sha256_text, sha256_tree
from alignflow.tasks.training import memory, staging
from alignflow.tasks.training.job import TrainJob, WorkerInputs
from alignflow.tasks.training.loop import FINAL_MODEL_DIR, RESULT_FILE, train_loop
from alignflow.tasks.training.recipe import SFT

DONE_MARKER = "alignflow_done.json"


class TrainResult(BaseModel):
    """One training: the final model and what it took. From `train_stages`, the preference stage's result
    with every stage's own result under `stages` and the wall time over the stages that ran."""

    model: Ref
    stage: str = Field(description="`sft` or the preference method.")
    run_name: str
    steps: int
    train_loss: float
    resumed_from_step: int = 0
    reference_cache: str = "off"
    train_runtime_s: float = 0.0
    tokens: int = 0
    wall_s: float
    num_workers: int = Field(description="Workers of the final attempt: elastic training may end on fewer.")
    checkpoint: str = ""
    started_from: str = ""
    cost: dict = Field(default_factory=dict, description="tasks/training/cost.py stage_cost of the workers.")
    reused: bool = Field(False, description="A finished stage of an earlier run, not trained again.")
    stages: dict[str, TrainResult] = Field(default_factory=dict)


def run_name_for(storage_path: str, base: str) -> str:
    """The Ray run name for a training of this content (config, model, data).

    An unfinished run of the same content is continued from its checkpoints (a re-run of a
    failed or killed flow spends no step twice); once a run has finished, the next one
    starts fresh under a new attempt suffix.
    """
    import fsspec

    fs, root = fsspec.core.url_to_fs(storage_path)
    attempt = 1
    while True:
        name = base if attempt == 1 else f"{base}-r{attempt}"
        if not fs.exists(f"{root.rstrip('/')}/{name}/{DONE_MARKER}"):
            return name
        attempt += 1


def content_run_name(storage_path: str, prefix: str, training: TrainingConfig, model: Ref, data: Ref) -> str:
    """run_name_for() on `prefix` plus a hash of what the training reads: the config, the model and the data."""
    section = json.dumps(training.model_dump(mode="json"), sort_keys=True)  # knob order does not matter
    return run_name_for(storage_path, f"{prefix}-{sha256_text(section, model.sha256, data.sha256)[:12]}")


def _marker(storage_path: str, run_name: str) -> tuple:
    import fsspec

    fs, root = fsspec.core.url_to_fs(storage_path)
    return fs, f"{root.rstrip('/')}/{run_name}/{DONE_MARKER}"


def finished_stage(storage_path: str, run_name: str) -> TrainResult | None:
    """The result of a finished stage run whose model is still there, else None."""
    fs, marker = _marker(storage_path, run_name)
    if not fs.exists(marker):
        return None
    with fs.open(marker) as fh:
        done = json.loads(fh.read())
    if "model" not in done:
        return None
    result = TrainResult.model_validate(done)
    return result if result.model.path.is_dir() else None


def scaling_kwargs(training: TrainingConfig, resources_per_worker: dict[str, float] | None = None) -> dict:
    """Ray Train ScalingConfig's arguments: `num_workers` is (min, max) when training.scaling.min_workers is set
    (Ray Train V2 elastic training), else an int; `resources_per_worker` with its `memory` (memory.reservation)."""
    scaling = training.scaling
    return {
        "num_workers": scaling.num_workers
        if scaling.min_workers is None
        else (scaling.min_workers, scaling.num_workers),
        "use_gpu": scaling.use_gpu,
        "resources_per_worker": resources_per_worker or scaling.resources_per_worker,
    }


def worker_inputs(job: TrainJob, stage: str) -> WorkerInputs:
    """What every worker of the stage gets; staged through remote storage when the workers may not see this disk."""
    # Reference log-probs depend on the data, the reference model (its folder holds the
    # tokenizer too), the chat template that replaces its own, and max_length only: a new run
    # on the same inputs reuses them.
    reference = sha256_tree(job.model) if Path(job.model).is_dir() else job.model
    max_length = str(job.training.knob("max_length", object))
    template = key_parts(job.training.chat_template_text)
    reference_key = sha256_text(job.train_data.sha256, reference, max_length, *template)[:16]
    inputs = WorkerInputs(
        training=job.training,
        stage=stage,
        model_path=str(job.model),
        train_path=str(job.train_data.path),
        scratch_dir=str(home() / "scratch" / job.run_name),
        tracking_uri=job.tracking_uri,
        run_id=job.mlflow_run_id,
        reference_cache=str(home() / "ref_logps" / reference_key),
        train_sha256=job.train_data.sha256,
    )
    if staging.is_remote(job.storage_path):  # the workers may be on nodes that do not see this machine's disk
        inputs = staging.stage(inputs, job.storage_path, reference)
    return inputs


def train_model(job: TrainJob, stage: str = "preference") -> TrainResult:
    """Run TorchTrainer for one stage: "preference" (training.method) or "sft" (training.sft).

    The same (storage_path, run_name) resumes from that run's latest checkpoint, which is
    how a re-run of a failed flow run continues instead of starting over.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    start_ray(job.ray_address)
    # Each worker reserves the memory it is estimated to need, so Ray queues what does not fit now (a run or a
    # recipe beside this one) and this refuses, before any step, what can never fit.
    label = f"train ({SFT if stage == SFT else job.training.method})"
    resources, needed = memory.reservation(job.training, job.model, SFT if stage == SFT else job.training.method)
    scaling = job.training.scaling
    memory.refuse_unless_fits(label, needed, scaling.min_workers or scaling.num_workers)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"inputs": worker_inputs(job, stage)},
        scaling_config=ScalingConfig(**scaling_kwargs(job.training, resources)),
        run_config=RunConfig(
            name=job.run_name,
            storage_path=job.storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=job.training.max_failures),
            logging_config=ray.LoggingConfig(log_level="WARNING"),
        ),
    )
    started = time.perf_counter()
    try:
        fit = trainer.fit()
    except Exception as exc:
        if memory.killed_for_memory(exc):  # one line for the person; the traceback stays chained, for the log
            raise memory.OutOfMemory(memory.oom_line(label, needed, max(memory.node_memory(), default=0))) from exc
        raise
    wall = time.perf_counter() - started
    if fit.checkpoint is None:
        raise RuntimeError(f"training run {job.run_name!r} finished without a final checkpoint")
    result = _result(job, stage, fit.checkpoint, wall)
    fs, marker = _marker(job.storage_path, job.run_name)
    with fs.open(marker, "w") as fh:
        fh.write(result.model_dump_json())
    return result


def _result(job: TrainJob, stage: str, checkpoint, wall: float) -> TrainResult:
    """The stage's result from its final checkpoint (a local copy of the model when the storage is remote)."""
    with checkpoint.as_directory() as final:
        local = Path(final)
        done = json.loads((local / RESULT_FILE).read_text())
        if staging.is_remote(job.storage_path):  # remote storage: keep a local copy the next stages can read
            target = home() / "models" / job.run_name
            shutil.copytree(local / FINAL_MODEL_DIR, target / FINAL_MODEL_DIR, dirs_exist_ok=True)
            local = target
        model_dir = local / FINAL_MODEL_DIR
        ref = Ref(uri=model_dir.as_uri(), sha256=sha256_tree(model_dir))
    return TrainResult(
        model=ref,
        stage=SFT if stage == SFT else job.training.method,
        run_name=job.run_name,
        steps=int(done.get("step", 0)),
        train_loss=float(done.get("train_loss", 0.0)),
        resumed_from_step=int(done.get("resumed_from_step", 0)),
        reference_cache=done.get("reference_cache", "off"),
        train_runtime_s=round(float(done.get("train_runtime", 0.0)), 2),
        tokens=int(done.get("num_tokens", 0)),
        wall_s=round(wall, 1),
        num_workers=int(done.get("world_size", job.training.scaling.num_workers)),
        checkpoint=checkpoint.path,
        started_from=str(job.model),
        cost=done.get("cost", {}),
    )


def train_stages(job: TrainJob) -> TrainResult:
    """The optional SFT stage, then the preference stage from its model.

    The SFT stage is its own Ray run, `<run_name>-sft`: a re-run whose SFT had finished (the preference
    stage failed or was killed) reuses that model instead of training it again. The result is the
    preference stage's, with `stages` (each stage's result and cost) and wall time over both.
    """
    stages: dict[str, TrainResult] = {}
    if job.training.sft.enabled:
        sft = finished_stage(job.storage_path, f"{job.run_name}-sft")
        if sft:
            sft = sft.model_copy(update={"reused": True})
        else:
            sft = train_model(job.replace(run_name=f"{job.run_name}-sft"), stage=SFT)
        stages[SFT] = sft
        job = job.replace(model=sft.model.loadable)
    result = train_model(job)
    stages[result.stage] = result
    wall = sum(s.wall_s for s in stages.values() if not s.reused)
    return result.model_copy(update={"stages": stages, "wall_s": round(wall, 1)})
