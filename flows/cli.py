"""The `alignflow` command.

    alignflow run [--config FILE] [--home DIR] [key.path=value ...]   the whole pipeline
    alignflow compare [--config FILE] [key.path=value ...]   recipes side by side (default conf/compare.yaml)
    alignflow validate DATA [--config FILE] [--report OUT.json] [--out DIR] [--no-tokenizer] [key.path=value ...]
    alignflow promote NAME VERSION --reason TEXT     make a version the champion
    alignflow rollback NAME [--reason TEXT]          back to the previous champion
    alignflow history NAME [--json]                  the champions, oldest first
    alignflow serve [--prefect-port P] [key.path=value ...]   local Prefect server + UI, deployments, worker, MLflow UI
    alignflow deploy [--profile NAME] [key.path=value ...]    the deployments on $PREFECT_API_URL
    alignflow stack up|down|status|env               the production topology on this machine

Exit codes: 0 the run completed (promoted or not), 1 the run stopped at a gate or a stage
failed (promote/rollback: refused, e.g. unknown version or nothing to roll back to),
2 bad usage or bad config. The config is loaded and checked before anything heavy
is imported, so a config error costs well under a second and starts nothing.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from alignflow.conf.loader import DEFAULT_PROFILE, ConfigError, load_config
from alignflow.conf.schema import PipelineConfig

if TYPE_CHECKING:
    from alignflow.flows.alignment import RunSummary

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


def _config_error(exc: ConfigError) -> typer.Exit:
    console.print(f"[red]config error[/red] {escape(str(exc))}")  # not markup: keys like orpo[beta=0]
    console.print("Fix the key above (see conf/pipeline.yaml for every knob), then run again.")
    return typer.Exit(2)


def _load(config: Path | None, overrides: list[str], trl_checks: bool = True) -> PipelineConfig:
    try:
        return load_config(config, overrides, trl_checks=trl_checks)
    except ConfigError as exc:
        raise _config_error(exc) from None


def _check_trl(cfg: PipelineConfig) -> None:
    """TRL's own value checks: after the cheap ones, since they import TRL (seconds)."""
    from alignflow.conf.loader import check_trl

    try:
        check_trl(cfg)
    except ConfigError as exc:
        raise _config_error(exc) from None


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


@app.command()
def run(
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key.path=value overrides, e.g. training.method=orpo")
    ] = None,
    config: ConfigOption = None,
    home: HomeOption = None,
) -> None:
    """Run the whole pipeline as one Prefect flow."""
    cfg = _load(config, [*(overrides or []), *([f"runtime.home={home.expanduser().resolve()}"] if home else [])], False)
    _check_api_keys(cfg)
    _preflight(cfg)
    _check_trl(cfg)
    from alignflow.tasks.runtime.state import configure_environment

    root = configure_environment(cfg)  # before prefect/mlflow/transformers are imported
    console.print(
        f"[bold]alignflow[/bold] {cfg.name}: method={cfg.training.method}, "
        f"workers={cfg.training.scaling.num_workers}, state={root}"
    )
    started = time.perf_counter()
    from alignflow.flows.alignment import GateFailed, alignment
    from alignflow.flows.logs import tracebacks_to_file

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


@app.command()
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
    cfg = _load(config or COMPARE_PROFILE, overrides or [])
    from alignflow.conf.comparison import expand_recipes

    recipes = expand_recipes(cfg.comparison.recipes)
    if not recipes:
        console.print(f"[red]config error[/red] {config or COMPARE_PROFILE}: comparison.recipes: no recipes to compare")
        console.print("Declare them under comparison.recipes (see conf/compare.yaml), then run again.")
        raise typer.Exit(2)
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
    if result["best"] is None:
        raise typer.Exit(1)


def _print_comparison(result: dict, wall: float, root: Path) -> None:
    from alignflow.tasks.evaluation.comparison import COST_COLUMNS, HEADERS, QUALITY_COLUMNS

    def cell(value) -> str:
        return escape("-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value))

    # Two narrow tables read better in a terminal than one of 17 columns (the full table is in MLflow), and
    # at least 140 characters wide so that recipe names are never cut, in a log file too.
    best = result["best"]
    titles = (f"held-out quality (best by {result['metric']}: {best})", "training cost (measured on the workers)")
    for title, columns in zip(titles, (QUALITY_COLUMNS, COST_COLUMNS), strict=True):
        table = Table(title=escape(title))
        for column in columns:
            left, header = column in ("recipe", "status", "stages"), HEADERS.get(column, column)
            table.add_column(header, justify="left" if left else "right", no_wrap=left, min_width=len(header))
        for row in result["recipes"]:
            table.add_row(*(cell(row[c]) for c in columns), style="bold" if row["recipe"] == best else None)
        Console(stderr=True, width=max(console.width, 140)).print(table)
    for row in result["recipes"]:
        if row["status"] == "failed" or " -> " in row["stages"]:
            console.print(f"  {escape(row['recipe'])}: {escape(row['detail'] or '')}")
    reg = result["registry"]
    if reg:
        verdict = "[green]promoted to champion[/green]" if reg["promoted"] else "[yellow]not promoted[/yellow]"
        console.print(
            f"{escape(result['best'])} -> {reg['model']} version {reg['version']}: {verdict} ({reg['reason']})"
        )
    console.print(
        f"done in {wall:.0f}s. MLflow parent run {result['mlflow_run_id']} (one child run per recipe); "
        f"curves: {result['curves']}\n  .venv/bin/mlflow ui --backend-store-uri sqlite:///{root / 'mlflow.db'}"
    )


@app.command()
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
    cfg = _load(config, overrides or [], trl_checks=False)  # nothing is trained: TRL's checks are not needed
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

        return load_tokenizer(cfg.training.model_name_or_path, cfg.training.tiny_model, home(cfg) / "models")

    return load_tokenizer


def _print_validation(data: Path, result, report: Path | None) -> None:
    """The validation report as a person reads it: what was read, the checks that hit, tokens, warnings, files."""
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
    if result.tokens.measured:
        t = result.tokens
        console.print(
            f"tokens: longest {t.longest}, mean {t.mean}, {t.truncated_fraction:.1%} over max_length={t.max_length}"
        )
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


from alignflow.flows.registry_cli import add_commands  # noqa: E402  (promote, rollback, history)

add_commands(app)

from alignflow.flows.serve import add_commands as add_serve_commands  # noqa: E402  (serve, deploy)

add_serve_commands(app)

from alignflow.flows.stack import add_commands as add_stack_commands  # noqa: E402  (stack up/down/status/env)

add_stack_commands(app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
