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


def test_the_worker_setup_hook_quiets_ray_train_without_importing_it():
    """quiet_ray_logs runs in every Ray worker: it names Ray Train's context logger (named after its file)
    by a built path, so that the workers that never train do not import ray.train (~1.5 s each)."""
    import logging
    import subprocess
    import sys

    from alignflow.tasks.runtime.ray import quiet_ray_logs

    probe = "import sys; from alignflow.tasks.runtime.ray import quiet_ray_logs as q; q(); print('ray.train' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "False\n"
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.NOTSET)
    quiet_ray_logs()
    assert logging.getLogger(context.__file__).level == logging.WARNING
