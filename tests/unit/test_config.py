"""alignflow.conf.loader: the embedded profile, key.path=value overrides, errors that name the key, and the CLI's exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from alignflow.conf.base import BUILTIN_PROMPTS, BUILTIN_SMOLLM2, CHAMPION_MODEL
from alignflow.conf.loader import DEFAULT_PROFILE, ConfigError, apply_override, config_hash, flatten, load_config
from alignflow.conf.schema import PipelineConfig
from alignflow.conf.training import TrainingConfig

REPO = Path(__file__).resolve().parents[2]
ALIGNFLOW = REPO / ".venv" / "bin" / "alignflow"


def test_embedded_default_loads_with_defaults():
    cfg = load_config()
    assert isinstance(cfg, PipelineConfig)
    assert DEFAULT_PROFILE == REPO / "conf" / "pipeline.yaml"
    assert cfg.name == "alignflow-smollm2"
    assert cfg.generation.prompts == BUILTIN_PROMPTS
    assert cfg.generation.max_prompts == 96
    assert len(cfg.generation.generators) == 2
    # Iterative: the champion writes the candidates and is the starting point (the base model while there is none).
    assert all(g.model == CHAMPION_MODEL for g in cfg.generation.generators)
    assert cfg.training.start_from == "champion" and cfg.training.model_name_or_path == BUILTIN_SMOLLM2
    assert cfg.training.method == "dpo"
    assert cfg.training.beta == 0.1
    assert cfg.training.loss_type == ["sigmoid"]
    assert cfg.training.learning_rate == 2e-4 and cfg.training.use_peft is True  # LoRA adapters on SmolLM2
    assert cfg.evaluation.max_prompts == 48 and cfg.evaluation.samples_per_prompt == 2  # the gate's n: 48 x 2
    assert cfg.registry.model_name == "alignflow-smollm2-135m-instruct"  # the base model's (issue 30, item 6)
    assert cfg.training.scaling.resources_per_worker == {"CPU": 1.0}
    assert cfg.validation.min_pairs == 20
    assert cfg.runtime.home is None
    # the same as loading the file by name
    assert load_config(DEFAULT_PROFILE) == cfg


def test_overrides_apply_with_proper_types():
    cfg = load_config(
        overrides=[
            "training.method=orpo",
            "training.beta=0.2",
            "training.loss_type=[sigmoid,sft]",
            "generation.max_prompts=5",
        ]
    )
    assert cfg.training.method == "orpo"
    assert cfg.training.beta == 0.2
    assert isinstance(cfg.training.beta, float)
    assert cfg.training.loss_type == ["sigmoid", "sft"]
    assert cfg.generation.max_prompts == 5
    assert isinstance(cfg.generation.max_prompts, int)


def test_single_loss_type_string_becomes_a_list():
    assert load_config(overrides=["training.loss_type=ipo"]).training.loss_type == ["ipo"]


def test_later_override_wins():
    assert load_config(overrides=["training.beta=0.2", "training.beta=0.3"]).training.beta == 0.3


def test_override_creates_nested_section():
    cfg = load_config(overrides=["training.scaling.num_workers=3", "registry.gate.min_win_rate_margin=0.01"])
    assert cfg.training.scaling.num_workers == 3
    assert cfg.registry.gate.min_win_rate_margin == 0.01


def test_bad_value_names_the_key():
    with pytest.raises(ConfigError, match=r"training\.beta") as info:
        load_config(overrides=["training.beta=abc"])
    assert "abc" in str(info.value)
    assert str(DEFAULT_PROFILE) in str(info.value)


def test_out_of_range_value_names_the_key():
    with pytest.raises(ConfigError, match=r"training\.beta"):
        load_config(overrides=["training.beta=0"])
    with pytest.raises(ConfigError, match=r"training\.method"):
        load_config(overrides=["training.method=ppo"])


def test_unknown_section_names_it():
    with pytest.raises(ConfigError, match="nosuch") as info:
        load_config(overrides=["nosuch.key=1"])
    assert "unknown key" in str(info.value)


def test_unknown_key_in_section_names_the_path():
    with pytest.raises(ConfigError, match=r"training\.nosuch") as info:
        load_config(overrides=["training.nosuch=1"])
    assert "unknown key" in str(info.value)


@pytest.mark.parametrize("override", ["foo", "=1", "training..beta=1", "training.=1", ".beta=1"])
def test_malformed_override_raises(override):
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(overrides=[override])


def test_missing_config_file_names_it(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="no such config file") as info:
        load_config(missing)
    assert str(missing) in str(info.value)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_yaml_that_is_not_a_mapping_names_the_file(tmp_path, text):
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="mapping") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("training: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_empty_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == PipelineConfig()


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("training:\n  betta: 0.2\n")
    with pytest.raises(ConfigError, match=r"training\.betta") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_overriding_a_value_as_a_section_raises():
    with pytest.raises(ConfigError, match="is a value, not a section") as info:
        load_config(overrides=["name.x=1"])
    assert "name" in str(info.value)
    with pytest.raises(ConfigError, match=r"training\.beta"):
        load_config(overrides=["training.beta.x=1"])


def test_apply_override_parses_yaml_values():
    data: dict = {}
    apply_override(data, "a.b=0.5")
    apply_override(data, "a.c=true")
    apply_override(data, "a.d=[x, y]")
    apply_override(data, "e=text=with=equals")
    assert data == {"a": {"b": 0.5, "c": True, "d": ["x", "y"]}, "e": "text=with=equals"}


def test_exponent_notation_reaches_a_float_field():
    assert load_config(overrides=["training.learning_rate=1e-4"]).training.learning_rate == 1e-4


@pytest.mark.parametrize(
    "overrides",
    [
        ["generation.generators=[{num_generations: 1}]"],
        ["generation.generators=[]"],
    ],
)
def test_fewer_than_two_candidates_rejected(overrides):
    with pytest.raises(ConfigError, match="generation"):
        load_config(overrides=overrides)


def test_two_candidates_from_one_generator_accepted():
    cfg = load_config(overrides=["generation.generators=[{num_generations: 2}]"])
    assert sum(g.num_generations for g in cfg.generation.generators) == 2


def test_config_hash_is_stable_and_tracks_values():
    a, b = load_config(), load_config()
    assert config_hash(a) == config_hash(b)
    assert len(config_hash(a)) == 16
    changed = load_config(overrides=["training.beta=0.2"])
    assert config_hash(changed) != config_hash(a)
    assert config_hash(load_config(overrides=["training.beta=0.1"])) == config_hash(a)


def test_flatten_gives_dotted_keys():
    flat = flatten(load_config(overrides=["training.loss_type=[sigmoid,sft]"]))
    assert flat["name"] == "alignflow-smollm2"
    assert flat["training.beta"] == "0.1"
    assert flat["training.method"] == "dpo"
    assert flat["training.scaling.num_workers"] == "2"
    assert flat["training.tiny_model.hidden_size"] == "128"
    assert flat["training.loss_type"] == '["sigmoid", "sft"]'
    assert flat["registry.gate.max_nll_increase"] == "0.25"
    assert all(isinstance(v, str) for v in flat.values())
    assert not any(isinstance(v, dict) for v in flat.values())
    assert all(k == "name" or "." in k for k in flat)


# --- training: TRL's knobs under TRL's names, checked against TRL's classes ---------------------


def test_the_trl_field_table_is_the_installed_classes_fields():
    """conf/trl_fields.json against dataclasses.fields of the installed TRL: a field renamed, added, removed,
    retyped or re-defaulted by an upgrade fails here, naming it (regenerate: python -m alignflow.conf.trl_fields)."""
    from alignflow.conf import trl_fields

    drift = trl_fields.drift(trl_fields._table(), trl_fields.build_table())
    assert not drift, "conf/trl_fields.json is not the installed TRL's:\n" + "\n".join(drift)


def test_a_renamed_field_is_drift():
    from alignflow.conf import trl_fields

    table = trl_fields._table()
    renamed = {**table, "classes": {**table["classes"], "dpo": [dict(r) for r in table["classes"]["dpo"]]}}
    next(r for r in renamed["classes"]["dpo"] if r["name"] == "beta")["name"] = "kl_beta"
    assert trl_fields.drift(table, renamed)[:2] == ["DPOConfig.beta: gone from TRL", "DPOConfig.kl_beta: new in TRL"]


def test_field_types_read_back_as_pydantic_takes_them():
    from alignflow.conf import trl_fields

    dpo = trl_fields.fields("dpo")
    assert dpo["beta"].annotation is float and dpo["beta"].default == 0.1
    assert dpo["loss_type"].source == "list[str]" and trl_fields.fields("model")["lora_target_modules"].default is None
    for annotation in (int | None, list[str] | None, dict[str, float], typing.Literal["a", "b"], typing.Any):
        assert trl_fields.decode(trl_fields.encode(annotation)) == annotation


@pytest.mark.parametrize(
    ("overrides", "key", "says"),
    [
        (["training.loss_weights=[1.0, 0.5]"], "training.loss_weights", "DPOConfig rejects it"),
        (["training.lr_scheduler_type=bogus"], "training.lr_scheduler_type", "DPOConfig rejects it"),
        (["training.sft.lr_scheduler_type=bogus"], "training.sft.lr_scheduler_type", "SFTConfig rejects it"),
        (
            [
                "training.use_peft=true",
                "training.scaling.use_gpu=true",
                "training.load_in_4bit=true",
                "training.load_in_8bit=true",
            ],
            "training.load_in_8bit",
            "ModelConfig rejects it",
        ),
        (["training.max_length=abc"], "training.max_length", "DPOConfig.max_length is int | None"),
        (["training.report_to=[mlflow]"], "training.report_to", "set by alignflow"),
        (["training.sft.learning_rat=0.1"], "training.sft.learning_rat", "unknown key"),
        (["training.lora_r=4.5"], "training.lora_r", "ModelConfig.lora_r is int"),
    ],
)
def test_trl_knob_errors_name_the_key(overrides, key, says):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=overrides)
    assert f"  {key}: " in str(info.value) and says in str(info.value)


def test_a_knob_is_the_profiles_else_the_embedded_profiles_else_trls():
    training = load_config(REPO / "conf" / "recipes" / "dpo.yaml").training
    assert training.knob("learning_rate", float) == 1e-4  # the recipe's
    assert training.knob("per_device_train_batch_size", int) == 4 and training.knob("max_length", int) == 256
    assert "max_grad_norm" not in training.knobs and training.knob("max_grad_norm", float) == 1.0  # TRL's
    with pytest.raises(TypeError, match="training.beta"):
        training.knob("beta", str)
    # alignflow's values for the knobs are KNOBS (conf/training.py); the embedded profile lists the same values.
    embedded = load_config().training
    assert TrainingConfig().knobs == embedded.knobs and TrainingConfig().sft.knobs == embedded.sft.knobs


def test_a_knob_of_another_method_is_kept_and_not_passed():
    training = load_config(overrides=["training.method=orpo", "training.precompute_ref_log_probs=true"]).training
    assert training.ignored()["precompute_ref_log_probs"] is True
    assert "precompute_ref_log_probs" not in training.trl_kwargs() and training.trl_kwargs()["beta"] == 0.1


def test_the_sft_stage_shares_the_knobs_sft_config_declares_with_the_same_type():
    training = load_config(overrides=["training.sft.enabled=true", "training.max_length=200"]).training
    sft = training.sft_kwargs()
    assert sft["max_length"] == 200 and sft["per_device_train_batch_size"] == 4 and sft["seed"] == 42
    assert sft["num_train_epochs"] == 1.0 and sft["learning_rate"] == 2e-4  # training.sft's own
    assert "loss_type" not in sft  # DPO's list of preference losses is not SFTConfig's loss_type


# --- the CLI: a config error exits 2, fast, before anything heavy is imported -------------------


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["ALIGNFLOW_HOME"] = str(tmp_path / "home")
    env["COLUMNS"] = "200"  # keep rich from wrapping the key path
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.mark.parametrize(
    ("override", "key"),
    [("training.beta=abc", "training.beta"), ("training.betaa=0.1", "training.betaa"), ("nosuch.key=1", "nosuch")],
)
def test_cli_config_error_exits_2(tmp_path, override, key):
    exe = str(ALIGNFLOW) if ALIGNFLOW.exists() else None
    cmd = [exe, "run", override] if exe else [sys.executable, "-m", "alignflow.flows.cli", "run", override]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=10)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert key in proc.stdout + proc.stderr
    assert "config error" in proc.stdout + proc.stderr
    assert not (tmp_path / "home").exists()


def test_cli_config_error_imports_nothing_heavy(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "alignflow.flows.cli", "run", "training.beta=abc"],
        cwd=REPO,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert proc.returncode == 2, proc.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "alignflow.conf.loader" in imported  # the importtime output was parsed
    top_level = {name.split(".")[0] for name in imported}
    for heavy in ("prefect", "ray", "torch", "transformers", "mlflow"):
        assert heavy not in top_level, f"{heavy} was imported on a config error"
