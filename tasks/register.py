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

from conf.schema import GateConfig

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


def log_artifacts(tracking_uri: str, run_id: str, files: dict[str, Path]) -> None:
    """Log files into the run, each under the artifact folder given as its key."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    for folder, path in files.items():
        if Path(path).exists():
            client.log_artifact(run_id, str(path), artifact_path=folder)


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
    """Promote or not, and why, in words a person reads on the model version."""
    value = candidate[gate.metric]
    if champion is None or gate.metric not in champion:
        if has_champion:
            return False, f"the champion's {gate.metric} is unknown (not loadable, none recorded); promote by hand"
        return True, f"first model: no champion yet ({gate.metric}={value:.4f})"
    best = champion[gate.metric]
    if value > best + gate.min_improvement:
        return True, f"{gate.metric} {value:.4f} > champion {best:.4f} + {gate.min_improvement}"
    return False, f"{gate.metric} {value:.4f} does not beat champion {best:.4f} + {gate.min_improvement}"


def log_model_version(tracking_uri: str, run_id: str, name: str, model_dir: Path) -> str:
    """Log the model as a transformers text-generation pipeline and register it; the new version."""
    import logging

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
            registered_model_name=name,
            # Inferring requirements imports optional vision packages that are not installed.
            pip_requirements=[f"{p}=={pkg_version(p)}" for p in ("transformers", "torch", "tokenizers", "accelerate")],
        )
    return str(info.registered_model_version)


def tag_and_alias(tracking_uri: str, name: str, version: str, tags: dict[str, str], promote: bool) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, CHALLENGER, version)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)
