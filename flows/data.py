"""Stages 1 and 2, shared by the alignment and comparison flows: generate, then validate.

The generated dataset lives in a folder keyed by the content of everything that shapes the
candidates and their scores (prompts, generator and judge settings, models, code, seed), so a
re-run finds it again; the generate and validate tasks are Prefect-cached on the same content.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alignflow.conf.base import CHAMPION_MODEL
from alignflow.conf.generation import JudgeConfig
from alignflow.conf.schema import PipelineConfig
from alignflow.flows import artifacts
from alignflow.flows.stages import base_model, generate, validate
from alignflow.tasks.generation.byo import is_dataset_id
from alignflow.tasks.generation.byo import source_sha256 as dataset_sha256
from alignflow.tasks.generation.fingerprint import candidate_settings, code_version
from alignflow.tasks.generation.prompts import load_prompts, prompts_path, source_sha256
from alignflow.tasks.generation.report import GenerationReport
from alignflow.tasks.registry import versions
from alignflow.tasks.reward.models import judge_model_dir
from alignflow.tasks.runtime.chat_template import key_parts
from alignflow.tasks.runtime.state import Ref, sha256_text, sha256_tree, tracking_uri
from alignflow.tasks.validation import stage as validation
from alignflow.tasks.validation.report import ValidationReport


class GateFailed(RuntimeError):
    """The run stopped at a gate (exit code 1), not because something broke."""


@dataclass(frozen=True)
class PreparedData:
    """What the data stages hand training: the models, the pairs and their validated split."""

    base: Ref
    start: Ref  # the policy's starting point: the base model, or the champion (training.start_from)
    start_label: str
    pairs: Ref
    generation: GenerationReport
    validation: ValidationReport
    split: dict[str, Ref]

    @property
    def train(self) -> Ref:
        return self.split["train"]

    @property
    def test(self) -> Ref:
        return self.split["test"]


def _generator_models(config: PipelineConfig, root: Path, base: Ref, champion: Ref | None) -> list[Ref | None]:
    """Each generator's local model (None for an endpoint: its identity is in the settings)."""
    models: list[Ref | None] = []
    for _, llm in config.generation.llm_slots():
        if not llm.is_local:
            models.append(None)
        elif llm.model == CHAMPION_MODEL:
            models.append(champion or base)
        elif llm.model == config.training.model_name_or_path:
            models.append(base)
        else:
            models.append(
                base_model(config.training.model_copy(update={"model_name_or_path": llm.model}), root / "models")
            )
    return models


def generator_templates(config: PipelineConfig) -> list[str | None]:
    """Each generator's chat template override: training.chat_template's text for a local model of the family being
    trained (the base model, or `registry:champion`: the policy this round starts from), so that its candidates are
    the conversations training will see; None for other models and for endpoints (a server applies its own)."""
    family = (CHAMPION_MODEL, config.training.model_name_or_path)
    return [
        config.training.chat_template_text if llm.is_local and llm.model in family else None
        for _, llm in config.generation.llm_slots()
    ]


def judge_model(judge: JudgeConfig, config: PipelineConfig, root: Path) -> Ref | None:
    """A reward_model judge's model as a local folder (a registered version is downloaded once), by content."""
    folder = judge_model_dir(judge, tracking_uri(config), root / "models")
    return None if folder is None else Ref(uri=folder.as_uri(), sha256=sha256_tree(folder))


def prompt_offset(config: PipelineConfig) -> int:
    """Where this round's prompts start: with generation.rotate_prompts, after the max_prompts of each round
    registered so far (one version each), so that every night trains on prompts the champion has not seen."""
    gen = config.generation
    if not gen.rotate_prompts or not gen.max_prompts or gen.preference_data:
        return 0
    return versions.version_count(tracking_uri(config), config.registry.model_name) * gen.max_prompts


def generate_data(config: PipelineConfig, root: Path, models: list[Ref | None]) -> tuple[Ref, GenerationReport, str]:
    """Stage 1, the `generate` task in the dataset folder of its content key: the pairs, the report and the key.

    `models`: each generator's local model (_generator_models), none for your own preference data."""
    gen = config.generation
    offset = prompt_offset(config)
    key, source_file = (
        ("generation.preference_data", Path(gen.preference_data).expanduser())
        if gen.preference_data
        else ("generation.prompts", prompts_path(gen.prompts))
    )
    try:
        if gen.preference_data and is_dataset_id(gen.preference_data):  # the generate stage reads the HF cache
            source = Ref(uri=gen.preference_data, sha256=dataset_sha256(gen.preference_data))
        else:
            source = Ref(uri=source_file.resolve().as_uri(), sha256=source_sha256(source_file))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc} ({key})") from None
    templates = generator_templates(config) if models else []
    judge = judge_model(gen.judge, config, root) if models else None
    # Binarization and thresholds only pick pairs from the candidates (one pairs folder per setting inside).
    data_key = sha256_text(
        candidate_settings(gen),
        str(gen.preference_data),
        source.sha256,
        code_version(),
        str(config.runtime.seed),
        str(offset),
        *(m.sha256 for m in models if m is not None),
        *(part for template in templates for part in key_parts(template)),
        *([judge.sha256] if judge else []),
    )[:16]
    pairs, generated = generate(
        gen,
        source,
        models,
        root / "datasets" / data_key,
        config.runtime.seed,
        config.runtime.ray_address,
        offset,
        templates,
        judge,
    )
    return pairs, generated, data_key


def prepare_data(config: PipelineConfig, root: Path, base: Ref, champion: Ref | None) -> PreparedData:
    """Generate (or import) pairs and validate them; raises GateFailed when the data is not fit to train on."""
    gen = config.generation
    models = [] if gen.preference_data else _generator_models(config, root, base, champion)
    pairs, generated, data_key = generate_data(config, root, models)
    folder = root / "datasets" / data_key

    columns = (gen.preference_columns or None) if gen.preference_data else None
    eval_prompts = [row["prompt"] for row in load_prompts(config.evaluation.prompts)]
    template = config.training.chat_template_text  # validation counts tokens as training will see them
    checks_key = sha256_text(
        config.validation.model_dump_json(),
        pairs.sha256,
        validation.code_version(),
        str(columns),
        *eval_prompts,
        *key_parts(template),
    )[:12]
    out_dir = folder / "validation" / checks_key
    report, split = validate(pairs, config.validation, base, out_dir, columns, eval_prompts, template)
    artifacts.validation(report)
    if not report.gate.passed:
        raise GateFailed(
            "validation gate failed: "
            + "; ".join(report.gate.failures)
            + f" (report: {report.files['report']}, quarantine: {report.files['quarantine']})"
        )
    from_champion = config.training.start_from == "champion" and champion is not None
    return PreparedData(
        base=base,
        start=champion if from_champion and champion else base,
        start_label="champion" if from_champion else "base",
        pairs=pairs,
        generation=generated,
        validation=report,
        split=split,
    )
