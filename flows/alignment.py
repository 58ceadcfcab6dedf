"""The alignment flow: generate -> validate -> train -> evaluate -> register.

The flow only orchestrates; each stage is a Prefect task that calls one module of tasks/.
Stages hand each other `Ref`s (URI + content hash). generate and validate are cached on
their inputs' content (prompts, model and settings), so a re-run, or a run after a crash
in a later stage, reuses the generated data instead of generating it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from prefect.runtime import flow_run

from conf.loader import config_hash, flatten
from conf.schema import GenerationConfig, PipelineConfig, TrainingConfig, ValidationConfig
from tasks import evaluate as evaluate_mod
from tasks import generate as generate_mod
from tasks import register as register_mod
from tasks import train as train_mod
from tasks import validate as validate_mod
from tasks.prompts import load_prompts, prompts_path
from tasks.state import Ref, artifact_root, configure_environment, sha256_file, sha256_text, sha256_tree, tracking_uri
from tasks.tiny_model import resolve_model

CONTENT = INPUTS + TASK_SOURCE  # cache on what the stage reads and the code that reads it


class GateFailed(RuntimeError):
    """The run stopped at a gate (exit code 1), not because something broke."""


@task(name="base-model", cache_policy=NO_CACHE)
def base_model(name_or_path: str, training: TrainingConfig, models_dir: Path) -> Ref:
    """The base policy (building the offline tiny model on first use)."""
    resolved = resolve_model(name_or_path, training.tiny_model, models_dir)
    local = Path(resolved)
    digest = sha256_tree(local) if local.is_dir() else sha256_text(str(resolved))
    return Ref(uri=local.resolve().as_uri() if local.is_dir() else str(resolved), sha256=digest)


@task(name="generate", cache_policy=CONTENT, persist_result=True)
def generate(
    generation: GenerationConfig, prompts: Ref, models: list[Ref], out_dir: Path, seed: int
) -> tuple[Ref, dict]:
    rows = load_prompts(generation.prompts, generation.max_prompts)
    paths = [str(m.path) if m.uri.startswith("file://") else m.uri for m in models]
    pairs, report = generate_mod.generate_preferences(rows, generation, paths, out_dir, seed)
    get_run_logger().info(
        "generated %(candidates)s candidates for %(prompts)s prompts -> %(pairs)s pairs "
        "(%(ties)s ties, %(identical)s identical) in %(seconds)ss",
        report,
    )
    return pairs, report


@task(name="validate", cache_policy=CONTENT, persist_result=True)
def validate(pairs: Ref, validation: ValidationConfig, tokenizer_from: Ref, out_dir: Path) -> dict:
    from transformers import AutoTokenizer

    data = validate_mod.read_pairs(pairs.path)
    tokenizer = (
        AutoTokenizer.from_pretrained(str(tokenizer_from.path))
        if tokenizer_from.uri.startswith("file://")
        else AutoTokenizer.from_pretrained(tokenizer_from.uri)
    )
    valid, quarantined, report = validate_mod.validate_pairs(data, validation, tokenizer)
    paths = validate_mod.write_outputs(out_dir, valid, quarantined, report, validation)
    report["files"] = {k: str(v) for k, v in paths.items()}
    for key in ("train", "test"):
        if key in paths:
            report[f"{key}_ref"] = Ref(uri=paths[key].as_uri(), sha256=sha256_file(paths[key])).model_dump()
    return report


@task(name="train", cache_policy=NO_CACHE)
def train(
    training: TrainingConfig,
    model: Ref,
    train_data: Ref,
    storage: Path,
    run_name: str,
    tracking: str,
    mlflow_run_id: str,
    ray_address: str | None,
) -> tuple[Ref, dict]:
    model_path = str(model.path) if model.uri.startswith("file://") else model.uri
    return train_mod.train_model(
        training, model_path, train_data, str(storage), run_name, tracking, mlflow_run_id, ray_address
    )


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(config: PipelineConfig, candidate: Ref, base: Ref, test_data: Ref, champion_dir: Path | None) -> dict:
    return evaluate_mod.evaluate_models(
        candidate.path,
        base.path if base.uri.startswith("file://") else base.uri,
        test_data.path,
        beta=config.training.beta,
        batch_size=config.evaluation.batch_size,
        max_pairs=config.evaluation.max_pairs,
        champion=champion_dir,
    )


@task(name="champion", cache_policy=NO_CACHE)
def export_champion(tracking: str, name: str, dest: Path) -> Path | None:
    return register_mod.export_champion(tracking, name, dest)


@task(name="register", cache_policy=NO_CACHE)
def register(
    config: PipelineConfig, tracking: str, run_id: str, model: Ref, tags: dict[str, str], metrics: dict
) -> dict:
    gate = config.registry.gate
    name = config.registry.model_name
    has_champion = register_mod.current_champion(tracking, name) is not None
    champion = metrics.get("champion") or register_mod.recorded_champion_metrics(tracking, name)
    promote, reason = register_mod.decide(metrics["candidate"], champion, gate, has_champion)
    version = register_mod.log_model_version(tracking, run_id, config.registry.model_name, model.path)
    register_mod.tag_and_alias(
        tracking,
        config.registry.model_name,
        version,
        {
            **tags,
            "model_sha256": model.sha256,
            "gate.metric": gate.metric,
            "gate.outcome": "promoted" if promote else "not promoted",
            "gate.reason": reason,
        },
        promote,
    )
    get_run_logger().info(
        "registered %s version %s: %s (%s)",
        config.registry.model_name,
        version,
        "promoted to champion" if promote else "not promoted",
        reason,
    )
    return {"model": config.registry.model_name, "version": version, "promoted": promote, "reason": reason}


def _validation_artifact(report: dict) -> None:
    rows = [
        {"check": k, "count": v["count"], "example rows": str(v["example_rows"]), "meaning": v["description"]}
        for k, v in report["checks"].items()
    ]
    create_table_artifact(
        rows,
        key="validation-report",
        description=f"{report['valid']}/{report['rows']} pairs valid; gate "
        f"{'passed' if report['gate']['passed'] else 'FAILED'}",
    )


def _evaluation_artifact(metrics: dict, outcome: dict, run_id: str) -> None:
    lines = ["| model | " + " | ".join(evaluate_mod.METRICS) + " |", "|---" * (len(evaluate_mod.METRICS) + 1) + "|"]
    for who in ("candidate", "champion", "base"):
        if who in metrics:
            lines.append(f"| {who} | " + " | ".join(str(metrics[who][m]) for m in evaluate_mod.METRICS) + " |")
    verdict = "promoted to **champion**" if outcome["promoted"] else "**not promoted**"
    create_markdown_artifact(
        f"## {outcome['model']} v{outcome['version']}: {verdict}\n\n{outcome['reason']}\n\n"
        f"Held-out pairs: {metrics['pairs']}. MLflow run `{run_id}`.\n\n" + "\n".join(lines),
        key="evaluation-summary",
    )


def _timed(seconds: dict[str, float], stage: str, fn: Callable[..., Any], *args: Any) -> Any:
    started = time.perf_counter()
    try:
        return fn(*args)
    finally:
        seconds[stage] = round(seconds.get(stage, 0.0) + time.perf_counter() - started, 1)


@flow(name="alignment", description="Generate, validate, train (DPO/ORPO on Ray), evaluate and register a model.")
def alignment(config: PipelineConfig) -> dict:
    """One alignment run, from prompts to a registered model version."""
    logger = get_run_logger()
    root = configure_environment(config)
    tracking = tracking_uri(config)
    run_key = (flow_run.id or "local")[:8]
    run_name = f"{config.name}-{flow_run.name or run_key}"

    seconds: dict[str, float] = {}
    base = _timed(
        seconds, "base_model", base_model, config.training.model_name_or_path, config.training, root / "models"
    )
    generator_models = [
        base if g.model == config.training.model_name_or_path else base_model(g.model, config.training, root / "models")
        for g in config.generation.generators
    ]
    prompts_file = prompts_path(config.generation.prompts)
    prompts = Ref(uri=prompts_file.resolve().as_uri(), sha256=sha256_file(prompts_file))
    # The dataset's key is the content of everything that shapes it; `generate` is cached on it.
    data_key = sha256_text(
        config.generation.model_dump_json(),
        prompts.sha256,
        generate_mod.code_version(),
        str(config.runtime.seed),
        *(m.sha256 for m in generator_models),
    )[:16]
    pairs, gen_report = _timed(
        seconds,
        "generate",
        generate,
        config.generation,
        prompts,
        generator_models,
        root / "datasets" / data_key,
        config.runtime.seed,
    )

    report = _timed(
        seconds,
        "validate",
        validate,
        pairs,
        config.validation,
        base,
        root
        / "datasets"
        / data_key
        / "validation"
        / sha256_text(config.validation.model_dump_json(), pairs.sha256)[:12],
    )
    _validation_artifact(report)
    if not report["gate"]["passed"]:
        raise GateFailed(
            "validation gate failed: "
            + "; ".join(report["gate"]["failures"])
            + f" (report: {report['files']['report']}, quarantine: {report['files']['quarantine']})"
        )
    train_ref, test_ref = Ref(**report["train_ref"]), Ref(**report["test_ref"])

    tags = {
        "dataset_uri": pairs.uri,
        "dataset_sha256": pairs.sha256,
        "config_hash": config_hash(config),
        "git_commit": register_mod.git_commit(),
        "prefect_flow_run_id": str(flow_run.id),
        "method": config.training.method,
        "base_model": config.training.model_name_or_path,
        "base_model_sha256": base.sha256,
    }
    run_id = register_mod.start_run(
        tracking, config.registry.experiment, run_name, flatten(config), tags, artifact_root(config)
    )
    try:
        register_mod.log_metrics(
            tracking, run_id, {f"generate/{k}": v for k, v in gen_report.items() if isinstance(v, int | float)}
        )
        register_mod.log_metrics(
            tracking, run_id, {"validate/valid": report["valid"], "validate/quarantined": report["quarantined"]}
        )
        register_mod.log_artifacts(
            tracking,
            run_id,
            {
                "generate": pairs.path.parent / "report.json",
                "generate/pipeline": pairs.path.parent / "pipeline.yaml",
                "validate": Path(report["files"]["report"]),
                "validate/quarantine": Path(report["files"]["quarantine"]),
            },
        )
        model, train_summary = _timed(
            seconds,
            "train",
            train,
            config.training,
            base,
            train_ref,
            root / "ray",
            run_name,
            tracking,
            run_id,
            config.runtime.ray_address,
        )
        logger.info(
            "trained %s steps in %ss on %s workers",
            train_summary["steps"],
            train_summary["wall_s"],
            train_summary["num_workers"],
        )
        register_mod.log_metrics(
            tracking, run_id, {"train/wall_s": train_summary["wall_s"], "train/steps": train_summary["steps"]}
        )

        champion_dir = _timed(
            seconds, "evaluate", export_champion, tracking, config.registry.model_name, root / "champions" / run_key
        )
        metrics = _timed(seconds, "evaluate", evaluate, config, model, base, test_ref, champion_dir)
        register_mod.log_metrics(
            tracking,
            run_id,
            {
                f"eval/{who}/{k}": v
                for who in ("candidate", "base", "champion")
                for k, v in metrics.get(who, {}).items()
            },
        )
        register_mod.log_metrics(tracking, run_id, {f"eval/{k}": v for k, v in metrics["candidate"].items()})
        outcome = _timed(seconds, "register", register, config, tracking, run_id, model, tags, metrics)
        _evaluation_artifact(metrics, outcome, run_id)
        register_mod.log_metrics(tracking, run_id, {f"seconds/{k}": v for k, v in seconds.items()})
    except BaseException:
        register_mod.end_run(tracking, run_id, "FAILED")
        raise
    register_mod.end_run(tracking, run_id)
    return {
        "mlflow_run_id": run_id,
        "flow_run_id": str(flow_run.id),
        "dataset": pairs.model_dump(),
        "generation": gen_report,
        "validation": {k: report[k] for k in ("rows", "valid", "quarantined")},
        "training": train_summary,
        "evaluation": metrics,
        "registry": outcome,
        "seconds": seconds,
    }
