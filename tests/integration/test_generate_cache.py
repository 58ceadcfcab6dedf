"""A re-run reuses the generated data without one LLM call: through the flow's own generate path.

`alignflow.flows.data.generate_data` is what both flows run for stage 1 (the Prefect `generate`
task in the dataset folder of its content key, results persisted); here it runs inside a small
flow, twice, against the OpenAI-compatible test server, which counts every request.
"""

from __future__ import annotations

import json
import os

import pytest
from conftest import small_config
from fake_openai_server import API_KEY, KEY_VARIABLE, endpoint, running


@pytest.fixture(scope="module")
def server():
    with running() as (fake, url):
        yield fake, url


@pytest.fixture(scope="module")
def generate_only(prefect_harness, state_dir):
    from prefect import flow

    from alignflow.flows.data import generate_data

    @flow(name="generate-only")
    def generate_only(config):
        # What the flow passes: no models for your own data, None for each endpoint (every LLM here is one).
        gen = config.generation
        models = [] if gen.preference_data else [None] * len(gen.llm_slots())
        return generate_data(config, state_dir, models)

    return generate_only


def config_for(url: str, prompts_file, *overrides: str):
    return small_config(
        f"generation.prompts={prompts_file}",
        "generation.prompt_column=question",
        f"generation.generators=[{endpoint(url, 'alpha', num_generations=2)}, {endpoint(url, 'beta')}]",
        f"generation.judge={{kind: ultrafeedback, aspect: helpfulness, llm: {endpoint(url, 'judge-m')}}}",
        *overrides,
    )


def test_a_rerun_makes_no_llm_calls_and_only_content_changes_miss(server, generate_only, state_dir, tmp_path):
    fake, url = server
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"question": q}) + "\n" for q in ("What is rain?", "Why do cats purr?")))
    config = config_for(url, prompts)

    pairs, report, key = generate_only(config)
    calls = len(fake.requests)
    assert calls == 2 * 3 and report.judge == "ultrafeedback/helpfulness"  # 2 prompts x (alpha, beta, judge)

    # The same prompts and settings in a new flow run: the Prefect cache answers, no LLM is called,
    # even with the key rotated (its value is not part of the cache key, only the variable's name).
    os.environ[KEY_VARIABLE] = "sk-rotated-key"
    try:
        again, again_report, again_key = generate_only(config)
    finally:
        os.environ[KEY_VARIABLE] = API_KEY
    assert len(fake.requests) == calls
    assert (again, again_report, again_key) == (pairs, report, key)

    # Binarization only picks pairs from the scored candidates: a cache miss for Prefect, yet the
    # stage reuses every scored row (still no call) and writes the pairs to their own folder.
    rebinarized, rb_report, rb_key = generate_only(
        config_for(url, prompts, "generation.binarization=best_vs_random_lower")
    )
    assert len(fake.requests) == calls and rb_key == key
    assert rb_report.executor == "reused" and rb_report.reused_rows == 2
    assert rebinarized.path.parent != pairs.path.parent and pairs.path.exists()

    # New prompt content under the same file name is new data: the LLMs are called again.
    prompts.write_text(json.dumps({"question": "What is snow?"}) + "\n")
    _, _, new_key = generate_only(config)
    assert new_key != key and len(fake.requests) == calls + 3

    # Prefect persisted the task results and cache records: the key's value is in none of them.
    stored = [p for p in (state_dir / "prefect").rglob("*") if p.is_file()]
    assert stored and not any(API_KEY.encode() in p.read_bytes() for p in stored)


def test_own_preference_data_goes_through_the_generate_task(generate_only, tmp_path):
    data = tmp_path / "hh.jsonl"
    rows = [
        {"chosen": f"Human: Q{i}?\n\nAssistant: yes {i}", "rejected": f"Human: Q{i}?\n\nAssistant: no"}
        for i in range(4)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs, report, key = generate_only(small_config(f"generation.preference_data={data}"))
    assert report.format == "standard_implicit_prompt" and report.rows == 4 and not report.generated
    assert pairs.path.read_bytes() == data.read_bytes() and pairs.path != data
    assert generate_only(small_config(f"generation.preference_data={data}"))[2] == key
