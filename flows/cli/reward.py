"""`alignflow reward-model`: train a reward model from the validated preference data and register it.

Loads and checks the config as `alignflow run` does (a config error exits 2 before anything heavy is imported),
checks what the profile names can be reached, runs the reward-model flow (flows/reward.py) and prints the held-out
accuracy with its interval and n, the registered version, whether it became champion and why, and the judge
setting that uses it. Exit codes: 0 the run completed (champion or not), 1 a gate or a stage stopped it, 2 bad
usage or bad config.
"""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.markup import escape

from alignflow.conf.loader import ConfigError
from alignflow.flows.cli.common import ConfigOption, config_error, console
from alignflow.flows.cli.pipeline import HomeOption, _check_api_keys, _preflight, load_run_config


def _check_trl(cfg) -> None:
    """TRL's own checks (RewardConfig's and ModelConfig's __post_init__) on the reward_model section."""
    from alignflow.conf.training import trl_problems

    problems = trl_problems(cfg.reward_model)  # seconds of imports: after the cheap checks
    if problems:
        lines = [f"  reward_model.{'.'.join(path)}: {message}" for path, _, message in problems]
        raise config_error(ConfigError("config: invalid config\n" + "\n".join(lines)))


def reward_model(
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key.path=value overrides, e.g. reward_model.learning_rate=5e-5")
    ] = None,
    config: ConfigOption = None,
    home: HomeOption = None,
) -> None:
    """Train a reward model (TRL RewardTrainer on Ray) from the validated preference data and register it."""
    cfg = load_run_config(config, overrides, home)
    _check_api_keys(cfg)
    _preflight(cfg)
    _check_trl(cfg)
    from alignflow.tasks.runtime.state import configure_environment

    root = configure_environment(cfg)  # before prefect/mlflow/transformers are imported
    reward = cfg.reward_model
    console.print(
        f"[bold]alignflow reward-model[/bold] {reward.model_name}: base={reward.model_name_or_path}, "
        f"workers={reward.scaling.num_workers}, state={root}"
    )
    started = time.perf_counter()
    from alignflow.flows.cli.logs import tracebacks_to_file
    from alignflow.flows.reward import GateFailed
    from alignflow.flows.reward import reward_model as reward_flow

    log_file = tracebacks_to_file(root)
    try:
        result = reward_flow(cfg)
    except GateFailed as exc:
        console.print(f"[yellow]stopped at a gate[/yellow]: {escape(str(exc))}")
        console.print(f"full log: {log_file}")
        raise typer.Exit(1) from None
    except Exception as exc:  # a stage failed: one line, exit 1; the traceback is in the log
        first = str(exc).splitlines()[0] if str(exc) else ""
        console.print(f"[red]reward model failed[/red]: {type(exc).__name__}: {escape(first)}")
        console.print(f"full log (with the traceback): {log_file}")
        raise typer.Exit(1) from None
    console.print(
        f"held-out accuracy {result.accuracy:.3f}, 95% CI [{result.accuracy_low:.3f}, {result.accuracy_high:.3f}] "
        f"on {result.n_pairs} pairs ({result.steps} steps, train loss {result.train_loss:.4f})"
    )
    verdict = "[green]champion[/green]" if result.champion else "[yellow]not champion (challenger)[/yellow]"
    console.print(f"{result.model} version {result.version}: {verdict}")
    console.print(f"  {escape(result.decision)}")
    if result.champion:
        console.print(f"judge with it: {escape(result.judge_setting)}")
    else:
        console.print(
            f"once a version is champion (alignflow promote {result.model} VERSION --reason ...), judge with it: "
            f"{escape(result.judge_setting)}"
        )
    stages = ", ".join(f"{k} {v:.0f}s" for k, v in result.seconds.items())
    console.print(f"done in {time.perf_counter() - started:.0f}s ({stages}). MLflow run {result.mlflow_run_id}")


def add_commands(app: typer.Typer) -> None:
    app.command(name="reward-model")(reward_model)
