"""A training worker's memory on the real model (issue 31, "measure first"): peak RSS by method, full and LoRA.

    .venv/bin/python bench/train_memory.py [--steps 1] [--cases dpo-full,dpo-lora,orpo-full,orpo-lora]

Each case runs in a process of its own (so its peak RSS is its own) the recipe a Ray worker runs
(tasks/training/recipe.py build_trainer, then trainer.train()) on SmolLM2-135M-Instruct, one torch thread as
a worker with 1 CPU has: batch 4 pairs, max_length 512 (synthetic pairs long enough to fill it). It records the
RSS after the imports, after the trainer is built (the policy's weights; DPO's reference, or LoRA's adapters)
and the peak over the steps (ru_maxrss), next to the arithmetic of what must be there: float32 weights,
gradients and Adam's two moments of the trainable parameters, and the logits of one forward pass (chosen and
rejected: 8 sequences x 512 tokens x the 49,152-token vocabulary x 4 bytes). Writes bench/results/train_memory.json
and prints a table.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CASES = {
    "dpo-full": ["training.method=dpo", "training.use_peft=false", "training.precompute_ref_log_probs=false"],
    "dpo-lora": ["training.method=dpo", "training.use_peft=true", "training.precompute_ref_log_probs=false"],
    "orpo-full": ["training.method=orpo", "training.use_peft=false"],
    "orpo-lora": ["training.method=orpo", "training.use_peft=true"],
}
GIB = 2**30


def _rss_gib() -> float:
    with open("/proc/self/status") as fh:
        kib = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    return round(kib * 1024 / GIB, 3)


def _peak_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3)


def one_case(case: str, steps: int, home: Path) -> dict:
    """In this process: build the recipe's trainer for `case` and train `steps` steps; the RSS at each point."""
    from alignflow.conf.loader import load_config
    from alignflow.tasks.runtime.state import configure_environment

    overrides = [f"runtime.home={home}", "training.per_device_train_batch_size=4", "training.max_length=512"]
    config = load_config(ROOT / "conf" / "pipeline.yaml", [*overrides, f"training.max_steps={steps}", *CASES[case]])
    configure_environment(config)
    import torch
    from train_throughput import synthetic_pairs

    from alignflow.tasks.runtime.models import resolve_model
    from alignflow.tasks.training.recipe import build_trainer

    torch.set_num_threads(1)  # a Ray worker with resources_per_worker {CPU: 1}
    model = str(resolve_model(config.training.model_name_or_path, config.training.tiny_model, home / "models"))
    data = synthetic_pairs(home / f"{case}.parquet", rows=4 * steps, words=420)
    imported = _rss_gib()
    trainer, _ = build_trainer(config.training, model, str(data.path), str(home / case))
    trainer.args.save_strategy = "no"
    built = _rss_gib()
    params = sum(p.numel() for p in trainer.model.parameters())
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    vocab = trainer.model.config.vocab_size
    return {
        "case": case,
        "rss_after_imports_gib": imported,
        "rss_trainer_built_gib": built,
        "peak_rss_gib": _peak_gib(),
        "parameters": params,
        "trainable": trainable,
        "weights_gib": round(params * 4 / GIB, 3),
        "grads_and_adam_gib": round(trainable * 4 * 3 / GIB, 3),
        "reference_copy": case == "dpo-full",
        "logits_one_forward_gib": round(8 * 512 * vocab * 4 / GIB, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: run this case, print its JSON
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one_case(args.one, args.steps, Path(tempfile.mkdtemp(prefix="alignflow-mem-")))))
        return
    rows = []
    for case in args.cases.split(","):
        print(f"{case} ...", flush=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT / "bench")}
        done = subprocess.run(
            [sys.executable, __file__, "--one", case, "--steps", str(args.steps)],
            capture_output=True,
            text=True,
            env=env,
        )
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{case} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(line.removeprefix("RESULT ")))
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU", "steps": args.steps, "cases": rows}
    target = ROOT / "bench" / "results" / "train_memory.json"
    target.write_text(json.dumps(out, indent=2) + "\n")
    print("| case | RSS after imports | trainer built | peak | weights | grads + Adam | logits, one forward |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['rss_after_imports_gib']} | {r['rss_trainer_built_gib']} | **{r['peak_rss_gib']}** "
            f"| {r['weights_gib']}{' x2 (reference)' if r['reference_copy'] else ''} | {r['grads_and_adam_gib']} "
            f"| {r['logits_one_forward_gib']} |"
        )
    print(f"GiB; written to {target.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
