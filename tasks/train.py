"""Stage 3, train: TRL DPO or ORPO on every Ray Train worker.

`train_loop` is the per-worker recipe: load model and data, build the TRL trainer, resume
from Ray's latest checkpoint if there is one, train, and hand the final model back as a
Ray checkpoint. `train_model` is the driver: it starts (or joins) Ray and runs the
TorchTrainer with the scaling, storage and failure settings from the config.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from conf.schema import TrainingConfig
from tasks.state import Ref, sha256_tree

# TrainingConfig keys that are TRL/transformers fields, passed through under their own names.
TRL_FIELDS = (
    "beta",
    "loss_type",
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "max_length",
    "lr_scheduler_type",
    "warmup_steps",
    "logging_steps",
    "save_steps",
    "seed",
)
FINAL_MODEL_DIR = "model"


def trl_classes(method: str):
    if method == "orpo":
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOConfig, ORPOTrainer
    from trl import DPOConfig, DPOTrainer

    return DPOConfig, DPOTrainer


def trl_args(training: TrainingConfig, config_class, output_dir: str, use_gpu: bool) -> tuple[object, list[str]]:
    """The TRL config object, and the config keys this method does not take (reported, not hidden)."""
    accepted = {f.name for f in dataclasses.fields(config_class)}
    wanted = {k: getattr(training, k) for k in TRL_FIELDS}
    dropped = sorted(k for k in wanted if k not in accepted)
    kwargs = {k: v for k, v in wanted.items() if k in accepted}
    args = config_class(
        output_dir=output_dir,
        **kwargs,
        save_strategy="steps",
        save_total_limit=1,
        report_to=[],
        use_cpu=not use_gpu,
        # TRL defaults to bf16 and gradient checkpointing, which fail or only slow down on CPU.
        bf16=use_gpu,
        activation_checkpointing=False,
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
        disable_tqdm=False,
        logging_first_step=True,
    )
    return args, dropped


def to_conversational(example: dict) -> dict:
    """TRL's conversational preference format, so the model's chat template is applied."""
    return {
        "prompt": [{"role": "user", "content": example["prompt"]}],
        "chosen": [{"role": "assistant", "content": example["chosen"]}],
        "rejected": [{"role": "assistant", "content": example["rejected"]}],
    }


def _callbacks(rank: int, tracking_uri: str, run_id: str | None):
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

    class MlflowMetricsCallback(TrainerCallback):
        """Rank 0 logs every logging step's metrics, at their step, to the flow's MLflow run."""

        def __init__(self):
            from mlflow import MlflowClient

            self.client = MlflowClient(tracking_uri)
            self.started = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            from mlflow.entities import Metric

            stamp = int(time.time() * 1000)
            values = {f"train/{k}": float(v) for k, v in (logs or {}).items() if isinstance(v, int | float)}
            values["train/elapsed_s"] = time.perf_counter() - self.started
            metrics = [Metric(k, v, stamp, state.global_step) for k, v in values.items()]
            self.client.log_batch(run_id, metrics=metrics)

    callbacks = [RayCheckpointCallback()]
    if rank == 0 and run_id:
        callbacks.append(MlflowMetricsCallback())
    return callbacks


def train_loop(loop: dict) -> None:
    """Runs on every Ray Train worker (torch.distributed is already set up by Ray)."""
    import tempfile

    import datasets
    import ray.train
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    training = TrainingConfig.model_validate(loop["training"])
    rank = ray.train.get_context().get_world_rank()
    quiet_ray_logs()
    config_class, trainer_class = trl_classes(training.method)

    tokenizer = AutoTokenizer.from_pretrained(loop["model_path"])
    tokenizer.padding_side = "left"  # DPO pads prompts on the left
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if training.scaling.use_gpu else torch.float32
    model = AutoModelForCausalLM.from_pretrained(loop["model_path"], dtype=dtype)

    data = datasets.Dataset.from_parquet(loop["train_path"])
    data = data.map(to_conversational, remove_columns=data.column_names)

    scratch = Path(loop["scratch_dir"]) / f"rank{rank}"
    scratch.mkdir(parents=True, exist_ok=True)
    args, _ = trl_args(training, config_class, str(scratch), training.scaling.use_gpu)
    if rank != 0:
        args.disable_tqdm = True
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=_callbacks(rank, loop["tracking_uri"], loop["run_id"]),
    )

    resume_from = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        # The checkpoint's directory must outlive train(): keep it until the end of the loop.
        resume_dir = tempfile.mkdtemp(dir=scratch)
        resume_from = checkpoint.to_directory(resume_dir)
    result = trainer.train(resume_from_checkpoint=resume_from)

    metrics = {"step": trainer.state.global_step, "train_loss": float(result.training_loss or 0.0)}
    if rank == 0:
        final = Path(tempfile.mkdtemp(dir=scratch)) / FINAL_MODEL_DIR
        trainer.save_model(str(final))
        tokenizer.save_pretrained(str(final))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(final.parent))
    else:
        ray.train.report(metrics)


def quiet_ray_logs() -> None:
    """Ray worker setup hook: keep the trainer's progress bars, drop Ray Train's chatter.

    Without the dashboard (not started locally: it costs start-up time) the placement-group
    cleaner warns every few seconds that the state API is unavailable; that is expected here.
    Ray Train's per-report line comes from a logger named after its file, which the
    RunConfig log level does not reach.
    """
    import logging

    from ray.train.v2._internal.execution import context

    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def ensure_ray(address: str | None, env_vars: dict[str, str]) -> None:
    import ray

    if ray.is_initialized():
        return
    ray.init(
        address=address,
        include_dashboard=False,
        log_to_driver=True,
        logging_level="WARNING",
        logging_config=ray.LoggingConfig(log_level="WARNING"),
        runtime_env={"env_vars": env_vars, "worker_process_setup_hook": "tasks.train.quiet_ray_logs"},
    )


def train_model(
    training: TrainingConfig,
    model_path: str,
    train_data: Ref,
    storage_path: str,
    run_name: str,
    tracking_uri: str,
    mlflow_run_id: str | None,
    ray_address: str | None = None,
) -> tuple[Ref, dict]:
    """Run TorchTrainer; the final model's Ref (in Ray storage) and the run's summary."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    forwarded = (
        "ALIGNFLOW_HOME",
        "HF_HOME",
        "HF_HUB_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "TRL_EXPERIMENTAL_SILENCE",
        "TOKENIZERS_PARALLELISM",
        "MLFLOW_TRACKING_URI",
        "RAY_TRAIN_ENABLE_PRINT_PATCH",
    )
    ensure_ray(ray_address, {k: os.environ[k] for k in forwarded if k in os.environ})

    scaling = training.scaling
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "training": training.model_dump(mode="json"),
            "model_path": str(model_path),
            "train_path": str(train_data.path),
            "scratch_dir": str(Path(storage_path) / run_name / "scratch"),
            "tracking_uri": tracking_uri,
            "run_id": mlflow_run_id,
        },
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=scaling.resources_per_worker,
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=training.max_failures),
            logging_config=ray.LoggingConfig(log_level="WARNING"),
        ),
    )
    started = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - started
    if result.checkpoint is None:
        raise RuntimeError(f"training run {run_name!r} finished without a final checkpoint")
    model_dir = Path(result.checkpoint.path) / FINAL_MODEL_DIR
    summary = {
        "steps": int((result.metrics or {}).get("step", 0)),
        "train_loss": float((result.metrics or {}).get("train_loss", 0.0)),
        "wall_s": round(wall, 1),
        "num_workers": scaling.num_workers,
    }
    return Ref(uri=model_dir.as_uri(), sha256=sha256_tree(model_dir)), summary
