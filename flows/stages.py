"""The pipeline's stages as Prefect tasks: small typed wrappers around alignflow.tasks.

Each takes the config section it needs and returns a typed result. Caching, retries and tags
are declared on the decorator: generate and validate are cached on the content they read
(inputs + task source), so a re-run reuses their data; train never retries blindly (its Ray run
is named by content, so a re-run resumes from the last checkpoint) and holds the server's
`alignflow-train` slot: one training at a time (flows/limits.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE

from alignflow.conf.evaluation import EvaluationConfig, RegistryConfig
from alignflow.conf.generation import GenerationConfig
from alignflow.conf.training import TrainingConfig
from alignflow.conf.validation import ValidationConfig
from alignflow.flows import artifacts
from alignflow.flows.limits import TRAIN_LIMIT_TAG, champion_change
from alignflow.flows.runbook import RunBook
from alignflow.tasks.evaluation.stage import Evaluation
from alignflow.tasks.evaluation.stage import evaluate as evaluate_candidate
from alignflow.tasks.generation.byo import import_preference_data
from alignflow.tasks.generation.prompts import load_prompts
from alignflow.tasks.generation.report import GenerationReport
from alignflow.tasks.generation.stage import GenerationFailed, generate_preferences
from alignflow.tasks.registry import trajectory, versions
from alignflow.tasks.registry.card import model_card, write_model_card
from alignflow.tasks.registry.gate import GateDecision, decide_panel
from alignflow.tasks.registry.promotion import PromotionRefused
from alignflow.tasks.runtime.chat_template import load_tokenizer
from alignflow.tasks.runtime.models import resolve_model
from alignflow.tasks.runtime.state import Ref, sha256_file, sha256_text, sha256_tree
from alignflow.tasks.training.curves import plot_training_curves
from alignflow.tasks.training.driver import TrainResult, content_run_name, train_stages
from alignflow.tasks.training.job import TrainJob
from alignflow.tasks.training.recipe import effective_config
from alignflow.tasks.validation import stage as validation
from alignflow.tasks.validation.report import ValidationReport

CONTENT = INPUTS + TASK_SOURCE  # cache on what the stage reads and the code that reads it


@dataclass(frozen=True)
class Champion:
    """The registry's champion, exported as a plain HF folder for generation, training and the head-to-head."""

    version: str
    model: Ref


@dataclass(frozen=True)
class Registration:
    model: str
    version: str
    promoted: bool
    decision: GateDecision


@task(name="base-model", cache_policy=NO_CACHE)
def base_model(training: TrainingConfig, models_dir: Path) -> Ref:
    """The base policy (building the offline tiny model on first use)."""
    logger = get_run_logger()
    if training.model_name_or_path.startswith("builtin:"):
        logger.info("base model %s (built or converted once into %s)", training.model_name_or_path, models_dir)
    else:
        logger.info("base model %s", training.model_name_or_path)
    resolved = resolve_model(training.model_name_or_path, training.tiny_model, models_dir, progress=logger.info)
    local = Path(resolved)
    if local.is_dir():
        return Ref(uri=local.resolve().as_uri(), sha256=sha256_tree(local))
    return Ref(uri=str(resolved), sha256=sha256_text(str(resolved)))


@task(name="champion", cache_policy=NO_CACHE)
def champion(registry: RegistryConfig, tracking: str, dest: Path) -> Champion | None:
    """The current champion as a local folder, or None when the model has none yet."""
    current = versions.current_champion(tracking, registry.model_name)
    if current is None:
        return None
    exported = versions.export_champion(tracking, registry.model_name, dest)
    if exported is None:
        raise RuntimeError(
            f"{registry.model_name} v{current.version} is champion but its model cannot be loaded: "
            "the head-to-head needs it (roll back, or promote a loadable version)"
        )
    get_run_logger().info("champion: %s v%s", registry.model_name, current.version)
    return Champion(str(current.version), Ref(uri=exported.resolve().as_uri(), sha256=sha256_tree(exported)))


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
    offset: int = 0,
    chat_templates: list[str | None] | None = None,
    judge_model: Ref | None = None,
) -> tuple[Ref, GenerationReport]:
    """Synthetic pairs from the prompts (from prompt `offset` on: the round's prompts), or the user's own pairs
    snapshotted; and the stage's report. `chat_templates[i]` replaces generator i's model's own (None: its own);
    `judge_model` is a reward_model judge's local model."""
    logger = get_run_logger()
    if generation.preference_data:
        pairs, report = import_preference_data(
            generation.preference_data, out_dir, generation.preference_columns or None
        )
        logger.info("using %s preference rows (%s) from %s: generation skipped", report.rows, report.format, source.uri)
    else:
        rows = load_prompts(
            generation.prompts, generation.max_prompts, generation.prompt_column, generation.reference_column, offset
        )
        try:
            paths = [m.loadable if m else None for m in models]
            judge = judge_model.loadable if judge_model else None
            pairs, report = generate_preferences(
                rows, generation, paths, out_dir, seed, ray_address, chat_templates, judge
            )
        except GenerationFailed as exc:
            artifacts.generation(exc.report)  # the failed run's counts, next to its error
            raise
        logger.info(
            "generated %s candidates for %s prompts -> %s pairs (%s ties, %s identical, %s failed) in %ss",
            report.candidates,
            report.prompts,
            report.pairs,
            report.ties,
            report.identical,
            report.failed,
            report.seconds,
        )
    artifacts.generation(report)
    return pairs, report


@task(name="validate", cache_policy=CONTENT, persist_result=True)
def validate(
    pairs: Ref,
    config: ValidationConfig,
    tokenizer_from: Ref,
    out_dir: Path,
    columns: dict[str, str] | None = None,
    eval_prompts: list[str] | None = None,
    chat_template: str | None = None,
) -> tuple[ValidationReport, dict[str, Ref]]:
    """The report and Refs to the train/test split it wrote (none when the gate failed).

    `columns` maps a user's column names to TRL's (generation.preference_columns); `eval_prompts` is the
    evaluation set, so that a training prompt that is also an evaluation prompt is an error (eval_overlap).
    The token checks count through the tokenizer training will use: the base model's, with `chat_template`
    (training.chat_template's text) in place of its own."""
    tokenizer = load_tokenizer(tokenizer_from.loadable, chat_template)
    # Streams the file: checks, quarantine and the grouped train/test split, chunk by chunk.
    report = validation.validate_file(
        pairs.path, config, out_dir, tokenizer, columns=columns, eval_prompts=eval_prompts
    )
    split = {
        key: Ref(uri=Path(report.files[key]).as_uri(), sha256=sha256_file(Path(report.files[key])))
        for key in ("train", "test")
        if key in report.files
    }
    if report.split is not None and report.split.leaked_prompts:
        raise RuntimeError(f"train/test split leaked {report.split.leaked_prompts} prompts")
    return report, split


def fit(training: TrainingConfig, start: Ref, train_data: Ref, storage: str, book: RunBook, name: str) -> TrainResult:
    """Train on Ray from `start` (the base model or the champion) into `book`'s run; the effective TRL config
    first, the curves after. The Ray run is `name` plus a hash of what it reads (config, model, data)."""
    logger = get_run_logger()
    # Named by content, so a re-run after a crash or a kill resumes from the last checkpoint.
    ray_run = content_run_name(storage, name, training, start, train_data)
    effective = effective_config(training)
    for note in effective["notes"]:
        logger.warning("%s: effective config: %s", name, note)
    book.log_text(json.dumps(effective, indent=2, default=str), "train/effective_config.json")
    job = TrainJob(training, start.loadable, train_data, storage, ray_run, book.tracking, book.run_id, book.ray_address)
    trained = train_stages(job)
    if trained.resumed_from_step:
        logger.info("%s: resumed from the checkpoint at step %s", name, trained.resumed_from_step)
    logger.info("%s: %s steps in %ss on %s workers", name, trained.steps, trained.wall_s, trained.num_workers)
    title = f"{'sft -> ' * training.sft.enabled}{training.method} on {trained.num_workers} workers"
    png = plot_training_curves(book.tracking, book.run_id, book.scratch / ray_run / "training_curves.png", title)
    if png:
        book.log_files({"train": png})
        artifacts.training_curves(png, f"{name}: {trained.steps} steps, MLflow run {book.run_id}")
    return trained


@task(name="train", cache_policy=NO_CACHE, retries=0, tags=[TRAIN_LIMIT_TAG])
def train(training: TrainingConfig, start: Ref, train_data: Ref, storage: str, book: RunBook) -> TrainResult:
    """One training at a time on the server (the `alignflow-train` slot); never retried blindly."""
    return fit(training, start, train_data, storage, book, book.run_prefix)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(
    config: EvaluationConfig,
    beta: float,
    candidate: Ref,
    base: Ref,
    split: dict[str, Ref],
    opponent: Champion | None,
    answers_cache: Path | None = None,
    chat_template: str | None = None,
    judge_models: list[Ref | None] | None = None,
) -> Evaluation:
    """Held-out metrics, then the candidate against the champion (the base model when there is none) and, when
    that was the champion, against the base model too (the rounds' trajectory). `chat_template`
    (training.chat_template's text) replaces the base model's own; `judge_models[i]` is the local model of the
    panel's judge i when that is a reward model."""
    evaluation = evaluate_candidate(
        config,
        beta,
        candidate,
        base,
        split["test"].path,
        split["train"].path,
        opponent.model if opponent else None,
        answers_cache,
        chat_template,
        [m.path if m else None for m in judge_models or []],
    )
    logger = get_run_logger()
    if evaluation.placements:
        pids = sorted({p["pid"] for p in evaluation.placements})
        devices = sorted({p["device"] for p in evaluation.placements})
        logger.info("evaluation: %s Ray tasks in processes %s on %s", len(evaluation.placements), pids, devices)
    logger.info(evaluation.head_to_head.summary())
    if evaluation.versus_base is not None:
        get_run_logger().info(evaluation.versus_base.summary())
    return evaluation


def _label_and_promote(
    book: RunBook, name: str, version: str, tags: dict[str, str], promote: bool, expected: str | None
) -> dict[str, str]:
    """Tag the version and make it challenger, and champion when `promote`; the tags as they were written."""
    try:
        versions.tag_and_alias(book.tracking, name, version, tags, promote, expected, book.flow_run_url)
        return tags
    except PromotionRefused as exc:  # the champion moved while this run evaluated: an outcome, not an error
        refused = {**tags, "gate.outcome": "not promoted", "gate.reason": str(exc)}
        versions.tag_and_alias(book.tracking, name, version, refused, False)
        return refused


@task(name="register", cache_policy=NO_CACHE)
def register(
    registry: RegistryConfig, book: RunBook, model: Ref, evaluation: Evaluation, opponent: Champion | None
) -> Registration:
    """Register (once per MLflow run), decide with the gate, tag the decision and its evidence, write the model
    card, and promote when the gate passes and the champion is still the one evaluated against."""
    name = registry.model_name
    decision = decide_panel(
        evaluation.judges, evaluation.held_out.candidate, evaluation.opponent_metrics, registry.gate
    )
    promote = decision.passed and registry.auto_promote
    version = versions.log_model_version(book.tracking, book.run_id, name, model.path)
    outcome = (
        "promoted"
        if promote
        else ("passed, not promoted (registry.auto_promote is off)" if decision.passed else "not promoted")
    )
    tags = {
        **book.tags,
        **decision.tags(),
        **trajectory.tags(evaluation.against_base),  # the rounds' trajectory: every version against the base
        "model_sha256": model.sha256,
        "gate.outcome": outcome,
    }
    expected = opponent.version if opponent else None
    # In the server's one promotion slot (flows/limits.py): the gate's promotion queues with manual ones.
    tags = champion_change(partial(_label_and_promote, book, name, version, tags, promote, expected))
    promote = tags["gate.outcome"] == "promoted"
    write_model_card(book.tracking, name, version, model_card(name, version, tags, evaluation, decision))
    get_run_logger().info("registered %s version %s: %s (%s)", name, version, tags["gate.outcome"], decision.reason)
    return Registration(name, version, promote, decision)
