"""The Prefect concurrency limits alignflow declares, and how a server gets them.

`alignflow-train` is a task-tag limit of 1 on the `train` task: whatever deployment (or
`alignflow run` against the same server) starts it, one training runs at a time. Two
trainings of the same content would otherwise share one content-named Ray run directory,
and on a cluster they would fight over the same GPUs.

`alignflow-promotion` is a task-tag limit of 1 on `champion-change`, the task through which
the promote-model and rollback-model flows and the register task's gate move a model's
aliases. MLflow's promotion lock (tasks/registry/promotion.py) still guarantees the order
on its own, also for the CLI; but when two contenders really race for it, both try to
create it and the loser's clash is an error in the tracking database's log. Queued here
first, runs that share a server never contend for the MLflow lock.

Runs wait for a slot in Pending; without the limits on the server (the embedded default's
temporary API) the tags do nothing. A slot is a lease the running task renews: when its
process dies, the server's repossessor frees the slot once the lease (60 s) runs out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

TRAIN_LIMIT_TAG = "alignflow-train"
PROMOTION_LIMIT_TAG = "alignflow-promotion"
LIMITS = {TRAIN_LIMIT_TAG: 1, PROMOTION_LIMIT_TAG: 1}

T = TypeVar("T")


async def ensure_limits(client) -> None:
    """Create (or reset) the limits on the server `client` talks to; idempotent."""
    for tag, limit in LIMITS.items():
        await client.create_concurrency_limit(tag=tag, concurrency_limit=limit)


@task(name="champion-change", cache_policy=NO_CACHE, tags=[PROMOTION_LIMIT_TAG])
def champion_change(change: Callable[[], T]) -> T:
    """Run `change` (a promotion, a rollback, the gate's tags and aliases) in the server's one promotion slot."""
    return change()
