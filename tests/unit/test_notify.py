"""Notifications (issue 30): the webhook URL is a secret the config only points at, and the gate's outcome
(promoted, not promoted) is a message carrying the win rate's interval and the model version's link."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import prefect.main  # noqa: F401 (Prefect sets up logging on first import, dropping caplog's root handler)
import pytest
from webhook_receiver import webhook_receiver

from alignflow.conf.loader import ConfigError, flatten, load_config
from alignflow.flows import webhook as webhooks
from alignflow.flows.notify import OutcomeMessage, notify_outcome, outcome_message, send
from alignflow.flows.webhook import DeliveryFailed, Webhook, WebhookUnavailable, post, resolve_webhook
from alignflow.tasks.registry.gate import GateDecision
from alignflow.tasks.registry.tracking import config_yaml

URL = "https://hooks.example.com/services/T0001/B0002/secretpart"
VARIABLE = "ALIGNFLOW_TEST_NOTIFY_URL"


def _error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=list(overrides))
    return str(caught.value)


# --- the config names where the URL is kept, never the URL ---


def test_the_webhook_is_named_by_variable_or_secret_block():
    by_env = load_config(overrides=[f"runtime.notify_webhook_env={VARIABLE}"]).runtime
    by_block = load_config(overrides=["runtime.notify_webhook_block=team-webhook"]).runtime
    assert by_env.webhook_source() == f"${VARIABLE}"
    assert by_block.webhook_source() == "Prefect Secret block 'team-webhook'"
    assert load_config().runtime.webhook_source() is None
    assert load_config().runtime.notify_on == ["failed", "crashed", "promoted", "not_promoted"]


def test_a_plain_webhook_url_is_refused_naming_what_to_set_instead():
    message = _error(f"runtime.notify_webhook={URL}")
    assert "runtime.notify_webhook:" in message
    assert "runtime.notify_webhook_env" in message and "runtime.notify_webhook_block" in message
    assert URL not in message and "secretpart" not in message


def test_a_plain_webhook_url_in_a_profile_is_refused(tmp_path):
    profile = tmp_path / "team.yaml"
    profile.write_text(f"runtime:\n  notify_webhook: {URL}\n")
    with pytest.raises(ConfigError, match="runtime.notify_webhook_env") as caught:
        load_config(profile)
    assert "secretpart" not in str(caught.value)


def test_the_former_key_set_to_null_still_loads():
    # Profiles written before the change carry `notify_webhook: null`: nothing to protect, nothing to refuse.
    assert load_config(overrides=["runtime.notify_webhook=null"]).runtime.webhook_source() is None


@pytest.mark.parametrize("key", ["notify_webhook_env", "notify_webhook_block"])
def test_a_url_pasted_where_a_name_belongs_is_refused_without_echoing_it(key):
    message = _error(f"runtime.{key}={URL}")
    assert f"runtime.{key} must be the" in message and "secretpart" not in message


def test_variable_and_block_together_are_refused():
    assert "set one, not both" in _error(f"runtime.notify_webhook_env={VARIABLE}", "runtime.notify_webhook_block=b")


def test_notify_on_takes_only_the_four_outcomes():
    assert load_config(overrides=["runtime.notify_on=[failed]"]).runtime.notify_on == ["failed"]
    assert "runtime.notify_on" in _error("runtime.notify_on=[succeeded]")


def test_the_url_is_in_neither_the_mlflow_params_nor_resolved_yaml(monkeypatch):
    monkeypatch.setenv(VARIABLE, URL)
    config = load_config(overrides=[f"runtime.notify_webhook_env={VARIABLE}"])
    params, resolved = flatten(config), config_yaml(config)
    assert params["runtime.notify_webhook_env"] == VARIABLE and f"notify_webhook_env: {VARIABLE}" in resolved
    assert not any("secretpart" in f"{k}={v}" for k, v in params.items()) and "secretpart" not in resolved


# --- the URL is read at send time, and never shown ---


def test_the_url_is_read_from_the_variable_when_sent(monkeypatch):
    runtime = load_config(overrides=[f"runtime.notify_webhook_env={VARIABLE}"]).runtime
    monkeypatch.delenv(VARIABLE, raising=False)
    with pytest.raises(WebhookUnavailable, match=f"{VARIABLE} is not set"):
        resolve_webhook(runtime)
    monkeypatch.setenv(VARIABLE, f" {URL}\n")
    hook = resolve_webhook(runtime)
    assert hook is not None and hook.url == URL and hook.source == f"${VARIABLE}"
    assert "secretpart" not in repr(hook) and "secretpart" not in str(hook)


def test_a_variable_holding_no_url_is_said_without_its_value(monkeypatch):
    runtime = load_config(overrides=[f"runtime.notify_webhook_env={VARIABLE}"]).runtime
    monkeypatch.setenv(VARIABLE, "xoxb-not-a-url-secretpart")
    with pytest.raises(WebhookUnavailable) as caught:
        resolve_webhook(runtime)
    assert "does not hold an http(s) URL" in str(caught.value) and "secretpart" not in str(caught.value)


def test_the_url_is_read_from_the_secret_block_when_sent(monkeypatch):
    runtime = load_config(overrides=["runtime.notify_webhook_block=team-webhook"]).runtime
    loaded: list[str] = []
    monkeypatch.setattr(webhooks, "_from_block", lambda name: loaded.append(name) or URL)
    hook = resolve_webhook(runtime)
    assert hook is not None and hook.url == URL and loaded == ["team-webhook"]

    def missing(name: str) -> str:
        raise ValueError(f"Unable to find block document named {name}")

    monkeypatch.setattr(webhooks, "_from_block", missing)
    with pytest.raises(WebhookUnavailable, match="cannot load Prefect Secret block 'team-webhook': ValueError"):
        resolve_webhook(runtime)


def test_delivery_errors_never_carry_the_url():
    with webhook_receiver("/services/secretpart") as (url, received, behaviour):
        behaviour["status"] = 404
        with pytest.raises(DeliveryFailed, match=r"\$V: HTTP 404") as caught:
            post(Webhook(source="$V", url=url), {"text": "x"})
        assert "secretpart" not in str(caught.value) and received == [{"text": "x"}]
        behaviour.update(fail=1, status=204)
        post(Webhook(source="$V", url=url), {"text": "again"}, attempts=2)  # a 503, then delivered
        assert received[-1] == {"text": "again"}
    # Nothing listens on port 9 (discard): requests' own message would name the host, port and path.
    with pytest.raises(DeliveryFailed, match=r"ConnectionError after 1 attempts") as caught:
        post(Webhook(source="$V", url="http://127.0.0.1:9/services/secretpart"), {"text": "x"}, attempts=1)
    assert "secretpart" not in str(caught.value) and "127.0.0.1" not in str(caught.value)


# --- the gate's outcome as a message ---


def _registration(promoted: bool = False) -> SimpleNamespace:
    decision = GateDecision(
        passed=promoted,
        reason="lower bound 0.290 of the win rate's 95% interval is not above 0.50",
        rule="promote when ...",
        against="base",
        estimate=0.4167,
        low=0.29,
        high=0.5417,
        n_prompts=12,
        n_pairs=48,
    )
    return SimpleNamespace(model="team-model", version="3", promoted=promoted, decision=decision)


def test_a_not_promoted_message_carries_the_interval_n_reason_and_version_link():
    config = load_config(overrides=["name=nightly"])
    link = "http://mlflow.example:5000/#/models/team-model/versions/3"
    body = outcome_message(config, _registration(), "run123", link).body()
    assert body["event"] == "alignflow.model.not-promoted" and body["promoted"] is False
    assert (body["win_rate"], body["win_rate_low"], body["win_rate_high"], body["n_prompts"]) == (
        0.4167,
        0.29,
        0.5417,
        12,
    )
    assert body["mlflow_version_url"] == link and body["model_version"] == "3" and body["mlflow_run_id"] == "run123"
    text = body["text"]
    assert "team-model v3 NOT PROMOTED" in text and "0.417 [0.290, 0.542]" in text and "n=12 prompts" in text
    assert "against base" in text and "lower bound 0.290" in text and f"MLflow: {link}" in text


def test_a_promoted_message_without_a_ui_names_the_version_by_its_registry_uri():
    body = outcome_message(load_config(), _registration(promoted=True), "run123", None).body()
    assert body["event"] == "alignflow.model.promoted" and "PROMOTED to champion" in body["text"]
    assert body["mlflow_version_url"] == "models:/team-model/3" and "MLflow: models:/team-model/3" in body["text"]


def test_outcomes_not_in_notify_on_send_nothing(monkeypatch):
    monkeypatch.setenv(VARIABLE, URL)
    config = load_config(overrides=[f"runtime.notify_webhook_env={VARIABLE}", "runtime.notify_on=[failed, crashed]"])
    assert send(config, "not_promoted", {"text": "x"}, logging.getLogger("test")) is False  # nothing posted


def test_an_outcome_is_sent_once_and_logged_by_where_the_url_is_kept(monkeypatch, caplog):
    with webhook_receiver("/services/secretpart") as (url, received, _):
        monkeypatch.setenv(VARIABLE, url)
        config = load_config(overrides=[f"runtime.notify_webhook_env={VARIABLE}"])
        with caplog.at_level(logging.INFO):
            assert notify_outcome(config, _registration(), "run123", None) is True
    [message] = received
    assert message["event"] == "alignflow.model.not-promoted" and "[0.290, 0.542]" in message["text"]
    assert f"sent to the webhook in ${VARIABLE}" in caplog.text and "secretpart" not in caplog.text


def test_a_notification_that_cannot_be_sent_never_fails_the_run(monkeypatch, caplog):
    monkeypatch.delenv(VARIABLE, raising=False)
    config = load_config(overrides=[f"runtime.notify_webhook_env={VARIABLE}"])
    with caplog.at_level(logging.INFO):
        assert notify_outcome(config, _registration(), "run123", None) is False  # the variable is not set
        assert notify_outcome(config, SimpleNamespace(model="m"), "run123", None) is False  # a broken outcome
    assert f"{VARIABLE} is not set on this worker" in caplog.text and "cannot build it" in caplog.text
    assert load_config().runtime.webhook_source() is None
    assert notify_outcome(load_config(), _registration(), "run123", None) is False  # no webhook: nothing to do


def test_the_message_model_is_the_payloads_fields():
    fields = set(OutcomeMessage.model_fields)
    assert {"win_rate_low", "win_rate_high", "n_prompts", "mlflow_version_url", "reason"} <= fields
