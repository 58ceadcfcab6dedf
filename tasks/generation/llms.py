"""The LLMs of the generate stage: distilabel's TransformersLLM, vLLM and OpenAILLM, built from LLMConfig.

The local ones (local_llms.py) generate in batches with each batch's sampling seeded by its prompts, on the
device generation.resources gives them. The endpoint one:

- EndpointLLM (OpenAILLM) sends a batch's requests at once, at most `max_concurrency` in flight
  (limits.AdaptiveLimit: fewer while the server answers 429/503 or times out), retries them
  itself, and turns a request that still fails into that row's error instead of failing the
  whole batch: distilabel would otherwise replace every row of the batch with None and only log
  a warning. The error text reaches the stage report and failed_rows.jsonl.

Retries (limits.retry_delay) follow the OpenAI client's policy: HTTP 5xx/429/409/408, time-outs
and dropped connections, exponential backoff from 0.5 s capped at 8 s with jitter, a server's
Retry-After honoured; `max_retries` and `timeout` from the config. They are done here rather
than inside the client so that a retry waits outside the concurrency limit, and a 429 holds
back the other requests too.

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
from distilabel.models.llms import OpenAILLM
from distilabel.models.llms.base import AsyncLLM
from pydantic import Field, PrivateAttr, SecretStr

from alignflow.conf.generation import LLMConfig
from alignflow.tasks.generation.endpoints import api_key
from alignflow.tasks.generation.limits import AdaptiveLimit, is_overload, retry_delay
from alignflow.tasks.generation.local_llms import SeededTransformersLLM, SeededVLLM, vllm_sampling

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_CONCURRENCY = 16  # an endpoint LLM built outside the stage (the evaluation's judge) without its own
TRANSFORMERS_REPETITION_PENALTY = 1.1


class EndpointLLM(OpenAILLM):
    """OpenAILLM with a concurrency limit and its own retries, reporting a request that fails after all
    retries as that row's error."""

    api_key_env: str | None = None  # recorded in pipeline.yaml: which variable held the key, never its value
    # distilabel declares an int; the config (and the OpenAI client) take fractions of a second
    timeout: RuntimeParameter[float] = Field(120.0, description="Seconds per request before it times out.")
    max_concurrency: int = Field(DEFAULT_CONCURRENCY, ge=1, description="Requests in flight at once.")
    _limit: AdaptiveLimit | None = PrivateAttr(None)
    _session: Any = PrivateAttr(None)  # aiohttp.ClientSession, opened in the step's event loop

    def load(self) -> None:
        # OpenAIBaseClient.load would also build a synchronous client nobody uses (its own
        # connection pool and TLS context). The async client stays for the completions API and
        # for its error types; chat requests go through _exchange.
        AsyncLLM.load(self)
        import logging

        from openai import AsyncOpenAI

        # The client's httpx logs every request at INFO: at 100+ requests/s (the completions API)
        # that is most of what crosses distilabel's log pipe from the step processes.
        for name in ("httpx", "httpx2"):
            logging.getLogger(name).setLevel(logging.WARNING)

        if self.api_key is None:
            raise ValueError(f"{self.model}: no API key (build_llm reads it from the variable api_key_env names)")
        self._aclient = AsyncOpenAI(
            base_url=self.base_url,
            api_key=self.api_key.get_secret_value(),
            max_retries=0,
            timeout=self.timeout,
            default_headers=self.default_headers,
        )
        self._limit = AdaptiveLimit(self.max_concurrency)

    def unload(self) -> None:
        loop = self._event_loop
        if loop is not None and not loop.is_closed():
            if self._session is not None:
                loop.run_until_complete(self._session.close())
            if self._aclient is not None:
                loop.run_until_complete(self._aclient.close())  # its pooled connections
        self._session = None
        super().unload()

    async def _agenerate(self, inputs: list, num_generations: int = 1, **kwargs: Any) -> list:
        if self._limit is None:
            self._limit = AdaptiveLimit(self.max_concurrency)
        return list(await asyncio.gather(*(self._request(f, num_generations, kwargs) for f in inputs)))

    async def _request(self, formatted: Any, num_generations: int, kwargs: dict) -> dict:
        """One input: sent when the limit allows, retried while retryable, its error kept when it fails."""
        limit = self._limit
        assert limit is not None
        attempt = 0
        chat = not isinstance(formatted, str)
        while True:
            answer: Any = None
            async with limit.slot() as epoch:
                try:
                    if chat:  # the HTTP exchange alone: the answer is read after the slot is free
                        answer = await self._post_chat(formatted, num_generations, **kwargs)
                    else:
                        answer = await self.agenerate(input=formatted, num_generations=num_generations, **kwargs)
                except Exception as exc:
                    delay = retry_delay(exc, attempt)
                    if is_overload(exc):  # a 429/503 holds back every request for its delay; a time-out does not
                        limit.overloaded(epoch, delay if not _timed_out(exc) else None)
                    if delay is None or attempt >= self.max_retries:
                        return self._failed(exc, attempt + 1, num_generations)
                else:
                    limit.succeeded()
            if answer is not None:
                # Equal latencies bring a step's answers back together; reading each costs a few ms of
                # this one event loop. Freed first, the slot's next request goes out before that.
                await asyncio.sleep(0)
                output = self._chat_output(answer) if chat else answer
                output["error"] = [None] * len(output["generations"])
                return output
            attempt += 1
            await asyncio.sleep(delay)  # outside the limit: other requests go on meanwhile

    async def _generate_chat_completion(self, input: Any, num_generations: int = 1, **kwargs: Any) -> dict:
        return self._chat_output(await self._post_chat(input, num_generations, **kwargs))

    async def _post_chat(
        self,
        input: Any,
        num_generations: int = 1,
        max_new_tokens: int = 128,
        logprobs: bool = False,
        top_logprobs: int | None = None,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: str | list[str] | None = None,
        response_format: dict[str, str] | None = None,
        extra_body: dict[str, Any] | None = None,
        echo: bool = False,  # agenerate's, for the completions API: unused by chat
    ) -> bytes:
        """POST distilabel's request body as it is; the answer's JSON, unparsed. alignflow sends no
        structured output (distilabel's instructor path)."""
        body: dict[str, Any] = {
            "messages": input,
            "model": self.model,
            "logprobs": logprobs,
            "top_logprobs": top_logprobs,
            "max_tokens": max_new_tokens,
            "n": num_generations,
            "frequency_penalty": frequency_penalty,
            "presence_penalty": presence_penalty,
            "temperature": temperature,
            "top_p": top_p,
            "stop": stop,
        }
        if isinstance([m for m in input if m["role"] == "user"][0]["content"], list):
            body.pop("stop")  # as distilabel: a message with an image takes no stop
        if response_format is not None:
            body["response_format"] = response_format
        body.update(extra_body or {})
        return await self._exchange(body)

    async def _exchange(self, body: dict[str, Any]) -> bytes:
        """One POST to /chat/completions with aiohttp itself, failures raised as the OpenAI client's
        own errors (so retry_delay, is_overload and describe_error read them unchanged).

        Why not `chat.completions.create`: the client walks the body against the API's typed
        parameters and builds its request and response objects for every request; measured here
        against the test server, 2.45 ms of CPU per request through the client against 0.78 ms
        with aiohttp alone. A step's answers come back together, and that CPU, spent one answer
        after the other in one event loop, is time every slot waits before its next request."""
        import aiohttp
        import openai
        import orjson

        if self._session is None:
            self._session = _chat_session(self)
        try:
            async with self._session.post(self._chat_url(), data=orjson.dumps(body)) as response:
                content = await response.read()
                status, headers = response.status, response.headers
        except TimeoutError as exc:  # aiohttp's time-outs (total, connect, read) are all this
            raise openai.APITimeoutError(request=self._as_request()) from exc
        except aiohttp.ClientError as exc:  # refused, reset, closed mid-answer, bad URL
            raise openai.APIConnectionError(request=self._as_request()) from exc
        if status >= 400:
            import httpx2

            reply = httpx2.Response(status, headers=list(headers.items()), content=content, request=self._as_request())
            raise self._aclient._make_status_error_from_response(reply)
        return content

    def _chat_url(self) -> str:
        return f"{str(self.base_url).rstrip('/')}/chat/completions"

    def _as_request(self):
        """The failed request as the OpenAI client's errors carry it (method and URL)."""
        import httpx2

        return httpx2.Request("POST", self._chat_url())

    def _chat_output(self, answer: bytes) -> dict:
        """distilabel's output from a chat completion's JSON (the fields it reads, without building the
        client's typed model: a third of the client's CPU per request)."""
        import orjson
        from distilabel.models.llms.utils import prepare_output

        data = orjson.loads(answer)
        generations = [(choice.get("message") or {}).get("content") for choice in data.get("choices") or []]
        if any(text is None for text in generations):
            self._logger.warning(f"Received no response from {self.model}: a choice without content")  # type: ignore[attr-defined]
        usage = data.get("usage") or {}
        return prepare_output(
            generations=generations,
            input_tokens=[usage.get("prompt_tokens") or 0],
            output_tokens=[usage.get("completion_tokens") or 0],
            logprobs=[],
        )

    def _failed(self, exc: Exception, attempts: int, num_generations: int) -> dict:
        reason = describe_error(exc, self.timeout, attempts)
        if self.api_key is not None and len(self.api_key.get_secret_value()) > 4:
            reason = reason.replace(self.api_key.get_secret_value(), "***")  # a server may echo it
        return {
            "generations": [None] * num_generations,
            "statistics": {"input_tokens": [0], "output_tokens": [0] * num_generations},
            "error": [reason] * num_generations,
        }


def _timed_out(exc: BaseException) -> bool:
    import openai

    return isinstance(exc, openai.APITimeoutError)


def _chat_session(llm: EndpointLLM):
    """The aiohttp session of one endpoint LLM: a connection kept alive for every request that may
    be in flight, the per-request time-out, the key as a bearer token, proxies from the
    environment as the OpenAI client reads them."""
    import aiohttp

    assert llm.api_key is not None
    headers = {
        "Authorization": f"Bearer {llm.api_key.get_secret_value()}",
        "Content-Type": "application/json",
        "Accept": "application/json",
        **(llm.default_headers or {}),
    }
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=llm.max_concurrency, keepalive_timeout=30.0),
        timeout=aiohttp.ClientTimeout(total=llm.timeout),
        headers=headers,
        trust_env=True,
    )


def describe_error(exc: BaseException, timeout: float, attempts: int) -> str:
    """One line saying why a request failed, for people reading failed_rows.jsonl."""
    import openai

    tries = f" after {attempts} attempts" if attempts > 1 else ""
    if isinstance(exc, openai.APITimeoutError):
        return f"timed out ({timeout:g} s per request){tries}"
    if isinstance(exc, openai.APIStatusError):
        body = " ".join(str(exc.message).split())[:200]
        return f"HTTP {exc.status_code}{tries}: {body}"
    if isinstance(exc, openai.APIConnectionError):
        return f"connection failed{tries}: {exc.__cause__ or exc}"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def build_llm(
    llm: LLMConfig,
    where: str,
    model_path: str | None,
    seed: int,
    batch_size: int,
    threads: int = 0,
    concurrency: int | None = None,
    chat_template: str | None = None,
    use_gpu: bool = False,
):
    """The distilabel LLM for one config entry; `model_path` is the loadable local model (transformers, vllm),
    `threads` the CPU threads it may use (0: all), `concurrency` an endpoint's requests in flight (None: its own
    max_concurrency, else DEFAULT_CONCURRENCY), `chat_template` the template that replaces the local model's own
    (training.chat_template, for the model being trained), `use_gpu` a local model on its process's GPU in bf16
    (else float32 on CPU). An endpoint applies its own template, server-side: it gets none."""
    if llm.provider == "openai":
        return EndpointLLM(
            model=llm.model,
            base_url=llm.base_url or DEFAULT_BASE_URL,
            api_key=SecretStr(api_key(llm, where)),
            api_key_env=llm.api_key_env,
            timeout=llm.timeout,
            max_retries=llm.max_retries,
            max_concurrency=concurrency or llm.max_concurrency or DEFAULT_CONCURRENCY,
            generation_kwargs=generation_kwargs(llm),
        )
    if model_path is None:
        raise ValueError(f"{where}: no local model path for provider {llm.provider} ({llm.model})")
    if llm.provider == "vllm":
        return SeededVLLM(
            model=model_path,
            dtype="bfloat16",
            seed=seed,
            chat_template=chat_template,
            generation_kwargs=vllm_sampling(generation_kwargs(llm)),
        )
    return SeededTransformersLLM(
        model=model_path,
        device="cuda" if use_gpu else "cpu",
        torch_dtype="bfloat16" if use_gpu else "float32",
        token=None,  # offline: never read HF_TOKEN into the step (it would be serialized with it)
        seed=seed,
        batch_size=batch_size,
        torch_threads=threads,
        generation_kwargs=generation_kwargs(llm),
        chat_template=chat_template,  # distilabel sets it on the tokenizer when it loads the model
    )


def cpu_threads_each(llms: list[LLMConfig]) -> int:
    """CPU threads for each local (transformers) LLM when they all run at once: the cores, shared."""
    local = sum(1 for llm in llms if llm.is_local)
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
