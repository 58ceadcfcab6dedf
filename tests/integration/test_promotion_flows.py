"""Promotion and rollback as Prefect flows (the UI buttons), and champion changes queued in the server's one slot."""

from __future__ import annotations

import pytest

from alignflow.tasks.registry import promotion


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
    by a killed run (tests/integration/test_train_distributed.py kills one) is freed only by a server's lease repossessor,
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
    # Prefect remembers for 5 s, per process, that a tag had no limit (`_no_limits_cache`): the test before this
    # one ran champion-change on a server without limits, and runs started within those 5 s would skip the slot.
    # A server that `alignflow serve` set up has its limits before the first run, so only tests meet this.
    from prefect.concurrency import services

    services._no_limits_cache.clear()
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
