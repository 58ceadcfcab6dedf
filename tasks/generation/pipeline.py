"""The distilabel pipeline of the generate stage, and where it runs.

    LoadDataFromDicts >> [TrackedTextGeneration per generator] >> CollectCandidates >> judge

Generators are local transformers models or OpenAI-compatible endpoints (llms.py); the judge is
the offline scorer or an UltraFeedback LLM judge (steps.py). With `generation.ray` the same
pipeline runs on the Ray cluster (distilabel's RayPipeline). stage.py runs it in a spawned
process and turns its rows into pairs.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path

from alignflow.conf.generation import GenerationConfig
from alignflow.tasks.generation.endpoints import llm_slots
from alignflow.tasks.runtime.state import sha256_text


def step_labels(generation: GenerationConfig) -> list[str]:
    """One label per generator step: its position, model name and temperature (failed_rows.jsonl's `step`)."""
    return [f"g{i}:{Path(g.model).name}@t{g.temperature}" for i, g in enumerate(generation.generators)]


def generator_labels(generation: GenerationConfig) -> list[str]:
    """One label per candidate position when no generation fails (the generator it came from)."""
    return [
        label
        for label, g in zip(step_labels(generation), generation.generators, strict=True)
        for _ in range(g.num_generations)
    ]


def build_pipeline(
    rows: list[dict], generation: GenerationConfig, model_paths: list[str | None], cache_dir: Path, seed: int
):
    """The distilabel pipeline; `model_paths[i]` is the loadable local model of llm_slots()[i]."""
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts

    from alignflow.tasks.generation.llms import build_llm, cpu_threads_each
    from alignflow.tasks.generation.steps import (
        CollectCandidates,
        OfflineJudge,
        TrackedTextGeneration,
        UltraFeedbackJudge,
    )

    slots = llm_slots(generation)
    batch = generation.input_batch_size
    # Local models share this machine's cores; on Ray each actor gets the threads Ray gives it.
    threads = 0 if generation.ray else cpu_threads_each([llm for _, llm in slots])
    with Pipeline(name="alignflow-generate", cache_dir=cache_dir) as pipeline:
        load = LoadDataFromDicts(
            data=[
                {"row": r["row"], "prompt_id": r["id"], "instruction": r["prompt"], "reference": r["reference"]}
                for r in rows
            ],
            batch_size=batch,
        )
        generators = [
            TrackedTextGeneration(
                name=f"generator_{i}",
                llm=build_llm(gen, where, model_paths[i], seed + i, batch, threads),
                num_generations=gen.num_generations,
                group_generations=True,
                input_batch_size=batch,
                generator_index=i,
                label=label,
                progress_total=len(rows),
            )
            for i, ((where, gen), label) in enumerate(zip(slots, step_labels(generation), strict=False))
        ]
        collect = CollectCandidates(name="candidates", input_batch_size=batch)
        position = len(generators)
        if generation.judge.kind == "offline":
            scorer = OfflineJudge(
                name="judge", input_batch_size=batch, progress_total=len(rows), progress_position=position
            )
        else:
            where, llm = slots[-1]
            scorer = UltraFeedbackJudge(
                name="judge",
                llm=build_llm(llm, where, model_paths[-1], seed + position, batch, threads),
                aspect=generation.judge.aspect,
                parse_retries=generation.judge.parse_retries,
                retry_backoff=generation.judge.retry_backoff,
                input_batch_size=batch,
                progress_total=len(rows),
                progress_position=position,
            )
        load >> generators >> collect >> scorer
    return pipeline


def pipeline_definition(pipeline, rows: list[dict], ray_address: str | None = None) -> str:
    """distilabel's pipeline dump as YAML, plus the prompts it ran on (count and content hash:
    distilabel leaves LoadDataFromDicts' data out of its dump) and where it ran (its dump calls
    a RayPipeline `Pipeline`)."""
    import yaml

    dump = pipeline.dump()
    data = [{k: r[k] for k in ("id", "prompt", "reference")} for r in rows]
    dump["alignflow"] = {
        "prompts": {"rows": len(rows), "sha256": sha256_text(json.dumps(data, sort_keys=True))},
        "executor": {"pipeline": type(pipeline).__name__, "ray_address": ray_address},
    }
    return yaml.safe_dump(dump, sort_keys=False, allow_unicode=True)


def run_pipeline(
    rows: list[dict],
    generation: GenerationConfig,
    model_paths: list[str | None],
    out_dir: Path,
    seed: int,
    ray_address: str | None = None,
) -> None:
    """Run the pipeline (in this process): writes attempt.parquet, pipeline.yaml and distilabel.log."""
    # distilabel collects its step processes' logs (and writes pipeline.log) only in a process
    # named MainProcess; this one is the stage's spawned worker, which plays that part.
    multiprocessing.current_process().name = "MainProcess"
    # distilabel keys its cache on the steps, not on the data: one cache folder per set of rows.
    cache = out_dir / "distilabel-cache" / sha256_text(json.dumps(rows, sort_keys=True))[:16]
    pipeline = build_pipeline(rows, generation, model_paths, cache, seed)
    if generation.ray:
        from alignflow.tasks.runtime.ray import FORWARDED_ENV

        env = {k: os.environ[k] for k in (*FORWARDED_ENV, "DISTILABEL_LOG_LEVEL") if k in os.environ}
        pipeline = pipeline.ray(
            ray_init_kwargs={"address": ray_address, "logging_level": "WARNING", "runtime_env": {"env_vars": env}}
        )
    distiset = pipeline.run(use_cache=True)  # resumes from distilabel's cache after a crash mid-run
    distiset["default"]["train"].to_parquet(str(out_dir / "attempt.parquet"))
    (out_dir / "pipeline.yaml").write_text(pipeline_definition(pipeline, rows, ray_address))
    logs = sorted(cache.rglob("pipeline.log"), key=lambda p: p.stat().st_mtime)
    if logs:
        shutil.copyfile(logs[-1], out_dir / "distilabel.log")


def ray_gcs_address(address: str | None) -> str:
    """Join (or start) the Ray cluster here; the spawned pipeline process connects to the same one."""
    import ray

    from alignflow.tasks.runtime.ray import start_ray

    if address and address.startswith("ray://"):
        return address  # Ray Client: the pipeline process connects itself
    start_ray(address)
    return ray.get_runtime_context().gcs_address
