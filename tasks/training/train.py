"""Stage 3, train: TRL DPO, ORPO, CPO or SimPO on every Ray Train worker, optionally after SFT.

`build_trainer` is the recipe (model, data, TRL config, optional LoRA) and runs the same
inside Ray or in a plain process (the Ray-overhead benchmark uses both). `train_loop` is
what each Ray Train worker runs: build, resume from Ray's latest checkpoint if there is one,
train, hand the final model back as a Ray checkpoint, with what it cost (tasks/cost.py).
`train_model` is the driver of one stage: it starts (or joins) Ray and runs the TorchTrainer
with the scaling, storage and failure settings. `train_stages` runs the optional SFT stage
(tasks/sft.py) and then the preference stage from its model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from alignflow.conf.training import TrainingConfig
from alignflow.tasks.runtime.ray import quiet_ray_logs, start_ray
from alignflow.tasks.runtime.state import Ref, sha256_text, sha256_tree
from alignflow.tasks.training import cost

# TrainingConfig keys that are TRL/transformers fields, passed through under their own names.
TRL_FIELDS = (
    "beta", "loss_type", "loss_weights", "label_smoothing", "precompute_ref_log_probs", "cpo_alpha",
    "simpo_gamma", "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
    "num_train_epochs", "max_steps", "max_length", "lr_scheduler_type", "warmup_steps", "logging_steps",
    "save_steps", "seed",
)  # fmt: skip
FINAL_MODEL_DIR = "model"
DONE_MARKER = "alignflow_done.json"
REPORTED = (
    "loss_type", "loss_weights", "beta", "bf16", "use_cpu", "activation_checkpointing", "padding_free",
    "precompute_ref_log_probs", "max_length", "learning_rate", "per_device_train_batch_size",
    "gradient_accumulation_steps",
)  # fmt: skip


def trl_classes(method: str):
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOConfig, DPOTrainer
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOConfig, ORPOTrainer
    from trl.experimental.cpo import CPOConfig, CPOTrainer  # cpo and simpo

    return CPOConfig, CPOTrainer


def preload_trainers(trainings: list[TrainingConfig]) -> None:
    """Import the TRL classes these trainings use, once, in the calling thread: `trl` imports lazily, and
    threads importing it for the first time at once (recipes of a comparison) can see half-built modules."""
    for training in trainings:
        trl_classes(training.method)
        if training.sft.enabled:
            from trl import SFTConfig, SFTTrainer  # noqa: F401


def _requested(training: TrainingConfig) -> dict:
    wanted = {k: getattr(training, k) for k in TRL_FIELDS}
    if training.method == "cpo":
        wanted["loss_type"] = training.loss_type[0]
    elif training.method == "simpo":
        wanted["loss_type"] = "simpo"
    if wanted["loss_weights"] is None:
        del wanted["loss_weights"]
    return wanted


def trl_args(training: TrainingConfig, config_class, output_dir: str, use_gpu: bool) -> tuple[object, list[str]]:
    """The TRL config object, and the config keys this method does not take (reported, not hidden)."""
    accepted = {f.name for f in dataclasses.fields(config_class)}
    wanted = _requested(training)
    dropped = sorted(k for k in wanted if k not in accepted)
    args = config_class(
        output_dir=output_dir,
        **{k: v for k, v in wanted.items() if k in accepted},
        save_strategy="steps",
        save_total_limit=1,
        report_to=[],
        use_cpu=not use_gpu,
        # TRL defaults to bf16 and activation checkpointing, which fail or only slow down on CPU.
        bf16=use_gpu,
        activation_checkpointing=False,
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
        logging_first_step=True,
    )
    return args, dropped


def effective_config(training: TrainingConfig) -> dict:
    """What TRL/transformers will actually use, and every setting they ignore or change."""
    import tempfile

    config_class, trainer_class = trl_classes(training.method)
    trl_defaults = {f.name: f.default for f in dataclasses.fields(config_class)}
    # TRL resolves these two in __post_init__: bf16 unless told otherwise, and the old
    # gradient_checkpointing name (True in TRL) feeds activation_checkpointing.
    resolved = {
        "bf16": True if trl_defaults.get("bf16") is None else trl_defaults["bf16"],
        "activation_checkpointing": trl_defaults.get("gradient_checkpointing")
        if trl_defaults.get("activation_checkpointing") is None
        else trl_defaults["activation_checkpointing"],
    }
    args, dropped = trl_args(training, config_class, tempfile.gettempdir(), training.scaling.use_gpu)
    ours = TrainingConfig()
    chosen = [k for k in dropped if getattr(training, k) != getattr(ours, k)]  # only keys a user actually set
    notes = [f"{k}={getattr(training, k)!r}: not a {config_class.__name__} field, ignored by {training.method}"
             for k in chosen]  # fmt: skip
    if training.method in ("orpo", "simpo") and "loss_type" not in chosen and training.loss_type != ours.loss_type:
        notes.append(f"loss_type: {training.method} has its own loss, {training.loss_type} is ignored")
    for key, default in resolved.items():
        if default is not None and default != getattr(args, key, None):
            notes.append(
                f"{key}: TRL default {default} -> {getattr(args, key)} "
                f"({'GPU' if training.scaling.use_gpu else 'CPU'} run)"
            )
    if getattr(args, "padding_free", False):
        notes.append("padding_free: accepted by TRL but ignored (TRL warns); batches are padded")
    if training.method != "dpo" and training.precompute_ref_log_probs:
        notes.append(f"precompute_ref_log_probs: {training.method} has no reference model, nothing to precompute")
    if training.use_peft:
        notes.append(
            f"LoRA r={training.lora_r} alpha={training.lora_alpha} on {training.lora_target_modules}; "
            "adapters are merged into the saved model"
        )
    effective = {
        "method": training.method,
        "trainer": trainer_class.__name__,
        "effective": {k: getattr(args, k) for k in REPORTED if hasattr(args, k)},
        "notes": notes,
    }
    if training.sft.enabled:
        from alignflow.tasks.training import sft

        effective["sft"] = sft.effective_config(training)
        notes.extend(effective["sft"]["notes"])
    return effective


def to_conversational(example: dict) -> dict:
    """TRL's conversational preference format, so the model's chat template is applied."""
    return {
        "prompt": [{"role": "user", "content": example["prompt"]}],
        "chosen": [{"role": "assistant", "content": example["chosen"]}],
        "rejected": [{"role": "assistant", "content": example["rejected"]}],
    }


def peft_config(training: TrainingConfig):
    if not training.use_peft:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=training.lora_r,
        lora_alpha=training.lora_alpha,
        lora_dropout=training.lora_dropout,
        target_modules=training.lora_target_modules,
        task_type="CAUSAL_LM",
    )


def load_model(training: TrainingConfig, model_path: str):
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"dtype": torch.bfloat16 if training.scaling.use_gpu else torch.float32}
    if training.load_in_4bit or training.load_in_8bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=training.load_in_4bit,
            load_in_8bit=training.load_in_8bit,
            bnb_4bit_quant_type=training.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=training.use_bnb_nested_quant,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    return AutoModelForCausalLM.from_pretrained(model_path, **kwargs)


def with_reference_cache(trainer_class, cache_file: Path):
    """DPOTrainer whose precomputed reference log-probs are kept in `cache_file`.

    The caller names the file by the content that determines the values (train data,
    reference model and tokenizer, max_length), so a later run on the same data skips the
    reference forward pass entirely. TRL's own cache keys on datasets fingerprints that
    change from one process to the next, so it misses across runs.
    """
    import datasets

    class ReferenceCachedTrainer(trainer_class):
        reference_cache = "off"

        def _precompute_ref_logps(self, dataset, name, batch_size):
            target = cache_file.with_name(f"{cache_file.stem}-{name}.parquet")
            if target.exists():
                cached = datasets.Dataset.from_parquet(str(target))
                if len(cached) == len(dataset):
                    self.reference_cache = "hit"
                    return datasets.concatenate_datasets([dataset, cached], axis=1)
            out = super()._precompute_ref_logps(dataset, name, batch_size)
            if self.accelerator.is_main_process:
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_suffix(".partial")
                out.select_columns(["ref_chosen_logps", "ref_rejected_logps"]).to_parquet(str(partial))
                partial.rename(target)
            self.reference_cache = "miss"
            return out

    return ReferenceCachedTrainer


def build_trainer(
    training: TrainingConfig,
    model_path: str,
    train_path: str,
    output_dir: str,
    callbacks=(),
    reference_cache: Path | None = None,
):
    """The TRL trainer for `training.method`, on the train split at `train_path`."""
    import datasets
    from transformers import AutoTokenizer

    config_class, trainer_class = trl_classes(training.method)
    if training.method == "dpo" and training.precompute_ref_log_probs and reference_cache is not None:
        trainer_class = with_reference_cache(trainer_class, reference_cache)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.padding_side = "left"  # DPO pads prompts on the left
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    data = datasets.Dataset.from_parquet(train_path)
    data = data.map(to_conversational, remove_columns=data.column_names)
    args, _ = trl_args(training, config_class, output_dir, training.scaling.use_gpu)
    trainer = trainer_class(
        model=load_model(training, model_path),
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=list(callbacks),
        peft_config=peft_config(training),
    )
    return trainer, tokenizer


def save_final(trainer, tokenizer, target: Path) -> None:
    """A plain HF model folder: LoRA adapters are merged so the registry gets a loadable model."""
    model = trainer.model
    if hasattr(model, "merge_and_unload"):
        model.merge_and_unload().save_pretrained(target)
    else:
        trainer.save_model(str(target))
    tokenizer.save_pretrained(target)


def _callbacks(rank: int, tracking_uri: str, run_id: str | None, prefix: str = "train"):
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

    callbacks = [RayCheckpointCallback()]
    if rank == 0 and run_id:
        callbacks.append(MlflowMetricsCallback())
    return callbacks


def train_loop(loop: dict) -> None:
    """Runs on every Ray Train worker (torch.distributed is already set up by Ray)."""
    import tempfile

    import ray.train

    training = TrainingConfig.model_validate(loop["training"])
    rank = ray.train.get_context().get_world_rank()
    quiet_ray_logs()
    scratch = Path(loop["scratch_dir"]) / f"rank{rank}"
    scratch.mkdir(parents=True, exist_ok=True)

    resume_from = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        # The directory must outlive train(): it stays in scratch until the run ends.
        resume_from = checkpoint.to_directory(tempfile.mkdtemp(dir=scratch))
        if (Path(resume_from) / FINAL_MODEL_DIR).is_dir():
            # A re-run of a flow whose training had finished: hand the final model back as it is.
            done = json.loads((Path(resume_from) / "result.json").read_text())
            ray.train.report(done, checkpoint=checkpoint if rank == 0 else None)
            return

    stage = loop.get("stage", "preference")
    callbacks = _callbacks(rank, loop["tracking_uri"], loop["run_id"], "sft" if stage == "sft" else "train")
    if stage == "sft":
        from alignflow.tasks.training.sft import build_sft_trainer

        trainer, tokenizer = build_sft_trainer(training, loop["model_path"], loop["train_path"], str(scratch),
                                               callbacks=callbacks)  # fmt: skip
    else:
        trainer, tokenizer = build_trainer(
            training, loop["model_path"], loop["train_path"], str(scratch), callbacks=callbacks,
            reference_cache=Path(loop["reference_cache"]) if loop.get("reference_cache") else None,
        )  # fmt: skip
    if rank != 0:
        trainer.args.disable_tqdm = True
    counts = cost.watch(trainer)
    result = trainer.train(resume_from_checkpoint=resume_from)
    # A collective: every rank takes part, before rank 0 saves and reports.
    usage = cost.gather(cost.worker_usage(counts))

    metrics = {"step": trainer.state.global_step, "train_loss": float(result.training_loss or 0.0),
               "resumed_from_step": _step_of(resume_from),
               "reference_cache": getattr(trainer, "reference_cache", "off"),
               "train_runtime": float(result.metrics.get("train_runtime", 0.0)),
               "num_tokens": _logged(trainer, "num_tokens")}  # fmt: skip
    if rank == 0:
        final_root = Path(tempfile.mkdtemp(dir=scratch))
        save_final(trainer, tokenizer, final_root / FINAL_MODEL_DIR)
        steps_run = trainer.state.global_step - metrics["resumed_from_step"]
        (final_root / "result.json").write_text(json.dumps({**metrics, "cost": cost.stage_cost(usage, steps_run)}))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(final_root))
    else:
        ray.train.report(metrics)


def _logged(trainer, key: str) -> float:
    """The last value of a logged metric (TRL logs num_tokens as a running total)."""
    values = [entry[key] for entry in trainer.state.log_history if key in entry]
    return float(values[-1]) if values else 0.0


def _step_of(checkpoint_dir: str | None) -> int:
    if not checkpoint_dir:
        return 0
    state = Path(checkpoint_dir) / "trainer_state.json"
    return int(json.loads(state.read_text())["global_step"]) if state.exists() else 0


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
    return run_name_for(
        storage_path, f"{prefix}-{sha256_text(training.model_dump_json(), model.sha256, data.sha256)[:12]}"
    )


def _mark_done(storage_path: str, run_name: str, summary: dict) -> None:
    import fsspec

    fs, root = fsspec.core.url_to_fs(storage_path)
    with fs.open(f"{root.rstrip('/')}/{run_name}/{DONE_MARKER}", "w") as fh:
        fh.write(json.dumps(summary))


def train_model(
    training: TrainingConfig,
    model_path: str,
    train_data: Ref,
    storage_path: str,
    run_name: str,
    tracking_uri: str,
    mlflow_run_id: str | None,
    ray_address: str | None = None,
    stage: str = "preference",
) -> tuple[Ref, dict]:
    """Run TorchTrainer; the final model's Ref (in Ray storage) and the run's summary.

    `stage` is "preference" (training.method) or "sft" (training.sft, tasks/sft.py).

    The same (storage_path, run_name) resumes from that run's latest checkpoint, which is
    how a re-run of a failed flow run continues instead of starting over.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    start_ray(ray_address)
    scaling = training.scaling
    home = Path(os.environ.get("ALIGNFLOW_HOME", ".alignflow"))
    # Reference log-probs depend on the data, the reference model (its folder holds the
    # tokenizer too) and max_length only: a new run on the same inputs reuses them.
    reference_key = sha256_text(train_data.sha256, sha256_tree(model_path) if Path(model_path).is_dir()
                                else model_path, str(training.max_length))[:16]  # fmt: skip
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "training": training.model_dump(mode="json"),
            "model_path": str(model_path),
            "train_path": str(train_data.path),
            "scratch_dir": str(home / "scratch" / run_name),
            "tracking_uri": tracking_uri,
            "run_id": mlflow_run_id,
            "reference_cache": str(home / "ref_logps" / reference_key),
            "stage": stage,
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
    with result.checkpoint.as_directory() as final:
        local = Path(final)
        done = json.loads((local / "result.json").read_text())
        if "://" in storage_path:  # remote storage: keep a local copy the next stages can read
            target = Path(os.environ.get("ALIGNFLOW_HOME", ".alignflow")) / "models" / run_name
            import shutil

            shutil.copytree(local / FINAL_MODEL_DIR, target / FINAL_MODEL_DIR, dirs_exist_ok=True)
            local = target
        model_dir = local / FINAL_MODEL_DIR
        ref = Ref(uri=model_dir.as_uri(), sha256=sha256_tree(model_dir))
    summary = {
        "steps": int(done.get("step", 0)),
        "train_loss": float(done.get("train_loss", 0.0)),
        "resumed_from_step": int(done.get("resumed_from_step", 0)),
        "reference_cache": done.get("reference_cache", "off"),
        "train_runtime_s": round(float(done.get("train_runtime", 0.0)), 2),
        "tokens": int(done.get("num_tokens", 0)),
        "wall_s": round(wall, 1),
        "num_workers": scaling.num_workers,
        "checkpoint": result.checkpoint.path,
        "run_name": run_name,
        "stage": "sft" if stage == "sft" else training.method,
        "started_from": str(model_path),
        "cost": done.get("cost", {}),
        "model": ref.model_dump(),
    }
    _mark_done(storage_path, run_name, summary)
    return ref, summary


def finished_stage(storage_path: str, run_name: str) -> tuple[Ref, dict] | None:
    """The model and summary of a finished stage run whose model is still there, else None."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(storage_path)
    marker = f"{root.rstrip('/')}/{run_name}/{DONE_MARKER}"
    if not fs.exists(marker):
        return None
    with fs.open(marker) as fh:
        summary = json.loads(fh.read())
    if "model" not in summary:
        return None
    ref = Ref(**summary["model"])
    return (ref, summary) if ref.path.is_dir() else None


def train_stages(
    training: TrainingConfig,
    model: Ref,
    train_data: Ref,
    storage_path: str,
    run_name: str,
    tracking_uri: str,
    mlflow_run_id: str | None,
    ray_address: str | None = None,
) -> tuple[Ref, dict]:
    """The optional SFT stage, then the preference stage from its model; the final model and a summary.

    The SFT stage is its own Ray run, `<run_name>-sft`: a re-run whose SFT had finished (the preference
    stage failed or was killed) reuses that model instead of training it again. The summary is the
    preference stage's, with `stages` (each stage's summary and cost) and wall time over both.
    """
    stages: dict[str, dict] = {}
    if training.sft.enabled:
        finished = finished_stage(storage_path, f"{run_name}-sft")
        if finished:
            model, stages["sft"] = finished[0], {**finished[1], "reused": True}
        else:
            model, stages["sft"] = train_model(training, model.loadable, train_data, storage_path,
                                               f"{run_name}-sft", tracking_uri, mlflow_run_id, ray_address,
                                               stage="sft")  # fmt: skip
    ref, summary = train_model(training, model.loadable, train_data, storage_path, run_name, tracking_uri,
                               mlflow_run_id, ray_address)  # fmt: skip
    stages[summary["stage"]] = summary
    wall = sum(s["wall_s"] for s in stages.values() if not s.get("reused"))
    return ref, {**summary, "stages": stages, "wall_s": round(wall, 1)}
