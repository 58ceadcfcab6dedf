"""Endpoint generators and the UltraFeedback LLM judge over real HTTP, with injected failures.

One OpenAI-compatible server on 127.0.0.1 (tests/fake_openai_server.py) answers two generators
(`alpha`, 2 responses per prompt; `beta`, 1) and the judge. The prompts carry markers that make
it return HTTP 500s, time out, or answer the judge with text that does not parse.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import small_config
from fake_openai_server import API_KEY, KEY_VARIABLE, endpoint, running

from alignflow.conf.loader import flatten
from alignflow.tasks.generation.stage import GenerationFailed, generate_preferences

PROMPTS = [
    "Explain photosynthesis.",
    "Why is the sky blue?",
    "[flaky] How do vaccines work?",  # 500, 500, then an answer: the client's retries recover it
    "[fail] What is entropy?",  # beta always 500: alpha's two answers still make a judged row
    "[fail-all] Describe a volcano.",  # every generator fails: the row fails
    "[slow] Define gravity.",  # the first request times out, the retry answers
    "[judge-flaky] What is DNA?",  # the judge's first answer does not parse, the re-ask does
    "[judge-garbage] What is a prime number?",  # the judge never answers in format: the row fails
    "[slow-always] Name a planet.",  # beta always times out: alpha's answers are judged
]
ROWS = [{"id": f"q{i}", "prompt": p, "reference": ""} for i, p in enumerate(PROMPTS)]


@pytest.fixture(scope="module")
def server():
    with running() as (fake, url):
        yield fake, url


def endpoint_config(url: str, *overrides: str):
    retry = {"timeout": 1.5, "max_retries": 2}  # generous: the machine running the tests may be busy
    return small_config(
        f"generation.generators=[{endpoint(url, 'alpha', num_generations=2, **retry)}, {endpoint(url, 'beta', **retry)}]",
        f"generation.judge={{kind: ultrafeedback, llm: {endpoint(url, 'judge-m', temperature=0.0, **retry)}, "
        "retry_backoff: 0.1}",
        *overrides,
    )


@pytest.fixture(scope="module")
def first_run(server, tmp_path_factory):
    fake, url = server
    out = tmp_path_factory.mktemp("endpoint")
    cfg = endpoint_config(url, "generation.min_success_rate=0.7")
    ref, report = generate_preferences(ROWS, cfg.generation, [], out)
    return fake, url, out, ref, report, [r.__dict__.copy() for r in fake.requests]


def failures(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "failed_rows.jsonl").read_text().splitlines()]


def test_rows_are_generated_judged_or_failed_with_a_reason(first_run):
    _, _, out, ref, report, _ = first_run
    assert report.prompts == 9 and report.judged == 7 and report.failed == 2
    assert report.success_rate == round(7 / 9, 4) and report.status == "ok"
    assert report.judge == "ultrafeedback/overall-rating"
    # Nothing is dropped: every prompt has a row in candidates.parquet, failed ones with their reason.
    candidates = pd.read_parquet(out / "candidates.parquet")
    assert candidates["prompt_id"].tolist() == [r["id"] for r in ROWS]
    failed = {(f["prompt_id"], f["step"]): f for f in failures(out)}
    assert set(failed) == {
        ("q3", "g1:beta@t1.0"),
        ("q4", "g0:alpha@t1.0"),
        ("q4", "g1:beta@t1.0"),
        ("q7", "judge"),
        ("q8", "g1:beta@t1.0"),
    }
    assert failed[("q4", "g0:alpha@t1.0")]["reason"].startswith("HTTP 500 after 3 attempts")
    assert failed[("q4", "g0:alpha@t1.0")]["row_failed"] is True
    assert failed[("q3", "g1:beta@t1.0")]["row_failed"] is False  # alpha's answers were still judged
    assert failed[("q8", "g1:beta@t1.0")]["reason"].startswith("timed out (1.5 s per request) after 3 attempts")
    assert "did not parse" in failed[("q7", "judge")]["reason"] and failed[("q7", "judge")]["row_failed"]
    # The pairs: every judged row is a pair or a counted tie; chosen is the judge's best.
    pairs = pd.read_parquet(ref.path)
    assert report.pairs + report.ties + report.identical + report.empty == report.judged
    assert len(pairs) == report.pairs > 0
    assert (pairs["chosen_generator"] == "g0:alpha@t1.0").all()  # the fake judge rates longer answers higher
    assert (pairs["score_chosen"] - pairs["score_rejected"] >= 0.25).all()  # UltraFeedback steps are 0.25


def test_retries_and_re_asks_hit_the_server(first_run):
    *_, requests = first_run

    def count(kind: str, marker: str, model: str | None = None, status: int | None = None) -> int:
        return sum(
            1
            for r in requests
            if r["kind"] == kind
            and marker in r["prompt"]
            and (model is None or r["model"] == model)
            and (status is None or r["status"] == status)
        )

    assert count("generate", "[flaky]", "alpha", 500) == 2 and count("generate", "[flaky]", "alpha", 200) == 1
    assert count("generate", "[fail]", "beta") == 3  # max_retries=2: three attempts, then the row's error
    assert count("generate", "[slow]", "alpha") == 2  # timed out once, retried
    assert count("judge", "[judge-flaky]") == 2  # re-asked once after an unparseable answer
    assert count("judge", "[judge-garbage]") == 3  # parse_retries=2: three answers, none parsed
    assert count("judge", "[fail-all]") == 0  # a row without two candidates is not sent to the judge
    assert all(r["status"] != 401 for r in requests)  # the key from KEY_VARIABLE reached the server


def test_the_api_key_is_nowhere_on_disk_or_in_params(first_run, state_dir):
    _, url, out, *_ = first_run
    for path in [*out.rglob("*"), *state_dir.rglob("*.yaml"), *state_dir.rglob("*.log")]:
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path
    pipeline = (out / "pipeline.yaml").read_text()
    assert f"api_key_env: {KEY_VARIABLE}" in pipeline and "EndpointLLM" in pipeline
    assert not any(API_KEY in v for v in flatten(endpoint_config(url)).values())


def test_too_low_success_rate_fails_and_a_rerun_retries_only_failed_rows(first_run):
    fake, url, out, _, report, _ = first_run
    before = len(fake.requests)
    cfg = endpoint_config(url, "generation.min_success_rate=0.95")
    with pytest.raises(GenerationFailed, match="generation.min_success_rate=0.95") as info:
        generate_preferences(ROWS, cfg.generation, [], out)
    message = str(info.value)
    assert "7/9 prompts" in message and "failed_rows.jsonl" in message and "HTTP 500" in message
    assert info.value.report.status == "failed" and info.value.report.reused_rows == 7
    assert info.value.report.rejudged_rows == 1 and info.value.report.generated_rows == 1
    # Only the two failed prompts went back to the server; the judged rows were kept. The row whose
    # generators all answered and only the judge failed went to the judge alone.
    again = fake.requests[before:]
    assert {r.prompt for r in again} == {PROMPTS[4], PROMPTS[7]}
    assert {r.kind for r in again if r.prompt == PROMPTS[7]} == {"judge"}
    assert {r.kind for r in again if r.prompt == PROMPTS[4]} == {"generate"}  # no candidates: nothing to judge
    assert len(pd.read_parquet(out / "candidates.parquet")) == 9
    assert {f["prompt_id"] for f in failures(out) if f["row_failed"]} == {"q4", "q7"}
    # Each attempt's failures are kept: the first run's (7 rows with a failure of some step) and the re-run's.
    attempts = sorted((out / "failed_rows").glob("attempt-*.jsonl"))
    assert [a.name for a in attempts] == ["attempt-1.jsonl", "attempt-2.jsonl"]
    second = [json.loads(line) for line in attempts[1].read_text().splitlines()]
    assert {f["prompt_id"] for f in second} == {"q4", "q7"}
    first = [json.loads(line) for line in attempts[0].read_text().splitlines()]
    assert {"q4", "q7"} < {f["prompt_id"] for f in first}


def test_a_rejected_key_is_the_row_error_without_the_key(server):
    from pydantic import SecretStr

    from alignflow.tasks.generation.llms import EndpointLLM

    _, url = server
    wrong = "sk-wrong-key-0123456789"
    llm = EndpointLLM(model="alpha", base_url=url, api_key=SecretStr(wrong), max_retries=2, timeout=5)
    llm.load()
    [out] = llm.generate(inputs=[[{"role": "user", "content": "Hello?"}]], num_generations=2)
    assert out["generations"] == [None, None]
    assert out["error"][0].startswith("HTTP 401: ") and "after" not in out["error"][0]  # a 401 is not retried
    assert wrong not in out["error"][0] and "***" in out["error"][0]
