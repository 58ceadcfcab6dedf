"""distilabel's Pipeline and RayPipeline with their per-batch bookkeeping made cheap.

After every batch a step returns, distilabel's main loop saves its state so that a crashed run
resumes (`_cache`). Each save recomputed the pipeline's two signatures (a dump and hash of
every step and LLM) several times over and rewrote the whole pipeline definition: about a
second of CPU per batch on a busy 2-core machine, 90% of the stage's main process in a
profile (BENCHMARKS.md). Here the cache location is computed once per run (the steps do not
change while it runs) and the definition is written once; the batch manager's state is
still saved after every batch, so a crashed run resumes exactly as before.

Also: distilabel's two polls are shortened (_ShortPolls), and its log listener is stopped with a
bounded wait (_stop_logging).
"""

from __future__ import annotations

import logging
from typing import Any

import distilabel.pipeline.base
import distilabel.pipeline.local
import distilabel.pipeline.ray
from distilabel.pipeline import Pipeline, RayPipeline

POLL_S = 0.05


class _ShortPolls:
    """distilabel's base.py `time`, with shorter sleeps: it polls for loaded steps every 2.5 s and
    for finished ones every 0.5 s (its only two sleeps), so start-up and shutdown took whole
    multiples of those."""

    def __getattr__(self, name: str) -> Any:
        import time

        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        import time

        time.sleep(min(seconds, POLL_S))


distilabel.pipeline.base.time = _ShortPolls()

STOP_LOGGING_WAIT_S = 10.0


def _stop_logging() -> None:
    """distilabel's stop_logging, with a bounded wait: its log listener reads one pipe that every step
    process writes to, and a step process ended in the middle of a record (the pool's teardown
    terminates them) leaves half a message there: the listener then waits for the rest for ever,
    after the run's data is complete (seen at 2,000 prompts against a fast endpoint)."""
    import distilabel.utils.logging as distilabel_logging

    listener = distilabel_logging.queue_listener
    distilabel_logging.queue_listener = None
    if listener is None or listener._thread is None:
        return
    listener.enqueue_sentinel()
    listener._thread.join(STOP_LOGGING_WAIT_S)
    if listener._thread.is_alive():
        logging.getLogger("alignflow").warning("distilabel's log listener did not stop; its last lines may be missing")
    listener._thread = None


for _module in (distilabel.pipeline.base, distilabel.pipeline.local, distilabel.pipeline.ray):
    _module.stop_logging = _stop_logging


class _CheapBookkeeping:
    _frozen_location: dict | None = None
    _definition_written = False

    def _set_runtime_parameters(self, parameters: dict[str, Any]) -> None:
        # run() sets the runtime parameters first: the signatures are final from here on.
        super()._set_runtime_parameters(parameters)  # type: ignore[misc]
        self._frozen_location = dict(super()._cache_location)  # type: ignore[misc]
        self._definition_written = False

    @property
    def _cache_location(self) -> dict:
        return self._frozen_location or super()._cache_location  # type: ignore[misc]

    def _cache(self) -> None:
        if self._dry_run:  # type: ignore[attr-defined]
            return
        location = self._cache_location
        if not self._definition_written:
            self.save(path=location["pipeline"], format="yaml")  # type: ignore[attr-defined]
            self._definition_written = True
        if self._batch_manager is not None:  # type: ignore[attr-defined]
            self._batch_manager.cache(  # type: ignore[attr-defined]
                path=location["batch_manager"], steps_data_path=location["steps_data"]
            )
        self._save_stages_status()  # type: ignore[attr-defined]


class StagePipeline(_CheapBookkeeping, Pipeline):
    """distilabel's local Pipeline (a process per step), with cheap per-batch bookkeeping."""

    def ray(self, ray_head_node_url: str | None = None, ray_init_kwargs: dict | None = None) -> StageRayPipeline:
        pipeline = StageRayPipeline(
            name=self.name,
            description=self.description,
            cache_dir=self._cache_dir,
            enable_metadata=self._enable_metadata,
            requirements=self.requirements,
            ray_head_node_url=ray_head_node_url,
            ray_init_kwargs=ray_init_kwargs,
        )
        pipeline.dag = self.dag
        return pipeline


class StageRayPipeline(_CheapBookkeeping, RayPipeline):
    """distilabel's RayPipeline (a Ray actor per step), with cheap per-batch bookkeeping."""
