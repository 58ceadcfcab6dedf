"""Entry flow of the alignment deployments (deploy/prefect.yaml), with typed knobs for the UI.

`run-alignment` takes what an operator picks in the Prefect UI's run form: a profile (an in-package
name, a path or URL of a YAML file on the worker, or `variable:NAME`, a Prefect Variable: flows/profiles.py),
the method as a choice among the schema's methods, the main TRL knobs, and free `key.path=value` overrides;
it loads the config the way `alignflow run` does and runs the alignment pipeline inside this flow run, so the
stages' task runs and artifacts (the profile that ran, validation report, training curves, evaluation summary)
are on this run's page.

Precedence: the profile, then `overrides` (a deployment's defaults live there), then the
typed knobs that are set (a knob left empty keeps the profile's value). A bad value fails
the run before any compute with the key named, as on the command line.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, Literal, get_args

from prefect import flow, get_run_logger
from pydantic import Field

from alignflow.conf.loader import ConfigError
from alignflow.conf.schema import PipelineConfig
from alignflow.conf.training import TrainingConfig
from alignflow.flows import artifacts
from alignflow.flows.alignment import alignment
from alignflow.flows.notify import failure_hook
from alignflow.flows.profiles import DEFAULT, config_of, knob_overrides, profile_names, read_profile, resolve_config

# Free text (a name, a path or URL, variable:NAME); the in-package names are its examples and are listed in its
# description, read off conf/, so a new one shows there after the next `prefect deploy`.
Profile = Annotated[str, Field(examples=[*profile_names(), "/etc/alignflow/team.yaml", "variable:team-profile"])]
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
        profile = read_profile(given.get("profile", DEFAULT))  # raises when the profile itself is what failed
        runtime = [o for o in given.get("overrides") or [] if str(o).startswith("runtime.")]
        try:
            return config_of(profile, runtime)
        except ConfigError:
            return config_of(profile)


def _listing_profiles(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Write the in-package profile names into the docstring, where the run form reads the field's description."""
    fn.__doc__ = (fn.__doc__ or "").replace("{in_package}", ", ".join(f"`{n}`" for n in profile_names()))
    return fn


@flow(
    name="run-alignment",
    description="One alignment run (generate, validate, train, evaluate, register) from a profile (in-package, "
    "a YAML file on the worker, or a Prefect Variable) with the knobs picked in the run form.",
    on_failure=[failure_hook(_config_from_parameters)],
    on_crashed=[failure_hook(_config_from_parameters)],
)
@_listing_profiles
def run_alignment(
    profile: Profile = DEFAULT,
    method: Method | None = None,  # type: ignore[valid-type]
    beta: float | None = None,
    learning_rate: float | None = None,
    max_steps: int | None = None,
    overrides: list[str] | None = None,
) -> dict:
    """Run the alignment pipeline on a profile with the chosen knobs.

    Args:
        profile: The profile: an in-package name ({in_package}; `pipeline` is the embedded default, offline on
            CPU, `cluster` the GPU cluster of deploy/docker-compose.yml, `recipes/*` the training recipes); or a
            path or URL of a YAML file readable on the worker (`/abs/team.yaml`, `~/team.yaml`, `file://...`,
            `s3://bucket/team.yaml`); or `variable:NAME`, a Prefect Variable holding the profile's YAML.
        method: Training objective, `training.method` (a TRL trainer): dpo trains against a frozen reference
            model, the others (orpo, cpo, simpo) need none. Empty: the profile's.
        beta: DPO: KL strength to the reference model; ORPO: weight of the odds-ratio term; CPO and SimPO: the scale
            of the chosen-rejected log-probability margin. Empty: the profile's.
        learning_rate: Peak learning rate. Empty: the profile's.
        max_steps: Stop after this many optimizer steps (-1: run the profile's epochs). Empty: the profile's.
        overrides: Any other keys as `key.path=value`, e.g. `training.scaling.num_workers=4` or
            `generation.max_prompts=100` (see conf/pipeline.yaml); the knobs above win over these.
    """
    source = read_profile(profile)
    config = config_of(source, knob_overrides(method, beta, learning_rate, max_steps, overrides))
    artifacts.profile(source.source, source.sha256, config.name)
    get_run_logger().info(
        "profile %s (sha256 %s): %s, method=%s, beta=%s, learning_rate=%s, max_steps=%s, %d override(s)",
        source.source,
        source.sha256[:16],
        config.name,
        config.training.method,
        config.training.beta,
        config.training.learning_rate,
        config.training.max_steps,
        len(overrides or []),
    )
    # The pipeline's body, not a subflow: its task runs and artifacts belong to this run.
    return alignment.fn(config, lineage=source.lineage())
