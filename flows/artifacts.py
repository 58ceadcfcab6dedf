"""Prefect artifacts: what a person reads in the UI where a table or a plot says more than logs."""

from __future__ import annotations

import base64
from pathlib import Path

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from alignflow.tasks.evaluation.agreement import panel_markdown
from alignflow.tasks.evaluation.head_to_head import HeadToHead
from alignflow.tasks.evaluation.stage import Evaluation
from alignflow.tasks.generation.report import GenerationReport
from alignflow.tasks.registry.gate import GateDecision
from alignflow.tasks.validation.outputs import summary_markdown
from alignflow.tasks.validation.report import ValidationReport


def generation(report: GenerationReport) -> None:
    """The generate stage's report as a table: the totals, then one row per generator."""
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


def validation(report: ValidationReport) -> None:
    rows = [
        {"check": k, "level": v.level, "count": v.count, "example rows": str(v.example_rows), "meaning": v.description}
        for k, v in report.checks.items()
    ]
    gate = "passed" if report.gate.passed else "FAILED"
    create_table_artifact(
        rows, key="validation-report", description=f"{report.valid}/{report.rows} pairs valid; gate {gate}"
    )
    create_markdown_artifact(summary_markdown(report), key="validation-summary")


def profile(source: str, sha256: str, config_name: str) -> None:
    """Which profile the run loaded: as named (an in-package name, a path or URL, variable:NAME), its text's hash."""
    create_markdown_artifact(
        f"Profile `{source}` (config `{config_name}`), sha256 of its YAML text `{sha256}`.",
        key="profile",
        description=f"profile {source}",
    )


def champions(rows: list[dict[str, str]], model: str) -> None:
    """Each champion of `model` so far against the base model (same prompts, same seeds): do the rounds compound?"""
    if rows:
        last = rows[-1]
        create_table_artifact(
            rows,
            key="champions-vs-base",
            description=f"{model}: {len(rows)} champion changes; the latest, v{last['version']}, wins "
            f"{last['win_rate']} [{last['low']}, {last['high']}] against the base model",
        )


def training_curves(png: Path, description: str) -> None:
    encoded = base64.b64encode(png.read_bytes()).decode()
    create_markdown_artifact(
        f"![training curves](data:image/png;base64,{encoded})", key="training-curves", description=description
    )


def _win_rate_lines(h2h: HeadToHead) -> list[str]:
    wr, lc = h2h.win_rate, h2h.length_controlled
    return [
        f"| win rate against the {h2h.against} | **{wr.estimate:.3f}** | [{wr.low:.3f}, {wr.high:.3f}] |",
        f"| length-controlled win rate | {lc.estimate:.3f} | [{lc.low:.3f}, {lc.high:.3f}] |",
    ]


def evaluation(evaluation: Evaluation, decision: GateDecision, title: str, links: str, promoted: bool) -> None:
    """The evaluation summary: the decision with its evidence (estimate, 95% interval, n, rule), then the metrics."""
    h2h, held_out = evaluation.head_to_head, evaluation.held_out
    keys = list(held_out.candidate)
    verdict = "promoted to **champion**" if promoted else "**not promoted**"
    lines = [
        f"## {title}: {verdict}",
        "",
        decision.reason,
        "",
        f"Rule: {decision.rule}.",
        "",
        "| head-to-head | estimate | 95% interval |",
        "| --- | --- | --- |",
        *_win_rate_lines(h2h),
        "",
        f"n = {h2h.prompts} prompts of `{h2h.prompt_set}` (sha256 `{h2h.prompt_set_sha256[:12]}`) x "
        f"{h2h.samples_per_prompt} samples = {h2h.pairs} pairs, each judged in both orders by the {h2h.judge} judge "
        f"({h2h.wins} wins, {h2h.ties} ties, {h2h.losses} losses); mean answer words {h2h.candidate_words} vs "
        f"{h2h.opponent_words}.",
        "",
        *panel_markdown(evaluation.judges, evaluation.agreements),
        f"Held-out pairs: {held_out.pairs}. {links}",
        "",
        "| model | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 1) + "|",
        *(f"| {who} | " + " | ".join(str(m.get(k)) for k in keys) + " |" for who, m in held_out.table()),
    ]
    create_markdown_artifact("\n".join(lines), key="evaluation-summary")


def samples(h2h: HeadToHead, limit: int) -> list[dict]:
    """A few (prompt, opponent, candidate) rows of the head-to-head, with each pair's outcome."""
    rows = [
        {"prompt": r["prompt"], h2h.against: r[h2h.against], "candidate": r["candidate"], "outcome": r["outcome"]}
        for r in h2h.rows[: limit * h2h.samples_per_prompt : h2h.samples_per_prompt]
    ]
    if rows:
        create_table_artifact(
            rows,
            key="sample-generations",
            description=f"evaluation prompts answered by the {h2h.against} and the candidate (outcome 1: the "
            f"candidate's answer won); win rate {h2h.win_rate}",
        )
    return rows
