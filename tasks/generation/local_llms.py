"""The generate stage's local models: distilabel's TransformersLLM and vLLM, seeded by batch, each saying where it runs.

Both run inside a step's process, or on a Ray actor with generation.resources (pipeline.py): with a GPU there, in
bf16 on it; without, in float32 on the actor's CPU threads.

Sampling is seeded by batch, not by process: each batch draws with a seed made of the generator's seed and the
batch's own prompts (batch_seed). A batch's text is then the same whichever process or actor draws it, and in
whatever order: one process, two Ray actors, or eight GPUs taking batches as they free up (distilabel deals a
step's batches to its replicas from one queue). tests/integration/test_generate_ray.py compares the paths.
"""

from __future__ import annotations

import json
import os
import sys
import zlib
from collections import Counter
from typing import Any

from distilabel.models.llms import TransformersLLM, vLLM
from pydantic import PrivateAttr

SEED_MODULUS = 2**32  # numpy's and torch's seeds are 32-bit


def batch_seed(seed: int, inputs: list[Any]) -> int:
    """The sampling seed of one batch: the generator's seed and the batch's prompts (their chat messages)."""
    text = json.dumps(inputs, sort_keys=True, ensure_ascii=False, default=str)
    return (seed * 1_000_003 + zlib.crc32(text.encode())) % SEED_MODULUS


def draw_seed(draws: Counter, seed: int, inputs: list[Any]) -> int:
    """batch_seed for the first draw of these prompts; the k-th draw of the same prompts in this process (a judge
    asking again after an answer that did not parse: the same process retries its own batch) gets a seed of its
    own, so a re-ask is a new sample and still the same wherever it runs."""
    base = batch_seed(seed, inputs)
    draws[base] += 1
    return (base + (draws[base] - 1) * 7_919) % SEED_MODULUS


def placement(device: str, dtype: str) -> dict[str, str]:
    """Where a model was loaded: the Ray node (or the host off Ray), the process, the device and dtype."""
    node = os.uname().nodename
    ray = sys.modules.get("ray")  # a Ray actor has imported it; a local step process need not pay for the import
    if ray is not None and ray.is_initialized():
        node = ray.get_runtime_context().get_node_id()
    return {"node": node, "pid": str(os.getpid()), "device": device, "dtype": dtype}


class SeededTransformersLLM(TransformersLLM):
    """TransformersLLM that generates in batches, each batch's sampling seeded by its prompts (batch_seed)."""

    seed: int = 0
    batch_size: int = 16
    torch_threads: int = 0  # 0: torch's default (every core, or what Ray's OMP_NUM_THREADS says)
    _where: dict[str, str] = PrivateAttr(default_factory=dict)
    _draws: Counter = PrivateAttr(default_factory=Counter)

    def load(self) -> None:
        super().load()
        import torch

        self._pipeline._batch_size = self.batch_size
        self._pipeline.tokenizer.padding_side = "left"  # batched decoder-only generation pads on the left
        if self.torch_threads:
            # Each generator is its own process and they run at the same time: with every one on
            # every core, OpenMP threads spin against each other (measured: 10-40x slower batches).
            torch.set_num_threads(self.torch_threads)
        model = self._pipeline.model
        self._where = placement(str(model.device), str(model.dtype).removeprefix("torch."))

    @property
    def where(self) -> dict[str, str]:
        return self._where

    def generate_outputs(self, inputs: list[Any], num_generations: int = 1, **kwargs: Any) -> list:
        # Here rather than in generate(): distilabel reads generate()'s signature for its runtime parameters.
        from transformers import set_seed

        set_seed(draw_seed(self._draws, self.seed, inputs))
        return super().generate_outputs(inputs=inputs, num_generations=num_generations, **kwargs)


class SeededVLLM(vLLM):
    """distilabel's vLLM with the seed of each batch (batch_seed) in its sampling parameters.

    vLLM draws each request from a generator seeded by SamplingParams.seed, so a batch's answers do not depend on
    which engine serves it or on what else is in flight. On Ray, distilabel places a vLLM step in a placement group
    of its own (a GPU per tensor-parallel rank) rather than by generation.resources; not yet run on a GPU here."""

    _where: dict[str, str] = PrivateAttr(default_factory=dict)
    _draws: Counter = PrivateAttr(default_factory=Counter)

    def load(self) -> None:
        super().load()
        self._where = placement("cuda", self.dtype)

    @property
    def where(self) -> dict[str, str]:
        return self._where

    def generate_outputs(self, inputs: list[Any], num_generations: int = 1, **kwargs: Any) -> list:
        seed = draw_seed(self._draws, self.seed, inputs)
        extra = {**(kwargs.pop("extra_sampling_params", None) or {}), "seed": seed}
        return super().generate_outputs(
            inputs=inputs, num_generations=num_generations, extra_sampling_params=extra, **kwargs
        )


def vllm_sampling(kwargs: dict) -> dict:
    """transformers' sampling settings (llms.generation_kwargs) in vLLM's names: greedy is temperature 0 there."""
    out = {k: kwargs[k] for k in ("max_new_tokens", "top_p", "repetition_penalty") if k in kwargs}
    out["temperature"] = kwargs["temperature"] if kwargs.get("do_sample", True) else 0.0
    return out
