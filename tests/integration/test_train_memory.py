"""A training worker's memory (tasks/training/memory.py).

- The memory-saving path trains the same model: on a fixed batch, the loss and the weights after one step are
  exactly those of the path without it (activation checkpointing off, TRL's 4,096-token log-prob tiles). The heap tunables (tasks/runtime/ray.py) change no arithmetic, only where memory comes from.
- Scheduling by memory: a training that can never fit is refused with one line before any worker starts; one
  that fits the node but not what is free now waits in Ray's queue, then trains.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch
from conftest import small_config

from alignflow.tasks.runtime.state import Ref, sha256_file, tracking_uri
from alignflow.tasks.training import memory, recipe
from alignflow.tasks.training.driver import TrainResult, train_model
from alignflow.tasks.training.job import TrainJob

CASES = {
    "dpo-full": ["training.use_peft=false", "training.precompute_ref_log_probs=true"],
    "dpo-lora": ["training.use_peft=true", "training.lora_r=4", "training.lora_alpha=8", "training.lora_dropout=0.1"],
}


@pytest.fixture(scope="module")
def train_ref(pairs_frame, tmp_path_factory) -> Ref:
    path = tmp_path_factory.mktemp("memory") / "train.parquet"
    pairs_frame.head(4).to_parquet(path, index=False)
    return Ref(uri=path.as_uri(), sha256=sha256_file(path))


def _one_step(overrides: list[str], model: str, data: Ref, out) -> tuple[float, dict[str, torch.Tensor], object]:
    cfg = small_config(*overrides, "training.max_steps=1", "training.per_device_train_batch_size=4")
    trainer, _ = recipe.build_trainer(cfg.training, model, str(data.path), str(out), reference_cache=out / "ref")
    trainer.args.disable_tqdm = True
    trainer.args.save_strategy = "no"
    torch.manual_seed(0)  # LoRA's dropout draws the same masks on both paths
    loss = trainer.train().training_loss
    weights = {k: v.detach().clone() for k, v in trainer.model.named_parameters() if v.requires_grad}
    return loss, weights, trainer


@pytest.mark.parametrize("case", CASES)
def test_memory_saving_path_trains_the_same_model(case, tiny_model_path, train_ref, tmp_path, monkeypatch):
    from trl.kernels import chunked_logprob

    monkeypatch.setattr(chunked_logprob, "TOKEN_CHUNK_SIZE", chunked_logprob.TOKEN_CHUNK_SIZE)  # restored after
    monkeypatch.setattr(memory, "LOGPROB_TILE_TOKENS_CPU", 16)  # the tiny batch spans many 16-token tiles
    saving, saving_weights, trainer = _one_step(CASES[case], str(tiny_model_path), train_ref, tmp_path / "saving")
    assert chunked_logprob.TOKEN_CHUNK_SIZE == 16 and trainer.args.activation_checkpointing
    if case == "dpo-full":
        assert trainer.ref_model is None  # TRL 1.16 loads no reference copy when its log-probs are precomputed

    monkeypatch.setattr(chunked_logprob, "TOKEN_CHUNK_SIZE", 4096)  # TRL's own tiles
    monkeypatch.setattr(recipe, "bound_logprob_tiles", lambda use_gpu: None)
    plain_overrides = [*CASES[case], "training.activation_checkpointing=false"]
    plain, plain_weights, trainer = _one_step(plain_overrides, str(tiny_model_path), train_ref, tmp_path / "plain")
    assert not trainer.args.activation_checkpointing and chunked_logprob.TOKEN_CHUNK_SIZE == 4096

    assert saving == plain  # exactly: the same float, not a tolerance
    assert saving_weights.keys() == plain_weights.keys()
    assert all(torch.equal(saving_weights[k], plain_weights[k]) for k in saving_weights)


def _job(cfg, model, data: Ref, state_dir, name: str) -> TrainJob:
    return TrainJob(cfg.training, str(model), data, str(state_dir / "ray"), name, tracking_uri(cfg))


def test_a_training_that_can_never_fit_is_refused_before_any_worker_starts(
    ray_session, tiny_model_path, train_ref, state_dir
):
    cfg = small_config("training.max_steps=1", "training.scaling.resources_per_worker={CPU: 1, memory: 1e13}")
    with pytest.raises(memory.OutOfMemory) as refused:
        train_model(_job(cfg, tiny_model_path, train_ref, state_dir, "memory-refused"))
    line = str(refused.value)
    assert "\n" not in line and line.startswith("train (dpo): not started: it needs more memory than the cluster")
    assert "9313.2 GiB a worker" in line and "training.per_device_train_batch_size" in line
    assert not (state_dir / "ray" / "memory-refused").exists()  # Ray Train never started the run


def test_a_training_waits_for_memory_held_by_another_run_then_trains(
    ray_session, tiny_model_path, train_ref, state_dir
):
    """Another run holds all but half of what this training's worker reserves: Ray keeps the worker's placement
    group pending (queued, not started into memory that is not there) until the other run lets go."""
    import ray
    from ray.util import placement_group_table

    cfg = small_config("training.max_steps=1")
    _, needed = memory.reservation(cfg.training, str(tiny_model_path), "dpo")

    @ray.remote(num_cpus=0)
    class OtherRun:
        def ready(self) -> bool:
            return True

    other = OtherRun.options(memory=max(memory.node_memory()) - needed // 2).remote()
    assert ray.get(other.ready.remote())
    done: dict[str, TrainResult] = {}
    job = _job(cfg, tiny_model_path, train_ref, state_dir, "memory-queued")
    thread = threading.Thread(target=lambda: done.update(result=train_model(job)), daemon=True)
    thread.start()
    deadline, pending = time.monotonic() + 60, []
    while not pending and time.monotonic() < deadline:
        time.sleep(0.5)
        pending = [g for g in placement_group_table().values() if g["state"] == "PENDING"]
    assert pending and any(b.get("memory") == needed for g in pending for b in g["bundles"].values())
    assert thread.is_alive() and "result" not in done
    ray.kill(other)  # the other run ends: the queued worker starts
    thread.join(timeout=300)
    assert done["result"].steps == 1


def test_ray_workers_start_with_the_heap_tunables(ray_session):
    """glibc reads GLIBC_TUNABLES when a process starts: a Ray worker has it from its first instruction."""
    import os

    import ray

    from alignflow.tasks.runtime.ray import HEAP_TUNABLES

    @ray.remote(num_cpus=0)
    def tunables() -> str | None:
        return os.environ.get("GLIBC_TUNABLES")

    assert ray.get(tunables.remote()) == os.environ.get("GLIBC_TUNABLES", HEAP_TUNABLES)
