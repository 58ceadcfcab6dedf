"""A credential passed by mistake as an override is never printed back."""

from __future__ import annotations

import pytest

from alignflow.conf.loader import ConfigError, load_config, shown_override

KEY = "sk-abcdef1234567890abcdef"


@pytest.mark.parametrize(
    "override",
    [
        f"generation.judge.llm.api_key_env={KEY}",
        f"generation.judge={{kind: ultrafeedback, llm: {{provider: openai, api_key_env: {KEY}}}}}",
        f"generation.generators=[{{provider: openai, model: m, api_key_env: {KEY}}}]",
        f"runtime.notify_webhook={KEY}",
        f"runtime.notify_webhook_env={KEY}",
        f"training.betaa={KEY}",
    ],
)
def test_a_secret_looking_override_is_masked_in_every_error(override):
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=[override])
    assert KEY not in str(caught.value) and "***" in str(caught.value)


WEBHOOK = "https://hooks.slack.com/services/T0001/B0002/abcdefSECRETpart"


@pytest.mark.parametrize(
    "override",
    [
        f"runtime.notify_webhook={WEBHOOK}",
        f"runtime.notify_webhook_env={WEBHOOK}",
        f"runtime.notify_webhook_block={WEBHOOK}",
        f"runtime={{notify_webhook: {WEBHOOK}}}",
    ],
)
def test_a_webhook_url_override_is_masked_in_every_error(override):
    # A URL is shown in errors (a mistyped path is the usual mistake), but a webhook's URL is a credential.
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=[override])
    assert "SECRETpart" not in str(caught.value) and "hooks.slack.com" not in str(caught.value)
    assert "***" in str(caught.value)


def test_ordinary_overrides_are_shown_as_given():
    assert shown_override("training.beta=0.1") == "training.beta=0.1"
    assert shown_override("generation.prompts=data/prompts.jsonl") == "generation.prompts=data/prompts.jsonl"
    assert shown_override("generation.judge.llm.api_key_env=OPENAI_API_KEY") == (
        "generation.judge.llm.api_key_env=OPENAI_API_KEY"
    )
    assert shown_override("runtime.token=abc") == "runtime.token=***"
    assert shown_override("evaluation.max_new_tokens=12") == "evaluation.max_new_tokens=12"
    assert shown_override("runtime.notify_webhook_env=TEAM_WEBHOOK") == "runtime.notify_webhook_env=TEAM_WEBHOOK"
    assert shown_override("runtime.mlflow_ui_url=http://mlflow:5000") == "runtime.mlflow_ui_url=http://mlflow:5000"
    assert shown_override("runtime.home=/tmp/alignflow-test-abc123def456ghi789") == (
        "runtime.home=/tmp/alignflow-test-abc123def456ghi789"
    )
