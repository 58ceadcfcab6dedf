"""Node failure: the elastic setting reaches Ray Train's ScalingConfig; a lost node during training (marked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from alignflow.conf.loader import ConfigError, load_config
from alignflow.tasks.training.driver import scaling_kwargs

ROOT = Path(__file__).resolve().parents[1]


def test_fixed_workers_are_an_int_for_ray():
    cfg = load_config(overrides=["training.scaling.num_workers=3"])
    assert cfg.training.scaling.min_workers is None
    assert scaling_kwargs(cfg.training) == {"num_workers": 3, "use_gpu": False, "resources_per_worker": {"CPU": 1.0}}


def test_min_workers_makes_ray_train_elastic():
    from ray.train import ScalingConfig  # Ray Train V2's class; constructing it starts nothing

    cfg = load_config(overrides=["training.scaling.num_workers=4", "training.scaling.min_workers=2"])
    kwargs = scaling_kwargs(cfg.training)
    assert kwargs["num_workers"] == (2, 4)
    ray_config = ScalingConfig(**kwargs)
    assert ray_config.elasticity_enabled
    assert (ray_config.min_workers, ray_config.max_workers) == (2, 4)


@pytest.mark.parametrize("value", ["3", "0"])
def test_min_workers_outside_one_to_num_workers_names_the_key(value):
    with pytest.raises(ConfigError, match=r"training\.scaling"):
        load_config(overrides=["training.scaling.num_workers=2", f"training.scaling.min_workers={value}"])


@pytest.mark.integration
@pytest.mark.stack
@pytest.mark.parametrize("case", ["replacement", "elastic"])
def test_a_lost_node_costs_at_most_a_checkpoint_interval(case, tmp_path):
    # bench/node_failure.py: its own 2-node Ray cluster, the second node SIGKILLed mid-run (a few minutes).
    out = tmp_path / "stack.json"
    args = ["--runs", "1", "--cases", case, "--max-steps", "16", "--save-steps", "2", "--kill-after", "7"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "node_failure.py"), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())["node_failure"][case]
    run = figures["runs"][0]
    assert figures["n"] == 1, run
    assert run["steps"] == 16  # the planned steps, after a restart from a checkpoint
    assert run["resumed_from_step"] > 0
    assert run["workers_at_end"] == (1 if case == "elastic" else 2)
    # At most the checkpoint interval, plus the steps finished while the killer's poll noticed step 7.
    assert 0 <= run["steps_redone"] <= 2 + 2
