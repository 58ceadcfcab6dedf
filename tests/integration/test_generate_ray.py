"""generation.ray: the same distilabel pipeline, as distilabel's RayPipeline, on the local Ray cluster."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from conftest import small_config
from fake_openai_server import endpoint, running

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
