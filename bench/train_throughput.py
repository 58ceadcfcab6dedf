"""Training throughput: Ray Train overhead, CPU scaling, and (on a GPU) MFU and memory.

    .venv/bin/python bench/train_throughput.py            # CPU: tiny model, ~3 minutes on 2 cores
    .venv/bin/python bench/train_throughput.py --gpu      # GPU: Qwen2.5-1.5B-shaped model, seq 1024, bf16

CPU part, side by side in one run on the same data and config:
  - plain TRL in this process vs the same config under Ray Train with 1 worker
    (tokens/s over the training loop; target ratio >= 0.95), and wall time with start-up;
  - Ray Train with 1 vs 2 workers (scaling).
GPU part (needs CUDA): DPO and ORPO, TRL's defaults vs alignflow's, precomputed reference
log-probs on and off, and Ray 1 worker vs plain TRL: tokens/s, model FLOPs utilisation
(6N per trained token for the policy + 2N per token for a reference forward pass, against
the GPU's dense bf16 peak) and peak GPU memory.

Results: bench/results/train_throughput[_gpu].json and a markdown table on stdout (paste it
into BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignflow.conf.loader import load_config  # noqa: E402
from alignflow.tasks.runtime.state import Ref, configure_environment, sha256_file  # noqa: E402

H100_BF16_DENSE_FLOPS = 989e12


def synthetic_pairs(path: Path, rows: int, words: int, seed: int = 0) -> Ref:
    """Preference pairs of about `words` words per response, from the shipped prompts' vocabulary."""
    import random

    import pandas as pd

    from alignflow.tasks.generation.prompts import load_prompts

    prompts = load_prompts()
    vocab = " ".join(p["reference"] for p in prompts).split()
    rng = random.Random(seed)
    frame = pd.DataFrame(
        {
            "prompt": [prompts[i % len(prompts)]["prompt"] for i in range(rows)],
            "chosen": [" ".join(rng.choices(vocab, k=words)) for _ in range(rows)],
            "rejected": [" ".join(rng.choices(vocab, k=words)) for _ in range(rows)],
        }
    )
    frame.to_parquet(path, index=False)
    return Ref(uri=path.as_uri(), sha256=sha256_file(path))


def plain_trl(training, model_path: str, data: Ref, out: Path) -> dict:
    """The same recipe as a Ray worker runs, in this process, without Ray."""
    import torch

    from alignflow.tasks.training.recipe import build_trainer

    if not training.scaling.use_gpu:
        # A Ray worker gets resources_per_worker CPUs and sets its torch threads to match;
        # give the plain process the same, or the comparison measures thread counts.
        torch.set_num_threads(int(training.scaling.resources_per_worker.get("CPU", 1)))
    trainer, _ = build_trainer(training, model_path, str(data.path), str(out))
    trainer.args.save_strategy = "no"
    started = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - started
    return {
        "tokens": trained_tokens(trainer, data),
        "train_runtime_s": result.metrics["train_runtime"],
        "wall_s": wall,
        "peak_gib": _peak_gib(),
    }


def under_ray(training, model_path: str, data: Ref, storage: Path, name: str) -> dict:
    from alignflow.tasks.training.driver import train_model
    from alignflow.tasks.training.job import TrainJob

    started = time.perf_counter()
    trained = train_model(
        TrainJob(training, model_path, data, str(storage), name, "sqlite:///" + str(storage / "m.db"))
    )
    return {
        "tokens": trained.tokens,
        "train_runtime_s": trained.train_runtime_s,
        "wall_s": time.perf_counter() - started,
    }


def trained_tokens(trainer, data: Ref) -> float:
    """Tokens the run trained on: TRL's running `num_tokens` (DPO), or, where a trainer does
    not log it (ORPO), rows consumed x mean tokens of prompt+chosen and prompt+rejected."""
    logged = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e]
    if logged:
        return float(logged[-1])
    import pandas as pd

    args, tokenizer = trainer.args, trainer.processing_class
    frame = pd.read_parquet(data.path)
    lengths = [
        min(len(tokenizer(p + " " + c)["input_ids"]), args.max_length)
        + min(len(tokenizer(p + " " + r)["input_ids"]), args.max_length)
        for p, c, r in zip(frame["prompt"], frame["chosen"], frame["rejected"], strict=True)
    ]
    rows = (
        trainer.state.global_step
        * args.per_device_train_batch_size
        * args.gradient_accumulation_steps
        * args.world_size
    )
    return rows * sum(lengths) / len(lengths)


def rate(row: dict) -> float:
    return row["tokens"] / row["train_runtime_s"] if row["train_runtime_s"] else 0.0


def cpu_bench(home: Path, steps: int) -> dict:
    from alignflow.tasks.runtime.models import resolve_model

    cfg = load_config(
        ROOT / "conf" / "pipeline.yaml",
        [f"runtime.home={home}", f"training.max_steps={steps}", "training.logging_steps=1", "training.save_steps=1000"],
    )
    model_path = str(resolve_model(cfg.training.model_name_or_path, cfg.training.tiny_model, home / "models"))
    data = synthetic_pairs(home / "pairs.parquet", rows=512, words=40)
    one = cfg.training.model_copy(update={"scaling": cfg.training.scaling.model_copy(update={"num_workers": 1})})
    rows = {
        "plain TRL, 1 process": plain_trl(one, model_path, data, home / "plain"),
        "Ray Train, 1 worker": under_ray(one, model_path, data, home / "ray", "bench-1"),
        "Ray Train, 2 workers": under_ray(cfg.training, model_path, data, home / "ray", "bench-2"),
    }
    for row in rows.values():
        row["tokens_per_s"] = round(rate(row), 1)
    plain, ray1, ray2 = (rows[k]["tokens_per_s"] for k in rows)
    return {
        "model": "builtin:tiny-llama (conf/pipeline.yaml)",
        "steps": steps,
        "per_device_train_batch_size": cfg.training.knob("per_device_train_batch_size", int),
        "rows": rows,
        "ray_overhead_ratio": round(ray1 / plain, 3) if plain else None,
        "scaling_2_over_1_workers": round(ray2 / ray1, 3) if ray1 else None,
    }


QWEN25_15B = dict(
    vocab_size=151936,
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rope_theta=1e6,
)
SMOKE_SHAPE = dict(
    vocab_size=4096,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    rope_theta=1e6,
)


def qwen_shaped_model(path: Path, shape: dict, dtype: str) -> str:
    """Random weights in the shape of Qwen2.5-1.5B (its published config), saved with a local tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from alignflow.tasks.runtime.models import resolve_model

    model = Qwen2ForCausalLM(Qwen2Config(**shape, tie_word_embeddings=True)).to(getattr(torch, dtype))
    model.save_pretrained(path)
    cfg = load_config(ROOT / "conf" / "pipeline.yaml")
    tiny = resolve_model(cfg.training.model_name_or_path, cfg.training.tiny_model, path.parent / "models")
    AutoTokenizer.from_pretrained(tiny).save_pretrained(path)  # its ids are < vocab_size: any tokenizer will do
    return str(path)


def _peak_gib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def trl_defaults_run(training, model_path: str, data: Ref, out: Path) -> dict:
    """TRL as a user gets it: only the run's size is set, every other field keeps TRL's default."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignflow.tasks.training.recipe import to_conversational, trl_classes

    config_class, trainer_class = trl_classes(training.method)
    size = {k: training.knob(k, int) for k in ("max_steps", "max_length", "per_device_train_batch_size")}
    args = config_class(
        output_dir=str(out),
        **size,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=not training.scaling.use_gpu,
    )
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    frame = datasets.Dataset.from_parquet(str(data.path))
    trainer = trainer_class(
        model=AutoModelForCausalLM.from_pretrained(model_path),
        args=args,
        processing_class=tokenizer,
        train_dataset=frame.map(to_conversational, remove_columns=frame.column_names),
    )
    _reset_peak()
    result = trainer.train()
    return {
        "tokens": trained_tokens(trainer, data),
        "train_runtime_s": result.metrics["train_runtime"],
        "peak_gib": _peak_gib(),
        "bf16": args.bf16,
        "activation_checkpointing": args.activation_checkpointing,
    }


def model_bench(home: Path, steps: int, smoke: bool) -> dict:
    """The GPU benchmark; `smoke` runs the same code on CPU with a tiny Qwen2 shape to check it works."""
    import torch

    shape = SMOKE_SHAPE if smoke else QWEN25_15B
    use_gpu = not smoke
    model_path = qwen_shaped_model(home / "qwen-shaped", shape, "float32" if smoke else "bfloat16")
    n_params = shape["vocab_size"] * shape["hidden_size"] + shape["num_hidden_layers"] * (
        4 * shape["hidden_size"] ** 2 + 3 * shape["hidden_size"] * shape["intermediate_size"]
    )
    seq = 128 if smoke else 1024
    batch = 2 if smoke else 4
    data = synthetic_pairs(home / "pairs.parquet", rows=steps * batch * 2, words=seq * 2 // 3)
    base = [
        f"runtime.home={home}",
        f"training.model_name_or_path={model_path}",
        f"training.max_steps={steps}",
        f"training.max_length={seq}",
        f"training.scaling.use_gpu={str(use_gpu).lower()}",
        "training.scaling.num_workers=1",
        "training.logging_steps=1",
        "training.save_steps=100000",
        f"training.per_device_train_batch_size={batch}",
    ]
    if use_gpu:
        base.append("training.scaling.resources_per_worker={GPU: 1}")
    peak_flops = H100_BF16_DENSE_FLOPS

    def mfu(row: dict, reference_passes: int) -> float:
        return round(rate(row) * (6 + 2 * reference_passes) * n_params / peak_flops, 4)

    rows = {}
    for method in ("dpo", "orpo"):
        cfg = load_config(ROOT / "conf" / "pipeline.yaml", [*base, f"training.method={method}"])
        ref = 1 if method == "dpo" else 0
        row = trl_defaults_run(cfg.training, model_path, data, home / f"trl-{method}")
        row["tokens_per_s"], row["mfu"] = round(rate(row), 1), mfu(row, ref)
        rows[f"{method.upper()}, TRL defaults"] = row
        variants = [("", [])] + ([(", precomputed ref", ["training.precompute_ref_log_probs=true"])] if ref else [])
        for suffix, extra in variants:
            tuned = load_config(ROOT / "conf" / "pipeline.yaml", [*base, f"training.method={method}", *extra])
            _reset_peak()
            row = plain_trl(tuned.training, model_path, data, home / f"ours-{method}{suffix.strip(', ')}")
            row["tokens_per_s"] = round(rate(row), 1)
            row["mfu"] = mfu(row, 0 if tuned.training.knob("precompute_ref_log_probs", bool) else ref)
            rows[f"{method.upper()}, alignflow defaults{suffix}"] = row
    ray_row = under_ray(
        load_config(ROOT / "conf" / "pipeline.yaml", base).training, model_path, data, home / "ray", "model-bench-ray-1"
    )
    ray_row["tokens_per_s"] = round(rate(ray_row), 1)
    rows["DPO, alignflow defaults, Ray Train 1 worker"] = ray_row
    plain = rows["DPO, alignflow defaults"]["tokens_per_s"]
    return {
        "model": f"Qwen2.5-1.5B shape{' (smoke: tiny shape, CPU)' if smoke else ''}, random weights, seq {seq}",
        "parameters": n_params,
        "mfu_formula": "tokens/s x (6N + 2N per reference forward) / 989 TFLOP/s (H100 dense bf16)",
        "rows": rows,
        "ray_overhead_ratio": round(ray_row["tokens_per_s"] / plain, 3) if plain else None,
        "speedup_over_trl_defaults": round(plain / rows["DPO, TRL defaults"]["tokens_per_s"], 3)
        if rows["DPO, TRL defaults"]["tokens_per_s"]
        else None,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="run the GPU benchmark (needs CUDA)")
    parser.add_argument("--smoke", action="store_true", help="run the GPU benchmark's code on CPU, tiny shape")
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="alignflow-train-bench-"))
    configure_environment(load_config(ROOT / "conf" / "pipeline.yaml", [f"runtime.home={home}"]))
    os.environ["TQDM_DISABLE"] = "1"
    if args.gpu or args.smoke:
        result = model_bench(home, args.steps or (2 if args.smoke else 20), smoke=args.smoke)
        name = "train_throughput_smoke.json" if args.smoke else "train_throughput_gpu.json"
    else:
        result = cpu_bench(home, args.steps or 30)
        name = "train_throughput.json"
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} CPU cores" + (", GPU" if args.gpu else ", no GPU")
    out = ROOT / "bench" / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"| {result['model']} | tokens | train loop s | tokens/s | MFU | peak GiB | wall s (with start-up) |")
    print("|---|---|---|---|---|---|---|")
    for label, row in result["rows"].items():
        cells = [
            f"{row['tokens']:.0f}",
            f"{row['train_runtime_s']:.2f}",
            str(row["tokens_per_s"]),
            str(row.get("mfu", "-")),
            str(row.get("peak_gib") or "-"),
            f"{row['wall_s']:.1f}" if "wall_s" in row else "-",
        ]
        print(f"| {label} | " + " | ".join(cells) + " |")
    for key in ("ray_overhead_ratio", "scaling_2_over_1_workers", "speedup_over_trl_defaults"):
        if key in result:
            print(f"{key}: {result[key]}")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
