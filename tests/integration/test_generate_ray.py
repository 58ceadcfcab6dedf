"""generation.ray (the default): the same distilabel pipeline, as distilabel's RayPipeline, on the local Ray cluster."""

from __future__ import annotations

import os

import pandas as pd
import pytest
import yaml
from conftest import small_config
from fake_openai_server import endpoint, running

from alignflow.tasks.generation.pipeline import step_labels
from alignflow.tasks.generation.rows import read_rows
from alignflow.tasks.generation.stage import generate_preferences

ROWS = [
    {"id": f"r{i}", "prompt": p, "reference": ""}
    for i, p in enumerate(["What is rain?", "Why is ice slippery?", "[flaky] What is a comet?"])
]


@pytest.fixture(scope="module")
def server():
    with running() as (fake, url):
        yield fake, url


def test_pipeline_runs_on_the_ray_cluster(server, ray_session, tmp_path):
    import ray

    fake, url = server
    cfg = small_config(
        "generation.ray=true",
        f"generation.generators=[{endpoint(url, 'alpha')}, {endpoint(url, 'beta', num_generations=2)}]",
    )
    ref, report = generate_preferences(ROWS, cfg.generation, [], tmp_path, ray_address=None)

    # distilabel's RayPipeline ran the steps as actors of the session's cluster (joined, not started)
    executor = yaml.safe_load((tmp_path / "pipeline.yaml").read_text())["alignflow"]["executor"]
    assert executor == {"pipeline": "RayPipeline", "ray_address": ray.get_runtime_context().gcs_address}
    assert report.executor == "ray" and report.judged == 3 and report.failed == 0
    assert fake.count("generate") == 3 * 2 + 2 * 2  # 3 prompts x 2 generators + two injected 500s each
    pairs = pd.read_parquet(ref.path)
    assert len(pairs) == report.pairs > 0


ONE_GENERATOR = "generation.generators=[{temperature: 1.2, max_new_tokens: 24, num_generations: 2}]"


def test_local_generators_run_on_ray_actors_and_sample_what_local_processes_sample(
    tiny_model_path, ray_session, tmp_path
):
    """Issue 27 item 1: a local generator on two Ray actors with generation.resources (the two CPUs here), the
    prompts' batches dealt between them, against the local processes: the same candidates, text for text, and each
    actor's placement recorded. The flow's process (this one) loads no model."""
    import ray

    from alignflow.tasks.generation.prompts import load_prompts

    rows = load_prompts(max_prompts=24)  # three batches of 8
    paths = [str(tiny_model_path)]
    local_cfg = small_config("generation.ray=false", ONE_GENERATOR)
    _, local = generate_preferences(rows, local_cfg.generation, paths, tmp_path / "local")
    on_ray = small_config(
        "generation.ray=true", "generation.replicas=2", "generation.resources={CPU: 1}", ONE_GENERATOR
    )
    _, report = generate_preferences(rows, on_ray.generation, paths, tmp_path / "ray", ray_address=None)

    here, there = (read_rows(tmp_path / side / "candidates.parquet") for side in ("local", "ray"))
    assert local.executor == "local" and report.executor == "ray" and report.candidates == local.candidates == 48
    by_prompt = lambda rows: {r["prompt_id"]: (r["candidates"], r["scores"]) for r in rows}  # noqa: E731
    assert by_prompt(there) == by_prompt(here)  # batch-seeded: which actor draws a batch changes nothing

    # Every batch ran in a Ray actor of this cluster, on its CPU in float32, none in this process.
    node = ray.get_runtime_context().get_node_id()
    assert {p["node"] for p in report.placements} == {node}
    assert {(p["device"], p["dtype"]) for p in report.placements} == {("cpu", "float32")}
    assert str(os.getpid()) not in {p["pid"] for p in report.placements}
    assert {p["step"] for p in report.placements} == set(step_labels(on_ray.generation))
    assert 1 <= len(report.placements) <= 2  # the two actors (one may have drawn every batch)
    assert [p["node"] for p in local.placements] == [os.uname().nodename]  # a local process names the host
