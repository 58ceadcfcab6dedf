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
    from alignflow.tasks.runtime.ray import forwarded_env, inference_runtime_env

    env = {**forwarded_env(), **inference_runtime_env()["env_vars"]}
    if "DISTILABEL_LOG_LEVEL" in os.environ:
        env["DISTILABEL_LOG_LEVEL"] = os.environ["DISTILABEL_LOG_LEVEL"]
    return {"address": address, "logging_level": "WARNING", "runtime_env": {"env_vars": env}}


def join_ray(address: str | None) -> dict:
    """Connect this process to the cluster (distilabel's RayPipeline then reuses the connection); its init kwargs."""
    import ray

    kwargs = ray_init_kwargs(address)
    if not ray.is_initialized():
        ray.init(**kwargs)
    return kwargs


def whole(resources: dict[str, float], name: str) -> int:
    """A resource as distilabel and the checks here count it per actor: whole CPUs and GPUs (0 when not asked)."""
    return max(1, round(resources[name])) if resources.get(name) else 0


def local_models(generation: GenerationConfig, judge_only: bool = False) -> int:
    """The stage's LLMs that load a model themselves (transformers, vllm); only the judge's when `judge_only`."""
    slots = generation.llm_slots()[len(generation.generators) :] if judge_only else generation.llm_slots()
    return sum(1 for _, llm in slots if llm.is_local)


def place(generation: GenerationConfig, own: bool, judge_only: bool = False) -> GenerationConfig:
    """generation with its actors' resources and replicas decided (this process connected to Ray), after checking
    that the cluster can place them (`own`: the Ray the stage started, which no autoscaler grows; `judge_only`: the
    judge's step alone runs)."""
    import ray

    placed = generation.model_copy(update={"replicas": resolve_replicas(generation)})
    if generation.resources is None:  # an equal share of the largest node's CPUs, as local processes share a machine's
        cpus = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=1.0)
        cpus -= actors_need(placed, judge_only)["CPU"]  # a reward-model judge's, the only other actor holding CPUs
        actors = max(1, local_models(placed, judge_only) * placed.replicas)
        placed = placed.model_copy(update={"resources": {"CPU": max(1, int(cpus) // actors)}})
    check_capacity(placed, judge_only, own)
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
    per_actor = whole(generation.resources, "GPU")
    if gpus < per_actor:
        raise RuntimeError(
            f"generation.resources asks {per_actor} GPU per actor, and the Ray cluster has {gpus:g} GPU: join a "
            "cluster with GPUs (runtime.ray_address), set generation.resources={CPU: 1} to generate on CPUs, or set "
            "generation.replicas to wait for an autoscaler's GPU nodes"
        )
    return max(1, int(gpus // per_actor) // max(1, local_models(generation)))


def actors_need(generation: GenerationConfig, judge_only: bool = False) -> dict[str, float]:
    """The CPUs, GPUs and memory the pipeline's actors hold at once: every step's actors load before the first batch
    (the local models' replicas with generation.resources, a reward-model judge with judge.resources); distilabel's
    other steps hold none. Memory counts what the resources set (the estimates are added per step in pipeline.py)."""
    actors = local_models(generation, judge_only) * (generation.replicas or 1)
    resources, judge = generation.resources or {}, generation.judge
    judged = judge.kind == "reward_model"
    need: dict[str, float] = {
        name: actors * whole(resources, name) + (whole(judge.resources, name) if judged else 0)
        for name in ("CPU", "GPU")
    }
    need["memory"] = actors * resources.get("memory", 0) + (judge.resources.get("memory", 0) if judged else 0)
    return need


def check_capacity(generation: GenerationConfig, judge_only: bool, own: bool) -> None:
    """Refuse what the Ray the stage started itself (`own`: one machine, no autoscaler) cannot place at once: the
    pipeline would wait for the missing actors forever. A cluster's shortfall is logged: its autoscaler may add
    nodes."""
    import logging

    import ray

    have = ray.cluster_resources()
    need = actors_need(generation, judge_only)
    short = [(k, n, have.get(k, 0.0)) for k, n in need.items() if n > have.get(k, 0.0)]
    if not short:
        return
    name, wanted, got = short[0]
    local, replicas = local_models(generation, judge_only), generation.replicas or 1
    message = (
        f"the generate stage's actors need {wanted:g} {name} at once ({local} local models x {replicas} replicas x "
        f"generation.resources.{name}, and a reward-model judge's judge.resources) and the Ray cluster has {got:g}: "
        "lower generation.replicas or generation.resources"
    )
    if name == "GPU":
        message += (
            " (each local model holds at least one actor: with fewer GPUs than local models, generation.ray=false "
            "runs them as processes sharing the GPUs)"
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
    advice = "install vllm in the nodes' image (docs/generation.md#vllm: its torch and transformers pins) or use provider: transformers"
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
