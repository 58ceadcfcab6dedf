"""Where the generate stage's local models run (issue 27 item 1): their Ray resources, replicas, device and dtype,
each batch's seed, and the checks that stop a run before a step starts."""

from __future__ import annotations

import logging

import pytest

from alignflow.conf.generation import GenerationConfig, GeneratorConfig
from alignflow.conf.loader import ConfigError, load_config
from alignflow.tasks.generation import actors
from alignflow.tasks.generation.fingerprint import candidate_settings
from alignflow.tasks.generation.llms import build_llm
from alignflow.tasks.generation.local_llms import SeededTransformersLLM, SeededVLLM, batch_seed
from alignflow.tasks.generation.pipeline import step_resources

TWO_LOCAL = [GeneratorConfig(model="/m", temperature=t) for t in (0.7, 1.0)]


def generation(**settings) -> GenerationConfig:
    return GenerationConfig(generators=TWO_LOCAL, **settings)


def test_the_default_runs_on_ray_cpu_actors_sharing_the_largest_nodes_cpus(monkeypatch):
    import ray

    config = load_config(None, [], trl_checks=False).generation
    assert config.ray and config.resources is None and config.replicas is None and not config.on_gpu
    nodes = [{"Alive": True, "Resources": {"CPU": 8.0}}, {"Alive": True, "Resources": {"CPU": 2.0}}]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 10.0})
    placed = actors.place(config, own=True)
    assert (placed.resources, placed.replicas) == ({"CPU": 4}, 1)  # two generators on the 8-CPU node
    assert actors.place(generation(resources={"CPU": 1}), own=True).resources == {"CPU": 1}  # as set


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("generation.resources={TPU: 1}", "generation.resources: ['TPU'] not among CPU, GPU, memory"),
        ("generation.resources={CPU: -1}", "generation.resources: ['CPU'] below 0"),
        ("generation.replicas=0", "generation.replicas"),
        ("generation.generators=[{provider: vllm, model: /m}, {model: /m}]", "generation.generators.0: provider vllm"),
    ],
)
def test_bad_placement_settings_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [override], trl_checks=False)


def test_a_gpu_actor_loads_in_bf16_on_its_gpu_and_a_cpu_actor_in_float32():
    on_gpu = build_llm(TWO_LOCAL[0], "g0", "/m", 0, 8, use_gpu=True)
    on_cpu = build_llm(TWO_LOCAL[0], "g0", "/m", 0, 8)
    assert isinstance(on_gpu, SeededTransformersLLM) and (on_gpu.device, on_gpu.torch_dtype) == ("cuda", "bfloat16")
    assert (on_cpu.device, on_cpu.torch_dtype) == ("cpu", "float32")


def test_vllm_takes_the_same_sampling_in_its_own_names():
    greedy = GeneratorConfig(provider="vllm", model="/m", temperature=0, max_new_tokens=32)
    llm = build_llm(greedy, "g0", "/m", 3, 8, use_gpu=True, chat_template="{{ x }}")
    assert isinstance(llm, SeededVLLM) and llm.dtype == "bfloat16" and llm.seed == 3
    assert llm.chat_template == "{{ x }}"
    assert llm.generation_kwargs == {"max_new_tokens": 32, "top_p": 1.0, "repetition_penalty": 1.1, "temperature": 0}


def test_a_batch_seed_is_made_of_its_prompts_and_the_generators_seed():
    batch = [[{"role": "user", "content": "What is rain?"}], [{"role": "user", "content": "Why?"}]]
    assert batch_seed(0, batch) == batch_seed(0, [list(m) for m in batch])  # the same prompts: the same seed
    assert batch_seed(0, batch) != batch_seed(1, batch)  # each generator its own stream
    assert batch_seed(0, batch) != batch_seed(0, batch[::-1])
    assert 0 <= batch_seed(2**40, batch) < 2**32


def test_step_resources_carry_replicas_and_whole_cpus_and_gpus():
    on_ray = generation(resources={"CPU": 2, "GPU": 1, "memory": 4e9}, replicas=4)
    resources = step_resources(on_ray, "/m", 16, 64)
    assert (resources.replicas, resources.cpus, resources.gpus, resources.memory) == (4, 2, 1, 4_000_000_000)
    off_ray = step_resources(generation(ray=False, replicas=2), "/m", 16, 64)
    assert (off_ray.replicas, off_ray.cpus, off_ray.gpus) == (2, None, None)
    endpoint = step_resources(on_ray, None, 16, 64)
    assert endpoint.replicas == 1 and endpoint.gpus is None  # an endpoint's step loads nothing


def test_gpu_replicas_default_to_the_clusters_gpus_shared_among_the_local_models(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 64.0, "GPU": 8.0})
    assert actors.resolve_replicas(generation(resources={"GPU": 1})) == 4  # two generators, four GPUs each
    assert actors.resolve_replicas(generation(resources={"GPU": 2})) == 2
    assert actors.resolve_replicas(generation(resources={"GPU": 1}, replicas=3)) == 3  # as set
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 64.0})
    with pytest.raises(RuntimeError, match=r"asks 1 GPU per actor, and the Ray cluster has 0 GPU"):
        actors.resolve_replicas(generation(resources={"GPU": 1}))


def test_actors_a_local_ray_cannot_place_stop_the_run_and_a_cluster_only_warns(monkeypatch, caplog):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0, "GPU": 1.0})
    one, two = generation(resources={"CPU": 1}), generation(resources={"CPU": 1}, replicas=2)
    assert actors.actors_need(two) == {"CPU": 4, "GPU": 0, "memory": 0}
    actors.check_capacity(one, judge_only=False, own=True)  # 2 CPUs: fits
    with pytest.raises(RuntimeError, match=r"need 4 CPU at once \(2 local models x 2 replicas"):
        actors.check_capacity(two, judge_only=False, own=True)
    with pytest.raises(RuntimeError, match=r"need 2 GPU .* generation.ray=false runs them as processes sharing"):
        actors.check_capacity(generation(resources={"GPU": 1}, replicas=1), judge_only=False, own=True)
    actors.check_capacity(two, judge_only=True, own=True)  # the judge alone (offline here) holds nothing
    with caplog.at_level(logging.WARNING):
        actors.check_capacity(two, judge_only=False, own=False)  # an autoscaler may add nodes
    assert "waiting for the cluster to add nodes" in caplog.text


def test_the_default_cpu_share_leaves_a_reward_judges_cpus_and_counts_replicas(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 16.0}}])
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0})
    judged = generation(judge={"kind": "reward_model", "model": "/rm", "resources": {"CPU": 2}})
    assert actors.place(judged, own=True).resources == {"CPU": 7}  # (16 - 2) / 2 generators
    assert actors.place(generation(replicas=4), own=True).resources == {"CPU": 2}  # 16 / (2 x 4)


def test_a_judges_re_ask_draws_a_new_sample_the_same_wherever_it_runs():
    from collections import Counter

    from alignflow.tasks.generation.local_llms import draw_seed

    batch = [[{"role": "user", "content": "Rate these."}]]
    here, there = Counter(), Counter()
    first, again = draw_seed(here, 0, batch), draw_seed(here, 0, batch)
    assert first == batch_seed(0, batch) and again != first  # the retry of an unparsed answer is a new draw
    assert [draw_seed(there, 0, batch), draw_seed(there, 0, batch)] == [first, again]  # in another process too


def test_gpus_change_the_data_key_and_replicas_do_not():
    cpu, gpu = generation(resources={"CPU": 4}), generation(resources={"GPU": 1})
    assert candidate_settings(cpu) != candidate_settings(gpu)  # bf16 samples other text
    assert candidate_settings(gpu) == candidate_settings(generation(resources={"GPU": 1}, replicas=8))
    assert candidate_settings(cpu) == candidate_settings(generation(ray=False)) == candidate_settings(generation())


def test_vllm_off_ray_without_vllm_installed_stops_naming_the_key(monkeypatch):
    import importlib.util

    config = GenerationConfig(
        ray=False, resources={"GPU": 1}, generators=[GeneratorConfig(provider="vllm", model="/m", num_generations=2)]
    )
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"generation.generators.0: provider vllm, and vllm is not installed"):
        actors.check_vllm(config)
