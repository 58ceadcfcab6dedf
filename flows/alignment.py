"""The alignment flow: generate -> validate -> train -> evaluate -> register.

The flow only orchestrates; each stage is a Prefect task that calls one module of tasks/.
Stages hand each other `Ref`s (URI + content hash). generate and validate are cached on
their inputs' content (prompts, model and settings), so a re-run, or a run after a crash
in a later stage, reuses the generated data instead of generating it again.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from prefect.runtime import flow_run

from alignflow.conf.generation import GenerationConfig
from alignflow.conf.loader import config_hash, flatten
from alignflow.conf.schema import PipelineConfig
from alignflow.conf.training import TrainingConfig
from alignflow.conf.validation import ValidationConfig
from alignflow.flows.limits import TRAIN_LIMIT_TAG
from alignflow.flows.links import experiment_of, mlflow_run_url, mlflow_ui_url, model_version_url
from alignflow.flows.notify import failure_hook
from alignflow.tasks.evaluation import metrics as evaluate_mod
from alignflow.tasks.generation.endpoints import llm_slots
from alignflow.tasks.generation.fingerprint import candidate_settings, code_version
from alignflow.tasks.generation.prompts import load_prompts, prompts_path, source_sha256
from alignflow.tasks.generation.report import GenerationReport
from alignflow.tasks.generation.stage import GenerationFailed, generate_preferences
from alignflow.tasks.registry import tracking as tracking_mod
from alignflow.tasks.registry import versions as versions_mod
from alignflow.tasks.registry.card import model_card, write_model_card
from alignflow.tasks.registry.gate import decide
from alignflow.tasks.runtime.state import (
    Ref,
    artifact_root,
    configure_environment,
    sha256_file,
    sha256_text,
    sha256_tree,
    tracking_uri,
)
from alignflow.tasks.runtime.tiny_model import resolve_model
from alignflow.tasks.training.curves import plot_training_curves
from alignflow.tasks.training.driver import TrainResult, content_run_name, train_stages
from alignflow.tasks.training.recipe import effective_config
from alignflow.tasks.validation import stage as validate_mod
from alignflow.tasks.validation.outputs import summary_markdown
from alignflow.tasks.validation.report import ValidationReport

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


# Cached on the content of the source (prompts or preference data), the generation settings
# (endpoint and key *names*, never a key's value), the local models and the code; where the
# pipeline runs (ray_address) does not change the data, so it is not part of the key.
@task(name="generate", cache_policy=CONTENT - "ray_address", persist_result=True)
def generate(
    generation: GenerationConfig,
    source: Ref,
    models: list[Ref | None],
    out_dir: Path,
    seed: int,
    ray_address: str | None = None,
) -> tuple[Ref, GenerationReport]:
    """Synthetic pairs from the prompts (or the user's own pairs, snapshotted); the report as an artifact."""
    from alignflow.tasks.generation.byo import import_preference_data

    logger = get_run_logger()
    if generation.preference_data:
        pairs, report = import_preference_data(generation.preference_data, out_dir)
        logger.info(
            "using %(rows)s preference rows (%(format)s) from %(source)s: generation skipped", report.model_dump()
        )
    else:
        rows = load_prompts(
            generation.prompts, generation.max_prompts, generation.prompt_column, generation.reference_column
        )
        paths = [m.loadable if m else None for m in models]
        try:
            pairs, report = generate_preferences(rows, generation, paths, out_dir, seed, ray_address)
        except GenerationFailed as exc:
            _generation_artifact(exc.report)  # the failed run's counts, next to its error
            raise
        logger.info(
            "generated %(candidates)s candidates for %(prompts)s prompts -> %(pairs)s pairs "
            "(%(ties)s ties, %(identical)s identical, %(failed)s failed) in %(seconds)ss [%(executor)s]",
            report.model_dump(),
        )
    _generation_artifact(report)
    return pairs, report


def _generation_artifact(report: GenerationReport) -> None:
    """The generate stage's report as a Prefect table: the totals, then one row per generator."""
    data = report.model_dump()  # the fields report.json has
    totals = {k: v for k, v in data.items() if isinstance(v, int | float | str) and not isinstance(v, bool)}
    rows = [{"what": k, "value": str(v)} for k, v in totals.items()]
    rows += [
        {
            "what": f"generator {g['generator']}",
            "value": ", ".join(f"{k} {v}" for k, v in g.items() if k != "generator"),
        }
        for g in data.get("generators", [])
    ]
    done = f"{report.pairs} pairs from {report.prompts} prompts"
    create_table_artifact(rows, key="generation-report", description=f"generate: {done}")


@task(name="validate", cache_policy=CONTENT, persist_result=True)
def validate(
    pairs: Ref, validation: ValidationConfig, tokenizer_from: Ref, out_dir: Path
) -> tuple[ValidationReport, dict[str, Ref]]:
    """The report and Refs to the train/test split it wrote (none when the gate failed)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from.loadable)
    # Streams the file: checks, quarantine and the grouped train/test split, chunk by chunk.
    report = validate_mod.validate_file(pairs.path, validation, out_dir, tokenizer)
    split = {
        key: Ref(uri=Path(report.files[key]).as_uri(), sha256=sha256_file(Path(report.files[key])))
        for key in ("train", "test")
        if key in report.files
    }
    if report.split is not None and report.split.leaked_prompts:
        raise RuntimeError(f"train/test split leaked {report.split.leaked_prompts} prompts")
    return report, split


# Failure handling, declared: no blind retries (a retry would redo every step). The Ray run is
# named by content, so re-running the failed flow (Prefect UI: Retry) resumes from its last
# checkpoint; within a run, training.max_failures restarts Ray workers from it. The tag holds
# the server's `alignflow-train` concurrency limit: one training at a time (flows/limits.py).
@task(name="train", cache_policy=NO_CACHE, retries=0, tags=[TRAIN_LIMIT_TAG])
def train(
    training: TrainingConfig,
    model: Ref,
    train_data: Ref,
    storage: str,
    run_name: str,
    tracking: str,
    mlflow_run_id: str,
    ray_address: str | None,
) -> TrainResult:
    """Train on Ray; report the effective TRL config first and the training curves after."""
    logger = get_run_logger()
    # Named by content, so a re-run after a crash or a kill resumes from the last checkpoint.
    ray_run = content_run_name(storage, run_name, training, model, train_data)
    effective = effective_config(training)
    for note in effective["notes"]:
        logger.warning("effective config: %s", note)
    scratch = Path(os.environ.get("ALIGNFLOW_HOME", ".alignflow")) / "scratch" / ray_run
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "effective_config.json").write_text(json.dumps(effective, indent=2, default=str))
    tracking_mod.log_artifacts(tracking, mlflow_run_id, {"train": scratch / "effective_config.json"})

    # training.sft.enabled: SFT on the chosen responses first (its own Ray run); its model is the
    # preference stage's policy and, for DPO, its reference.
    trained = train_stages(training, model, train_data, storage, ray_run, tracking, mlflow_run_id, ray_address)
    if trained.resumed_from_step:
        logger.info("resumed from the checkpoint at step %s", trained.resumed_from_step)
    png = plot_training_curves(tracking, mlflow_run_id, scratch / "training_curves.png",
                               f"{'sft -> ' * training.sft.enabled}{training.method} on {trained.num_workers} workers")  # fmt: skip
    if png:
        tracking_mod.log_artifacts(tracking, mlflow_run_id, {"train": png})
        encoded = base64.b64encode(png.read_bytes()).decode()
        create_markdown_artifact(f"![training curves](data:image/png;base64,{encoded})", key="training-curves",
                                 description=f"{trained.steps} steps, MLflow run {mlflow_run_id}")  # fmt: skip
    return trained


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(config: PipelineConfig, candidate: Ref, base: Ref, test_data: Ref, champion_dir: Path | None) -> dict:
    return evaluate_mod.evaluate_models(
        candidate.path,
        base.loadable,
        test_data.path,
        beta=config.training.knob("beta", float),
        batch_size=config.evaluation.batch_size,
        max_pairs=config.evaluation.max_pairs,
        champion=champion_dir,
    )


@task(name="champion", cache_policy=NO_CACHE)
def export_champion(tracking: str, name: str, dest: Path) -> Path | None:
    return versions_mod.export_champion(tracking, name, dest)


@task(name="win-rate", cache_policy=NO_CACHE)
def win_rate(config: PipelineConfig, candidate: Ref, opponent: str, against: str, test_data: Ref) -> dict:
    """Candidate vs champion (or base) answers to held-out prompts, rated by the offline judge."""
    from alignflow.tasks.generation import judge as judge_mod

    ev = config.evaluation
    try:
        gen = config.generation
        references = {
            r["id"]: r["reference"]
            for r in load_prompts(gen.prompts, column=gen.prompt_column, reference_column=gen.reference_column)
        }
    except (OSError, ValueError):
        references = {}
    prompts = evaluate_mod.held_out_prompts(test_data.path, references, ev.win_rate_prompts, ev.seed)
    # Always the offline scorer, whatever generation.judge is: reference-based, free and deterministic,
    # so every candidate and champion is compared the same way (an LLM judge only rates training data).
    judge = judge_mod.score
    result = evaluate_mod.win_rate(candidate.path, opponent, prompts, judge, ev.max_new_tokens, ev.temperature, ev.seed)
    get_run_logger().info(
        "win rate against the %s: %s (%s wins, %s ties, %s losses on %s prompts)",
        against, result["win_rate"], result["wins"], result["ties"], result["losses"], result["prompts"],
    )  # fmt: skip
    return {**result, "against": against, "judge": "offline"}


@task(name="register", cache_policy=NO_CACHE)
def register(
    config: PipelineConfig,
    tracking: str,
    run_id: str,
    model: Ref,
    tags: dict[str, str],
    metrics: dict,
    expected_champion: str | None = None,
) -> dict:
    """Register (once per MLflow run), tag lineage and the gate's outcome, write the model card,
    and promote when the gate passes and the champion is still the one evaluated against."""
    from alignflow.tasks.registry.promotion import PromotionRefused

    gate = config.registry.gate
    name = config.registry.model_name
    has_champion = versions_mod.current_champion(tracking, name) is not None
    champion = metrics.get("champion") or versions_mod.recorded_champion_metrics(tracking, name)
    candidate = {**metrics["candidate"]}
    if "win_rate" in metrics:
        candidate["win_rate"] = metrics["win_rate"]["win_rate"]
    passed, reason = decide(candidate, champion, gate, has_champion)
    promote = passed and config.registry.auto_promote
    if passed and not promote:
        reason += "; registry.auto_promote is off: promote by hand"
    version = versions_mod.log_model_version(tracking, run_id, name, model.path)
    version_tags = {
        **tags,
        "model_sha256": model.sha256,
        "gate.metric": gate.metric,
        "gate.outcome": "promoted" if promote else ("passed" if passed else "not promoted"),
        "gate.reason": reason,
    }
    try:
        versions_mod.tag_and_alias(
            tracking, name, version, version_tags, promote, expected_champion, tags.get("prefect_flow_run_url")
        )
    except PromotionRefused as exc:  # the champion moved while this run evaluated: an outcome, not an error
        promote, reason = False, str(exc)
        version_tags.update({"gate.outcome": "not promoted", "gate.reason": reason})
        versions_mod.tag_and_alias(tracking, name, version, version_tags, False)
    card = model_card(name, version, version_tags, metrics, metrics.get("win_rate"))
    write_model_card(tracking, name, version, card)
    get_run_logger().info(
        "registered %s version %s: %s (%s)",
        name,
        version,
        "promoted to champion" if promote else "not promoted",
        reason,
    )
    return {"model": name, "version": version, "promoted": promote, "reason": reason, "gate": gate.model_dump()}


def _validation_artifact(report: ValidationReport) -> None:
    rows = [
        {"check": k, "level": v.level, "count": v.count, "example rows": str(v.example_rows), "meaning": v.description}
        for k, v in report.checks.items()
    ]
    create_table_artifact(
        rows,
        key="validation-report",
        description=f"{report.valid}/{report.rows} pairs valid; gate {'passed' if report.gate.passed else 'FAILED'}",
    )
    create_markdown_artifact(summary_markdown(report), key="validation-summary")


def _evaluation_artifact(metrics: dict, outcome: dict, run_id: str, config: PipelineConfig, tracking: str) -> None:
    lines = ["| model | " + " | ".join(evaluate_mod.METRICS) + " |", "|---" * (len(evaluate_mod.METRICS) + 1) + "|"]
    for who in ("candidate", "champion", "base"):
        if who in metrics:
            lines.append(f"| {who} | " + " | ".join(str(metrics[who][m]) for m in evaluate_mod.METRICS) + " |")
    verdict = "promoted to **champion**" if outcome["promoted"] else "**not promoted**"
    ui = mlflow_ui_url(config, tracking)
    run_url = mlflow_run_url(ui, experiment_of(tracking, run_id), run_id) if ui else None
    version_url = model_version_url(ui, outcome["model"], outcome["version"])
    run_link = f"[`{run_id}`]({run_url})" if run_url else f"`{run_id}`"
    version_link = f"[{outcome['model']} v{outcome['version']}]({version_url})" if version_url else (
        f"`models:/{outcome['model']}/{outcome['version']}`")  # fmt: skip
    create_markdown_artifact(
        f"## {outcome['model']} v{outcome['version']}: {verdict}\n\n{outcome['reason']}\n\n"
        f"Held-out pairs: {metrics['pairs']}. MLflow run {run_link}; model version {version_link}"
        f"{'' if ui else ' (set runtime.mlflow_ui_url for links)'}.\n\n" + "\n".join(lines),
        key="evaluation-summary",
    )


def _samples_artifact(tracking: str, run_id: str, win: dict, limit: int) -> list[dict]:
    """The (prompt, champion or base, candidate) table: in MLflow (eval/samples.json) and Prefect."""
    rows = [
        {
            "prompt": r["prompt"],
            win["against"]: r["opponent"],
            "candidate": r["candidate"],
            f"{win['against']}_score": r["opponent_score"],
            "candidate_score": r["candidate_score"],
        }
        for r in win["rows"][:limit]
    ]
    if rows:
        tracking_mod.log_table(tracking, run_id, rows, "eval/samples.json")
        create_table_artifact(
            rows,
            key="sample-generations",
            description=f"held-out prompts answered by the {win['against']} and the candidate; "
            f"win rate {win['win_rate']} over {win['prompts']} prompts",
        )
    return rows


def _timed(seconds: dict[str, float], stage: str, fn: Callable[..., Any], *args: Any) -> Any:
    started = time.perf_counter()
    try:
        return fn(*args)
    finally:
        seconds[stage] = round(seconds.get(stage, 0.0) + time.perf_counter() - started, 1)


@dataclass(frozen=True)
class PreparedData:
    """What the data stages hand training: the base model, the pairs and their validated split."""

    base: Ref
    pairs: Ref
    generation: GenerationReport
    validation: ValidationReport
    train: Ref
    test: Ref


def generate_data(
    config: PipelineConfig, root: Path, base: Ref | None, seconds: dict[str, float]
) -> tuple[Ref, GenerationReport, str]:
    """Stage 1, the `generate` task on its content key: returns the pairs, the stage report and the key.

    `base` is the base model's Ref, reused for transformers LLMs that name the same model."""
    gen = config.generation
    models: list[Ref | None] = []
    if gen.preference_data:
        key, source_file = "generation.preference_data", Path(gen.preference_data).expanduser()
    else:
        key, source_file = "generation.prompts", prompts_path(gen.prompts)
        for _, llm in llm_slots(gen):
            if llm.provider != "transformers":
                models.append(None)  # an endpoint: its identity (model name, base_url) is in the settings
            elif base is not None and llm.model == config.training.model_name_or_path:
                models.append(base)
            else:
                models.append(base_model(llm.model, config.training, root / "models"))
    try:
        source = Ref(uri=source_file.resolve().as_uri(), sha256=source_sha256(source_file))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc} ({key})") from None
    # The dataset's key is the content of everything that shapes the candidates and their scores;
    # binarization and thresholds only pick pairs from them (one pairs folder per setting inside).
    data_key = sha256_text(
        candidate_settings(gen),
        str(gen.preference_data),
        source.sha256,
        code_version(),
        str(config.runtime.seed),
        *(m.sha256 for m in models if m is not None),
    )[:16]
    pairs, report = _timed(
        seconds,
        "generate",
        generate,
        gen,
        source,
        models,
        root / "datasets" / data_key,
        config.runtime.seed,
        config.runtime.ray_address,
    )
    return pairs, report, data_key


def prepare_data(config: PipelineConfig, root: Path, seconds: dict[str, float]) -> PreparedData:
    """Stages 1 and 2 (base model, generate, validate); raises GateFailed when the data is not fit to train on.

    Shared by the alignment flow and the comparison flow, so every recipe sees the same split."""
    base = _timed(
        seconds, "base_model", base_model, config.training.model_name_or_path, config.training, root / "models"
    )
    pairs, gen_report, data_key = generate_data(config, root, base, seconds)

    report, split = _timed(
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
        / sha256_text(config.validation.model_dump_json(), pairs.sha256, validate_mod.code_version())[:12],
    )
    _validation_artifact(report)
    if not report.gate.passed:
        raise GateFailed(
            "validation gate failed: "
            + "; ".join(report.gate.failures)
            + f" (report: {report.files['report']}, quarantine: {report.files['quarantine']})"
        )
    return PreparedData(base, pairs, gen_report, report, split["train"], split["test"])


def _config_from_parameters(parameters: dict) -> PipelineConfig:
    return PipelineConfig.model_validate(parameters["config"])


# A failed or crashed run POSTs to runtime.notify_webhook (flows/notify.py); the MLflow run is
# marked FAILED by the flow itself (the except below), before the hook runs.
@flow(
    name="alignment",
    description="Generate, validate, train (DPO/ORPO on Ray), evaluate and register a model.",
    on_failure=[failure_hook(_config_from_parameters)],
    on_crashed=[failure_hook(_config_from_parameters)],
)
def alignment(config: PipelineConfig) -> dict:
    """One alignment run, from prompts to a registered model version."""
    logger = get_run_logger()
    root = configure_environment(config)
    tracking = tracking_uri(config)
    run_key = (flow_run.id or "local")[:8]
    run_name = f"{config.name}-{flow_run.name or run_key}"

    seconds: dict[str, float] = {}
    data = prepare_data(config, root, seconds)
    base, pairs, gen_report, report = data.base, data.pairs, data.generation, data.validation
    train_ref, test_ref = data.train, data.test

    tags = {
        "dataset_uri": pairs.uri,
        "dataset_sha256": pairs.sha256,
        "config_hash": config_hash(config),
        "git_commit": tracking_mod.git_commit(),
        "prefect_flow_run_id": str(flow_run.id),
        "method": config.training.method,
        "base_model": config.training.model_name_or_path,
        "base_model_sha256": base.sha256,
        "prefect_flow_run_url": flow_run.ui_url or "",
        "train_dataset_sha256": train_ref.sha256,
        "test_dataset_sha256": test_ref.sha256,
        "validation.valid": str(report.valid),
        "validation.quarantined": str(report.quarantined),
    }
    # A tracking server stores artifacts where it is configured to; a local store, in the state dir.
    remote = tracking.startswith(("http://", "https://", "databricks"))
    run_id = tracking_mod.start_run(
        tracking, config.registry.experiment, run_name, flatten(config), tags, None if remote else artifact_root(config)
    )
    tags = {
        **tags,
        "training_run_id": run_id,
        "config_uri": f"runs:/{run_id}/config/resolved.yaml",
        "validation_report": f"runs:/{run_id}/validate/report.json",
    }
    try:
        tracking_mod.log_text(tracking, run_id, tracking_mod.config_yaml(config), "config/resolved.yaml")
        tracking_mod.log_datasets(
            tracking,
            run_id,
            {"train": (train_ref.uri, train_ref.sha256), "test": (test_ref.uri, test_ref.sha256)},
            config.name,
        )
        tracking_mod.log_metrics(
            tracking,
            run_id,
            {f"generate/{k}": v for k, v in gen_report.model_dump().items() if isinstance(v, int | float)},
        )
        tracking_mod.log_metrics(
            tracking, run_id, {"validate/valid": report.valid, "validate/quarantined": report.quarantined}
        )
        tracking_mod.log_artifacts(
            tracking,
            run_id,
            {
                "generate": pairs.path.parent / "report.json",
                "generate/pipeline": pairs.path.parent / "pipeline.yaml",
                "generate/lineage": pairs.path.parent / "lineage.json",  # content hash + pipeline hash
                "generate/failed": pairs.path.parent / "failed_rows.jsonl",
                "validate": Path(report.files["report"]),
                "validate/quarantine": Path(report.files["quarantine"]),
                "validate/summary": Path(report.files["summary"]),
            },
        )
        trained = _timed(
            seconds,
            "train",
            train,
            config.training,
            base,
            train_ref,
            config.training.storage or str(root / "ray"),
            config.name,
            tracking,
            run_id,
            config.runtime.ray_address,
        )
        logger.info(
            "trained %s steps in %ss on %s workers",
            trained.steps,
            trained.wall_s,
            trained.num_workers,
        )
        tracking_mod.log_metrics(tracking, run_id, {"train/wall_s": trained.wall_s, "train/steps": trained.steps})
        model = trained.model

        evaluated_against = versions_mod.current_champion(tracking, config.registry.model_name)
        champion_dir = _timed(
            seconds, "evaluate", export_champion, tracking, config.registry.model_name, root / "champions" / run_key
        )
        metrics = _timed(seconds, "evaluate", evaluate, config, model, base, test_ref, champion_dir)
        opponent = (str(champion_dir), "champion") if champion_dir else (base.loadable, "base")
        win = _timed(seconds, "evaluate", win_rate, config, model, *opponent, test_ref)
        metrics["win_rate"] = {k: v for k, v in win.items() if k != "rows"}
        tracking_mod.log_win_rate(tracking, run_id, win)
        tracking_mod.log_metrics(
            tracking,
            run_id,
            {
                f"eval/{who}/{k}": v
                for who in ("candidate", "base", "champion")
                for k, v in metrics.get(who, {}).items()
            },
        )
        tracking_mod.log_metrics(tracking, run_id, {f"eval/{k}": v for k, v in metrics["candidate"].items()})
        outcome = _timed(
            seconds,
            "register",
            register,
            config,
            tracking,
            run_id,
            model,
            tags,
            metrics,
            str(evaluated_against.version) if evaluated_against else None,
        )
        metrics["samples"] = _samples_artifact(tracking, run_id, win, config.evaluation.samples)
        _evaluation_artifact(metrics, outcome, run_id, config, tracking)
        tracking_mod.log_metrics(tracking, run_id, {f"seconds/{k}": v for k, v in seconds.items()})
    except BaseException:
        tracking_mod.end_run(tracking, run_id, "FAILED")
        raise
    tracking_mod.end_run(tracking, run_id)
    return {
        "mlflow_run_id": run_id,
        "flow_run_id": str(flow_run.id),
        "dataset": pairs.model_dump(),
        "generation": gen_report.model_dump(),
        "validation": report.model_dump(include={"rows", "valid", "quarantined"}),
        "training": trained.model_dump(mode="json"),
        "evaluation": metrics,
        "registry": outcome,
        "seconds": seconds,
    }
