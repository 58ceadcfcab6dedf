"""`alignflow validate DATA`: the flow's validate stage on a dataset of your own, without a flow run.

Exit codes: 0 the gate passed, 1 it failed, 2 the data, the config or the tokenizer could not be read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from alignflow.conf.schema import PipelineConfig
from alignflow.flows.cli.common import ConfigOption, console, load


def validate(
    data: Annotated[
        Path,
        typer.Argument(
            help="Preference dataset: .jsonl, .json, .parquet or .csv (gzipped text too), or a dataset id read "
            "offline from the HF cache (owner/name[:split])."
        ),
    ],
    config: ConfigOption = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write the JSON report here.")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for quarantine, summary and split (default: next to --report).")
    ] = None,
    no_tokenizer: Annotated[
        bool,
        typer.Option(
            "--no-tokenizer",
            help="Skip the token checks (too_long, double_bos): no tokenizer is loaded. Without it the tokenizer "
            "of training.model_name_or_path is loaded once rows need it (the offline tiny model's alone is built).",
        ),
    ] = False,
    overrides: Annotated[list[str] | None, typer.Argument(help="key.path=value overrides")] = None,
) -> None:
    """Check a preference dataset on its own (the flow's validate stage); exit 1 when the gate fails."""
    cfg = load(config, overrides or [], trl_checks=False)  # nothing is trained: TRL's checks are not needed
    from alignflow.tasks.generation.byo import PreferenceDataError, is_dataset_id, load_dataset_id
    from alignflow.tasks.runtime.state import configure_environment, home
    from alignflow.tasks.validation.readers import DatasetError, check_readable
    from alignflow.tasks.validation.stage import validate_file

    dataset_id = is_dataset_id(str(data))
    if not dataset_id:
        try:
            check_readable(data)  # before anything slow: a bad path costs nothing
        except DatasetError as exc:
            console.print(f"[red]cannot read dataset[/red]: {exc}")
            raise typer.Exit(2) from None
    eval_prompts = _eval_prompts(cfg)
    configure_environment(cfg)
    name = str(data).removeprefix("hf:").replace("/", "--").replace(":", "-") if dataset_id else data.stem
    out_dir = out or (report.parent if report else home(cfg) / "validate") / f"{name}.validation"
    notes: list[str] = []
    if dataset_id:
        try:
            data, note = load_dataset_id(str(data), out_dir / "source")
        except PreferenceDataError as exc:
            console.print(f"[red]cannot read dataset[/red]: {escape(str(exc))}")
            raise typer.Exit(2) from None
        notes.append(note)

    try:
        result = validate_file(
            data,
            cfg.validation,
            out_dir,
            None if no_tokenizer else _tokenizer_factory(cfg),
            columns=cfg.generation.preference_columns,
            eval_prompts=eval_prompts,
            notes=notes,
        )
    except DatasetError as exc:
        console.print(f"[red]cannot read dataset[/red]: {exc}")
        raise typer.Exit(2) from None
    except OSError as exc:  # the tokenizer of training.model_name_or_path could not be loaded
        console.print(
            f"[red]cannot load the tokenizer[/red] of training.model_name_or_path={cfg.training.model_name_or_path}: "
            f"{escape(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)} (--no-tokenizer skips the token checks)"
        )
        raise typer.Exit(2) from None
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(result.model_dump(mode="json"), indent=2))
    _print_validation(data, result, report)
    if not result.gate.passed:
        console.print("[yellow]gate failed[/yellow]: " + escape("; ".join(result.gate.failures)))
        raise typer.Exit(1)
    console.print(f"[green]gate passed[/green] ({result.rows_per_second} rows/s)")


def _tokenizer_factory(cfg: PipelineConfig):
    """What loads training.model_name_or_path's tokenizer once the first rows need measuring (the validator calls
    it then, not before); None when no token check is on."""
    if not {"too_long", "double_bos"} & {*cfg.validation.errors, *cfg.validation.warnings}:
        return None

    def load_tokenizer():
        from alignflow.tasks.runtime.state import home
        from alignflow.tasks.validation.tokens import load_tokenizer

        training = cfg.training
        return load_tokenizer(
            training.model_name_or_path, training.tiny_model, home(cfg) / "models", training.chat_template_text
        )

    return load_tokenizer


def _print_validation(data: Path, result, report: Path | None) -> None:
    """The validation report as a person reads it: what was read, the checks that hit, tokens, warnings, files."""
    from alignflow.tasks.validation.report import length_lines  # the stage's modules load only when it runs

    for note in result.notes:
        console.print(f"[dim]read:[/dim] {escape(note)}")
    table = Table(title=escape(f"{data}: {result.valid}/{result.rows} valid ({result.format})"))
    for col in ("check", "level", "count", "example rows"):
        table.add_column(col)
    for check_id, item in result.checks.items():
        if item.count or item.level == "error":
            count = "skipped" if item.skipped and not item.count else str(item.count)
            table.add_row(check_id, item.level, count, str(item.example_rows))
    console.print(table)
    for check_id, item in result.checks.items():
        if item.skipped:
            console.print(f"[dim]{check_id} skipped: {item.skipped}[/dim]")
    for line in length_lines(result.tokens):
        console.print(escape(line))
    for warning in result.gate.warnings:
        console.print(f"[yellow]warning[/yellow] {escape(warning)}")
    console.print(
        f"quarantine: {result.files['quarantine']}  summary: {result.files['summary']}  "
        f"report: {report or result.files['report']}"
    )


def _eval_prompts(cfg: PipelineConfig) -> list[str]:
    """The evaluation prompt set (evaluation.prompts), for the eval_overlap check; exit 2 when unreadable."""
    from alignflow.tasks.generation.prompts import load_prompts

    try:
        return [row["prompt"] for row in load_prompts(cfg.evaluation.prompts)]
    except (OSError, ValueError) as exc:
        console.print(f"[red]config error[/red] evaluation.prompts: {escape(str(exc))}")
        raise typer.Exit(2) from None


def add_commands(app: typer.Typer) -> None:
    app.command()(validate)
