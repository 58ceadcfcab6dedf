"""Ray start-up shared by every stage that runs on Ray (training, the generation pipeline, the comparison flow).

`start_ray` joins `address` (or starts a local Ray) once per process, with the state directory's
environment forwarded to the workers and `quiet_ray_logs` as their setup hook.
"""

from __future__ import annotations

import os
from pathlib import Path

# Environment a Ray worker needs to see the same state directory, caches, offline mode and log settings.
FORWARDED_ENV = (
    "ALIGNFLOW_HOME",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_DATASETS_CACHE",
    "HF_MODULES_CACHE",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "TRL_EXPERIMENTAL_SILENCE",
    "TOKENIZERS_PARALLELISM",
    "MLFLOW_TRACKING_URI",
    "RAY_TRAIN_ENABLE_PRINT_PATCH",
    "PYTHONWARNINGS",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S",
    # How long a restart waits for its workers' resources before it tries again (Ray's default 60 s): after a
    # lost node, a restart that still counts that node waits this long (docs/operations.md#node-failure).
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S",
)


# glibc's malloc raises its mmap threshold (up to 32 MiB) as large blocks are freed; after that a training step's
# activations come from the heap, whose freed middle stays resident. A SmolLM2 LoRA step at 4 x 512 peaked at
# 6.8 GiB RSS that way for ~1.2 GiB live. A fixed 1 MiB threshold hands every large block back at free, and
# hugetlb=1 backs those blocks with transparent huge pages, which keeps the page faults to ~20% of a step's time
# (4 KiB pages: +55%). Every Ray worker alignflow starts gets it; a GLIBC_TUNABLES set by the user wins.
HEAP_TUNABLES = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=1048576"
# Inference (the evaluation's workers, a reward model's actor) frees no activations to speak of, and the fixed
# threshold's page faults cost it: the evaluate stage on SmolLM2 took 117 s on two workers with HEAP_TUNABLES,
# 96 s with glibc's own threshold (95 s in one process; bench/eval_driver.py).
INFERENCE_TUNABLES = "glibc.malloc.hugetlb=1"


def inference_runtime_env() -> dict[str, dict[str, str]]:
    """The runtime_env of a Ray task or actor that only runs models forward: glibc's own heap threshold, unless the
    user set GLIBC_TUNABLES."""
    return {"env_vars": {"GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", INFERENCE_TUNABLES)}}


def quiet_ray_logs() -> None:
    """Ray worker setup hook: keep the trainer's progress bars, drop Ray Train's chatter.

    Without the dashboard (not started locally: it costs start-up time) the placement-group
    cleaner warns every few seconds that the state API is unavailable; that is expected here.
    Ray Train's per-report line comes from a logger named after its file, which the
    RunConfig log level does not reach.
    """
    import logging

    import ray

    # The context module's logger is named after its file; its path is built, not imported: importing
    # ray.train here cost every Ray worker process (generation steps too) ~1.5 s of start-up (measured).
    context = Path(ray.__file__).parent / "train" / "v2" / "_internal" / "execution" / "context.py"
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)
    logging.getLogger(str(context)).setLevel(logging.WARNING)


PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def local_ray_env(address: str | None) -> dict[str, str]:
    """Ray Train settings for a Ray that this process starts itself (no address, no RAY_ADDRESS).

    Ray Train V2 starts a PreemptionWatcher actor for every training run, to notice nodes the cluster
    drains (spot instances, the autoscaler). A local Ray has one node and nothing drains it, so the actor
    (one more process per fit) is left out; no fit time gain was measurable here (2 fits each way, 16-18 s).
    A value set in the environment wins."""
    if address is not None or os.environ.get("RAY_ADDRESS"):
        return {}
    return {PREEMPTION_WATCHER: os.environ.get(PREEMPTION_WATCHER, "0")}


def ensure_ray(address: str | None, env_vars: dict[str, str]) -> None:
    """Start (or join) Ray with `env_vars` in every worker's environment; a no-op once Ray is up."""
    import ray

    if ray.is_initialized():
        return
    env_vars = {"GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", HEAP_TUNABLES), **local_ray_env(address), **env_vars}
    ray.init(
        address=address,
        include_dashboard=False,
        log_to_driver=True,
        logging_level="WARNING",
        logging_config=ray.LoggingConfig(log_level="WARNING"),
        runtime_env={
            "env_vars": env_vars,
            "worker_process_setup_hook": "alignflow.tasks.runtime.ray.quiet_ray_logs",
        },
    )


def forwarded_env() -> dict[str, str]:
    """The FORWARDED_ENV variables set in this process."""
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def start_ray(address: str | None) -> None:
    """Start (or join) Ray with the state directory's environment forwarded to its workers; idempotent.

    The comparison flow calls it once before recipes train from several threads."""
    ensure_ray(address, forwarded_env())
