"""A reward model on a Ray actor: where the evaluation's reward-model judge scores answers.

The actor takes `judge.resources` (CPU, GPU, memory; on a GPU the model runs in bf16) and, unless they set it, the
memory its model needs to score a batch, so Ray places it where it fits and queues it behind what holds that memory.
The driver sends text and gets rewards back: it never loads the weights. The actor records where it ran (node,
process, device) for the evaluation's lineage and for tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from alignflow.conf.generation import JudgeConfig
from alignflow.tasks.reward.scorer import Prompt, load_reward_model
from alignflow.tasks.runtime.memory import ModelShape, inference_bytes

SCORE_TOKENS = 1024  # a prompt and its answer, at most, for the actor's memory estimate


class _RewardActor:
    """Runs on Ray: loads the reward model once and scores batches of (prompt, answer)."""

    def __init__(self, model_dir: str, use_gpu: bool, batch_size: int) -> None:
        self.model = load_reward_model(model_dir, use_gpu, batch_size)

    def scores(self, items: list[tuple[Prompt, str]]) -> list[float]:
        return self.model.scores(items)

    def where(self) -> dict[str, str]:
        import ray

        return {"node": ray.get_runtime_context().get_node_id(), "pid": str(os.getpid()), "device": self.model.device}


def actor_options(judge: JudgeConfig, model_dir: Path) -> dict[str, float | int]:
    """ray.remote options of the scoring actor: judge.resources, with the model's memory unless they name it."""
    resources = judge.resources
    options: dict[str, float | int] = {"num_cpus": resources.get("CPU", 1), "num_gpus": resources.get("GPU", 0)}
    shape = ModelShape.of_folder(str(model_dir))
    memory = resources.get("memory") or (
        inference_bytes(shape, judge.batch_size, SCORE_TOKENS, options["num_gpus"] > 0) if shape else None
    )
    if memory:
        options["memory"] = int(memory)
    return options


def remote_reward_model(
    judge: JudgeConfig, model_dir: Path
) -> tuple[Callable[[list[tuple[Prompt, str]]], list[float]], dict]:
    """A scoring function backed by one Ray actor (joining or starting Ray here), and where the actor runs."""
    import ray

    from alignflow.tasks.runtime.ray import inference_runtime_env, start_ray

    if not ray.is_initialized():
        start_ray(None)
    options = actor_options(judge, model_dir)
    actor_class = ray.remote(**options, runtime_env=inference_runtime_env())(_RewardActor)
    actor = actor_class.remote(str(model_dir), options["num_gpus"] > 0, judge.batch_size)
    where = ray.get(actor.where.remote())

    def scores(items: list[tuple[Prompt, str]]) -> list[float]:
        return ray.get(actor.scores.remote(items)) if items else []

    return scores, where
