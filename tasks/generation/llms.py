"""The LLMs of the generate stage: distilabel's TransformersLLM and OpenAILLM, built from LLMConfig.

Two small subclasses, each for one reason:

- SeededTransformersLLM generates in batches with seeded sampling (distilabel hands the
  transformers pipeline the whole batch, which without a batch size runs one prompt at a time).
- EndpointLLM (OpenAILLM) turns a request that still fails after the client's retries into a
  per-row error instead of failing the whole batch: distilabel would otherwise replace every
  row of the batch with None and only log a warning. The error text reaches the stage report
  and failed_rows.jsonl.

Retries of HTTP 5xx/429/408 and time-outs are the OpenAI client's own (exponential backoff
from 0.5 s, capped at 8 s, with jitter; `max_retries` and `timeout` from the config).

API keys: the key is read from the environment variable named by `api_key_env` when the
pipeline is built, and set as distilabel's `api_key` (a SecretStr). distilabel leaves any
field named `api_key` out of its serialized pipeline (pipeline.yaml, cache signatures), and
the config only holds the variable's name.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from distilabel.mixins.runtime_parameters import RuntimeParameter
from distilabel.models.llms import OpenAILLM, TransformersLLM
from pydantic import Field, SecretStr

from alignflow.conf.generation import LLMConfig
from alignflow.tasks.generation.endpoints import api_key

DEFAULT_BASE_URL = "https://api.openai.com/v1"
TRANSFORMERS_REPETITION_PENALTY = 1.1


class SeededTransformersLLM(TransformersLLM):
    """TransformersLLM that generates in batches, with sampling seeded when its process loads it."""

    seed: int = 0
    batch_size: int = 16
    torch_threads: int = 0  # 0: torch's default (every core)

    def load(self) -> None:
        super().load()
        import torch
        from transformers import set_seed

        self._pipeline._batch_size = self.batch_size
        self._pipeline.tokenizer.padding_side = "left"  # batched decoder-only generation pads on the left
        if self.torch_threads:
            # Each generator is its own process and they run at the same time: with every one on
            # every core, OpenMP threads spin against each other (measured: 10-40x slower batches).
            torch.set_num_threads(self.torch_threads)
        set_seed(self.seed)


class EndpointLLM(OpenAILLM):
    """OpenAILLM that reports a request failing after all retries as that row's error."""

    api_key_env: str | None = None  # recorded in pipeline.yaml: which variable held the key, never its value
    # distilabel declares an int; the config (and the OpenAI client) take fractions of a second
    timeout: RuntimeParameter[float] = Field(120.0, description="Seconds per request before it times out.")

    async def _agenerate(self, inputs: list, num_generations: int = 1, **kwargs: Any) -> list:
        async def one(formatted: Any) -> dict:
            try:
                output = await self.agenerate(input=formatted, num_generations=num_generations, **kwargs)
            except Exception as exc:  # the client already retried what is retryable
                reason = describe_error(exc, self.timeout, self.max_retries)
                if self.api_key is not None and len(self.api_key.get_secret_value()) > 4:
                    reason = reason.replace(self.api_key.get_secret_value(), "***")  # a server may echo it
                return {
                    "generations": [None] * num_generations,
                    "statistics": {"input_tokens": [0], "output_tokens": [0] * num_generations},
                    "error": [reason] * num_generations,
                }
            output["error"] = [None] * len(output["generations"])
            return output

        return list(await asyncio.gather(*(one(formatted) for formatted in inputs)))


def describe_error(exc: BaseException, timeout: float, retries: int) -> str:
    """One line saying why a request failed, for people reading failed_rows.jsonl."""
    import openai

    tries = f"after {retries + 1} attempts"
    if isinstance(exc, openai.APITimeoutError):
        return f"timed out ({timeout:g} s per request) {tries}"
    if isinstance(exc, openai.APIStatusError):
        body = " ".join(str(exc.message).split())[:200]
        retried = exc.status_code in (408, 409, 429) or exc.status_code >= 500  # what the client retries
        return f"HTTP {exc.status_code}{' ' + tries if retried else ''}: {body}"
    if isinstance(exc, openai.APIConnectionError):
        return f"connection failed {tries}: {exc.__cause__ or exc}"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def build_llm(llm: LLMConfig, where: str, model_path: str | None, seed: int, batch_size: int, threads: int = 0):
    """The distilabel LLM for one config entry; `model_path` is the loadable local model (transformers),
    `threads` the CPU threads it may use (0: all)."""
    if llm.provider == "openai":
        return EndpointLLM(
            model=llm.model,
            base_url=llm.base_url or DEFAULT_BASE_URL,
            api_key=SecretStr(api_key(llm, where)),
            api_key_env=llm.api_key_env,
            timeout=llm.timeout,
            max_retries=llm.max_retries,
            generation_kwargs=generation_kwargs(llm),
        )
    if model_path is None:
        raise ValueError(f"{where}: no local model path for provider transformers ({llm.model})")
    return SeededTransformersLLM(
        model=model_path,
        device="cpu",
        torch_dtype="float32",
        token=None,  # offline: never read HF_TOKEN into the step (it would be serialized with it)
        seed=seed,
        batch_size=batch_size,
        torch_threads=threads,
        generation_kwargs=generation_kwargs(llm),
    )


def cpu_threads_each(llms: list[LLMConfig]) -> int:
    """CPU threads for each local (transformers) LLM when they all run at once: the cores, shared."""
    local = sum(1 for llm in llms if llm.provider == "transformers")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(local, 1))


def generation_kwargs(llm: LLMConfig) -> dict:
    """The sampling settings, in the names each distilabel LLM's generate() takes."""
    if llm.provider == "openai":
        kwargs: dict = {"max_new_tokens": llm.max_new_tokens, "temperature": llm.temperature, "top_p": llm.top_p}
        if llm.repetition_penalty is not None:  # not an OpenAI API field: vLLM and TGI read it from the body
            kwargs["extra_body"] = {"repetition_penalty": llm.repetition_penalty}
        return kwargs
    sampling = llm.temperature > 0
    return {
        "max_new_tokens": llm.max_new_tokens,
        "temperature": llm.temperature if sampling else 1.0,
        "top_p": llm.top_p,
        "repetition_penalty": llm.repetition_penalty or TRANSFORMERS_REPETITION_PENALTY,
        "do_sample": sampling,
    }
