"""The Prefect concurrency limits alignflow declares, and how a server gets them.

`alignflow-train` is a task-tag limit of 1 on the `train` task: whatever deployment (or
`alignflow run` against the same server) starts it, one training runs at a time. Two
trainings of the same content would otherwise share one content-named Ray run directory,
and on a cluster they would fight over the same GPUs. Runs wait for the slot in Pending;
without the limit on the server (the embedded default's temporary API) the tag does nothing.
"""

from __future__ import annotations

TRAIN_LIMIT_TAG = "alignflow-train"
TRAIN_LIMIT = 1


async def ensure_limits(client) -> None:
    """Create (or reset) the train limit on the server `client` talks to; idempotent."""
    await client.create_concurrency_limit(tag=TRAIN_LIMIT_TAG, concurrency_limit=TRAIN_LIMIT)
