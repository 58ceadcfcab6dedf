"""The distilabel pipeline of the generate stage, and where it runs.

    LoadDataFromDicts >> [TrackedTextGeneration per generator] >> CollectCandidates >> judge

Generators are local transformers models or OpenAI-compatible endpoints (llms.py); the judge is
the offline scorer or an UltraFeedback LLM judge (steps.py). With `generation.ray` the same
pipeline runs on the Ray cluster (distilabel's RayPipeline). stage.py runs it in a process of
its own (run_in_worker) and turns its rows into pairs.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pickle
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from alignflow.conf.generation import GenerationConfig
from alignflow.tasks.generation.actors import check_vllm, join_ray, place, whole
from alignflow.tasks.generation.limits import concurrency_shares
from alignflow.tasks.runtime.memory import ModelShape, inference_bytes
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


ROUNDS_PER_BATCH = 4


def step_batches(generation: GenerationConfig, shares: list[int | None]) -> list[int]:
    """Rows per batch of each LLM's step (llm_slots order).

    A local model takes generation.input_batch_size (it shapes the sampled text). An endpoint
    step sends its whole batch at once through its concurrency limit and takes the next batch
    only when the last request of this one is back: a whole number of rounds of its share (at
    least four) keeps every slot busy to the end of the batch (16 rows at 5 in flight would
    leave a last round of 1), and pays distilabel's hop between batches (about 0.2 s) once
    every four rounds rather than every round."""
    size = generation.input_batch_size
    return [size if share is None else share * max(ROUNDS_PER_BATCH, -(-size // share)) for share in shares]


# The columns a scored row carries into the judge (CollectCandidates' outputs): a re-run hands
# the judge alone the rows where only the judge failed.
JUDGE_INPUT_COLUMNS = (
    "row",
    "prompt_id",
    "instruction",
    "reference",
    "candidates",
    "candidate_generators",
    "generation_errors",
    "output_tokens",
    "row_error",
    "generation_started",
    "generation_finished",
)


KEY_COLUMNS = (("id", "prompt_id"), ("prompt", "instruction"), ("reference", "reference"))


def build_pipeline(
    rows: list[dict],
    generation: GenerationConfig,
    model_paths: list[str | None],
    cache_dir: Path,
    seed: int,
    judge_only: bool = False,
    chat_templates: list[str | None] | tuple = (),
    judge_model: str | None = None,
):
    """The distilabel pipeline; `model_paths[i]` is the loadable local model of llm_slots()[i], `chat_templates[i]`
    the chat template that replaces its own (None or missing: its own), `judge_model` a reward_model judge's folder.
    On Ray, `generation` comes with its actors' resources and replicas decided (actors.place).

    `judge_only`: `rows` are scored rows whose candidates are kept and only the judge runs on them."""
    from distilabel.steps import LoadDataFromDicts

    from alignflow.tasks.generation.bookkeeping import StagePipeline
    from alignflow.tasks.generation.llms import build_llm, cpu_threads_each
    from alignflow.tasks.generation.steps import CollectCandidates, TrackedTextGeneration

    slots = generation.llm_slots()
    shares = concurrency_shares([llm for _, llm in slots], generation.max_concurrency)
    batches = step_batches(generation, shares)
    gen_batch = max(batches[: len(generation.generators)])  # the prompts' and candidates' batches
    # Local models share this machine's cores; on Ray each actor has the CPUs generation.resources gives it.
    threads = (
        actor_threads(generation)
        if generation.ray
        else max(1, cpu_threads_each([llm for _, llm in slots]) // (generation.replicas or 1))
    )

    def llm(i: int):
        where, config = slots[i]
        template = chat_templates[i] if i < len(chat_templates) else None
        return build_llm(
            config, where, model_paths[i], seed + i, batches[i], threads, shares[i], template, generation.on_gpu
        )

    def resources(i: int):
        return step_resources(generation, model_paths[i], batches[i], slots[i][1].max_new_tokens)

    position = len(generation.generators)
    with StagePipeline(name="alignflow-judge" if judge_only else "alignflow-generate", cache_dir=cache_dir) as pipeline:
        batch = batches[position] if batches[position:] else gen_batch
        scorer = _scorer(generation, llm, len(rows), position, batch, judge_model, resources)
        if judge_only:
            candidates = LoadDataFromDicts(
                data=[{k: r.get(k) for k in JUDGE_INPUT_COLUMNS} for r in rows], batch_size=scorer.input_batch_size
            )
            candidates >> scorer
            return pipeline
        load = LoadDataFromDicts(
            data=[
                {"row": r["row"], "prompt_id": r["id"], "instruction": r["prompt"], "reference": r["reference"]}
                for r in rows
            ],
            batch_size=gen_batch,
        )
        generators = [
            TrackedTextGeneration(
                name=f"generator_{i}",
                llm=llm(i),
                num_generations=gen.num_generations,
                group_generations=True,
                input_batch_size=batches[i],
                generator_index=i,
                label=label,
                progress_total=len(rows),
                resources=resources(i),
            )
            for i, (gen, label) in enumerate(zip(generation.generators, step_labels(generation), strict=True))
        ]
        collect = CollectCandidates(name="candidates", input_batch_size=gen_batch)
        load >> generators >> collect >> scorer
    return pipeline


PROMPT_TOKENS = 512  # a generation step's prompt, at most, for its memory estimate


def actor_threads(generation: GenerationConfig) -> int:
    """CPU threads of a local model on a Ray actor: the whole CPUs generation.resources gives it (0: torch's own)."""
    cpus = (generation.resources or {}).get("CPU")
    return max(1, int(cpus)) if cpus else 0


def step_resources(generation: GenerationConfig, model_path: str | None, batch: int, new_tokens: int):
    """A local model's step resources: generation.replicas actors (processes off Ray), each with
    generation.resources and, on Ray, the memory its model needs unless resources sets it (tasks/runtime/memory.py),
    so Ray places them by memory too. One replica and nothing to reserve for an endpoint."""
    from distilabel.steps import StepResources

    replicas, resources = generation.replicas or 1, generation.resources or {}
    if model_path is None:
        return StepResources()
    if not generation.ray:
        return StepResources(replicas=replicas)
    shape = ModelShape.of_folder(model_path)
    tokens, on_gpu = PROMPT_TOKENS + new_tokens, generation.on_gpu
    memory = resources.get("memory") or (inference_bytes(shape, batch, tokens, use_gpu=on_gpu) if shape else None)
    return StepResources(
        replicas=replicas,
        cpus=whole(resources, "CPU") or None,
        gpus=whole(resources, "GPU") or None,
        memory=int(memory) if memory else None,
    )


def judge_resources(on_ray: bool, model_path: str, resources: dict[str, float], batch: int):
    """A reward-model judge step's Ray resources: judge.resources (CPU, GPU), and the memory its model needs to
    score a batch unless judge.resources sets it. Nothing off Ray."""
    from distilabel.steps import StepResources

    if not on_ray:
        return StepResources()
    shape = ModelShape.of_folder(model_path)
    memory = resources.get("memory") or (inference_bytes(shape, batch, PROMPT_TOKENS * 2) if shape else None)
    return StepResources(
        cpus=whole(resources, "CPU") or None,
        gpus=whole(resources, "GPU") or None,
        memory=int(memory) if memory else None,
    )


def _scorer(
    generation: GenerationConfig, llm, prompts: int, position: int, batch: int, judge_model: str | None, resources
):
    """The judge step: the offline scorer, a reward model (at `judge_model`), or the UltraFeedback LLM judge
    (llm(position) builds its LLM, resources(position) its step's resources)."""
    from alignflow.tasks.generation.steps import OfflineJudge, RewardModelJudge, UltraFeedbackJudge

    judge = generation.judge
    if judge.kind == "offline":
        return OfflineJudge(name="judge", input_batch_size=batch, progress_total=prompts, progress_position=position)
    if judge.kind == "reward_model":
        if judge_model is None:
            raise ValueError("generation.judge: a reward_model judge needs its model folder (judge_model)")
        return RewardModelJudge(
            name="judge",
            model_path=judge_model,
            batch_size=judge.batch_size,
            use_gpu=judge.resources.get("GPU", 0) > 0,
            input_batch_size=batch,
            progress_total=prompts,
            progress_position=position,
            resources=judge_resources(generation.ray, judge_model, judge.resources, judge.batch_size),
        )
    return UltraFeedbackJudge(
        name="judge",
        llm=llm(position),
        aspect=generation.judge.aspect,
        parse_retries=generation.judge.parse_retries,
        retry_backoff=generation.judge.retry_backoff,
        input_batch_size=batch,
        progress_total=prompts,
        progress_position=position,
        resources=resources(position),
    )


def preload_modules(generation: GenerationConfig) -> list[str]:
    """What distilabel's step processes import, for the fork server to import once."""
    # distilabel.pipeline: the pool's worker initializer lives there
    modules = ["distilabel.pipeline", "alignflow.tasks.generation.steps", "alignflow.tasks.generation.llms"]
    providers = {llm.provider for _, llm in generation.llm_slots()}
    if "openai" in providers:
        modules.append("openai")
    if "transformers" in providers:
        modules += ["torch", "transformers.pipelines"]  # what TransformersLLM.load imports
    if "vllm" in providers:
        modules += ["torch"]  # not vllm itself: its engine starts CUDA, which a forked process cannot use
    return modules


def pipeline_definition(pipeline, rows: list[dict], ray_address: str | None = None) -> str:
    """distilabel's pipeline dump as YAML, plus the prompts it ran on (count and content hash:
    distilabel leaves LoadDataFromDicts' data out of its dump) and where it ran (its dump calls
    a RayPipeline `Pipeline`)."""
    import yaml
    from distilabel.pipeline import RayPipeline

    dump = pipeline.dump()
    # a judge-only run's rows are scored rows (prompt_id, instruction, reference)
    data = [{k: r.get(k, r.get(alt)) for k, alt in KEY_COLUMNS} for r in rows]
    dump["alignflow"] = {
        "prompts": {"rows": len(rows), "sha256": sha256_text(json.dumps(data, sort_keys=True))},
        # distilabel's class (bookkeeping.py's subclasses only make its per-batch work cheaper)
        "executor": {
            "pipeline": "RayPipeline" if isinstance(pipeline, RayPipeline) else "Pipeline",
            "ray_address": ray_address,
        },
    }
    return yaml.safe_dump(dump, sort_keys=False, allow_unicode=True)


@dataclass(frozen=True)
class PipelineJob:
    """One pipeline run: what run_pipeline reads, pickled whole to run_in_worker's process."""

    rows: list[dict]
    generation: GenerationConfig
    model_paths: list[str | None]  # each LLM's loadable local model (None for endpoints)
    out_dir: Path
    seed: int
    ray_address: str | None = None
    judge_only: bool = False  # the judge alone, on rows whose candidates are kept
    chat_templates: list[str | None] = field(default_factory=list)  # each LLM's template override (None: its own)
    judge_model: str | None = None  # a reward_model judge's local folder
    own_ray: bool = False  # the Ray at ray_address is one the stage started on this machine (no autoscaler)


def run_pipeline(job: PipelineJob) -> None:
    """Run the pipeline (in this process, run_in_worker's): writes attempt.parquet, pipeline.yaml and
    distilabel.log (attempt-judge.parquet, pipeline-judge.yaml, distilabel-judge.log when `judge_only`)."""
    rows, generation, out_dir = job.rows, job.generation, job.out_dir
    # distilabel collects its step processes' logs (and writes pipeline.log) only in a process
    # named MainProcess; this one is the stage's worker, which plays that part.
    multiprocessing.current_process().name = "MainProcess"
    if not generation.ray:
        # distilabel starts a process per step with the default start method: with spawn each one
        # imported distilabel, openai or torch anew (27 of the 40 s a 200-prompt run took on a
        # busy machine). A fork server imports them once, while this process builds the pipeline,
        # and forks the step processes from there (it runs no threads, so forking it is safe).
        from multiprocessing import forkserver

        multiprocessing.set_start_method("forkserver", force=True)
        multiprocessing.set_forkserver_preload(preload_modules(generation))
        forkserver.ensure_running()
    ray_kwargs = join_ray(job.ray_address) if generation.ray else None
    if ray_kwargs is not None:
        generation = place(generation, job.own_ray, job.judge_only)
    check_vllm(generation)
    # distilabel keys its cache on the steps, not on the data: one cache folder per set of rows.
    cache = out_dir / "distilabel-cache" / sha256_text(json.dumps(rows, sort_keys=True, default=str))[:16]
    pipeline = build_pipeline(
        rows, generation, job.model_paths, cache, job.seed, job.judge_only, job.chat_templates, job.judge_model
    )
    if ray_kwargs is not None:
        pipeline = pipeline.ray(ray_init_kwargs=ray_kwargs)  # joined above: distilabel keeps the connection
    distiset = pipeline.run(use_cache=True)  # resumes from distilabel's cache after a crash mid-run
    suffix = "-judge" if job.judge_only else ""
    distiset["default"]["train"].to_parquet(str(out_dir / f"attempt{suffix}.parquet"))
    (out_dir / f"pipeline{suffix}.yaml").write_text(pipeline_definition(pipeline, rows, job.ray_address))
    logs = sorted(cache.rglob("pipeline.log"), key=lambda p: p.stat().st_mtime)
    if logs:
        shutil.copyfile(logs[-1], out_dir / f"distilabel{suffix}.log")


def run_in_worker(job: PipelineJob) -> None:
    """run_pipeline in a process of its own; an exception there is raised here.

    distilabel forks a process per step. Forking a process that already runs threads (Prefect's
    event loop, torch's OpenMP pool) can deadlock the children, so the pipeline runs in a fresh
    Python that has touched neither. A plain `python -c` rather than multiprocessing's spawn:
    spawn imports the parent's __main__ again in the child (the CLI; `prefect.engine`, 6 s here,
    for a deployment's flow run; a benchmark's script), which the pipeline does not need.
    """
    job_file = job.out_dir / "worker-job.pkl"
    job_file.write_bytes(pickle.dumps(job))
    outcome = job_file.with_name("worker-outcome.pkl")
    outcome.unlink(missing_ok=True)
    code = "from alignflow.tasks.generation.pipeline import _worker_main; _worker_main()"
    try:
        returncode = subprocess.run([sys.executable, "-c", code, str(job_file)], check=False).returncode
        failure = pickle.loads(outcome.read_bytes()) if outcome.exists() else None
    finally:
        job_file.unlink(missing_ok=True)
        outcome.unlink(missing_ok=True)
    if failure is not None:
        raise failure
    if returncode:
        raise RuntimeError(f"the generate pipeline's process exited with code {returncode} (see its output above)")


def _worker_main() -> None:
    """run_in_worker's process: run the job, leave the exception (if any) next to it, exit at once."""
    job = Path(sys.argv[1])
    failure: BaseException | None = None
    try:
        run_pipeline(pickle.loads(job.read_bytes()))
    except BaseException as exc:  # noqa: BLE001 (handed to the stage, which raises it)
        traceback.print_exc()
        failure = exc
    if failure is not None:
        try:
            data = pickle.dumps(failure)
        except Exception:  # an exception that does not pickle still says what happened
            data = pickle.dumps(RuntimeError("".join(traceback.format_exception(failure))))
        job.with_name("worker-outcome.pkl").write_bytes(data)
    # Skip the interpreter's teardown of distilabel, datasets and pandas (seconds on a busy
    # machine): every file is written and closed by now.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if failure is not None else 0)
