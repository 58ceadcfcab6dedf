"""The evaluation's models on Ray workers: held-out log-probs and the head-to-head's answers, data-parallel.

With `evaluation.workers` > 0 the flow's process loads no model: each model's held-out pairs, and each model's
evaluation prompts, are cut into `workers` shares along the batches the in-process path uses (`batch_size` pairs,
`batch_size` prompts), and each share runs as a Ray task with `evaluation.resources` (GPU: bf16 on the GPU). A
share draws its answers with the seeds of its batches' global numbers (head_to_head.sample_answers: seed, sample,
batch), so the answers, the log-probs and the gate's decision are those of the in-process path
(tests/integration/test_evaluate_on_ray.py compares). Each task reports where it ran (node, process, device).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from alignflow.conf.evaluation import EvaluationConfig
from alignflow.tasks.evaluation.head_to_head import SAMPLE_BATCH, Sampler, sample_answers
from alignflow.tasks.evaluation.metrics import Scorer, load_causal_lm, score_model
from alignflow.tasks.runtime.ray import inference_runtime_env


def _where(device: str) -> dict[str, str]:
    import ray

    return {"node": ray.get_runtime_context().get_node_id(), "pid": str(os.getpid()), "device": device}


def _score_share(model: str, template: str | None, pairs: pd.DataFrame, batch_size: int, use_gpu: bool):
    loaded, tokenizer = load_causal_lm(model, template, use_gpu)
    return score_model(loaded, tokenizer, pairs, batch_size), _where(str(loaded.device))


def _sample_share(model: str, prompts: list[str], batches: list[int], settings: tuple, template, use_gpu: bool):
    answers = sample_answers(model, prompts, *settings, chat_template=template, batches=batches, use_gpu=use_gpu)
    return answers, _where("cuda" if use_gpu else "cpu")


def shares(count: int, batch_size: int, workers: int) -> list[list[int]]:
    """The batch numbers of `count` items in batches of `batch_size`, dealt to at most `workers` shares in runs
    (worker k gets consecutive batches), none empty."""
    batches = list(range(-(-count // batch_size)))
    size = -(-len(batches) // max(1, workers)) if batches else 0
    return [batches[i : i + size] for i in range(0, len(batches), size)] if size else []


@dataclass
class RayEvaluation:
    """Runs the evaluation's model work as Ray tasks; `placements` lists where each ran."""

    config: EvaluationConfig
    placements: list[dict[str, str]] = field(default_factory=list)

    @property
    def use_gpu(self) -> bool:
        return self.config.resources.get("GPU", 0) > 0

    def _options(self) -> dict:
        resources = self.config.resources
        options: dict = {"num_cpus": resources.get("CPU", 1), "num_gpus": resources.get("GPU", 0)}
        if resources.get("memory"):
            options["memory"] = int(resources["memory"])
        return {**options, "runtime_env": inference_runtime_env()}

    def _run(self, fn: Callable, calls: list[tuple]) -> list:
        import ray

        from alignflow.tasks.runtime.ray import start_ray

        if not ray.is_initialized():
            start_ray(None)
        remote = ray.remote(**self._options())(fn)
        results = ray.get([remote.remote(*args) for args in calls])
        self.placements.extend(where for _, where in results)
        return [value for value, _ in results]

    def scorer(self) -> Scorer:
        batch = self.config.batch_size

        def score(model: str | Path, template: str | None, pairs: pd.DataFrame) -> pd.DataFrame:
            parts = [
                pairs.iloc[share[0] * batch : (share[-1] + 1) * batch]
                for share in shares(len(pairs), batch, self.config.workers)
            ]
            calls = [(str(model), template, part, batch, self.use_gpu) for part in parts]
            return pd.concat(self._run(_score_share, calls), ignore_index=True)

        return score

    def sampler(self) -> Sampler:
        c = self.config
        settings = (c.samples_per_prompt, c.max_new_tokens, c.temperature, c.seed, SAMPLE_BATCH)

        def sample(model: str | Path, prompts: list[str], template: str | None) -> list[list[str]]:
            calls = [
                (str(model), prompts, share, settings, template, self.use_gpu)
                for share in shares(len(prompts), SAMPLE_BATCH, c.workers)
            ]
            answers: list[list[str]] = [[] for _ in prompts]
            for part in self._run(_sample_share, calls):
                for i, drawn in enumerate(part):
                    answers[i].extend(drawn)
            return answers

        return sample
