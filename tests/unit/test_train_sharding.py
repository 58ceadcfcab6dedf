"""Models larger than one GPU (issue 27 item 3): activation checkpointing and FSDP settings reach TRL's trainer.

FSDP itself does not run here: accelerate 1.15 shards only on GPU-type distributed modes; on CPU (gloo, MULTI_CPU)
it drops the plugin and trains plain DDP (measured: one gloo process, `is_fsdp_enabled` False, the model wrapped in
DistributedDataParallel). So alignflow refuses `fsdp` without `scaling.use_gpu`, these tests check that the settings
reach the arguments and the plugin transformers hands accelerate, and the GPU kit's FSDP row (bench/gpu/run.py)
runs a sharded DPO step on a GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import small_config

from alignflow.conf.loader import ConfigError, load_config
from alignflow.tasks.training import memory, recipe

GPU_8B = Path(__file__).resolve().parents[2] / "conf" / "gpu-8b.yaml"


@pytest.fixture(scope="module")
def train_path(pairs_frame, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("sharding") / "train.parquet"
    pairs_frame.head(4).to_parquet(path, index=False)
    return str(path)


@pytest.mark.parametrize("on", [True, False])
def test_gradient_checkpointing_reaches_the_built_trainer(on, tiny_model_path, train_path, tmp_path):
    """The deprecated name (TRL resolves it into activation_checkpointing) as a profile may write it."""
    cfg = small_config("training.max_steps=1", f"training.gradient_checkpointing={str(on).lower()}")
    trainer, _ = recipe.build_trainer(cfg.training, str(tiny_model_path), train_path, str(tmp_path))
    assert trainer.args.gradient_checkpointing is on
    assert trainer.args.activation_checkpointing is on


def test_the_8b_profile_s_fsdp_settings_reach_the_plugin_transformers_hands_accelerate():
    from accelerate.utils import FullyShardedDataParallelPlugin

    training = load_config(GPU_8B).training
    kwargs = {**training.trl_kwargs(), "use_cpu": True}  # this machine has no GPU; the FSDP path is the same
    config_class, _ = recipe.trl_classes("dpo")
    args = config_class(output_dir="/tmp/unused", **kwargs)
    assert args.fsdp is True and args.activation_checkpointing is False
    wanted = {
        "fsdp_version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_cls_names_to_wrap": "LlamaDecoderLayer",
        "state_dict_type": "FULL_STATE_DICT",
        "activation_checkpointing": True,
        "reshard_after_forward": True,
    }
    assert wanted.items() <= args.fsdp_plugin_args.items()
    plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)  # what Trainer builds its Accelerator with
    assert plugin.fsdp_version == 2 and plugin.activation_checkpointing and plugin.reshard_after_forward
    # transformers completes fsdp_config in place; the profile's own section is left as written
    assert "xla" not in training.knobs["fsdp_config"]


def test_fsdp_takes_transformers_documented_true_and_the_memory_estimate_shards():
    training = load_config(GPU_8B).training
    shape = memory.ModelShape(parameters=8_030_261_248, layers=32, hidden=4096, intermediate=14336, vocab=128_256)
    sharded = memory.worker_bytes(training, shape, "dpo")
    whole = memory.worker_bytes(load_config(GPU_8B, ["training.fsdp=false"]).training, shape, "dpo")
    assert whole - sharded > 7 / 8 * 8_030_261_248 * (2 + 2 + 8) * 0.99  # weights, gradients and moments / 8


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["training.scaling.use_gpu=false"], "fsdp needs training.scaling.use_gpu=true"),
        (["training.use_peft=true"], "fsdp with use_peft=true"),
        (["training.use_peft=true", "training.load_in_4bit=true"], "fsdp with use_peft=true"),  # QLoRA too
        (["training.activation_checkpointing=true"], "fsdp_config.activation_checkpointing and activation_"),
        (["training.fsdp_config={state_dict_type: SHARDED_STATE_DICT}"], "fsdp_config.state_dict_type"),
    ],
)
def test_fsdp_combinations_that_cannot_run_are_refused_before_compute(overrides, says):
    with pytest.raises(ConfigError, match=says):
        load_config(GPU_8B, overrides)


def test_the_lora_variant_of_the_8b_profile_loads():
    lora = ["training.fsdp=false", "training.use_peft=true", "training.activation_checkpointing=true"]
    training = load_config(GPU_8B, lora).training
    assert training.knob("use_peft", bool) and not training.trl_kwargs()["fsdp"]
