"""Endpoint concurrency: the limit per LLM and in total, throughput under latency, backoff on 429.

Against the OpenAI-compatible test server (tests/fake_openai_server.py) with a fixed latency per
request, a server-wide capacity that answers 429 past it, and a rate-limit window; the server
records when each request arrived and how many it was answering at once.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import small_config
from fake_openai_server import API_KEY, endpoint, running

from alignflow.conf.generation import LLMConfig
from alignflow.tasks.generation.limits import AdaptiveLimit, concurrency_shares, retry_after
from alignflow.tasks.generation.stage import generate_preferences

pytestmark = pytest.mark.integration


def endpoint_llm(url: str, concurrency: int, **settings):
    from pydantic import SecretStr

    from alignflow.tasks.generation.llms import EndpointLLM

    llm = EndpointLLM(model="alpha", base_url=url, api_key=SecretStr(API_KEY), max_concurrency=concurrency, **settings)
    llm.load()
    return llm


def questions(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"Question {i}?"}] for i in range(n)]


def test_the_total_is_shared_out_and_each_cap_holds():
    openai = {"provider": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1"}
    llms = [LLMConfig(**openai), LLMConfig(**openai, max_concurrency=4), LLMConfig(), LLMConfig(**openai)]
    # 64 among three endpoints: the capped one takes 4, the others split what it leaves; local models take none.
    assert concurrency_shares(llms, 64) == [30, 4, None, 30]
    assert concurrency_shares(llms, 2) == [1, 1, None, 1]  # at least one request each
    assert retry_after({"retry-after": "2"}) == 2.0 and retry_after({"retry-after-ms": "250"}) == 0.25
    assert retry_after({"retry-after": "soon"}) is None and retry_after({}) is None


def test_the_limit_halves_once_per_overload_and_grows_back():
    async def scenario() -> AdaptiveLimit:
        limit = AdaptiveLimit(8)
        async with limit.slot() as epoch:
            pass
        limit.overloaded(epoch)
        limit.overloaded(epoch)  # a second 429 from a request sent before the cut: the same episode
        assert limit.current == 4 and limit.cuts == 1
        for _ in range(4 + 5 + 6 + 7):  # one more per round of `current` successes
            limit.succeeded()
        assert limit.current == 8
        limit.succeeded()
        assert limit.current == 8  # never past the configured limit
        return limit

    asyncio.run(scenario())


def test_requests_in_flight_reach_the_limit_and_never_pass_it():
    with running(latency_s=0.2) as (fake, url):
        llm = endpoint_llm(url, concurrency=8, max_retries=0, timeout=30)
        started = time.monotonic()
        outputs = llm.generate(inputs=questions(40), num_generations=1)
        elapsed = time.monotonic() - started
    assert all(o["error"] == [None] for o in outputs) and len(fake.requests) == 40
    assert fake.peak_in_flight == 8  # 40 requests, 8 at a time: five rounds of 0.2 s
    assert elapsed >= 5 * 0.2 * 0.9


def test_a_429_holds_back_every_request_until_its_retry_after():
    with running(latency_s=0.05, retry_after_s=1.0) as (fake, url):
        llm = endpoint_llm(url, concurrency=8, max_retries=3, timeout=30)
        fake.rate_limit_until = time.monotonic() + 0.5  # the server says "too many" for half a second
        outputs = llm.generate(inputs=questions(32), num_generations=1)
        limit = llm._limit
    assert all(o["error"] == [None] for o in outputs)
    limited = [r for r in fake.requests if r.status == 429]
    assert 1 <= len(limited) <= 8  # the first wave only: nothing more was sent into the rate limit
    first_429 = min(r.arrived for r in limited)
    after = [r.arrived for r in fake.requests if r.arrived > max(r.arrived for r in limited)]
    assert min(after) >= first_429 + 1.0 * 0.9  # Retry-After: 1 was honoured by every request, not only the 429ed
    assert limit.cuts == 1  # one episode, one cut: the seven other 429s of the wave were sent before it


def test_a_server_over_capacity_gets_fewer_requests_not_a_flood():
    with running(latency_s=0.1, capacity=4, retry_after_s=0.2) as (fake, url):
        llm = endpoint_llm(url, concurrency=16, max_retries=4, timeout=30)
        outputs = llm.generate(inputs=questions(64), num_generations=1)
        limit = llm._limit
    failed = [o["error"][0] for o in outputs if o["error"][0]]
    limited = sum(1 for r in fake.requests if r.status == 429)
    assert not failed, failed[:3]
    # Without backing off, every round of 16 would meet 12 rejections; the limit settles near 4.
    assert limited <= 32, limited
    assert limit.cuts >= 1 and limit.current <= 8


@pytest.fixture(scope="module")
def latency_run(tmp_path_factory):
    """The stage at 0.25 s per request, 3 endpoint LLMs sharing 12 requests in flight, one prompt rate-limited."""
    prompts = [f"Question {i}: why does topic {i} matter?" for i in range(72)] + ["[rate-limited] Why is it dark?"]
    rows = [{"id": f"q{i}", "prompt": p, "reference": ""} for i, p in enumerate(prompts)]
    out = tmp_path_factory.mktemp("latency")
    with running(latency_s=0.25, retry_after_s=0.5) as (fake, url):
        cfg = small_config(
            f"generation.generators=[{endpoint(url, 'alpha', num_generations=2)}, {endpoint(url, 'beta')}]",
            f"generation.judge={{kind: ultrafeedback, llm: {endpoint(url, 'judge-m', temperature=0.0)}}}",
            "generation.max_concurrency=12",
        )
        _, report = generate_preferences(rows, cfg.generation, [], out)
        requests = list(fake.requests)
        peak = fake.peak_in_flight
        fake.reset()
        # Other concurrency settings shape no row: the re-run reuses every one, without a request.
        again = small_config(
            f"generation.generators=[{endpoint(url, 'alpha', num_generations=2, max_concurrency=2)}, "
            f"{endpoint(url, 'beta')}]",
            f"generation.judge={{kind: ultrafeedback, llm: {endpoint(url, 'judge-m', temperature=0.0)}}}",
            "generation.max_concurrency=40",
        )
        _, rerun = generate_preferences(rows, again.generation, [], out)
        rerun_requests = len(fake.requests)
    return report, requests, peak, rerun, rerun_requests


def test_the_stage_keeps_the_total_in_flight_and_overlaps_requests(latency_run):
    report, requests, peak, *_ = latency_run
    assert report.judged == report.prompts == 73 and report.failed == 0
    ok = [r for r in requests if r.status == 200]
    assert len(ok) == 73 * 3  # alpha (2 answers in one request), beta and the judge, once per prompt
    assert peak <= 12  # the total across the three step processes
    arrived = sorted(r.arrived for r in requests)
    rate = len(requests) / (arrived[-1] - arrived[0] + 0.25)
    # 12 in flight at 0.25 s each is 48 requests/s at best; one at a time would be 4.
    assert rate >= 0.5 * 12 / 0.25, rate


def test_a_rate_limited_request_is_retried_after_its_retry_after(latency_run):
    _, requests, *_ = latency_run
    limited = [r for r in requests if "[rate-limited]" in r.prompt]
    assert [r.status for r in limited if r.kind == "generate" and r.model == "beta"] == [429, 200]
    retried = [r.arrived for r in limited if r.kind == "generate" and r.model == "beta"]
    assert retried[1] - retried[0] >= 0.5 * 0.9


def test_concurrency_settings_reuse_every_scored_row(latency_run):
    *_, rerun, rerun_requests = latency_run
    assert rerun_requests == 0 and rerun.reused_rows == 73 and rerun.executor == "reused"
