"""The `alignflow` command.

    alignflow run [--config FILE] [key.path=value ...]
    alignflow validate DATA [--config FILE] [--report OUT.json]

Exit codes: 0 the run completed (promoted or not), 1 the run stopped at a gate or a stage
failed, 2 bad usage or bad config. The config is loaded and checked before anything heavy
is imported, so a config error costs well under a second and starts nothing.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from conf.loader import ConfigError, load_config
from conf.schema import PipelineConfig

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Declarative preference alignment: generate -> validate -> train -> evaluate -> register.",
)
console = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML profile (default: the embedded conf/pipeline.yaml).")
]


def _load(config: Path | None, overrides: list[str]) -> PipelineConfig:
    try:
        return load_config(config, overrides)
    except ConfigError as exc:
        console.print(f"[red]config error[/red] {exc}")
        console.print("Fix the key above (see conf/pipeline.yaml for every knob), then run again.")
        raise typer.Exit(2) from None


@app.command()
def run(
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key.path=value overrides, e.g. training.method=orpo")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Run the whole pipeline as one Prefect flow."""
    cfg = _load(config, overrides or [])
    from tasks.state import configure_environment

    root = configure_environment(cfg)  # before prefect/mlflow/transformers are imported
    console.print(
        f"[bold]alignflow[/bold] {cfg.name}: method={cfg.training.method}, "
        f"workers={cfg.training.scaling.num_workers}, state={root}"
    )
    started = time.perf_counter()
    from flows.alignment import GateFailed, alignment

    try:
        result = alignment(cfg)
    except GateFailed as exc:
        console.print(f"[yellow]stopped at a gate[/yellow]: {exc}")
        raise typer.Exit(1) from None
    except Exception as exc:  # a stage failed: say which and why, exit 1
        console.print(f"[red]run failed[/red]: {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from None
    _print_summary(result, time.perf_counter() - started, root)


def _print_summary(result: dict, wall: float, root: Path) -> None:
    reg, ev = result["registry"], result["evaluation"]
    table = Table(title=f"held-out metrics ({ev['pairs']} pairs)")
    table.add_column("model")
    metrics = list(ev["candidate"])
    for m in metrics:
        table.add_column(m, justify="right")
    for who in ("candidate", "champion", "base"):
        if who in ev:
            table.add_row(who, *(f"{ev[who][m]:.4f}" for m in metrics))
    console.print(table)
    verdict = "[green]promoted to champion[/green]" if reg["promoted"] else "[yellow]not promoted[/yellow]"
    console.print(f"{reg['model']} version {reg['version']}: {verdict} ({reg['reason']})")
    stages = ", ".join(f"{k} {v:.0f}s" for k, v in result["seconds"].items())
    console.print(
        f"done in {wall:.0f}s ({stages}). MLflow run {result['mlflow_run_id']}; look at it with:\n"
        f"  .venv/bin/mlflow ui --backend-store-uri sqlite:///{root / 'mlflow.db'}"
    )


@app.command()
def validate(
    data: Annotated[
        Path, typer.Argument(help="Preference dataset: parquet, jsonl, json or csv with prompt/chosen/rejected.")
    ],
    config: ConfigOption = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write the JSON report here.")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="key.path=value overrides")] = None,
) -> None:
    """Check a preference dataset on its own (the flow's validate stage); exit 1 when the gate fails."""
    cfg = _load(config, overrides or [])
    from tasks import validate as validate_mod
    from tasks.state import configure_environment, home

    configure_environment(cfg)
    try:
        frame = validate_mod.read_pairs(data)
    except (OSError, ValueError) as exc:
        console.print(f"[red]cannot read dataset[/red]: {exc}")
        raise typer.Exit(2) from None
    from transformers import AutoTokenizer

    from tasks.tiny_model import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(
        str(resolve_model(cfg.training.model_name_or_path, cfg.training.tiny_model, home(cfg) / "models"))
    )
    valid, quarantined, result = validate_mod.validate_pairs(frame, cfg.validation, tokenizer)
    out_dir = (report.parent if report else home(cfg) / "validate") / f"{data.stem}.validation"
    paths = validate_mod.write_outputs(out_dir, valid, quarantined, result, cfg.validation)
    if report:
        report.write_text(json.dumps(result, indent=2))
    table = Table(title=f"{data}: {result['valid']}/{result['rows']} valid")
    for col in ("check", "count", "example rows"):
        table.add_column(col)
    for check_id, item in result["checks"].items():
        table.add_row(check_id, str(item["count"]), str(item["example_rows"]))
    console.print(table)
    console.print(f"quarantine: {paths['quarantine']}  report: {report or paths['report']}")
    if not result["gate"]["passed"]:
        console.print("[yellow]gate failed[/yellow]: " + "; ".join(result["gate"]["failures"]))
        raise typer.Exit(1)
    console.print("[green]gate passed[/green]")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
