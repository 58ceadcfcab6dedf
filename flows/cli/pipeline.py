"""`alignflow run` and `alignflow compare`: the alignment flow and the comparison flow, with their summaries.

The config is loaded and checked before anything heavy is imported (Prefect, MLflow, torch): a config
error costs well under a second and starts nothing. Exit codes: 0 the run completed (promoted or not),
1 it stopped at a gate or a stage failed, 2 bad usage or bad config.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from alignflow.conf.loader import DEFAULT_PROFILE, ConfigError, load_config
from alignflow.conf.schema import PipelineConfig
from alignflow.flows.cli.common import ConfigOption, config_error, console, load

if TYPE_CHECKING:
    from alignflow.flows.alignment import RunSummary
    from alignflow.flows.compare import ComparisonSummary


def _check_trl(cfg: PipelineConfig) -> None:
    """TRL's own value checks: after the cheap ones, since they import TRL (seconds)."""
    from alignflow.conf.loader import check_trl

    try:
        check_trl(cfg)
    except ConfigError as exc:
        raise config_error(exc) from None


def _check_api_keys(cfg: PipelineConfig) -> None:
    """An endpoint's key variable that is not set: exit 2, naming the key, before anything starts."""
    from alignflow.tasks.generation.endpoints import MissingApiKey, check_api_keys

    try:
        check_api_keys(cfg.generation)
    except MissingApiKey as exc:
        console.print(f"[red]config error[/red] {exc}")
        raise typer.Exit(2) from None


HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home", help="State directory (default: the profile's runtime.home, $ALIGNFLOW_HOME, ./.alignflow)."
    ),
]


def _preflight(cfg: PipelineConfig) -> None:
    """Every model, endpoint and service the profile names must answer before any compute: else exit 2
    naming the first config key that did not (the state directory is not even created)."""
    from alignflow.tasks.runtime.preflight import preflight

    unreachable = preflight(cfg)
    if unreachable:
        first, rest = unreachable[0], unreachable[1:]
        console.print(f"[red]unreachable[/red] {escape(str(first))}")
        for other in rest:
            console.print(f"  also {escape(str(other))}")
        console.print(f"Fix {first.key} (or start what it names), then run again.")
        raise typer.Exit(2)


def load_run_config(config: Path | None, overrides: list[str] | None, home: Path | None) -> PipelineConfig:
    """The profile with its overrides and --home, checked but for TRL's own checks (seconds of imports, run after
    the cheap ones); exit 2 naming the key. load_config here, not common.load: a knob goes from this file to the
    loader, conf/training.py and the recipe."""
    try:
        return load_config(
            config,
            [*(overrides or []), *([f"runtime.home={home.expanduser().resolve()}"] if home else [])],
            trl_checks=False,
        )
    except ConfigError as exc:
        raise config_error(exc) from None


def _check_champion_base(cfg: PipelineConfig) -> None:
    """A champion trained from another base model: exit 2 naming both bases, before any compute
    (tasks/registry/base_guard.py; how long it takes: bench/champion_guard.py)."""
    from alignflow.tasks.registry.base_guard import foreign_champion

    problem = foreign_champion(cfg)
    if problem:
        console.print(f"[red]config error[/red] {escape(problem)}")
        raise typer.Exit(2)


def run(
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key.path=value overrides, e.g. training.method=orpo")
    ] = None,
    config: ConfigOption = None,
    home: HomeOption = None,
) -> None:
    """Run the whole pipeline as one Prefect flow."""
    cfg = load_run_config(config, overrides, home)
    _check_api_keys(cfg)
    _preflight(cfg)
    _check_champion_base(cfg)  # the tracking server answered (preflight); before TRL's checks, seconds of imports
    _check_trl(cfg)
    from alignflow.tasks.runtime.state import configure_environment

    root = configure_environment(cfg)  # before prefect/mlflow/transformers are imported
    console.print(
        f"[bold]alignflow[/bold] {cfg.name}: method={cfg.training.method}, "
        f"workers={cfg.training.scaling.num_workers}, state={root}"
    )
    started = time.perf_counter()
    from alignflow.flows.alignment import GateFailed, alignment
    from alignflow.flows.cli.logs import tracebacks_to_file

    log_file = tracebacks_to_file(root)
    try:
        result = alignment(cfg)
    except GateFailed as exc:
        console.print(f"[yellow]stopped at a gate[/yellow]: {escape(str(exc))}")
        console.print(f"full log: {log_file}")
        raise typer.Exit(1) from None
    except Exception as exc:  # a stage failed: say which and why in one line, exit 1; the traceback is in the log
        console.print(
            f"[red]run failed[/red]: {type(exc).__name__}: {escape(str(exc).splitlines()[0] if str(exc) else '')}"
        )
        console.print(f"full log (with the traceback): {log_file}")
        raise typer.Exit(1) from None
    _print_summary(result, time.perf_counter() - started, root)


def _print_summary(result: RunSummary, wall: float, root: Path) -> None:
    table = Table(title=f"held-out metrics ({result.held_out_pairs} pairs)")
    table.add_column("model")
    metrics = list(result.held_out["candidate"])
    for m in metrics:
        table.add_column(m, justify="right")
    for who, scores in result.held_out.items():
        table.add_row(who, *(f"{scores[m]:.4f}" for m in metrics))
    console.print(table)
    console.print(
        f"win rate against the {result.against}: {result.win_rate:.3f}, 95% CI "
        f"[{result.win_rate_low:.3f}, {result.win_rate_high:.3f}] on {result.n_prompts} evaluation prompts"
    )
    for judge in result.judges:  # several evaluation.judges: each one's reading of the same pairs
        console.print(f"  judge {judge['judge']}: {judge['win_rate']:.3f} [{judge['low']:.3f}, {judge['high']:.3f}]")
    for line in result.agreements:
        console.print(f"  {escape(line)}")
    verdict = "[green]promoted to champion[/green]" if result.promoted else "[yellow]not promoted[/yellow]"
    console.print(f"{result.model} version {result.version}: {verdict}")
    console.print(f"  {escape(result.decision)}")
    if result.champions:
        console.print(_champions_table(result.model, result.champions))
    stages = ", ".join(f"{k} {v:.0f}s" for k, v in result.seconds.items())
    console.print(
        f"done in {wall:.0f}s ({stages}). MLflow run {result.mlflow_run_id}; look at it with:\n"
        f"  .venv/bin/mlflow ui --backend-store-uri sqlite:///{root / 'mlflow.db'}"
    )


def _champions_table(model: str, rows: list[dict[str, str]]) -> Table:
    table = Table(title=f"{model}: every champion against the base model (same prompts and seeds, 95% CI)")
    for column in ("round", "version", "action", "win rate", "95% CI", "n (prompts x samples)"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r["round"], r["version"], r["action"], r["win_rate"], f"[{r['low']}, {r['high']}]", r["n"])
    return table


COMPARE_PROFILE = DEFAULT_PROFILE.with_name("compare.yaml")  # shipped with conf/ like pipeline.yaml


def compare(
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="key.path=value overrides, e.g. comparison.recipes.orpo.grid.beta=[0.05,0.2]"),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="YAML profile with comparison.recipes (default: conf/compare.yaml)."),
    ] = None,
) -> None:
    """Train several recipes on one validated dataset and compare them (exit 1 when none completed)."""
    cfg = load(config or COMPARE_PROFILE, overrides or [])
    from alignflow.conf.comparison import expand_recipes

    recipes = expand_recipes(cfg.comparison.recipes)
    if not recipes:
        console.print(f"[red]config error[/red] {config or COMPARE_PROFILE}: comparison.recipes: no recipes to compare")
        console.print("Declare them under comparison.recipes (see conf/compare.yaml), then run again.")
        raise typer.Exit(2)
    _check_champion_base(cfg)  # the best recipe is registered and judged like `alignflow run`'s candidate
    from alignflow.tasks.runtime.state import configure_environment

    root = configure_environment(cfg)  # before prefect/mlflow/transformers are imported
    console.print(
        f"[bold]alignflow compare[/bold] {cfg.name}: {len(recipes)} recipes ({escape(', '.join(r.name for r in recipes))}), "
        f"{cfg.comparison.max_parallel} at a time, state={root}"
    )
    started = time.perf_counter()
    from alignflow.flows.alignment import GateFailed
    from alignflow.flows.compare import compare as compare_flow

    try:
        result = compare_flow(cfg)
    except GateFailed as exc:
        console.print(f"[yellow]stopped at a gate[/yellow]: {exc}")
        raise typer.Exit(1) from None
    except Exception as exc:
        console.print(f"[red]comparison failed[/red]: {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from None
    _print_comparison(result, time.perf_counter() - started, root)
    if result.best is None:
        raise typer.Exit(1)


def _print_comparison(result: ComparisonSummary, wall: float, root: Path) -> None:
    from alignflow.tasks.evaluation.comparison import COST_COLUMNS, HEADERS, QUALITY_COLUMNS

    def cell(value) -> str:
        return escape("-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value))

    # Two narrow tables read better in a terminal than one of 17 columns (the full table is in MLflow), and
    # at least 140 characters wide so that recipe names are never cut, in a log file too.
    titles = (f"held-out quality (best by {result.metric}: {result.best})", "training cost (measured on the workers)")
    for title, columns in zip(titles, (QUALITY_COLUMNS, COST_COLUMNS), strict=True):
        table = Table(title=escape(title))
        for column in columns:
            left, header = column in ("recipe", "status", "stages"), HEADERS.get(column, column)
            table.add_column(header, justify="left" if left else "right", no_wrap=left, min_width=len(header))
        for row in result.recipes:
            table.add_row(*(cell(row[c]) for c in columns), style="bold" if row["recipe"] == result.best else None)
        Console(stderr=True, width=max(console.width, 140)).print(table)
    for row in result.recipes:
        if row["status"] == "failed" or " -> " in row["stages"]:
            console.print(f"  {escape(row['recipe'])}: {escape(row['detail'] or '')}")
    reg = result.registry
    if reg:
        verdict = "[green]promoted to champion[/green]" if reg.promoted else "[yellow]not promoted[/yellow]"
        console.print(f"{escape(result.best or '')} -> {reg.model} version {reg.version}: {verdict} ({reg.reason})")
    console.print(
        f"done in {wall:.0f}s. MLflow parent run {result.mlflow_run_id} (one child run per recipe); "
        f"curves: {result.curves}\n  .venv/bin/mlflow ui --backend-store-uri sqlite:///{root / 'mlflow.db'}"
    )


def add_commands(app: typer.Typer) -> None:
    app.command()(run)
    app.command()(compare)
