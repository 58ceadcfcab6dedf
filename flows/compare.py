"""The comparison flow: one validated dataset, several recipes trained side by side, one table.

    preamble (base model, champion, generate, validate: the alignment flow's, so the same cache)
      -> for each recipe of `comparison.recipes` (grids expanded), at most `max_parallel` at once:
           train-recipe (optional SFT stage, then the preference stage; Ray Train, its own resources)
           -> evaluate + win-rate (the alignment flow's tasks, same held-out pairs and prompts)
      -> table (MLflow + Prefect artifact), curves on shared axes, the best through registry.gate

MLflow: one parent run (config, data lineage, table, curves) and a child run per recipe
(`mlflow.parentRunId`), which holds that recipe's params, training curves, cost and held-out
metrics. Only the best recipe's child run gets a model version (when `register_best`).
A recipe that fails is a `failed` row with its reason; the others carry on.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.runtime import flow_run
from pydantic import BaseModel

from alignflow.conf.comparison import Recipe, expand_recipes
from alignflow.conf.loader import ConfigError, flatten, load_config
from alignflow.conf.schema import PipelineConfig
from alignflow.flows.bookkeeping import open_book
from alignflow.flows.data import PreparedData, judge_model
from alignflow.flows.links import mlflow_ui_url, model_version_url
from alignflow.flows.notify import failure_hook, notify_outcome
from alignflow.flows.preamble import StageClock, preamble
from alignflow.flows.profiles import profile_path
from alignflow.flows.runbook import RunBook
from alignflow.flows.stages import Champion, Registration, evaluate, fit, register
from alignflow.tasks.evaluation import comparison as table
from alignflow.tasks.registry import tracking as mlflow_runs
from alignflow.tasks.runtime.ray import start_ray
from alignflow.tasks.runtime.state import Ref, artifact_root, home
from alignflow.tasks.training import memory
from alignflow.tasks.training.curves import plot_comparison_curves
from alignflow.tasks.training.driver import TrainResult
from alignflow.tasks.training.recipe import preload_trainers

DEFAULT_COMPARISON = "compare"  # conf/compare.yaml


class RegisteredBest(BaseModel):
    """The best recipe's model version and the gate's decision on it (comparison.register_best)."""

    model: str
    version: str
    promoted: bool
    reason: str


class ComparisonSummary(BaseModel):
    """What `alignflow compare` prints and a caller reads: the table, the best recipe, what the registry did."""

    mlflow_run_id: str  # the parent run
    flow_run_id: str
    dataset: Ref  # the pairs every recipe trained on
    # One row per recipe in the recipes' order, the columns of tasks/evaluation/comparison.py (COLUMNS); a
    # failed recipe is a row with status "failed" and its reason in "detail".
    recipes: list[dict[str, Any]]
    children: dict[str, str]  # recipe name -> its child MLflow run
    best: str | None  # the best recipe by `metric`; None when none completed
    metric: str
    registry: RegisteredBest | None = None  # None unless the best went through the gate
    curves: str | None = None  # the PNG of every recipe's training curves on shared axes
    seconds: dict[str, float]  # wall seconds per stage: base_model, champion, data, recipes


# No retries (a retry would redo every step; a re-run of the flow resumes from checkpoints instead:
# the Ray runs are named by content). No `alignflow-train` tag: recipes are meant to train side by
# side, each within its own training.scaling resources on the shared Ray cluster.
@task(name="train-recipe", cache_policy=NO_CACHE, retries=0)
def train_recipe(recipe: Recipe, start: Ref, train_data: Ref, storage: str, book: RunBook) -> TrainResult:
    """One recipe's stages on Ray, into its child run; then what it cost."""
    trained = fit(recipe.training, start, train_data, storage, book, f"{book.run_prefix}-{table.slug(recipe.name)}")
    cost = table.recipe_cost(trained, recipe.training.scaling.use_gpu)
    book.log_metrics({f"cost/{k}": v for k, v in cost.items() if isinstance(v, int | float)})
    for stage, result in trained.stages.items():
        book.log_metrics({f"cost/{stage}/{k}": v for k, v in result.cost.items()})
    return trained


def _start_child_runs(config: PipelineConfig, recipes: list[Recipe], book: RunBook) -> dict[str, RunBook]:
    """A nested MLflow run per recipe (MLflow shows them under the parent), with the recipe's params."""
    remote = book.tracking.startswith(("http://", "https://", "databricks"))
    # Not prefect_flow_run_id: that tag finds the flow run's own (parent) run, e.g. for the failure hook.
    shared = {k: v for k, v in book.tags.items() if k not in ("prefect_flow_run_id", "training_run_id")}
    children = {}
    for recipe in recipes:
        params = flatten(PipelineConfig(training=recipe.training))
        run_id = mlflow_runs.start_child_run(
            book.tracking,
            config.registry.experiment,
            book.run_id,
            recipe.name,
            {k: v for k, v in params.items() if k.startswith("training.")},
            {**shared, "recipe": recipe.name, "method": table.stages_label(recipe.training)},
            None if remote else artifact_root(config),
        )
        book.children[recipe.name] = run_id
        children[recipe.name] = book.for_child(run_id)
    return children


def _run_recipes(
    config: PipelineConfig,
    recipes: list[Recipe],
    children: dict[str, RunBook],
    data: PreparedData,
    storage: str,
    opponent: Champion | None,
) -> dict[str, dict]:
    """Train at most `max_parallel` recipes at once, and a second one only while the recipes' memory
    (tasks/training/memory.py run_bytes) fits the Ray cluster's; each one's evaluation starts when its
    training ends.

    Returns recipe name -> {"status", "reason"} plus, when completed, "trained" and "evaluation"."""
    logger = get_run_logger()
    beta = config.training.knob("beta", float)  # one scale for every recipe's implicit reward
    room = sum(memory.node_memory())
    needs = {recipe.name: memory.run_bytes(recipe.training, data.start.loadable) or 0 for recipe in recipes}
    pending, training, evaluating, outcome, held = list(recipes), {}, {}, {}, {}
    judges = [judge_model(j, config, home(config)) for j in config.evaluation.panel()]  # one copy for every recipe
    while pending or training:
        while pending and len(training) < config.comparison.max_parallel:
            need = needs[pending[0].name]
            if not memory.fits_beside(list(held.values()), need, room):  # Ray would queue it; here, no retry logs
                logger.info("recipe %s waits for memory (~%.1f GiB)", pending[0].name, need / memory.GIB)
                break
            recipe = pending.pop(0)
            future = train_recipe.with_options(task_run_name=f"train {recipe.name}").submit(
                recipe, data.start, data.train, storage, children[recipe.name]
            )
            training[future.task_run_id], held[future.task_run_id] = (recipe, future), need
        done = next(as_completed([future for _, future in training.values()]))
        recipe, future = training.pop(done.task_run_id)
        held.pop(done.task_run_id)
        result = future.result(raise_on_failure=False)
        if isinstance(result, BaseException) or not future.state.is_completed():
            reason = table.short_reason(result if isinstance(result, BaseException) else future.state.message)
            logger.warning("recipe %s failed in training: %s", recipe.name, reason)
            outcome[recipe.name] = {"status": "failed", "reason": f"train: {reason}"}
            continue
        evaluating[recipe.name] = (
            result,
            evaluate.with_options(task_run_name=f"evaluate {recipe.name}").submit(
                config.evaluation,
                beta,
                result.model,
                data.base,
                data.split,
                opponent,
                home(config) / "eval-answers",
                config.training.chat_template_text,  # the recipes share it (conf/schema.py)
                judges,
            ),
        )
    for name, (trained, future) in evaluating.items():
        evaluation = future.result(raise_on_failure=False)
        if isinstance(evaluation, BaseException):
            logger.warning("recipe %s failed in evaluation: %s", name, table.short_reason(evaluation))
            outcome[name] = {"status": "failed", "reason": f"evaluate: {table.short_reason(evaluation)}"}
            continue
        outcome[name] = {"status": "completed", "reason": "", "trained": trained, "evaluation": evaluation}
    return outcome


def _log_recipe_outcome(book: RunBook, outcome: dict) -> None:
    if outcome["status"] != "completed":
        mlflow_runs.set_tags(book.tracking, book.run_id, {"failure_reason": outcome["reason"][:5000]})
        mlflow_runs.end_run(book.tracking, book.run_id, "FAILED")
        return
    book.log_metrics(outcome["evaluation"].metrics())
    book.log_table(outcome["evaluation"].head_to_head.rows, "eval/head_to_head.json")


def _artifacts(rows: list[dict], best: dict | None, metric: str, png: Path | None, book: RunBook) -> None:
    """The table and the curves, in MLflow (parent run) and as Prefect artifacts."""
    chosen = f"best by {metric}: {best['recipe']}" if best else "no recipe completed"
    book.log_table(rows, "compare/table.json")
    book.log_text(table.table_markdown(rows, best and best["recipe"]), "compare/table.md")
    create_table_artifact(
        [{k: ("-" if v is None else v) for k, v in row.items()} for row in rows],
        key="recipe-comparison",
        description=f"{len(rows)} recipes on the same split; {chosen}. "
        + "; ".join(f"{k}: {v}" for k, v in table.MEANING.items()),
    )
    if png:
        import base64

        book.log_files({"compare": png})
        encoded = base64.b64encode(png.read_bytes()).decode()
        create_markdown_artifact(
            f"## Training curves of {len(rows)} recipes\n\n![curves](data:image/png;base64,{encoded})",
            key="recipe-curves",
            description=f"MLflow run {book.run_id}: compare/{png.name}",
        )


def _rows(recipes: list[Recipe], outcomes: dict[str, dict], children: dict[str, RunBook]) -> list[dict]:
    """One table row per recipe, in the recipes' order; each child run gets its outcome logged."""
    rows = []
    for recipe in recipes:
        outcome = outcomes[recipe.name]
        _log_recipe_outcome(children[recipe.name], outcome)
        rows.append(
            table.completed_row(recipe.name, recipe.training, outcome["trained"], outcome["evaluation"])
            if outcome["status"] == "completed"
            else table.failed_row(recipe.name, recipe.training, outcome["reason"])
        )
    return rows


def _register_best(
    config: PipelineConfig, recipe: Recipe, child: RunBook, won: dict, opponent: Champion | None
) -> Registration:
    """The best recipe's model through the registry's gate, from its child run (tagged with the recipe)."""
    tags = {**child.tags, "recipe": recipe.name, "method": table.stages_label(recipe.training)}
    book = dataclasses.replace(child, tags=tags)
    return register(config.registry, book, won["trained"].model, won["evaluation"], opponent)


def _config_from_parameters(parameters: dict) -> PipelineConfig:
    return PipelineConfig.model_validate(parameters["config"])


@flow(
    name="compare-recipes",
    description="Train several recipes (SFT -> DPO, ORPO, DPO, grids of their knobs) on one validated split, "
    "side by side on Ray, and compare quality and cost; the best can go through the gate.",
    on_failure=[failure_hook(_config_from_parameters)],
    on_crashed=[failure_hook(_config_from_parameters)],
)
def compare(config: PipelineConfig) -> ComparisonSummary:
    """Compare the recipes of `config.comparison` on the same data; the table, the best, the registry outcome."""
    recipes = expand_recipes(config.comparison.recipes)
    if not recipes:
        raise ConfigError("comparison.recipes: no recipes to compare (see conf/compare.yaml)")
    clock = StageClock()
    prep = preamble(config, clock)  # the alignment flow's: the same base model, champion and data
    opponent = prep.opponent
    params = {k: v for k, v in flatten(config).items() if not k.startswith("comparison.recipes.")}
    name = f"{config.name}-compare-{flow_run.name or prep.run_key}"
    with open_book(
        config, prep.data, name, params, **{"comparison.recipes": json.dumps([r.name for r in recipes])[:5000]}
    ) as book:
        # Once, in this thread, before recipes train from several threads: Ray's start and trl's lazy imports.
        start_ray(config.runtime.ray_address)
        preload_trainers([r.training for r in recipes])
        children = _start_child_runs(config, recipes, book)
        with clock("recipes"):
            outcomes = _run_recipes(config, recipes, children, prep.data, prep.storage, opponent)
        rows = _rows(recipes, outcomes, children)
        metric = config.comparison.metric
        best = table.best_row(rows, metric)
        png = plot_comparison_curves(
            book.tracking,
            {name: child.run_id for name, child in children.items()},
            prep.root / "scratch" / f"compare-{prep.run_key}" / "curves.png",
            f"{config.name}: {len(recipes)} recipes",
        )
        _artifacts(rows, best, metric, png, book)
        book.log_metrics(
            {
                "compare/recipes": len(rows),
                "compare/failed": sum(r["status"] == "failed" for r in rows),
                "compare/seconds": clock.seconds["recipes"],
                **{f"seconds/{k}": v for k, v in clock.seconds.items()},  # the alignment flow's names
                **({f"compare/best/{metric}": best[metric]} if best else {}),
            }
        )
        registration = None
        if best:
            mlflow_runs.set_tags(book.tracking, book.run_id, {"compare.best_recipe": best["recipe"]})
            get_run_logger().info("best recipe by %s: %s (%s)", metric, best["recipe"], best[metric])
        if best and config.comparison.register_best:
            recipe = next(r for r in recipes if r.name == best["recipe"])
            registration = _register_best(config, recipe, children[recipe.name], outcomes[recipe.name], opponent)
            mlflow_runs.set_tags(book.tracking, book.run_id, {"compare.registered_version": registration.version})
    if registration:  # the gate's outcome, as the alignment flow sends it; never raises
        version_url = model_version_url(mlflow_ui_url(config, book.tracking), registration.model, registration.version)
        notify_outcome(config, registration, book.run_id, version_url)
    return ComparisonSummary(
        mlflow_run_id=book.run_id,
        flow_run_id=str(flow_run.id),
        dataset=prep.data.pairs,
        recipes=rows,
        children=dict(book.children),
        best=best["recipe"] if best else None,
        metric=metric,
        registry=RegisteredBest(
            model=registration.model,
            version=registration.version,
            promoted=registration.promoted,
            reason=registration.decision.reason,
        )
        if registration
        else None,
        curves=str(png) if png else None,
        seconds=clock.seconds,
    )


def _comparison_config(comparison: str, overrides: list[str] | None) -> PipelineConfig:
    return load_config(profile_path(comparison), overrides or [])


@flow(
    name="run-comparison",
    description="Compare the recipes of a conf/ comparison profile (default conf/compare.yaml) on one dataset.",
    on_failure=[
        failure_hook(lambda p: _comparison_config(p.get("comparison", DEFAULT_COMPARISON), p.get("overrides")))
    ],
    on_crashed=[
        failure_hook(lambda p: _comparison_config(p.get("comparison", DEFAULT_COMPARISON), p.get("overrides")))
    ],
)
def run_comparison(comparison: str = DEFAULT_COMPARISON, overrides: list[str] | None = None) -> ComparisonSummary:
    """Deployment entry: load a comparison profile with overrides, then compare its recipes.

    Args:
        comparison: A YAML profile under conf/ with a `comparison.recipes` section (a file stem: `compare`).
        overrides: Any keys as `key.path=value`, e.g. `comparison.recipes.orpo.grid.beta=[0.05,0.2]`,
            `comparison.max_parallel=1` or `training.max_steps=20`.
    """
    config = _comparison_config(comparison, overrides)
    get_run_logger().info(
        "comparison profile %s: %d recipe(s)", comparison, len(expand_recipes(config.comparison.recipes))
    )
    return compare.fn(config)  # the body, not a subflow: its tasks and artifacts belong to this run
