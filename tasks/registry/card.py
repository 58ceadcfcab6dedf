"""The model card: README.md of a model version, from its lineage tags and held-out metrics."""

from __future__ import annotations

from pathlib import Path

from alignflow.tasks.registry.tracking import mlflow_client


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

    client = mlflow_client(tracking_uri)
    source = client.get_model_version(name, version).source
    with tempfile.TemporaryDirectory() as tmp:
        card = Path(tmp) / "README.md"
        card.write_text(text, encoding="utf-8")
        if source.startswith("models:/m-"):  # MLflow 3: a LoggedModel with its own artifacts
            client.log_model_artifact(source.removeprefix("models:/"), str(card))
        else:  # a run's artifact folder (runs:/<id>/model)
            run_id, _, path = source.removeprefix("runs:/").partition("/")
            client.log_artifact(run_id, str(card), artifact_path=path or None)
