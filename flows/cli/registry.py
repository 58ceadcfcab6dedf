"""`alignflow promote | rollback | history | export`: the registry commands of the CLI.

They call alignflow.tasks.registry.promotion (and .export) directly (no Prefect API to start), so they
answer in about a second; flows/promotion.py wraps the same functions as Prefect flows for the UI.
mlflow is imported only when a command runs. Exit codes: 0 done, 1 refused (unknown version, nothing
to roll back to, no such model, registry unreachable), 2 bad usage. `export` calls an unknown model,
alias or version, or a DIR that is not empty, bad usage (2): nothing is written; 1 is a registry or
download failure.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from alignflow.conf.loader import ConfigError, load_config
from alignflow.flows.cli.common import console

TrackingOption = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking URI (default: runtime.tracking_uri of --config, else $MLFLOW_TRACKING_URI, "
        "else the state directory's SQLite).",
    ),
]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML profile whose runtime section names the registry.")
]


def _tracking(tracking_uri: str | None, config: Path | None) -> str:
    if tracking_uri:
        return tracking_uri
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        console.print(f"[red]config error[/red] {exc}")
        raise typer.Exit(2) from None
    from alignflow.tasks.runtime.state import configure_environment
    from alignflow.tasks.runtime.state import tracking_uri as configured

    configure_environment(cfg)
    return cfg.runtime.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or configured(cfg)


def _call(fn, *args, **kwargs):
    """Run a promotion function; refusals and registry errors exit 1 with the reason."""
    from alignflow.tasks.registry.promotion import PromotionRefused

    try:
        return fn(*args, **kwargs)
    except PromotionRefused as exc:
        console.print(f"[yellow]refused[/yellow]: {exc}")
        raise typer.Exit(1) from None
    except Exception as exc:  # the registry is unreachable, a write failed, ...
        console.print(f"[red]failed[/red]: {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from None


def promote(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[int, typer.Argument(help="Model version to make champion.")],
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why (recorded on the version and in the history).")],
    tracking_uri: TrackingOption = None,
    config: ConfigOption = None,
) -> None:
    """Make a model version the champion (also one that failed the gate: the reason is recorded)."""
    if not reason.strip():
        console.print("[red]usage[/red]: --reason must say why")
        raise typer.Exit(2)
    from alignflow.tasks.registry import promotion

    result = _call(promotion.promote, _tracking(tracking_uri, config), name, str(version), reason)
    if not result["changed"]:
        console.print(f"{name} version {version} is already the champion; nothing changed")
        return
    if result["gate_overridden"]:
        console.print(
            f"[yellow]gate overridden[/yellow]: version {version} did not pass the gate "
            f"({result['gate_reason'] or 'no reason recorded'}); you promoted it by hand, and the version is tagged "
            "promotion_gate_overridden=true"
        )
    console.print(
        f"[green]{name} version {version} is champion[/green] (was {result['previous']}); "
        f"by {result['by']} at {result['at']}: {reason}"
    )


def rollback(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why (recorded).")] = "rollback",
    tracking_uri: TrackingOption = None,
    config: ConfigOption = None,
) -> None:
    """Give the champion alias back to the previous champion."""
    from alignflow.tasks.registry import promotion

    result = _call(promotion.rollback, _tracking(tracking_uri, config), name, reason)
    console.print(
        f"[green]{name} rolled back[/green]: champion is version {result['version']} (was {result['previous']}); "
        f"by {result['by']} at {result['at']}"
    )


def history(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the events as JSON on stdout.")] = False,
    tracking_uri: TrackingOption = None,
    config: ConfigOption = None,
) -> None:
    """Every version with its aliases and gate outcome, then the champion changes, oldest first."""
    from alignflow.tasks.registry import promotion

    uri = _tracking(tracking_uri, config)
    every = _call(promotion.versions, uri, name)
    events = _call(promotion.history, uri, name)
    if as_json:
        print(json.dumps({"versions": every, "champion_changes": events}, indent=2))
        return
    out = Console(soft_wrap=True)
    versions = Table(title=f"{name}: versions (newest first)")
    columns = (
        "version",
        "aliases",
        "created",
        "gate",
        "against",
        "win rate",
        "95% CI",
        "n prompts",
        "vs base",
        "95% CI",
    )
    for col in columns:
        versions.add_column(col)
    for v in every:
        gate = v["gate"] + (" (overridden by hand)" if v["overridden"] else "")
        cells = (v["version"], ", ".join(v["aliases"]) or "-", v["created"], gate, v["against"], v["win_rate"])
        versions.add_row(*cells, v["ci95"], v["n_prompts"], v["vs_base"], v["vs_base_ci95"])
    out.print(versions)
    table = Table(title=f"{name}: champion history")
    for col in ("#", "at", "action", "version", "previous", "by", "reason"):
        table.add_column(col)
    for e in events:
        table.add_row(*(str(e.get(k) or "-") for k in ("seq", "at", "action", "version", "previous", "by", "reason")))
    out.print(table)
    if not events:
        console.print(f"{name} has no recorded champion changes")


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _refused(exc: Exception) -> typer.Exit:
    console.print(f"[red]cannot export[/red]: {escape(str(exc))}")
    return typer.Exit(2)


def export(
    reference: Annotated[
        str,
        typer.Argument(
            metavar="NAME[@ALIAS|/VERSION]",
            help="NAME@champion (any alias), NAME/3 (a version number), or NAME alone (its champion).",
        ),
    ],
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="A new or empty folder to write.")],
    tracking_uri: TrackingOption = None,
    config: ConfigOption = None,
) -> None:
    """Write a registered model version as a plain Hugging Face folder, for `vllm serve DIR` or TGI."""
    from alignflow.tasks.registry import export as exporting

    try:  # the cheap checks first: a typo or a full DIR costs no registry round trip
        exporting.parse_reference(reference)
        exporting.check_destination(directory.expanduser().absolute())
    except exporting.ExportRefused as exc:
        raise _refused(exc) from None
    uri = _tracking(tracking_uri, config)
    try:
        done = exporting.export_version(uri, reference, directory)
    except exporting.ExportRefused as exc:  # an unknown model, alias or version
        raise _refused(exc) from None
    except Exception as exc:  # the registry is unreachable, the download failed, the folder is no model
        console.print(f"[red]failed[/red]: {type(exc).__name__}: {escape(str(exc))}; {directory} was not written")
        raise typer.Exit(1) from None
    aliases = f" (@{', @'.join(done.aliases)})" if done.aliases else ""
    total, where = sum(size for _, size in done.files), escape(str(done.path))
    console.print(f"[green]exported {done.name} version {done.version}{aliases}[/green] to {where}:")
    for name, size in done.files:
        console.print(f"  {name:<28} {_size(size):>10}")
    console.print(f"  {len(done.files)} files, {_size(total)}")
    if not done.chat_template:
        console.print(
            "[yellow]note[/yellow]: the tokenizer has no chat template: vLLM's /v1/chat/completions needs "
            "--chat-template FILE; /v1/completions works as it is"
        )
    console.print("next: serve it (an OpenAI-compatible endpoint); restart the server that served the previous one:")
    console.print(f"  vllm serve {where} --served-model-name {done.name}")
    console.print(f"  text-generation-launcher --model-id {where}   # or TGI")
    console.print(f"  a generator on it: {{provider: openai, model: {done.name}, base_url: http://HOST:8000/v1}}")


def add_commands(app: typer.Typer) -> None:
    for command in (promote, rollback, history, export):
        app.command()(command)
