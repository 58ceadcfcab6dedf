"""The alignment flow: generate -> validate -> train -> evaluate -> register.

The flow body reads as the list of stages it runs (flows/stages.py); MLflow bookkeeping lives
in flows/bookkeeping.py and the Prefect artifacts in flows/artifacts.py. Stages hand each other
`Ref`s (URI + content hash). With `training.start_from: champion` and a generator on
`registry:champion`, each run is one round of iterative DPO: the champion writes the candidates,
training starts from it, and the new model must beat it head to head to replace it.
"""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run
from pydantic import BaseModel

from alignflow.conf.schema import PipelineConfig
from alignflow.flows import artifacts
from alignflow.flows.bookkeeping import open_book
from alignflow.flows.data import GateFailed, judge_model
from alignflow.flows.links import experiment_of, mlflow_run_url, mlflow_ui_url, model_version_url
from alignflow.flows.notify import failure_hook, notify_outcome
from alignflow.flows.preamble import StageClock, preamble
from alignflow.flows.runbook import RunBook
from alignflow.flows.stages import Registration, evaluate, register, train
from alignflow.tasks.evaluation.stage import Evaluation
from alignflow.tasks.registry import trajectory
from alignflow.tasks.training.driver import TrainResult

__all__ = ["GateFailed", "RunSummary", "alignment"]


class RunSummary(BaseModel):
    """What `alignflow run` prints and a caller reads: where things went and what was decided."""

    mlflow_run_id: str
    flow_run_id: str
    model: str
    version: str
    promoted: bool
    decision: str
    against: str
    win_rate: float
    win_rate_low: float
    win_rate_high: float
    n_prompts: int
    held_out: dict[str, dict[str, float]]
    held_out_pairs: int
    steps: int
    resumed_from_step: int
    dataset_sha256: str
    seconds: dict[str, float]
    # Every champion of the registered model so far, oldest first, against the base model (tasks/registry/trajectory.py).
    champions: list[dict[str, str]] = []
    # With several evaluation.judges: each judge's win rate (judge, win_rate, low, high), and every two judges'
    # agreement in words (share with its interval, Cohen's kappa, n).
    judges: list[dict[str, str | float]] = []
    agreements: list[str] = []


def _config_from_parameters(parameters: dict) -> PipelineConfig:
    return PipelineConfig.model_validate(parameters["config"])


# A failed or crashed run notifies the webhook the runtime section names (flows/notify.py); the MLflow run
# is marked FAILED by the flow itself (`with book`), before the hook runs. The gate's outcome (promoted or
# not) is sent by the flow body once the MLflow run has finished.
@flow(
    name="alignment",
    description="Generate, validate, train (DPO/ORPO on Ray), evaluate head to head and register a model.",
    on_failure=[failure_hook(_config_from_parameters)],
    on_crashed=[failure_hook(_config_from_parameters)],
)
def alignment(config: PipelineConfig, lineage: dict[str, str] | None = None) -> RunSummary:
    """One alignment run, from prompts to a registered model version and the gate's decision.

    `lineage`: more MLflow tags of the run and its model version, e.g. the deployment's profile and its sha256."""
    clock = StageClock()
    prep = preamble(config, clock)  # base model, champion, data: timed as base_model, champion, data
    data, opponent = prep.data, prep.opponent
    with open_book(config, data, f"{config.name}-{flow_run.name or prep.run_key}", **(lineage or {})) as book:
        with clock("train"):
            trained = train(config.training, data.start, data.train, prep.storage, book)
        with clock("evaluate"):
            beta = config.training.knob("beta", float)
            evaluation = evaluate(
                config.evaluation,
                beta,
                trained.model,
                prep.base,
                data.split,
                opponent,
                prep.root / "eval-answers",
                config.training.chat_template_text,
                [judge_model(j, config, prep.root) for j in config.evaluation.panel()],
            )
        with clock("register"):
            outcome = register(config.registry, book, trained.model, evaluation, opponent)
        version_url = _report(config, book, evaluation, outcome, clock.seconds | {"train_steps": trained.steps})
        champions = [c.row() for c in trajectory.champions(book.tracking, outcome.model)]
        artifacts.champions(champions, outcome.model)
    summary = _summary(book, evaluation, outcome, trained, data.pairs.sha256, clock.seconds)
    notify_outcome(config, outcome, book.run_id, version_url)  # never raises: news of the run, not part of it
    return summary.model_copy(update={"champions": champions})


def _report(
    config: PipelineConfig, book: RunBook, evaluation: Evaluation, outcome: Registration, numbers: dict[str, float]
) -> str | None:
    """The evaluation into MLflow (metrics, per-pair judgments) and Prefect (summary, samples); the model
    version's MLflow UI link (None without a UI address)."""
    h2h = evaluation.head_to_head
    book.log_metrics(evaluation.metrics() | {f"seconds/{k}": v for k, v in numbers.items()})
    book.log_table(h2h.rows, "eval/head_to_head.json")  # every judged pair: the evidence behind the interval
    ui = mlflow_ui_url(config, book.tracking)
    run_url = mlflow_run_url(ui, experiment_of(book.tracking, book.run_id), book.run_id) if ui else None
    version_url = model_version_url(ui, outcome.model, outcome.version)
    run_link = f"[`{book.run_id}`]({run_url})" if run_url else f"`{book.run_id}`"
    version_link = (
        f"[{outcome.model} v{outcome.version}]({version_url})"
        if version_url
        else f"`models:/{outcome.model}/{outcome.version}`"
    )
    links = (
        f"MLflow run {run_link}; model version {version_link}{'' if ui else ' (set runtime.mlflow_ui_url for links)'}."
    )
    artifacts.evaluation(evaluation, outcome.decision, f"{outcome.model} v{outcome.version}", links, outcome.promoted)
    artifacts.samples(h2h, config.evaluation.samples)
    return version_url


def _summary(
    book: RunBook,
    evaluation: Evaluation,
    outcome: Registration,
    trained: TrainResult,
    dataset_sha256: str,
    seconds: dict[str, float],
) -> RunSummary:
    h2h = evaluation.head_to_head
    return RunSummary(
        mlflow_run_id=book.run_id,
        flow_run_id=str(flow_run.id),
        model=outcome.model,
        version=outcome.version,
        promoted=outcome.promoted,
        decision=outcome.decision.reason,
        against=h2h.against,
        win_rate=h2h.win_rate.estimate,
        win_rate_low=h2h.win_rate.low,
        win_rate_high=h2h.win_rate.high,
        n_prompts=h2h.prompts,
        held_out=dict(evaluation.held_out.table()),
        held_out_pairs=evaluation.held_out.pairs,
        steps=trained.steps,
        resumed_from_step=trained.resumed_from_step,
        dataset_sha256=dataset_sha256,
        seconds=seconds,
        judges=[
            {"judge": r.judge, "win_rate": r.win_rate.estimate, "low": r.win_rate.low, "high": r.win_rate.high}
            for r in evaluation.judges
        ]
        if evaluation.other_judges
        else [],
        agreements=[a.line() for a in evaluation.agreements],
    )
