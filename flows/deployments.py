"""Entry flow of the alignment deployments (deploy/prefect.yaml), with typed knobs for the UI.

`run-alignment` takes what an operator picks in the Prefect UI's run form: a profile (a
YAML file under conf/), the method as a choice among the schema's methods, the main TRL knobs, and free
`key.path=value` overrides; it loads the config the way `alignflow run` does and runs the
alignment pipeline inside this flow run, so the stages' task runs and artifacts (validation
report, training curves, evaluation summary) are on this run's page.

Precedence: the profile, then `overrides` (a deployment's defaults live there), then the
typed knobs that are set (a knob left empty keeps the profile's value). A bad value fails
the run before any compute with the key named, as on the command line.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal, get_args

from prefect import flow, get_run_logger

from alignflow.conf.loader import ConfigError, load_config
from alignflow.conf.schema import PipelineConfig
from alignflow.conf.training import TrainingConfig
from alignflow.flows.alignment import alignment
from alignflow.flows.notify import failure_hook
from alignflow.flows.profiles import DEFAULT, profile_names, profile_path, resolve_config

# Built from the files, so a new profile appears in the UI's choice after the next `prefect deploy`.
Profile = Literal[profile_names()]  # type: ignore[valid-type]
# Read off the config schema's own field, so the form offers every method the schema accepts and a
# method added there appears here without a second list to keep in step.
METHODS: tuple[str, ...] = get_args(TrainingConfig.model_fields["method"].annotation)
Method = Literal[METHODS]  # type: ignore[valid-type]


def _config_from_parameters(parameters: dict[str, Any]) -> PipelineConfig | None:
    """For the failure hook: the run's config; when the knobs were what failed, the profile with the
    `runtime.*` overrides (where a webhook is named), else the bare profile."""
    known = inspect.signature(resolve_config).parameters
    given = {k: v for k, v in parameters.items() if k in known}
    try:
        return resolve_config(**given)
    except ConfigError:
        profile = profile_path(given.get("profile", DEFAULT))
        runtime = [o for o in given.get("overrides") or [] if str(o).startswith("runtime.")]
        try:
            return load_config(profile, runtime)
        except ConfigError:
            return load_config(profile)


@flow(
    name="run-alignment",
    description="One alignment run (generate, validate, train, evaluate, register) from a conf/ profile "
    "with the knobs picked in the run form.",
    on_failure=[failure_hook(_config_from_parameters)],
    on_crashed=[failure_hook(_config_from_parameters)],
)
def run_alignment(
    profile: Profile = DEFAULT,  # type: ignore[valid-type]
    method: Method | None = None,  # type: ignore[valid-type]
    beta: float | None = None,
    learning_rate: float | None = None,
    max_steps: int | None = None,
    overrides: list[str] | None = None,
) -> dict:
    """Run the alignment pipeline on a profile with the chosen knobs.

    Args:
        profile: YAML profile under conf/: `pipeline` is the embedded default (offline, CPU), `cluster` the GPU
            cluster of deploy/docker-compose.yml, `recipes/*` the training recipes.
        method: Training objective, `training.method` (a TRL trainer): dpo trains against a frozen reference
            model, the others (orpo, cpo, simpo) need none. Empty: the profile's.
        beta: DPO: KL strength to the reference model; ORPO: weight of the odds-ratio term; CPO and SimPO: the scale
            of the chosen-rejected log-probability margin. Empty: the profile's.
        learning_rate: Peak learning rate. Empty: the profile's.
        max_steps: Stop after this many optimizer steps (-1: run the profile's epochs). Empty: the profile's.
        overrides: Any other keys as `key.path=value`, e.g. `training.scaling.num_workers=4` or
            `generation.max_prompts=100` (see conf/pipeline.yaml); the knobs above win over these.
    """
    config = resolve_config(profile, method, beta, learning_rate, max_steps, overrides)
    get_run_logger().info(
        "profile %s: %s, method=%s, beta=%s, learning_rate=%s, max_steps=%s, %d override(s)",
        profile,
        config.name,
        config.training.method,
        config.training.beta,
        config.training.learning_rate,
        config.training.max_steps,
        len(overrides or []),
    )
    # The pipeline's body, not a subflow: its task runs and artifacts belong to this run.
    return alignment.fn(config)
