"""What a training stage costs, measured on every Ray Train worker and summed over the worker group.

- forward calls: invocations of the policy's and the reference model's forward (a hook on each),
  so DPO's reference pass is counted and ORPO's absence of one shows;
- forward passes: sequences through a model, the rows of those calls (TRL's DPO runs chosen and
  rejected as one batch of 2B rows through the policy and again through the reference: 4 per pair;
  ORPO 2; SFT 1);
- examples: the training examples the optimizer steps consumed (counted as the trainer takes each
  batch, so a short last batch counts what it holds);
- CPU seconds of the training loop (process time of the worker, all threads, from the built trainer to
  the trained model; `worker_cpu_s` is the worker process's whole life, start-up and loading included),
  GPU seconds (training-loop wall time of each worker holding a GPU), peak resident memory and peak GPU
  memory.

Reference log-probs precomputed when the trainer is built (`precompute_ref_log_probs`) happen
before the hooks exist and are not counted.
"""

from __future__ import annotations

import collections
import resource
import time


def watch(trainer) -> dict:
    """Start counting on a built TRL trainer; returns the live counters (read them after train())."""
    counts = {
        "forward_calls": 0,
        "forward_passes": 0,
        "examples": 0,
        "started": time.perf_counter(),
        "cpu_started": time.process_time(),
    }
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass

    def on_forward(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        counts["forward_calls"] += 1
        counts["forward_passes"] += int(ids.shape[0]) if getattr(ids, "ndim", 0) >= 1 else 1

    for model in (trainer.model, getattr(trainer, "ref_model", None)):
        if model is not None:
            model.register_forward_pre_hook(on_forward, with_kwargs=True)

    # The collator sees each batch's examples, training_step consumes the batches in the same order;
    # a batch fetched ahead (the dataloader looks one ahead) but never trained on is not counted.
    sizes: collections.deque[int] = collections.deque()
    collate, step = trainer.data_collator, trainer.training_step

    def counting_collate(features):
        sizes.append(len(features))
        return collate(features)

    def counting_step(model, inputs, *args, **kwargs):
        counts["examples"] += sizes.popleft() if sizes else 0
        return step(model, inputs, *args, **kwargs)

    trainer.data_collator = counting_collate
    trainer.training_step = counting_step
    return counts


def worker_usage(counts: dict) -> dict:
    """This worker's totals since `watch`."""
    import torch

    gpu = torch.cuda.is_available()
    wall = time.perf_counter() - counts["started"]
    return {
        "forward_calls": counts["forward_calls"],
        "forward_passes": counts["forward_passes"],
        "examples": counts["examples"],
        "cpu_s": time.process_time() - counts["cpu_started"],
        "worker_cpu_s": time.process_time(),  # the worker process's whole life: start-up, imports, loading too
        "gpu_s": wall if gpu else 0.0,
        "wall_s": wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if gpu else 0.0,
    }


def gather(usage: dict) -> list[dict]:
    """Every worker's usage (a collective: every rank calls it); a single process gets its own."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [usage]
    everyone: list[dict | None] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, usage)
    return [u for u in everyone if u is not None]


def stage_cost(workers: list[dict], steps: int) -> dict:
    """The worker group's cost of one stage; per-step and per-example figures are per worker."""
    n = max(len(workers), 1)
    summed = ("forward_calls", "forward_passes", "examples", "cpu_s", "worker_cpu_s", "gpu_s")
    total = {k: sum(w.get(k, 0.0) for w in workers) for k in summed}
    return {
        **total,
        "workers": n,
        "steps": steps,
        "forward_calls_per_step": round(total["forward_calls"] / (n * steps), 3) if steps else 0.0,
        "forward_passes_per_step": round(total["forward_passes"] / (n * steps), 3) if steps else 0.0,
        "forward_passes_per_example": round(total["forward_passes"] / total["examples"], 3)
        if total["examples"]
        else 0.0,
        "peak_rss_mb": round(max(w["peak_rss_mb"] for w in workers), 1),
        "gpu_peak_mb": round(max(w["gpu_peak_mb"] for w in workers), 1),
        "cpu_s": round(total["cpu_s"], 2),
        "worker_cpu_s": round(total["worker_cpu_s"], 2),
        "gpu_s": round(total["gpu_s"], 2),
    }
