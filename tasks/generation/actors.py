"""Where the generate stage's pipeline runs: the Ray cluster it joins, and how many actors each local model gets.

With generation.ray (the default) distilabel's RayPipeline runs every step as a Ray actor; a local model's step
(transformers, vllm) runs as `replicas` actors with generation.resources, and distilabel deals the step's batches
to them from one queue. On GPUs the default is one actor per GPU the cluster has, shared among the local models.
"""

from __future__ import annotations

import os

from alignflow.conf.generation import GenerationConfig

VLLM_PROBE_TIMEOUT_S = 300.0  # an autoscaling cluster may take minutes to bring a GPU node up


def ray_gcs_address(address: str | None) -> str:
    """Join (or start) the Ray cluster here; the spawned pipeline process connects to the same one."""
    import ray

    from alignflow.tasks.runtime.ray import start_ray

    if address and address.startswith("ray://"):
        return address  # Ray Client: the pipeline process connects itself
    start_ray(address)
    return ray.get_runtime_context().gcs_address


def own_ray(address: str | None) -> bool:
    """Whether the Ray that `address` leads to is the one this process starts (no address, no RAY_ADDRESS): one
    machine's resources, and no autoscaler."""
    return address is None and not os.environ.get("RAY_ADDRESS")


def ray_init_kwargs(address: str | None) -> dict:
    """How the pipeline's process joins the cluster: the state directory's environment forwarded to every actor,
    and glibc's own heap threshold for models that only run forward (the evaluation's finding, tasks/runtime/ray.py),
    unless the user set GLIBC_TUNABLES."""
    from alignflow.tasks.runtime.ray import FORWARDED_ENV, INFERENCE_TUNABLES

    env = {k: os.environ[k] for k in (*FORWARDED_ENV, "DISTILABEL_LOG_LEVEL") if k in os.environ}
    env.setdefault("GLIBC_TUNABLES", os.environ.get("GLIBC_TUNABLES", INFERENCE_TUNABLES))
    return {"address": address, "logging_level": "WARNING", "runtime_env": {"env_vars": env}}


def join_ray(address: str | None) -> dict:
    """Connect this process to the cluster (distilabel's RayPipeline then reuses the connection); its init kwargs."""
    import ray

    kwargs = ray_init_kwargs(address)
    if not ray.is_initialized():
        ray.init(**kwargs)
    return kwargs


def local_models(generation: GenerationConfig) -> int:
    """The stage's LLMs that load a model themselves (transformers, vllm)."""
    return sum(1 for _, llm in generation.llm_slots() if llm.is_local)


def place(generation: GenerationConfig, own: bool) -> GenerationConfig:
    """generation with its actors' resources and replicas decided (this process connected to Ray), after checking
    that the cluster can place them (`own`: the Ray the stage started, which no autoscaler grows)."""
    import ray

    resources = generation.resources
    if resources is None:  # an equal share of the largest node's CPUs, as the local processes share this machine's
        cpus = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=1.0)
        resources = {"CPU": max(1, int(cpus) // max(1, local_models(generation)))}
    placed = generation.model_copy(update={"resources": resources})
    placed = placed.model_copy(update={"replicas": resolve_replicas(placed)})
    check_capacity(placed, placed.replicas, own)
    return placed


def resolve_replicas(generation: GenerationConfig) -> int:
    """Actors per local model: generation.replicas, else 1 without GPUs, else as many as the cluster's GPUs hold
    shared among the local models (a process connected to Ray). Refuses GPUs the cluster does not have."""
    if generation.replicas is not None:
        return generation.replicas
    if not generation.on_gpu or not generation.ray:
        return 1
    import ray

    gpus = ray.cluster_resources().get("GPU", 0.0)
    per_actor = max(1, round(generation.resources["GPU"]))
    if gpus < per_actor:
        raise RuntimeError(
            f"generation.resources asks {per_actor} GPU per actor, and the Ray cluster has {gpus:g} GPU: join a "
            "cluster with GPUs (runtime.ray_address), set generation.resources={CPU: 1} to generate on CPUs, or set "
            "generation.replicas to wait for an autoscaler's GPU nodes"
        )
    return max(1, int(gpus // per_actor) // max(1, local_models(generation)))


def actors_need(generation: GenerationConfig, replicas: int) -> dict[str, int]:
    """The CPUs and GPUs the pipeline's actors hold at once: every step's actors load before the first batch (the
    local models' replicas, a reward-model judge); distilabel's other steps ask none."""
    need, resources = {"CPU": 0, "GPU": 0}, generation.resources or {}
    for name in need:
        per_actor = max(1, round(resources[name])) if resources.get(name) else 0
        need[name] += local_models(generation) * replicas * per_actor
        judge = generation.judge
        if judge.kind == "reward_model" and judge.resources.get(name):
            need[name] += max(1, round(judge.resources[name]))
    return need


def check_capacity(generation: GenerationConfig, replicas: int, own: bool) -> None:
    """Refuse what the Ray the stage started itself (`own`: one machine, no autoscaler) cannot place at once: the
    pipeline would wait for the missing actors forever. A cluster's shortfall is logged: its autoscaler may add
    nodes."""
    import logging

    import ray

    have = ray.cluster_resources()
    short = {k: (n, have.get(k, 0.0)) for k, n in actors_need(generation, replicas).items() if n > have.get(k, 0.0)}
    if not short:
        return
    name, (need, got) = next(iter(short.items()))
    message = (
        f"the generate stage's actors need {need} {name} at once ({local_models(generation)} local models x "
        f"{replicas} replicas x generation.resources.{name}, and a reward-model judge's) and the Ray cluster has "
        f"{got:g}: lower generation.replicas or generation.resources"
    )
    if own:
        raise RuntimeError(message)
    logging.getLogger(__name__).warning("%s (waiting for the cluster to add nodes)", message)


def check_vllm(generation: GenerationConfig) -> None:
    """With a vllm provider, stop before any step starts unless vLLM imports where the models will run: a Ray task
    with generation.resources (the nodes' image), or this machine off Ray."""
    slots = [key for key, llm in generation.llm_slots() if llm.provider == "vllm"]
    if not slots:
        return
    advice = "install it there (`pip install 'alignflow[vllm]'` in the nodes' image) or use provider: transformers"
    if not generation.ray:
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise RuntimeError(f"{slots[0]}: provider vllm, and vllm is not installed on this machine: {advice}")
        return
    import ray

    probe = ray.remote(num_gpus=(generation.resources or {}).get("GPU", 0), num_cpus=0)(_vllm_version)
    version = ray.get(probe.remote(), timeout=VLLM_PROBE_TIMEOUT_S)
    if version is None:
        raise RuntimeError(f"{slots[0]}: provider vllm, and vllm is not installed on the Ray nodes with GPUs: {advice}")


def _vllm_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vllm")
    except PackageNotFoundError:
        return None
