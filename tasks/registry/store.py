"""Stage 5, register: MLflow run, model version with lineage tags, challenger/champion aliases.

Every run's model becomes a new version with alias `challenger`. The gate then compares
the candidate with the current champion on the same held-out pairs; `champion` moves only
when the candidate is better by more than `registry.gate.min_improvement` (the first model
becomes champion). Not being promoted is an outcome, recorded on the version, not an error.
"""

from __future__ import annotations

import subprocess
from importlib.metadata import version as pkg_version
from pathlib import Path

from alignflow.conf.evaluation import GateConfig

CHAMPION, CHALLENGER = "champion", "challenger"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def start_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    params: dict[str, str],
    tags: dict[str, str],
    artifact_location: str | None = None,
) -> str:
    """Create the flow's MLflow run (stages log into it by id) and return its id.

    A new experiment's artifacts go to `artifact_location` (the state directory by default):
    MLflow's own default is ./mlruns in whatever directory the process runs in.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Param

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = (
        found.experiment_id if found else client.create_experiment(experiment, artifact_location=artifact_location)
    )
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    items = [Param(k, v[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[start : start + 100])
    return run.info.run_id


def start_child_run(
    tracking_uri: str,
    experiment: str,
    parent_run_id: str,
    run_name: str,
    params: dict[str, str],
    tags: dict[str, str],
    artifact_location: str | None = None,
) -> str:
    """A run nested under `parent_run_id` (MLflow's `mlflow.parentRunId` tag: the UI shows it under the parent)."""
    return start_run(
        tracking_uri, experiment, run_name, params, {**tags, "mlflow.parentRunId": parent_run_id}, artifact_location
    )


def child_runs(tracking_uri: str, parent_run_id: str) -> list:
    """The runs nested under `parent_run_id`, oldest first."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_run_id)
    found = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=1000
    )
    return sorted(found, key=lambda r: r.info.start_time)


def set_tags(tracking_uri: str, run_id: str, tags: dict[str, str]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def run_status(tracking_uri: str, run_id: str) -> str:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri).get_run(run_id).info.status


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    from mlflow import MlflowClient

    MlflowClient(tracking_uri).set_terminated(run_id, status=status)


def log_metrics(tracking_uri: str, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    batch = [Metric(k, float(v), stamp, step) for k, v in metrics.items() if v is not None]
    MlflowClient(tracking_uri).log_batch(run_id, metrics=batch)


def log_win_rate(tracking_uri: str, run_id: str, win: dict) -> None:
    """The win rate and both sides' mean judge scores, under the names the gate and the model card read."""
    log_metrics(
        tracking_uri,
        run_id,
        {
            "eval/win_rate": win["win_rate"],
            "eval/judge/candidate_score": win["candidate_score"],
            f"eval/judge/{win['against']}_score": win["opponent_score"],
        },
    )


def log_artifacts(tracking_uri: str, run_id: str, files: dict[str, Path]) -> None:
    """Log files into the run, each under the artifact folder given as its key."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    for folder, path in files.items():
        if Path(path).exists():
            client.log_artifact(run_id, str(path), artifact_path=folder)


def log_text(tracking_uri: str, run_id: str, text: str, artifact_file: str) -> None:
    from mlflow import MlflowClient

    MlflowClient(tracking_uri).log_text(run_id, text, artifact_file)


def log_table(tracking_uri: str, run_id: str, rows: list[dict], artifact_file: str) -> None:
    """A table artifact (MLflow's UI shows it in the run's evaluation view)."""
    import pandas as pd
    from mlflow import MlflowClient

    MlflowClient(tracking_uri).log_table(run_id, pd.DataFrame(rows), artifact_file)


def config_yaml(config) -> str:
    """The resolved config (profile + overrides + defaults) as YAML, logged with every run."""
    import yaml

    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def current_champion(tracking_uri: str, name: str):
    """The champion ModelVersion, or None when the model has none yet."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient(tracking_uri).get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def export_champion(tracking_uri: str, name: str, dest: Path) -> Path | None:
    """Save the champion's weights and tokenizer as a plain HF folder (for evaluation).

    None when there is no champion, or when its artifacts cannot be loaded (then the gate
    falls back to the metrics recorded when the champion was registered).
    """
    import logging

    import mlflow
    from mlflow.exceptions import MlflowException

    if current_champion(tracking_uri, name) is None:
        return None
    mlflow.set_tracking_uri(tracking_uri)
    try:
        parts = mlflow.transformers.load_model(f"models:/{name}@{CHAMPION}", return_type="components")
    except (MlflowException, OSError) as exc:
        logging.getLogger(__name__).warning(
            "champion of %s could not be loaded (%s); the gate uses its recorded metrics", name, exc
        )
        return None
    parts["model"].save_pretrained(dest)
    parts["tokenizer"].save_pretrained(dest)
    return dest


def recorded_champion_metrics(tracking_uri: str, name: str) -> dict[str, float] | None:
    """The champion's held-out metrics as logged by the run that registered it."""
    from mlflow import MlflowClient

    champion = current_champion(tracking_uri, name)
    if champion is None or not champion.run_id:
        return None
    logged = MlflowClient(tracking_uri).get_run(champion.run_id).data.metrics
    return {k.removeprefix("eval/"): v for k, v in logged.items() if k.startswith("eval/") and k.count("/") == 1}


def decide(
    candidate: dict[str, float], champion: dict[str, float] | None, gate: GateConfig, has_champion: bool | None = None
) -> tuple[bool, str]:
    """Promote or not, and why, in words a person reads on the model version.

    `candidate` holds the held-out metrics (plus `win_rate` when measured). The thresholds
    apply whatever the champion does; then the candidate must beat the champion on
    `gate.metric` by more than `gate.min_improvement` (the first model needs no champion).
    """
    below = [
        f"{m} {candidate[m]:.4f} < {minimum}" if m in candidate else f"{m} not measured (threshold {minimum})"
        for m, minimum in gate.thresholds.items()
        if m not in candidate or candidate[m] < minimum
    ]
    if gate.max_chosen_nll is not None and candidate.get("chosen_nll", float("inf")) > gate.max_chosen_nll:
        below.append(f"chosen_nll {candidate.get('chosen_nll', float('nan')):.4f} > {gate.max_chosen_nll}")
    if below:
        return False, "below the gate's thresholds: " + "; ".join(below)
    value = candidate[gate.metric]
    if champion is None or gate.metric not in champion:
        if has_champion:
            return False, f"the champion's {gate.metric} is unknown (not loadable, none recorded); promote by hand"
        return True, f"first model: no champion yet ({gate.metric}={value:.4f})"
    best = champion[gate.metric]
    if value > best + gate.min_improvement:
        return True, f"{gate.metric} {value:.4f} > champion {best:.4f} + {gate.min_improvement}"
    return False, f"{gate.metric} {value:.4f} does not beat champion {best:.4f} + {gate.min_improvement}"


def find_version(tracking_uri: str, name: str, run_id: str):
    """The version of `name` already registered from this MLflow run, or None."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        found = MlflowClient(tracking_uri).search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:
        return None
    return min(found, key=lambda v: int(v.version)) if found else None


def serving_signature():
    """Text in, text out, with the generation knobs a caller may pass as `params`."""
    from mlflow.models import infer_signature

    return infer_signature(
        ["Why is the sky blue?"],
        ["Because ..."],
        params={"max_new_tokens": 64, "do_sample": False, "temperature": 1.0, "top_p": 1.0},
    )


def log_model_version(tracking_uri: str, run_id: str, name: str, model_dir: Path) -> str:
    """Log the model as a transformers text-generation pipeline and register it; the version.

    Idempotent per training run: when a version of `name` was already registered from
    `run_id` (a retried flow, a re-run register stage), that version is returned and
    nothing new is logged.
    """
    import logging

    existing = find_version(tracking_uri, name, run_id)
    if existing is not None:
        return str(existing.version)

    import mlflow
    import transformers

    # It looks for a model card and licence on the hub, which a local model has not.
    logging.getLogger("mlflow.transformers").setLevel(logging.ERROR)
    mlflow.set_tracking_uri(tracking_uri)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    generator = transformers.pipeline("text-generation", model=model, tokenizer=tokenizer)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.transformers.log_model(
            transformers_model=generator,
            name="model",
            task="text-generation",
            signature=serving_signature(),
            registered_model_name=name,
            # Inferring requirements imports optional vision packages that are not installed.
            pip_requirements=[f"{p}=={pkg_version(p)}" for p in ("transformers", "torch", "tokenizers", "accelerate")],
        )
    version = str(info.registered_model_version)
    from mlflow import MlflowClient

    MlflowClient(tracking_uri).set_model_version_tag(name, version, "training_run_id", run_id)
    return version


def log_datasets(tracking_uri: str, run_id: str, splits: dict[str, tuple[str, str]], name: str) -> None:
    """Record the train/test parquet files as the run's MLflow dataset inputs.

    `splits` maps a context (`train`, `test`) to (URI, sha256); the digest MLflow shows is
    the file's sha256 (its first 36 hex digits, MLflow's limit).
    """
    import warnings

    import mlflow.data
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for context, (uri, sha) in splits.items():
        frame = pd.read_parquet(uri.removeprefix("file://"))
        with warnings.catch_warnings():  # schema-inference hints about integer columns
            warnings.simplefilter("ignore")
            dataset = mlflow.data.from_pandas(frame, source=uri, name=f"{name}-{context}", digest=sha[:36])
            entity = dataset._to_mlflow_entity()
        inputs.append(DatasetInput(entity, [InputTag("mlflow.data.context", context)]))
    MlflowClient(tracking_uri).log_inputs(run_id, datasets=inputs)


def model_card(name: str, version: str, tags: dict[str, str], metrics: dict, win: dict | None) -> str:
    """README.md of a model version, written from its lineage tags and held-out metrics."""
    lineage = [
        ("dataset", f"`{tags.get('dataset_uri', '?')}` (sha256 `{tags.get('dataset_sha256', '?')}`)"),
        ("validation report", f"`{tags.get('validation_report', '?')}`"),
        ("resolved config", f"`{tags.get('config_uri', '?')}` (hash `{tags.get('config_hash', '?')}`)"),
        ("base model", f"`{tags.get('base_model', '?')}` (sha256 `{tags.get('base_model_sha256', '?')[:16]}`)"),
        ("method", tags.get("method", "?")),
        ("git commit", f"`{tags.get('git_commit', '?')}`"),
        ("MLflow run", f"`{tags.get('training_run_id', '?')}`"),
        (
            "Prefect flow run",
            f"`{tags.get('prefect_flow_run_id', '?')}` {tags.get('prefect_flow_run_url', '')}".strip(),
        ),
        ("weights sha256", f"`{tags.get('model_sha256', '?')}`"),
    ]
    lines = [
        f"# {name} version {version}",
        "",
        f"Preference-aligned ({tags.get('method', '?')}) by alignflow. "
        f"Gate: **{tags.get('gate.outcome', '?')}** ({tags.get('gate.reason', '')}).",
        "",
        "## Lineage",
        "",
        "| fact | value |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in lineage),
        "",
        f"## Held-out metrics ({metrics.get('pairs', '?')} pairs)",
        "",
    ]
    models = [who for who in ("candidate", "champion", "base") if isinstance(metrics.get(who), dict)]
    if models:
        keys = list(metrics[models[0]])
        lines += ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {who} | " + " | ".join(str(metrics[who].get(k)) for k in keys) + " |" for who in models]
    if win:
        lines += [
            "",
            f"Win rate against the {win['against']}: **{win['win_rate']}** over {win['prompts']} held-out prompts "
            f"({win['wins']} wins, {win['ties']} ties, {win['losses']} losses; judge: {win.get('judge', '?')}).",
        ]
    lines += [
        "",
        "## Use",
        "",
        "```bash",
        f"mlflow models serve -m models:/{name}/{version} --env-manager local",
        "```",
        "",
        'POST /invocations `{"inputs": ["..."], "params": {"max_new_tokens": 64}}`.',
        "",
    ]
    return "\n".join(lines)


def write_model_card(tracking_uri: str, name: str, version: str, text: str) -> None:
    """Put README.md next to the MLmodel file of the version's logged model."""
    import tempfile

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    source = client.get_model_version(name, version).source
    with tempfile.TemporaryDirectory() as tmp:
        card = Path(tmp) / "README.md"
        card.write_text(text, encoding="utf-8")
        if source.startswith("models:/m-"):  # MLflow 3: a LoggedModel with its own artifacts
            client.log_model_artifact(source.removeprefix("models:/"), str(card))
        else:  # a run's artifact folder (runs:/<id>/model)
            run_id, _, path = source.removeprefix("runs:/").partition("/")
            client.log_artifact(run_id, str(card), artifact_path=path or None)


def tag_and_alias(
    tracking_uri: str,
    name: str,
    version: str,
    tags: dict[str, str],
    promote: bool,
    expected_champion: str | None | bool = False,
    flow_run: str | None = None,
) -> None:
    """Tag the version, make it `challenger`, and when `promote` hand it `champion`.

    Promotion goes through alignflow.tasks.registry.promotion (lock, who/when/why tags, history) as source
    `gate`; `expected_champion` makes it refuse when the champion moved since evaluation.
    """
    from mlflow import MlflowClient

    from alignflow.tasks.registry import promotion

    client = MlflowClient(tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, CHALLENGER, version)
    if promote:
        promotion.promote(
            tracking_uri,
            name,
            version,
            reason=f"gate: {tags.get('gate.reason', 'passed')}",
            source="gate",
            expected_champion=expected_champion,
            flow_run=flow_run,
        )
