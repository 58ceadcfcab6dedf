"""The generation section: generators and judges as YAML reads them, and errors that name the key."""

from __future__ import annotations

import pytest

from alignflow.conf.loader import ConfigError, flatten, load_config


def test_judge_shorthand_and_mapping():
    assert load_config(overrides=["generation.judge=offline"]).generation.judge.kind == "offline"
    judge = load_config(
        overrides=[
            "generation.judge={kind: ultrafeedback, aspect: honesty, llm: {provider: openai, model: gpt-4o-mini, "
            "api_key_env: OPENAI_API_KEY, temperature: 0}}"
        ]
    ).generation.judge
    assert (judge.kind, judge.aspect, judge.llm.model, judge.llm.temperature) == (
        "ultrafeedback",
        "honesty",
        "gpt-4o-mini",
        0,
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("generation.judge=ultrafeedback", "needs judge.llm"),
        ("generation.judge={kind: offline, aspect: style}", "generation.judge.aspect"),
        ("generation.generators=[{base_url: 'http://127.0.0.1:8000/v1'}, {}]", "base_url: only for provider: openai"),
        ("generation.generators=[{provider: openai, model: m, base_url: 'ftp://x'}, {}]", "http:// or https://"),
        ("generation.generators=[{provider: openai, model: m, base_url: 'https://u:p@h/v1'}, {}]", "credentials"),
        ("generation.generators=[{provider: tgi}, {}]", "generation.generators.0.provider"),
        ("generation.binarization=random", "generation.binarization"),
        ("generation.min_success_rate=1.5", "generation.min_success_rate"),
    ],
)
def test_bad_generation_settings_name_the_key(override, message):
    with pytest.raises(ConfigError, match="generation") as info:
        load_config(overrides=[override])
    assert message in str(info.value)


def test_a_key_pasted_as_api_key_env_is_refused_without_echoing_it(tmp_path):
    secret = "sk-proj-abcdefghijklmnop1234567890"
    profile = tmp_path / "p.yaml"
    profile.write_text(
        "generation:\n  generators:\n"
        f"    - {{provider: openai, model: m, api_key_env: {secret}}}\n"
        "    - {provider: openai, model: m}\n"
    )
    with pytest.raises(ConfigError, match="api_key_env must be the NAME") as info:
        load_config(profile)
    assert secret not in str(info.value)


def test_params_hold_the_key_variable_name_only():
    cfg = load_config(
        overrides=["generation.generators=[{provider: openai, model: m, api_key_env: MY_KEY, num_generations: 2}]"]
    )
    params = flatten(cfg)
    assert params["generation.generators"].count('"api_key_env": "MY_KEY"') == 1
    assert not any(k.endswith("api_key") for k in params)


def test_bring_your_own_data_needs_no_generators():
    cfg = load_config(
        overrides=["generation.preference_data=pairs.jsonl", "generation.generators=[{num_generations: 1}]"]
    )
    assert cfg.generation.preference_data == "pairs.jsonl"


def test_cli_exits_2_naming_the_key_when_an_endpoint_key_variable_is_unset(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "ALIGNFLOW_TEST_UNSET_KEY"}
    env.update(ALIGNFLOW_HOME=str(tmp_path / "home"), COLUMNS="200")
    override = "generation.judge={kind: ultrafeedback, llm: {provider: openai, model: m, api_key_env: ALIGNFLOW_TEST_UNSET_KEY}}"
    proc = subprocess.run(
        [sys.executable, "-m", "alignflow.flows.cli", "run", override],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "generation.judge.llm.api_key_env" in proc.stderr and "ALIGNFLOW_TEST_UNSET_KEY" in proc.stderr
    assert not (tmp_path / "home").exists()  # nothing started


@pytest.mark.parametrize(
    ("override", "key"),
    [
        # No model given: the default is the champion, which an endpoint cannot be asked for either.
        ("generation.generators=[{provider: openai, base_url: 'http://127.0.0.1:8000/v1'}, {}]", "generators.0.model"),
        ("generation.generators=[{}, {provider: openai, model: registry:champion}]", "generators.1.model"),
        ("generation.judge={kind: ultrafeedback, llm: {provider: openai}}", "generation.judge.llm.model"),
    ],
)
def test_the_champion_on_an_endpoint_is_refused_naming_the_key_and_the_export(override, key):
    from typer.testing import CliRunner

    from alignflow.flows.cli import app

    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    message = " ".join(str(info.value).split())
    assert f"generation.{key.removeprefix('generation.')}: " in message
    assert "serves whatever model its server loaded" in message and "alignflow export NAME@champion DIR" in message
    # `alignflow run` stops there: exit 2, before anything starts.
    result = CliRunner().invoke(app, ["run", override], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "alignflow export NAME@champion DIR" in " ".join(result.output.split())
    # A local generator keeps the champion (the embedded default's on-policy data); an endpoint names its model.
    assert load_config(overrides=["generation.generators=[{model: registry:champion}, {}]"])
    assert load_config(overrides=["generation.generators=[{provider: openai, model: served-champion}, {}]"])
