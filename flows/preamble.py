"""What the alignment and comparison flows do before they train: one preamble, written once.

The state directory, the run key, the base model, the champion to beat (its model doubles as the
generator's with `registry:champion`), the validated data, and where the checkpoints go. The two
flows differ only after this, so a change here (a new input to the data stages, another storage
rule) reaches both.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prefect.runtime import flow_run

from alignflow.conf.schema import PipelineConfig
from alignflow.flows.data import PreparedData, prepare_data
from alignflow.flows.stages import Champion, base_model, champion
from alignflow.tasks.registry.base_guard import check_champion_base
from alignflow.tasks.runtime.state import Ref, configure_environment, tracking_uri


class StageClock:
    """Wall seconds per stage, for the summary and MLflow (`seconds/<stage>`)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.perf_counter() - started, 1)


@dataclass(frozen=True)
class Preamble:
    """A flow run's footing: where its state is, what it starts from and trains on, where it checkpoints."""

    root: Path  # the state directory (runtime.home)
    run_key: str  # the flow run's id, short: names this run's scratch folders (the champion's copy, curves)
    opponent: Champion | None  # the registered model's champion, None before the first one
    data: PreparedData  # generated (or imported) pairs, validated and split
    storage: str  # Ray Train's storage_path: training.storage, else the state directory's ray/

    @property
    def base(self) -> Ref:
        return self.data.base


def preamble(config: PipelineConfig, clock: StageClock) -> Preamble:
    """Environment, base model, champion and data, each stage timed on `clock` (base_model, champion, data).

    Raises ForeignChampion (tasks/registry/base_guard.py) when the registered model's champion was trained from
    another base model, and GateFailed (flows/data.py) when the data does not pass validation: nothing trains then."""
    root = configure_environment(config)
    # Another base model's champion stops the run here, before the base model is built or anything trains
    # (the CLI checked already; a deployment run has only this check).
    check_champion_base(config)
    run_key = (flow_run.id or "local")[:8]  # "local": a flow called outside a Prefect run (tests)
    with clock("base_model"):
        base = base_model(config.training, root / "models")
    with clock("champion"):
        opponent = champion(config.registry, tracking_uri(config), root / "champions" / run_key)
    with clock("data"):
        data = prepare_data(config, root, base, opponent.model if opponent else None)
    return Preamble(root, run_key, opponent, data, config.training.storage or str(root / "ray"))
