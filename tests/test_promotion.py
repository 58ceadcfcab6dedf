"""Gate threshold keys, champion history replay, and promotion on the local SQLite store."""

from __future__ import annotations

import pytest

from alignflow.conf.evaluation import GateConfig
from alignflow.tasks.registry import promotion


def test_gate_thresholds_name_known_metrics():
    # The gate's decisions on crafted cases: tests/test_register_stage.py.
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


@pytest.fixture
def sqlite_model(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_registered_model("m")
    for _ in range(3):
        client.create_model_version("m", str(tmp_path))
    return uri, client


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


def test_promote_and_rollback_prefect_flows(sqlite_model, prefect_harness):
    from alignflow.flows.promotion import promote_model, rollback_model

    uri, client = sqlite_model
    promote_model(name="m", version=1, reason="first", tracking_uri=uri, user="dana")
    result = promote_model(name="m", version=3, reason="from the UI", tracking_uri=uri, user="dana")
    assert result["changed"] and result["previous"] == "1" and result["flow_run"]
    assert client.get_model_version("m", "3").tags["promoted_by"] == "dana"
    assert rollback_model(name="m", reason="oops", tracking_uri=uri)["version"] == "1"
    assert [e["action"] for e in promotion.history(uri, "m")] == ["promote", "promote", "rollback"]


@pytest.fixture
def server_limits(prefect_harness):
    """alignflow's limits on the test server, removed afterwards: the server is the session's, and a slot held
    by a killed run (tests/test_train_distributed.py kills one) is freed only by a server's lease repossessor,
    which the test server does not run."""
    import asyncio

    from prefect.client.orchestration import get_client

    from alignflow.flows.limits import LIMITS, ensure_limits

    async def change(create: bool) -> None:
        async with get_client() as client:
            if create:
                await ensure_limits(client)
            else:
                for tag in LIMITS:
                    await client.delete_concurrency_limit_by_tag(tag)

    asyncio.run(change(True))
    yield
    asyncio.run(change(False))


def test_promotions_from_flows_on_a_server_queue_for_one_slot(sqlite_model, server_limits, monkeypatch):
    """The `alignflow-promotion` limit (flows/limits.py): four promote-model runs started together take their turn
    in Prefect, so none of them finds MLflow's lock held (a contended lock is an error in Postgres's log)."""
    import threading
    import time

    from alignflow.flows.promotion import promote_model

    uri, client = sqlite_model
    windows, held = [], []
    promote, lookup, move = promotion.promote, promotion.registered_model, promotion._move_alias

    def timed_promote(*args, **kwargs):
        started = time.monotonic()
        try:
            return promote(*args, **kwargs)
        finally:
            windows.append((started, time.monotonic()))

    def looked_up(client, name):
        found = lookup(client, name)
        if found is not None and name.endswith(promotion.LOCK_SUFFIX):
            held.append(found.description)
        return found

    def slow_move(*args):  # a busy tracking server: the lock is held long enough for the others to find it
        time.sleep(1.5)
        move(*args)

    monkeypatch.setattr(promotion, "promote", timed_promote)
    monkeypatch.setattr(promotion, "_move_alias", slow_move)
    monkeypatch.setattr(promotion, "registered_model", looked_up)
    start = threading.Barrier(4)
    results, errors = [], []

    def trigger(version: int) -> None:
        start.wait()
        try:
            results.append(promote_model(name="m", version=version, reason=f"v{version}", tracking_uri=uri))
        except Exception as exc:  # reported below: a thread's exception would otherwise be lost
            errors.append(exc)

    threads = [threading.Thread(target=trigger, args=(v,)) for v in (1, 2, 3, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and len(results) == 4
    windows.sort()
    assert len(windows) == 4 and all(end <= later for (_, end), (later, _) in zip(windows, windows[1:]))
    assert held == []
    events = promotion.history(uri, "m")
    assert events[-1]["version"] == promotion.champion_version(client, "m")
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


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
