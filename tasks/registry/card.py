"""The model card: README.md of a model version, from its lineage tags and held-out metrics."""

from __future__ import annotations

from pathlib import Path

from alignflow.tasks.evaluation.agreement import panel_markdown
from alignflow.tasks.evaluation.stage import Evaluation
from alignflow.tasks.registry.gate import GateDecision
from alignflow.tasks.registry.tracking import mlflow_client


def model_card(name: str, version: str, tags: dict[str, str], evaluation: Evaluation, decision: GateDecision) -> str:
    """README.md of a model version: lineage, the gate's decision with its evidence, held-out metrics, use."""
    # Imported here: serving.py imports mlflow, and the CLI imports this module.
    from alignflow.tasks.registry.serving import usage_markdown

    lineage = [
        ("dataset", f"`{tags.get('dataset_uri', '?')}` (sha256 `{tags.get('dataset_sha256', '?')}`)"),
        ("validation report", f"`{tags.get('validation_report', '?')}`"),
        ("resolved config", f"`{tags.get('config_uri', '?')}` (hash `{tags.get('config_hash', '?')}`)"),
        ("base model", f"`{tags.get('base_model', '?')}` (sha256 `{tags.get('base_model_sha256', '?')[:16]}`)"),
        ("started from", f"`{tags.get('started_from', '?')}`"),
        ("method", tags.get("method", "?")),
        ("code version", f"`{tags.get('git_commit', '?')}`"),
        ("MLflow run", f"`{tags.get('training_run_id', '?')}`"),
        (
            "Prefect flow run",
            f"`{tags.get('prefect_flow_run_id', '?')}` {tags.get('prefect_flow_run_url', '')}".strip(),
        ),
        ("weights sha256", f"`{tags.get('model_sha256', '?')}`"),
    ]
    h2h, held_out = evaluation.head_to_head, evaluation.held_out
    keys = list(held_out.candidate)
    lines = [
        f"# {name} version {version}",
        "",
        f"Preference-aligned ({tags.get('method', '?')}) by alignflow. Gate: **{tags.get('gate.outcome', '?')}**.",
        "",
        "## Gate decision",
        "",
        f"- decision: {decision.reason}",
        f"- rule: {decision.rule}",
        f"- win rate against the {h2h.against}: **{h2h.win_rate.estimate:.3f}**, 95% CI "
        f"[{h2h.win_rate.low:.3f}, {h2h.win_rate.high:.3f}] (paired bootstrap over prompts)",
        f"- n: {h2h.prompts} prompts x {h2h.samples_per_prompt} samples = {h2h.pairs} pairs, each judged in both "
        f"orders ({h2h.wins} wins, {h2h.ties} ties, {h2h.losses} losses; judge: {h2h.judge})",
        f"- length-controlled win rate: {h2h.length_controlled.estimate:.3f} "
        f"[{h2h.length_controlled.low:.3f}, {h2h.length_controlled.high:.3f}]; mean answer words "
        f"{h2h.candidate_words} (candidate) vs {h2h.opponent_words} ({h2h.against})",
        f"- prompt set: `{h2h.prompt_set}` (sha256 `{h2h.prompt_set_sha256[:16]}`)",
        "",
        *panel_markdown(evaluation.judges, evaluation.agreements),
        "## Lineage",
        "",
        "| fact | value |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in lineage),
        "",
        f"## Held-out pairs ({held_out.pairs})",
        "",
        "| model | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 1) + "|",
        *(f"| {who} | " + " | ".join(str(m.get(k)) for k in keys) + " |" for who, m in held_out.table()),
        "",
        *usage_markdown(name, version).split("\n"),
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
