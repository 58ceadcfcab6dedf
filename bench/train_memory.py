"""A training worker's memory on the real model (issue 31): peak RSS by method, full and LoRA, before and after.

    .venv/bin/python bench/train_memory.py [--steps 2] [--cases dpo-full,dpo-lora,orpo-full,orpo-lora]
                                           [--modes before,after] [--set key.path=value ...]

Each case runs in a process of its own (so its peak RSS is its own) the recipe a Ray worker runs
(tasks/training/recipe.py build_trainer, then trainer.train()) on SmolLM2-135M-Instruct, one torch thread as
a worker with 1 CPU has: batch 4 pairs, max_length 512 (synthetic pairs long enough to fill it).
- `after`: what a worker runs today: activation checkpointing (TRL's default), the heap tunables every Ray
  worker gets (tasks/runtime/ray.py HEAP_TUNABLES) and TRL's fused LM head in 512-token tiles on CPU
  (tasks/training/memory.py). Reference log-probs are precomputed in both modes (alignflow's default), so TRL
  1.16 loads no reference copy for full DPO in either (`reference_held` records it).
- `before`: the same recipe without those three (activation checkpointing off, glibc's defaults, TRL's
  tiles): the worker as it was before issue 31.
It records the RSS after the imports, after the trainer is built and the peak over the steps (ru_maxrss), the
seconds a step took, alignflow's estimate (memory.worker_bytes, what the worker reserves from Ray), and the
arithmetic of what must be there: float32 weights, gradients and Adam's two moments of the trainable
parameters. Writes bench/results/train_memory.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CASES = {
    "dpo-full": ["training.method=dpo", "training.use_peft=false"],
    "dpo-lora": ["training.method=dpo", "training.use_peft=true"],
    "orpo-full": ["training.method=orpo", "training.use_peft=false"],
    "orpo-lora": ["training.method=orpo", "training.use_peft=true"],
}
BEFORE = ["training.activation_checkpointing=false"]  # and no heap tunables, TRL's tiles
GIB = 2**30


def _rss_gib() -> float:
    with open("/proc/self/status") as fh:
        kib = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    return round(kib * 1024 / GIB, 3)


def _peak_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3)


def one_case(case: str, mode: str, steps: int, home: Path, extra: list[str]) -> dict:
    """In this process: build the recipe's trainer for `case` and train `steps` steps; the RSS at each point."""
    from alignflow.conf.loader import load_config
    from alignflow.tasks.runtime.state import configure_environment

    overrides = [f"runtime.home={home}", "training.per_device_train_batch_size=4", "training.max_length=512"]
    before = BEFORE if mode == "before" else []
    config = load_config(
        ROOT / "conf" / "pipeline.yaml", [*overrides, f"training.max_steps={steps}", *CASES[case], *before, *extra]
    )
    configure_environment(config)
    import torch
    from train_throughput import synthetic_pairs

    from alignflow.tasks.runtime.models import resolve_model
    from alignflow.tasks.training import memory, recipe

    if mode == "before":  # the worker before issue 31: TRL's own tiles
        recipe.bound_logprob_tiles = lambda use_gpu: None
    torch.set_num_threads(1)  # a Ray worker with resources_per_worker {CPU: 1}
    model = resolve_model(config.training.model_name_or_path, config.training.tiny_model, home / "models")
    data = synthetic_pairs(home / f"{case}.parquet", rows=4 * steps, words=420)
    imported = _rss_gib()
    trainer, _ = recipe.build_trainer(config.training, str(model), str(data.path), str(home / case))
    trainer.args.save_strategy = "no"
    built = _rss_gib()
    params = sum(p.numel() for p in trainer.model.parameters())
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    estimate = memory.worker_bytes(config.training, memory.ModelShape.of(Path(model)), config.training.method)
    return {
        "case": case,
        "mode": mode,
        "rss_after_imports_gib": imported,
        "rss_trainer_built_gib": built,
        "peak_rss_gib": _peak_gib(),
        "seconds_per_step": round(seconds / steps, 1),
        "estimate_gib": round(estimate / GIB, 2),
        "parameters": params,
        "trainable": trainable,
        "weights_gib": round(params * 4 / GIB, 3),
        "grads_and_adam_gib": round(trainable * 4 * 3 / GIB, 3),
        "reference_held": getattr(trainer, "ref_model", None) is not None,  # a second copy kept through training
    }


def run_case(case: str, mode: str, steps: int, extra: list[str]) -> dict:
    """One case in a fresh process, with the environment a Ray worker of that mode would have."""
    from alignflow.tasks.runtime.ray import HEAP_TUNABLES

    env = {**os.environ, "PYTHONPATH": str(ROOT / "bench")}
    env.pop("GLIBC_TUNABLES", None)
    if mode == "after":
        env["GLIBC_TUNABLES"] = HEAP_TUNABLES
    command = [sys.executable, __file__, "--one", case, "--mode", mode, "--steps", str(steps), "--set", *extra]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{case} ({mode}) failed:\n{done.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--modes", default="before,after")
    parser.add_argument("--set", nargs="*", default=[], help="extra key.path=value overrides for every case")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: run this case, print its JSON
    parser.add_argument("--mode", default="after", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        home = Path(tempfile.mkdtemp(prefix="alignflow-mem-"))
        print("RESULT " + json.dumps(one_case(args.one, args.mode, args.steps, home, args.set)))
        return
    rows = []
    for case in args.cases.split(","):
        for mode in args.modes.split(","):
            print(f"{case} {mode} ...", flush=True)
            rows.append(run_case(case, mode, args.steps, args.set))
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
        "load_average_at_start": os.getloadavg()[0],
        "steps": args.steps,
        "cases": rows,
    }
    target = ROOT / "bench" / "results" / "train_memory.json"
    target.write_text(json.dumps(out, indent=2) + "\n")
    print("| case | mode | RSS after imports | trainer built | peak | estimate | s/step | weights | grads + Adam |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['mode']} | {r['rss_after_imports_gib']} | {r['rss_trainer_built_gib']} "
            f"| **{r['peak_rss_gib']}** | {r['estimate_gib']} | {r['seconds_per_step']} "
            f"| {r['weights_gib']}{' x2 (reference kept)' if r['reference_held'] else ''} | {r['grads_and_adam_gib']} |"
        )
    print(f"GiB; written to {target.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
