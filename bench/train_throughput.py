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

from conf.loader import load_config  # noqa: E402
from tasks.state import Ref, configure_environment, sha256_file  # noqa: E402

H100_BF16_DENSE_FLOPS = 989e12


def synthetic_pairs(path: Path, rows: int, words: int, seed: int = 0) -> Ref:
    """Preference pairs of about `words` words per response, from the shipped prompts' vocabulary."""
    import random

    import pandas as pd

    from tasks.prompts import load_prompts

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

    from tasks.train import build_trainer

    if not training.scaling.use_gpu:
        # A Ray worker gets resources_per_worker CPUs and sets its torch threads to match;
        # give the plain process the same, or the comparison measures thread counts.
        torch.set_num_threads(int(training.scaling.resources_per_worker.get("CPU", 1)))
    trainer, _ = build_trainer(training, model_path, str(data.path), str(out))
    trainer.args.save_strategy = "no"
    started = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - started
    tokens = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e][-1]
    peak = None
    try:
        import torch

        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    except ImportError:
        pass
    return {"tokens": tokens, "train_runtime_s": result.metrics["train_runtime"], "wall_s": wall, "peak_gib": peak}


def under_ray(training, model_path: str, data: Ref, storage: Path, name: str) -> dict:
    from tasks.train import train_model

    started = time.perf_counter()
    _, summary = train_model(training, model_path, data, str(storage), name, "sqlite:///" + str(storage / "m.db"), None)
    return {"tokens": summary["tokens"], "train_runtime_s": summary["train_runtime_s"],
            "wall_s": time.perf_counter() - started}  # fmt: skip


def rate(row: dict) -> float:
    return row["tokens"] / row["train_runtime_s"] if row["train_runtime_s"] else 0.0


def cpu_bench(home: Path, steps: int) -> dict:
    from tasks.tiny_model import resolve_model

    cfg = load_config(ROOT / "conf" / "pipeline.yaml", [f"runtime.home={home}", f"training.max_steps={steps}",
                                                         "training.logging_steps=1", "training.save_steps=1000"])  # fmt: skip
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
        "per_device_train_batch_size": cfg.training.per_device_train_batch_size,
        "rows": rows,
        "ray_overhead_ratio": round(ray1 / plain, 3) if plain else None,
        "scaling_2_over_1_workers": round(ray2 / ray1, 3) if ray1 else None,
    }


def qwen_shaped_model(path: Path) -> str:
    """Random weights in the shape of Qwen2.5-1.5B (its published config), saved with a local tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from tasks.tiny_model import resolve_model

    config = Qwen2Config(
        vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6,
        tie_word_embeddings=True, torch_dtype="bfloat16",
    )  # fmt: skip
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)
    cfg = load_config(ROOT / "conf" / "pipeline.yaml")
    tiny = resolve_model(cfg.training.model_name_or_path, cfg.training.tiny_model, path.parent / "models")
    AutoTokenizer.from_pretrained(tiny).save_pretrained(path)  # ids < vocab_size: any tokenizer will do
    return str(path)


def gpu_bench(home: Path, steps: int) -> dict:
    import torch

    model_path = qwen_shaped_model(home / "qwen2.5-1.5b-shape")
    from transformers import AutoConfig

    shape = AutoConfig.from_pretrained(model_path)
    n_params = (shape.vocab_size * shape.hidden_size
                + shape.num_hidden_layers * (4 * shape.hidden_size**2 + 3 * shape.hidden_size * shape.intermediate_size))  # fmt: skip
    data = synthetic_pairs(home / "pairs.parquet", rows=steps * 8 * 2, words=700)  # ~1024 tokens with the prompt
    base = [f"runtime.home={home}", f"training.model_name_or_path={model_path}", f"training.max_steps={steps}",
            "training.max_length=1024", "training.scaling.use_gpu=true", "training.scaling.num_workers=1",
            "training.scaling.resources_per_worker={GPU: 1}", "training.logging_steps=1",
            "training.save_steps=100000", "training.per_device_train_batch_size=4"]  # fmt: skip
    variants = {
        "DPO, alignflow defaults": [],
        "DPO, alignflow defaults, precomputed ref": ["training.precompute_ref_log_probs=true"],
        "ORPO, alignflow defaults": ["training.method=orpo"],
    }
    rows = {}
    for label, extra in variants.items():
        cfg = load_config(ROOT / "conf" / "pipeline.yaml", [*base, *extra])
        torch.cuda.reset_peak_memory_stats()
        row = plain_trl(cfg.training, model_path, data, home / label.replace(" ", "_"))
        ref_passes = 0 if cfg.training.method == "orpo" or cfg.training.precompute_ref_log_probs else 1
        row["tokens_per_s"] = round(rate(row), 1)
        row["mfu"] = round(rate(row) * (6 + 2 * ref_passes) * n_params / H100_BF16_DENSE_FLOPS, 4)
        rows[label] = row
    # TRL's own defaults: activation checkpointing on (alignflow turns it off where memory allows).
    cfg = load_config(ROOT / "conf" / "pipeline.yaml", base)
    from tasks.train import build_trainer

    trainer, _ = build_trainer(cfg.training, model_path, str(data.path), str(home / "trl_defaults"))
    trainer.args.activation_checkpointing = True
    trainer.args.save_strategy = "no"
    torch.cuda.reset_peak_memory_stats()
    result = trainer.train()
    tokens = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e][-1]
    row = {"tokens": tokens, "train_runtime_s": result.metrics["train_runtime"],
           "peak_gib": torch.cuda.max_memory_allocated() / 2**30}  # fmt: skip
    row["tokens_per_s"] = round(rate(row), 1)
    row["mfu"] = round(rate(row) * 8 * n_params / H100_BF16_DENSE_FLOPS, 4)
    rows["DPO, TRL defaults (activation checkpointing)"] = row
    rows["DPO, Ray Train 1 worker"] = under_ray(load_config(ROOT / "conf" / "pipeline.yaml", base).training,
                                                model_path, data, home / "ray", "gpu-ray-1")  # fmt: skip
    rows["DPO, Ray Train 1 worker"]["tokens_per_s"] = round(rate(rows["DPO, Ray Train 1 worker"]), 1)
    return {"model": "Qwen2.5-1.5B shape, random weights, bf16, seq 1024", "parameters": n_params, "rows": rows,
            "device": torch.cuda.get_device_name(0)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="run the GPU benchmark (needs CUDA)")
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="alignflow-train-bench-"))
    configure_environment(load_config(ROOT / "conf" / "pipeline.yaml", [f"runtime.home={home}"]))
    os.environ["TQDM_DISABLE"] = "1"
    if args.gpu:
        result = gpu_bench(home, args.steps or 20)
        name = "train_throughput_gpu.json"
    else:
        result = cpu_bench(home, args.steps or 30)
        name = "train_throughput.json"
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} CPU cores" + (", GPU" if args.gpu else ", no GPU")
    out = ROOT / "bench" / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"| {result['model']} | tokens | train loop s | tokens/s | wall s (with start-up) |")
    print("|---|---|---|---|---|")
    for label, row in result["rows"].items():
        print(f"| {label} | {row['tokens']:.0f} | {row['train_runtime_s']:.2f} | {row['tokens_per_s']} | {row['wall_s']:.1f} |"
              if "wall_s" in row else f"| {label} | {row['tokens']:.0f} | {row['train_runtime_s']:.2f} | {row['tokens_per_s']} | - |")  # fmt: skip
    for key in ("ray_overhead_ratio", "scaling_2_over_1_workers"):
        if key in result:
            print(f"{key}: {result[key]}")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
