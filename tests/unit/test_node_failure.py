"""Node failure: the elastic setting reaches Ray Train's ScalingConfig; a lost node during training (marked)."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignflow.conf.loader import ConfigError, load_config
from alignflow.tasks.training.driver import scaling_kwargs

ROOT = Path(__file__).resolve().parents[2]


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
