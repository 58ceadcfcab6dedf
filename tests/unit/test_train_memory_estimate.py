"""A training worker's memory estimate (what it reserves from Ray), the refusal and the one-line OOM message."""

from __future__ import annotations

import pytest
from conftest import small_config

from alignflow.tasks.training import memory

# SmolLM2-135M-Instruct's shape (the embedded default's model)
SMOLLM2 = memory.ModelShape(parameters=134_515_008, layers=30, hidden=576, intermediate=1536, vocab=49_152)
GIB = 2**30


def _gib(*overrides: str, stage: str = "dpo") -> float:
    cfg = small_config("training.per_device_train_batch_size=4", "training.max_length=512", *overrides)
    return memory.worker_bytes(cfg.training, SMOLLM2, stage) / GIB


def test_estimate_follows_method_lora_checkpointing_and_batch_shape():
    lora = _gib("training.use_peft=true")
    full = _gib("training.use_peft=false", "training.precompute_ref_log_probs=false")
    assert 1.5 < lora < 3.0  # bench/train_memory.py measured the peak of this case (BENCHMARKS.md)
    assert full > lora + 1.0  # gradients, Adam's moments of every weight and the reference copy
    assert _gib("training.use_peft=true", "training.activation_checkpointing=false") > 2 * lora
    assert _gib("training.use_peft=true", "training.max_length=1024") > lora
    assert _gib("training.method=orpo", "training.use_peft=true", stage="orpo") > lora  # full logits
    assert _gib("training.use_peft=true", stage="sft") < lora  # one sequence a row, not chosen and rejected


def test_reservation_adds_memory_unless_the_profile_sets_it(tiny_model_path):
    cfg = small_config()
    resources, needed = memory.reservation(cfg.training, str(tiny_model_path), "dpo")
    assert resources["CPU"] == 1 and resources["memory"] == needed > memory.RUNTIME_BYTES
    set_here = small_config("training.scaling.resources_per_worker={CPU: 1, memory: 3000000000}")
    assert memory.reservation(set_here.training, str(tiny_model_path), "dpo") == (
        {"CPU": 1, "memory": 3e9},
        3_000_000_000,
    )
    assert memory.reservation(cfg.training, "org/a-hub-id", "dpo") == ({"CPU": 1}, None)  # nothing to read


def test_oom_line_names_the_stage_the_amounts_and_what_to_change():
    line = memory.oom_line("train (dpo)", 3 * GIB, 16 * GIB, workers=2)
    assert "\n" not in line and line.startswith("train (dpo): a worker was killed for memory")
    assert "~3.0 GiB a worker x 2" in line and "16.0 GiB" in line
    for setting in ("per_device_train_batch_size", "max_length", "use_peft", "num_workers"):
        assert f"training.{setting}" in line or f"scaling.{setting}" in line


def test_killed_for_memory_finds_the_worker_error_under_ray_trains():
    import ray.exceptions

    class WorkerGroupError(RuntimeError):  # Ray Train's: the workers' errors by rank
        def __init__(self, failures):
            super().__init__("Training failed due to worker errors")
            self.worker_failures = failures

    oom = ray.exceptions.OutOfMemoryError("Task was killed due to the node running low on memory.")
    assert memory.killed_for_memory(WorkerGroupError({0: RuntimeError("boom"), 1: oom}))
    try:
        raise RuntimeError("wrapped") from MemoryError()
    except RuntimeError as exc:
        assert memory.killed_for_memory(exc)
    assert not memory.killed_for_memory(WorkerGroupError({0: ValueError("a bad batch")}))


def test_refusal_counts_the_workers_each_node_can_hold(monkeypatch):
    monkeypatch.setattr(memory, "_autoscaling", lambda: False)
    monkeypatch.setattr(memory, "node_memory", lambda: [10 * GIB, 5 * GIB])
    memory.refuse_unless_fits("train (dpo)", 4 * GIB, 3)  # 2 + 1 workers fit: queued by Ray, not refused
    with pytest.raises(memory.OutOfMemory, match=r"^train \(dpo\): not started.*\(3 of 4 workers fit"):
        memory.refuse_unless_fits("train (dpo)", 4 * GIB, 4)
    with pytest.raises(memory.OutOfMemory, match="the largest node has 10.0 GiB"):
        memory.refuse_unless_fits("train (dpo)", 11 * GIB, 1)


def test_a_recipe_starts_beside_others_only_while_the_memory_fits():
    assert memory.fits_beside([], 20 * GIB, 16 * GIB)  # alone it starts; the refusal check judges it
    assert memory.fits_beside([4 * GIB], 8 * GIB, 16 * GIB)
    assert not memory.fits_beside([9 * GIB], 9 * GIB, 16 * GIB)  # two full-FT SmolLM2 recipes: one at a time
