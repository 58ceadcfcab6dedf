"""The `alignflow` command.

    alignflow run [--config FILE] [--home DIR] [key.path=value ...]   the whole pipeline
    alignflow compare [--config FILE] [key.path=value ...]   recipes side by side (default conf/compare.yaml)
    alignflow reward-model [--config FILE] [key.path=value ...]   a reward model from the validated pairs, registered
    alignflow validate DATA [--config FILE] [--report OUT.json] [--out DIR] [--no-tokenizer] [key.path=value ...]
    alignflow promote NAME VERSION --reason TEXT     make a version the champion
    alignflow rollback NAME [--reason TEXT]          back to the previous champion
    alignflow history NAME [--json]                  the champions, oldest first
    alignflow export NAME[@ALIAS|/VERSION] DIR       a version as a plain HF folder (vllm serve DIR, TGI)
    alignflow serve [--home DIR] [--prefect-port P] [key.path=value ...]   local Prefect server + UI, deployments, worker, MLflow UI
    alignflow deploy [--profile NAME] [key.path=value ...]    the deployments on $PREFECT_API_URL
    alignflow stack up|down|status|env [--home DIR]  the production topology on this machine

Exit codes: 0 the run completed (promoted or not), 1 the run stopped at a gate or a stage
failed (promote/rollback: refused, e.g. unknown version or nothing to roll back to; export:
the registry or the download failed), 2 bad usage or bad config (export: an unknown model, alias
or version, or a DIR that is not empty). The config is loaded and checked before anything heavy
is imported, so a config error costs well under a second and starts nothing.

One module per group of commands: pipeline.py (run, compare), validate.py, registry.py (promote,
rollback, history, export), serve.py (serve, deploy), stack.py; what they start and stop is flows/ops/'s.
"""

from __future__ import annotations

import sys

import typer

from alignflow.flows.cli import pipeline, registry, reward, serve, stack, validate
from alignflow.flows.cli.common import console

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Declarative preference alignment: generate -> validate -> train -> evaluate -> register.",
)
for commands in (pipeline, reward, validate, registry, serve, stack):  # the order of `alignflow --help`
    commands.add_commands(app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
