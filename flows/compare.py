"""The comparison flow: one validated dataset, several recipes trained side by side, one table.

    prepare_data (base model, generate, validate: the alignment flow's, so the same cache)
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

import base64
import json
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.runtime import flow_run

from alignflow.conf.comparison import Recipe, expand_recipes
from alignflow.conf.loader import ConfigError, config_hash, flatten, load_config
from alignflow.conf.schema import PipelineConfig
from alignflow.flows.alignment import evaluate, export_champion, prepare_data, register, win_rate
from alignflow.flows.notify import failure_hook
from alignflow.flows.profiles import profile_path
from alignflow.tasks.evaluation import comparison as compare_mod
from alignflow.tasks.registry import tracking as tracking_mod
from alignflow.tasks.registry import versions as versions_mod
from alignflow.tasks.runtime.ray import start_ray
from alignflow.tasks.runtime.state import Ref, artifact_root, configure_environment, tracking_uri
from alignflow.tasks.training.curves import plot_comparison_curves
from alignflow.tasks.training.driver import TrainResult, content_run_name, train_stages
from alignflow.tasks.training.recipe import effective_config, preload_trainers

DEFAULT_COMPARISON = "compare"  # conf/compare.yaml


# No retries (a retry would redo every step; a re-run of the flow resumes from checkpoints instead:
# the Ray runs are named by content). No `alignflow-train` tag: recipes are meant to train side by
# side, each within its own training.scaling resources on the shared Ray cluster.
@task(name="train-recipe", cache_policy=NO_CACHE, retries=0)
def train_recipe(
    recipe: Recipe,
    base: Ref,
    train_data: Ref,
    storage: str,
    run_prefix: str,
    tracking: str,
    mlflow_run_id: str,
    ray_address: str | None,
) -> TrainResult:
    """One recipe's stages on Ray; its effective TRL config, curves and cost go to its child run."""
    logger = get_run_logger()
    training = recipe.training
    effective = effective_config(training)
    for note in effective["notes"]:
        logger.warning("%s: effective config: %s", recipe.name, note)
    tracking_mod.log_text(
        tracking, mlflow_run_id, json.dumps(effective, indent=2, default=str), "train/effective_config.json"
    )
    ray_run = content_run_name(storage, f"{run_prefix}-{compare_mod.slug(recipe.name)}", training, base, train_data)
    trained = train_stages(training, base, train_data, storage, ray_run, tracking, mlflow_run_id, ray_address)
    cost = compare_mod.recipe_cost(trained, training.scaling.use_gpu)
    tracking_mod.log_metrics(
        tracking, mlflow_run_id, {f"cost/{k}": v for k, v in cost.items() if isinstance(v, int | float)}
    )
    for stage, stage_result in trained.stages.items():
        tracking_mod.log_metrics(
            tracking, mlflow_run_id, {f"cost/{stage}/{k}": v for k, v in stage_result.cost.items()}
        )
    logger.info("%s: %s steps in %ss (%s)", recipe.name, cost["steps"], cost["wall_s"], cost["detail"])
    return trained


def _start_child_runs(
    config: PipelineConfig, recipes: list[Recipe], tracking: str, parent: str, tags: dict[str, str]
) -> dict[str, str]:
    """A nested MLflow run per recipe (MLflow shows them under the parent), with the recipe's params."""
    remote = tracking.startswith(("http://", "https://", "databricks"))
    children = {}
    for recipe in recipes:
        params = {
            k: v for k, v in flatten(PipelineConfig(training=recipe.training)).items() if k.startswith("training.")
        }
        children[recipe.name] = tracking_mod.start_child_run(
            tracking,
            config.registry.experiment,
            parent,
            recipe.name,
            params,
            # Not prefect_flow_run_id: that tag finds the flow run's own (parent) run, e.g. for the failure hook.
            {
                **{k: v for k, v in tags.items() if k != "prefect_flow_run_id"},
                "recipe": recipe.name,
                "method": compare_mod.stages_label(recipe.training),
            },
            None if remote else artifact_root(config),
        )
    return children


def _run_recipes(
    config: PipelineConfig,
    recipes: list[Recipe],
    children: dict[str, str],
    data: Any,
    storage: str,
    tracking: str,
    opponent: tuple[str, str],
) -> dict[str, dict]:
    """Train at most `max_parallel` recipes at once; each one's evaluation starts when its training ends.

    Returns recipe name -> {"status", "reason"} plus, when completed, "model", "summary", "metrics", "win"."""
    logger = get_run_logger()
    pending, training, evaluating, outcome = list(recipes), {}, {}, {}
    limit = config.comparison.max_parallel
    while pending or training:
        while pending and len(training) < limit:
            recipe = pending.pop(0)
            future = train_recipe.with_options(task_run_name=f"train {recipe.name}").submit(
                recipe,
                data.base,
                data.train,
                storage,
                config.name,
                tracking,
                children[recipe.name],
                config.runtime.ray_address,
            )
            training[future.task_run_id] = (recipe, future)
        done = next(as_completed([future for _, future in training.values()]))
        recipe, future = training.pop(done.task_run_id)
        result = future.result(raise_on_failure=False)
        if isinstance(result, BaseException) or not future.state.is_completed():
            reason = compare_mod.short_reason(result if isinstance(result, BaseException) else future.state.message)
            logger.warning("recipe %s failed in training: %s", recipe.name, reason)
            outcome[recipe.name] = {"status": "failed", "reason": f"train: {reason}"}
            continue
        model, summary = result.model, result
        evaluating[recipe.name] = (
            model,
            summary,
            evaluate.with_options(task_run_name=f"evaluate {recipe.name}").submit(
                config, model, data.base, data.test, None
            ),
            win_rate.with_options(task_run_name=f"win-rate {recipe.name}").submit(config, model, *opponent, data.test),
        )
    for name, (model, summary, metrics_future, win_future) in evaluating.items():
        metrics, win = metrics_future.result(raise_on_failure=False), win_future.result(raise_on_failure=False)
        error = next((r for r in (metrics, win) if isinstance(r, BaseException)), None)
        if error is not None:
            logger.warning("recipe %s failed in evaluation: %s", name, compare_mod.short_reason(error))
            outcome[name] = {"status": "failed", "reason": f"evaluate: {compare_mod.short_reason(error)}"}
            continue
        outcome[name] = {
            "status": "completed",
            "reason": "",
            "model": model,
            "summary": summary,
            "metrics": metrics,
            "win": win,
        }
    return outcome


def _log_recipe_outcome(tracking: str, run_id: str, outcome: dict) -> None:
    if outcome["status"] != "completed":
        tracking_mod.set_tags(tracking, run_id, {"failure_reason": outcome["reason"][:5000]})
        tracking_mod.end_run(tracking, run_id, "FAILED")
        return
    metrics, win = outcome["metrics"], outcome["win"]
    # eval/<metric> as the alignment flow logs them: the gate reads a champion's metrics from there.
    tracking_mod.log_metrics(tracking, run_id, {f"eval/{k}": v for k, v in metrics["candidate"].items()})
    tracking_mod.log_metrics(tracking, run_id, {f"eval/base/{k}": v for k, v in metrics["base"].items()})
    tracking_mod.log_win_rate(tracking, run_id, win)
    tracking_mod.end_run(tracking, run_id)


def _artifacts(rows: list[dict], best: dict | None, metric: str, png: Path | None, parent: str, tracking: str) -> None:
    """The table and the curves, in MLflow (parent run) and as Prefect artifacts."""
    chosen = f"best by {metric}: {best['recipe']}" if best else "no recipe completed"
    tracking_mod.log_table(tracking, parent, rows, "compare/table.json")
    tracking_mod.log_text(
        tracking, parent, compare_mod.table_markdown(rows, best and best["recipe"]), "compare/table.md"
    )
    create_table_artifact(
        [{k: ("-" if v is None else v) for k, v in row.items()} for row in rows],
        key="recipe-comparison",
        description=f"{len(rows)} recipes on the same split; {chosen}. "
        + "; ".join(f"{k}: {v}" for k, v in compare_mod.MEANING.items()),
    )
    if png:
        tracking_mod.log_artifacts(tracking, parent, {"compare": png})
        encoded = base64.b64encode(png.read_bytes()).decode()
        create_markdown_artifact(
            f"## Training curves of {len(rows)} recipes\n\n![curves](data:image/png;base64,{encoded})",
            key="recipe-curves",
            description=f"MLflow run {parent}: compare/{png.name}",
        )


def _register_best(
    config: PipelineConfig,
    tracking: str,
    recipe: Recipe,
    outcome: dict,
    run_id: str,
    data: Any,
    tags: dict[str, str],
    champion_dir: Path | None,
    evaluated_against: Any,
) -> dict:
    """The best recipe through the alignment flow's `register` task: a version from its child run, the gate."""
    metrics = {
        "pairs": outcome["metrics"]["pairs"],
        "candidate": outcome["metrics"]["candidate"],
        "base": outcome["metrics"]["base"],
        "win_rate": {k: v for k, v in outcome["win"].items() if k != "rows"},
    }
    if champion_dir:  # the champion on the same held-out pairs, for the gate
        champion = Ref(uri=champion_dir.as_uri(), sha256="")
        scored = evaluate.with_options(task_run_name="evaluate champion")(config, champion, data.base, data.test, None)
        metrics["champion"] = scored["candidate"]
    version_tags = {
        **tags,
        "training_run_id": run_id,
        "recipe": recipe.name,
        "method": compare_mod.stages_label(recipe.training),
    }
    expected = str(evaluated_against.version) if evaluated_against else None
    return register(config, tracking, run_id, outcome["model"], version_tags, metrics, expected)


def _config_from_parameters(parameters: dict) -> PipelineConfig:
    return PipelineConfig.model_validate(parameters["config"])


@flow(
    name="compare-recipes",
    description="Train several recipes (SFT -> DPO, ORPO, DPO, grids of their knobs) on one validated split, "
    "side by side on Ray, and compare quality and cost; the best can go through the gate.",
    on_failure=[failure_hook(_config_from_parameters)],
    on_crashed=[failure_hook(_config_from_parameters)],
)
def compare(config: PipelineConfig) -> dict:
    """Compare the recipes of `config.comparison` on the same data; the table, the best, the registry outcome."""
    logger = get_run_logger()
    recipes = expand_recipes(config.comparison.recipes)
    if not recipes:
        raise ConfigError("comparison.recipes: no recipes to compare (see conf/compare.yaml)")
    root = configure_environment(config)
    tracking = tracking_uri(config)
    run_key = (flow_run.id or "local")[:8]
    seconds: dict[str, float] = {}
    data = prepare_data(config, root, seconds)

    tags = {
        "dataset_uri": data.pairs.uri,
        "dataset_sha256": data.pairs.sha256,
        "config_hash": config_hash(config),
        "git_commit": tracking_mod.git_commit(),
        "prefect_flow_run_id": str(flow_run.id),
        "prefect_flow_run_url": flow_run.ui_url or "",
        "base_model": config.training.model_name_or_path,
        "base_model_sha256": data.base.sha256,
        "train_dataset_sha256": data.train.sha256,
        "test_dataset_sha256": data.test.sha256,
        "validation.valid": str(data.validation.valid),
        "validation.quarantined": str(data.validation.quarantined),
    }
    remote = tracking.startswith(("http://", "https://", "databricks"))
    params = {k: v for k, v in flatten(config).items() if not k.startswith("comparison.recipes.")}
    parent = tracking_mod.start_run(
        tracking,
        config.registry.experiment,
        f"{config.name}-compare-{flow_run.name or run_key}",
        params,
        {**tags, "comparison.recipes": json.dumps([r.name for r in recipes])[:5000]},
        None if remote else artifact_root(config),
    )
    tags = {
        **tags,
        "comparison_run_id": parent,
        "config_uri": f"runs:/{parent}/config/resolved.yaml",
        "validation_report": f"runs:/{parent}/validate/report.json",
    }
    children: dict[str, str] = {}
    try:
        tracking_mod.log_text(tracking, parent, tracking_mod.config_yaml(config), "config/resolved.yaml")
        tracking_mod.log_datasets(
            tracking,
            parent,
            {"train": (data.train.uri, data.train.sha256), "test": (data.test.uri, data.test.sha256)},
            config.name,
        )
        tracking_mod.log_artifacts(tracking, parent, {"validate": Path(data.validation.files["report"])})
        evaluated_against = versions_mod.current_champion(tracking, config.registry.model_name)
        champion_dir = export_champion(tracking, config.registry.model_name, root / "champions" / run_key)
        opponent = (str(champion_dir), "champion") if champion_dir else (data.base.loadable, "base")

        # Once, in this thread, before recipes train from several threads: Ray's start and trl's lazy imports.
        start_ray(config.runtime.ray_address)
        preload_trainers([r.training for r in recipes])
        children = _start_child_runs(config, recipes, tracking, parent, tags)
        started = time.perf_counter()
        outcomes = _run_recipes(
            config, recipes, children, data, config.training.storage or str(root / "ray"), tracking, opponent
        )
        seconds["recipes"] = round(time.perf_counter() - started, 1)
        rows = []
        for recipe in recipes:
            outcome = outcomes[recipe.name]
            _log_recipe_outcome(tracking, children[recipe.name], outcome)
            rows.append(
                compare_mod.completed_row(
                    recipe.name, recipe.training, outcome["summary"], outcome["metrics"]["candidate"], outcome["win"]
                )
                if outcome["status"] == "completed"
                else compare_mod.failed_row(recipe.name, recipe.training, outcome["reason"])
            )
        metric = config.comparison.metric
        best = compare_mod.best_row(rows, metric)
        png = plot_comparison_curves(
            tracking,
            children,
            root / "scratch" / f"compare-{run_key}" / "curves.png",
            f"{config.name}: {len(recipes)} recipes",
        )
        _artifacts(rows, best, metric, png, parent, tracking)
        tracking_mod.log_metrics(
            tracking,
            parent,
            {
                "compare/recipes": len(rows),
                "compare/failed": sum(r["status"] == "failed" for r in rows),
                "compare/seconds": seconds["recipes"],
                **({f"compare/best/{metric}": best[metric]} if best else {}),
            },
        )

        outcome = None
        if best and config.comparison.register_best:
            recipe = next(r for r in recipes if r.name == best["recipe"])
            outcome = _register_best(
                config,
                tracking,
                recipe,
                outcomes[recipe.name],
                children[recipe.name],
                data,
                tags,
                champion_dir,
                evaluated_against,
            )
            tracking_mod.set_tags(tracking, parent, {"compare.registered_version": outcome["version"]})
        if best:
            tracking_mod.set_tags(tracking, parent, {"compare.best_recipe": best["recipe"]})
            logger.info("best recipe by %s: %s (%s)", metric, best["recipe"], best[metric])
    except BaseException:
        for run_id in children.values():
            if tracking_mod.run_status(tracking, run_id) == "RUNNING":
                tracking_mod.end_run(tracking, run_id, "FAILED")
        tracking_mod.end_run(tracking, parent, "FAILED")
        raise
    tracking_mod.end_run(tracking, parent)
    return {
        "mlflow_run_id": parent,
        "flow_run_id": str(flow_run.id),
        "dataset": data.pairs.model_dump(),
        "recipes": rows,
        "children": children,
        "best": best and best["recipe"],
        "metric": metric,
        "registry": outcome,
        "curves": str(png) if png else None,
        "seconds": seconds,
    }


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
def run_comparison(comparison: str = DEFAULT_COMPARISON, overrides: list[str] | None = None) -> dict:
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
