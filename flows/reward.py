"""The reward-model flow: the alignment flow's data, then train -> measure -> register a reward model.

The data stages are the alignment flow's own (flows/preamble.py: base model, champion, generate, validate,
content-cached), so a reward model trained beside an alignment run reads the very pairs the policy trains on and
is measured on the pairs it held out. The reward model is the `reward_model` section (conf/reward_model.py) on the
Ray Train driver the policy uses, with TRL's RewardTrainer; it is registered under its own name, where a judge
finds it: `judge: {kind: reward_model, model: registry:<name>@champion}`.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import BaseModel

from alignflow.conf.reward_model import RewardModelConfig
from alignflow.conf.schema import PipelineConfig
from alignflow.flows.bookkeeping import open_book
from alignflow.flows.data import GateFailed
from alignflow.flows.limits import TRAIN_LIMIT_TAG
from alignflow.flows.preamble import StageClock, preamble
from alignflow.flows.runbook import RunBook
from alignflow.flows.stages import base_model, fit
from alignflow.tasks.registry.base_guard import BASE_MODEL_TAG
from alignflow.tasks.reward.accuracy import RewardAccuracy, held_out_accuracy
from alignflow.tasks.reward.register import RewardRegistration, register_reward_model
from alignflow.tasks.runtime.state import Ref
from alignflow.tasks.training.driver import TrainResult

__all__ = ["GateFailed", "RewardSummary", "reward_model"]


class RewardSummary(BaseModel):
    """What `alignflow reward-model` prints and a caller reads."""

    mlflow_run_id: str
    flow_run_id: str
    model: str
    version: str
    champion: bool
    decision: str
    accuracy: float
    accuracy_low: float
    accuracy_high: float
    n_pairs: int
    steps: int
    train_loss: float
    dataset_sha256: str
    base_model: str
    seconds: dict[str, float]

    @property
    def judge_setting(self) -> str:
        """What a profile sets to judge with this reward model."""
        return f"judge: {{kind: reward_model, model: registry:{self.model}@champion}}"


@task(name="train-reward-model", cache_policy=NO_CACHE, retries=0, tags=[TRAIN_LIMIT_TAG])
def train_reward(reward: RewardModelConfig, start: Ref, train_data: Ref, storage: str, book: RunBook) -> TrainResult:
    """RewardTrainer on Ray (the policy's driver and worker loop), in the server's one training slot."""
    return fit(reward, start, train_data, storage, book, f"{book.run_prefix}-reward")


@task(name="reward-accuracy", cache_policy=NO_CACHE)
def measure(reward: RewardModelConfig, model: Ref, test_data: Ref) -> RewardAccuracy:
    """Pairwise accuracy on the held-out split, truncated as training truncated."""
    max_length = reward.knob("max_length", object) or 1024
    return held_out_accuracy(model.path, test_data.path, reward.scaling.use_gpu, int(max_length))


@task(name="register-reward-model", cache_policy=NO_CACHE)
def register(reward: RewardModelConfig, book: RunBook, model: Ref, accuracy: RewardAccuracy) -> RewardRegistration:
    tags = {**book.tags, "model_sha256": model.sha256}
    return register_reward_model(
        book.tracking,
        book.run_id,
        reward.model_name,
        model.path,
        accuracy,
        reward.min_accuracy,
        tags,
        book.flow_run_url,
    )


@flow(name="reward-model", description="Generate, validate, train a reward model (TRL RewardTrainer on Ray), register.")
def reward_model(config: PipelineConfig) -> RewardSummary:
    """A reward model from the validated preference data, registered with its held-out accuracy."""
    clock = StageClock()
    prep = preamble(config, clock)  # the alignment flow's data stages, content-cached: the same pairs
    reward = config.reward_model
    with clock("base_model"):
        base = base_model(reward, prep.root / "models")
    lineage = {"method": reward.method, BASE_MODEL_TAG: reward.model_name_or_path, "base_model_sha256": base.sha256}
    run_name = f"{config.name}-reward-{flow_run.name or prep.run_key}"
    with open_book(config, prep.data, run_name, started_from="base", **lineage) as book:
        with clock("train"):
            trained = train_reward(reward, base, prep.data.train, reward.storage or str(prep.root / "ray"), book)
        with clock("accuracy"):
            accuracy = measure(reward, trained.model, prep.data.test)
        book.log_metrics(accuracy.metrics() | {"reward/train_loss": trained.train_loss, "reward/steps": trained.steps})
        with clock("register"):
            outcome = register(reward, book, trained.model, accuracy)
        book.log_metrics({f"seconds/{k}": v for k, v in clock.seconds.items()})
    return RewardSummary(
        mlflow_run_id=book.run_id,
        flow_run_id=str(flow_run.id),
        model=outcome.model,
        version=outcome.version,
        champion=outcome.champion,
        decision=outcome.gate.reason,
        accuracy=accuracy.accuracy,
        accuracy_low=accuracy.low,
        accuracy_high=accuracy.high,
        n_pairs=accuracy.n_pairs,
        steps=trained.steps,
        train_loss=trained.train_loss,
        dataset_sha256=prep.data.pairs.sha256,
        base_model=reward.model_name_or_path,
        seconds=clock.seconds,
    )
