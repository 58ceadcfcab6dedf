"""Gate threshold keys, champion history replay, and promotion on the local SQLite store."""

from __future__ import annotations

import pytest

from alignflow.conf.evaluation import GateConfig
from alignflow.tasks.registry import promotion


def test_gate_thresholds_name_known_metrics():
    # The gate's decisions on crafted cases: tests/unit/test_register_stage.py.
    assert GateConfig(thresholds={"win_rate_lc": 0.5, "preference_accuracy": 0.5}).thresholds["win_rate_lc"] == 0.5
    with pytest.raises(ValueError, match="unknown metric"):
        GateConfig(thresholds={"accuracy": 0.5})


def test_history_replay_gives_the_previous_champion():
    events = [
        {"action": "gate", "version": "1"},
        {"action": "gate", "version": "2"},
        {"action": "promote", "version": "3"},
        {"action": "rollback", "version": "2"},
    ]
    assert promotion.champion_stack(events) == ["1", "2"]
    assert promotion.champion_stack([*events, {"action": "rollback", "version": "1"}]) == ["1"]
    assert promotion.champion_stack([*events, {"action": "promote", "version": "4"}]) == ["1", "2", "4"]


def test_promote_and_rollback_on_sqlite(sqlite_model, monkeypatch):
    uri, client = sqlite_model
    monkeypatch.setenv("ALIGNFLOW_USER", "carol")
    with pytest.raises(promotion.PromotionRefused, match="reason"):
        promotion.promote(uri, "m", "1", "  ")
    promotion.promote(uri, "m", "1", "first")
    assert promotion.promote(uri, "m", "1", "again")["changed"] is False
    with pytest.raises(promotion.PromotionRefused, match="champion changed"):
        promotion.promote(uri, "m", "2", "stale evaluation", source="gate", expected_champion=None)
    promotion.promote(uri, "m", "2", "second", expected_champion="1")
    promotion.promote(uri, "m", "3", "third")
    assert promotion.rollback(uri, "m", "bad")["version"] == "2"
    assert promotion.rollback(uri, "m")["version"] == "1"
    with pytest.raises(promotion.PromotionRefused, match="nothing to roll back"):
        promotion.rollback(uri, "m")
    assert [e["version"] for e in promotion.history(uri, "m")] == ["1", "2", "3", "2", "1"]
    listed = promotion.versions(uri, "m")
    assert [v["version"] for v in listed] == ["3", "2", "1"] and listed[2]["aliases"] == ["champion"]
    assert client.get_model_version("m", "3").tags["rolled_back_by"] == "carol"


def test_promotion_lock_times_out_and_breaks_stale_locks(sqlite_model):
    uri, client = sqlite_model
    client.create_registered_model(f"m{promotion.LOCK_SUFFIX}", description="someone else")
    with (
        pytest.raises(promotion.PromotionRefused, match="holds the lock"),
        promotion.promotion_lock(client, "m", timeout=0.3),
    ):
        pass
    with promotion.promotion_lock(client, "m", timeout=5, stale_after=0):  # the holder died: broken
        assert "someone else" not in (client.get_registered_model(f"m{promotion.LOCK_SUFFIX}").description or "")
    assert not client.search_registered_models(f"name = 'm{promotion.LOCK_SUFFIX}'")


def test_a_lock_released_while_it_is_taken_is_taken_again(sqlite_model, monkeypatch):
    """Seen on a busy server: the create clashes with the holder's lock, the holder releases it, and MLflow's
    store, reading the model it clashed with, answers RESOURCE_DOES_NOT_EXIST. That is a free lock."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    uri, client = sqlite_model
    create = client.create_registered_model
    clashes = []

    def create_after_a_clash(name, **kwargs):
        if not clashes:
            clashes.append(name)
            raise MlflowException(f"Registered Model with name={name} not found", RESOURCE_DOES_NOT_EXIST)
        return create(name, **kwargs)

    monkeypatch.setattr(client, "create_registered_model", create_after_a_clash)
    with promotion.promotion_lock(client, "m", timeout=5):
        assert client.get_registered_model(f"m{promotion.LOCK_SUFFIX}")
    assert clashes == [f"m{promotion.LOCK_SUFFIX}"]


def test_the_gate_refused_because_the_champion_moved_tags_the_version_not_promoted(sqlite_model, tmp_path):
    from alignflow.flows.runbook import RunBook
    from alignflow.flows.stages import _label_and_promote

    uri, client = sqlite_model
    promotion.promote(uri, "m", "1", "someone promoted while version 3 was evaluated")
    book = RunBook(uri, "run", {}, "prefix", tmp_path)
    tags = {"gate.outcome": "promoted", "gate.reason": "win rate cleared 0.5"}
    written = _label_and_promote(book, "m", "3", tags, promote=True, expected=None)
    assert written["gate.outcome"] == "not promoted" and "champion changed" in written["gate.reason"]
    assert client.get_model_version("m", "3").tags["gate.outcome"] == "not promoted"
    assert promotion.champion_version(client, "m") == "1"
    assert str(client.get_model_version_by_alias("m", promotion.CHALLENGER).version) == "3"
    assert tags["gate.outcome"] == "promoted"  # the caller's dict is not changed behind its back
