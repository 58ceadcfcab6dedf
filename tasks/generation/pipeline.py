"""Stage 1, generate: prompts -> candidate responses -> judge scores -> chosen/rejected pairs.

The candidates and their scores come from a real distilabel pipeline (tasks/distilabel_steps.py):

    LoadDataFromDicts >> [TrackedTextGeneration per generator] >> CollectCandidates >> judge

Generators are local transformers models or OpenAI-compatible endpoints (tasks/llms.py); the
judge is the offline scorer or an UltraFeedback LLM judge. With `generation.ray` the same
pipeline runs on the Ray cluster (distilabel's RayPipeline).

Nothing generated is dropped: every prompt ends as a pair, or counted as a tie / identical /
empty, or listed in failed_rows.jsonl with the reason it failed (an endpoint error after the
client's retries, a judge answer that never parsed). The stage fails when too few prompts
succeed (generation.min_success_rate), after writing what it has; running it again retries
only the rows that failed (scored rows are kept in scored.parquet, keyed by a fingerprint of
the settings that shape them).

Layout of `out_dir` (the flow keys it by the content of prompts, generators, judge and code):

    scored.parquet, scored.fingerprint   every prompt's candidates, scores and errors (resumable)
    candidates.parquet                   the same, for people: one row per prompt
    failed_rows.jsonl                    one line per failure: row, prompt, step, reason, row_failed
    pipeline.yaml                        the distilabel pipeline definition (prompts by hash)
    distilabel.log                       distilabel's log of the last attempt
    pairs-<key>/                         per binarization setting: pairs.parquet (with the pipeline
                                         definition and a content hash in its metadata), report.json,
                                         lineage.json, pipeline.yaml, failed_rows.jsonl
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from alignflow.conf.generation import GenerationConfig
from alignflow.tasks.generation.endpoints import llm_slots
from alignflow.tasks.runtime.state import Ref, sha256_file, sha256_text

PAIR_COLUMNS = [
    "prompt_id",
    "prompt",
    "chosen",
    "rejected",
    "score_chosen",
    "score_rejected",
    "chosen_generator",
    "rejected_generator",
]
# Settings that change which rows fail, never what a successful row holds: left out of the
# fingerprint, so raising a time-out after an outage keeps what was generated.
_RETRY_KNOBS = ("timeout", "max_retries", "parse_retries", "retry_backoff")


class GenerationFailed(RuntimeError):
    """Too few prompts were generated and judged; what was generated is kept for a re-run."""

    def __init__(self, message: str, report: dict | None = None) -> None:
        super().__init__(message)
        self.report = report or {}

    def __reduce__(self):  # picklable with its report (Prefect persists a failed task's exception)
        return (type(self), (str(self), self.report))


# --- what the stage is made of ---------------------------------------------------------------------


def step_labels(generation: GenerationConfig) -> list[str]:
    return [f"g{i}:{Path(g.model).name}@t{g.temperature}" for i, g in enumerate(generation.generators)]


def generator_labels(generation: GenerationConfig) -> list[str]:
    """One label per candidate position when no generation fails (the generator it came from)."""
    return [
        label
        for label, g in zip(step_labels(generation), generation.generators, strict=True)
        for _ in range(g.num_generations)
    ]


def candidate_settings(generation: GenerationConfig) -> str:
    """The settings that shape candidates and scores, as JSON: not binarization, thresholds,
    retry knobs or where the pipeline runs (changing those reuses the scored rows)."""
    data = generation.model_dump(
        mode="json",
        include={"prompts", "prompt_column", "reference_column", "max_prompts", "generators", "judge"},
    )
    data["input_batch_size"] = generation.input_batch_size  # transformers batches shape the sampled text
    for llm in [*data["generators"], data["judge"].get("llm") or {}]:
        for knob in _RETRY_KNOBS:
            llm.pop(knob, None)
    for knob in _RETRY_KNOBS:
        data["judge"].pop(knob, None)
    return json.dumps(data, sort_keys=True)


def code_version() -> str:
    """Hash of the code that shapes generated data, so a judge or binarization change is a cache miss."""
    from alignflow.tasks.generation import byo as preference_data
    from alignflow.tasks.generation import endpoints, judge, llms, prompts
    from alignflow.tasks.generation import steps as distilabel_steps

    modules = (judge, distilabel_steps, endpoints, llms, prompts, preference_data)
    return sha256_text(*(Path(m.__file__).read_text() for m in modules), Path(__file__).read_text())


# --- the distilabel pipeline -----------------------------------------------------------------------


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


def _ray_gcs_address(address: str | None) -> str:
    """Join (or start) the Ray cluster here; the spawned pipeline process connects to the same one."""
    import ray

    from alignflow.tasks.runtime.ray import FORWARDED_ENV, ensure_ray

    if address and address.startswith("ray://"):
        return address  # Ray Client: the pipeline process connects itself
    ensure_ray(address, {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ})
    return ray.get_runtime_context().gcs_address


# --- binarization ----------------------------------------------------------------------------------


def _normalize(text: str) -> str:
    return " ".join(text.split())


def binarize(
    candidates: list[str],
    scores: list[float],
    labels: list[str],
    min_margin: float,
    strategy: str = "best_vs_worst",
    rng: random.Random | None = None,
) -> tuple[dict | None, str]:
    """A chosen/rejected pair, or None with the reason ('identical', 'tie', 'empty').

    Candidates equal once whitespace is collapsed count as one (with their best score).
    Chosen is the best; rejected the worst (best_vs_worst), or a random candidate at least
    `min_margin` below the best (best_vs_random_lower, seeded by `rng`). Equal scores never
    make a pair, whatever the margin.
    """
    distinct: dict[str, tuple[float, str, str]] = {}
    for text, value, label in zip(candidates, scores, labels, strict=True):
        key = _normalize(text)
        if key and (key not in distinct or value > distinct[key][0]):
            distinct[key] = (value, text.strip(), label)
    if not distinct:
        return None, "empty"
    if len(distinct) < 2:
        return None, "identical"
    ranked = sorted(distinct.values(), key=lambda item: item[0], reverse=True)
    best, chosen, chosen_by = ranked[0]
    lower = [item for item in ranked[1:] if item[0] < best and best - item[0] >= min_margin]
    if not lower:
        return None, "tie"
    if strategy == "best_vs_worst":
        worst, rejected, rejected_by = lower[-1]
    elif strategy == "best_vs_random_lower":
        worst, rejected, rejected_by = (rng or random.Random(0)).choice(lower)
    else:
        raise ValueError(f"unknown binarization {strategy!r}")
    return {
        "chosen": chosen,
        "rejected": rejected,
        "score_chosen": best,
        "score_rejected": worst,
        "chosen_generator": chosen_by,
        "rejected_generator": rejected_by,
    }, "pair"


# --- the stage -------------------------------------------------------------------------------------


def _read_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _pair_schema():
    import pyarrow as pa

    return pa.schema([(c, pa.float64() if c.startswith("score_") else pa.string()) for c in PAIR_COLUMNS])


def _write_rows(rows: list[dict], path: Path, metadata: dict[str, str] | None = None, schema=None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=schema)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    partial = path.with_suffix(".partial")
    pq.write_table(table, partial)
    partial.replace(path)


def _previous_rows(out_dir: Path, fingerprint: str) -> dict[int, dict]:
    """Rows a previous attempt with the same settings generated and judged (they are kept)."""
    scored, stamp = out_dir / "scored.parquet", out_dir / "scored.fingerprint"
    if not (scored.exists() and stamp.exists() and stamp.read_text() == fingerprint):
        return {}
    return {r["row"]: r for r in _read_rows(scored) if r.get("scores") is not None}


def _failures(scored: list[dict]) -> list[dict]:
    lines = []
    for r in scored:
        failed = r.get("scores") is None
        base = {"row": r["row"], "prompt_id": r["prompt_id"], "prompt": r["instruction"], "row_failed": failed}
        for err in r.get("generation_errors") or []:
            lines.append({**base, "step": err["generator"], "reason": err["reason"]})
        if r.get("judge_error"):
            lines.append({**base, "step": "judge", "reason": r["judge_error"]})
        if failed and not (r.get("generation_errors") or r.get("judge_error")):
            lines.append({**base, "step": "judge", "reason": r.get("row_error") or "not judged"})
    return lines


def generate_preferences(
    rows: list[dict],
    generation: GenerationConfig,
    model_paths: list[str | None],
    out_dir: Path,
    seed: int = 0,
    ray_address: str | None = None,
) -> tuple[Ref, dict]:
    """Generate, judge and binarize; return the pairs' Ref and the stage report.

    `model_paths[i]` is the local model of llm_slots()[i] (None or missing for endpoints).
    Raises GenerationFailed, after writing every file, when the success rate is too low.
    """
    from alignflow.tasks.generation.endpoints import check_api_keys

    out_dir.mkdir(parents=True, exist_ok=True)
    slots = llm_slots(generation)
    check_api_keys(generation)  # before anything starts: a missing key fails in a second, naming the key
    paths = [*model_paths, *[None] * (len(slots) - len(model_paths))][: len(slots)]
    rows = [{**r, "row": i} for i, r in enumerate(rows)]
    fingerprint = sha256_text(
        candidate_settings(generation), json.dumps(rows, sort_keys=True), json.dumps(paths), str(seed), code_version()
    )
    previous = _previous_rows(out_dir, fingerprint)
    todo = [r for r in rows if r["row"] not in previous]

    started = time.perf_counter()
    new: list[dict] = []
    if todo:
        attempt = out_dir / "attempt.parquet"
        attempt.unlink(missing_ok=True)
        address = _ray_gcs_address(ray_address) if generation.ray else None
        # distilabel forks a process per step. Forking a process that already runs threads
        # (Prefect's event loop, torch's OpenMP pool) can deadlock the children, so the
        # pipeline runs in a freshly spawned process that has touched neither.
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            pool.submit(run_pipeline, todo, generation, paths, out_dir, seed, address).result()
        new = _read_rows(attempt)
        attempt.unlink()
        # The attempt finished and its rows are in scored.parquet: distilabel's cache would only
        # replay the same failures on a re-run (its key is the same), so it goes.
        shutil.rmtree(out_dir / "distilabel-cache", ignore_errors=True)
    generated_s = time.perf_counter() - started

    scored = sorted([*previous.values(), *new], key=lambda r: r["row"])
    _write_rows(scored, out_dir / "scored.parquet")
    (out_dir / "scored.fingerprint").write_text(fingerprint)
    _write_rows([{k: v for k, v in r.items() if k not in ("row",)} for r in scored], out_dir / "candidates.parquet")
    failures = _failures(scored)
    failed_file = out_dir / "failed_rows.jsonl"
    failed_file.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in failures))

    pairs_ref, report = _binarize_all(scored, generation, out_dir, seed)
    new_candidates = sum(len(r["candidates"] or []) for r in new)
    spans = [(r["generation_started"], r["generation_finished"]) for r in new if r.get("generation_started")]
    # First generator batch started to last one finished: generation without start-up and judging.
    phase = max(b for _, b in spans) - min(a for a, _ in spans) if spans else None
    tokens = sum(r.get("output_tokens") or 0 for r in new)
    ok = sum(1 for r in scored if r.get("scores") is not None)
    report.update(
        {
            "judged": ok,
            "failed": len(scored) - ok,
            "success_rate": round(ok / len(scored), 4) if scored else 0.0,
            "min_success_rate": generation.min_success_rate,
            "failed_generations": sum(len(r.get("generation_errors") or []) for r in scored),
            "reused_rows": len(previous),
            "generated_rows": len(todo),
            "executor": ("ray" if generation.ray else "local") if todo else "reused",
            "seconds": round(generated_s, 1),
            "responses_per_s": round(new_candidates / generated_s, 2) if todo and generated_s else None,
            "output_tokens": tokens,
            "tokens_per_s": round(tokens / generated_s, 1) if todo and generated_s else None,
            "generation_phase_s": round(phase, 2) if phase else None,
        }
    )
    report["status"] = "ok" if report["success_rate"] >= generation.min_success_rate else "failed"
    pairs_dir = pairs_ref.path.parent
    shutil.copyfile(failed_file, pairs_dir / "failed_rows.jsonl")
    (pairs_dir / "report.json").write_text(json.dumps(report, indent=2))
    if report["status"] == "failed":
        top = Counter(f"{f['step']}: {f['reason'][:80]}" for f in failures if f["row_failed"]).most_common(3)
        raise GenerationFailed(
            f"only {ok}/{len(scored)} prompts ({report['success_rate']:.1%}) were generated and judged, below "
            f"generation.min_success_rate={generation.min_success_rate}. Top reasons: "
            + "; ".join(f"{reason} (x{n})" for reason, n in top)
            + f". Every failure with its reason: {failed_file}. What was generated is kept in {out_dir}: fix the "
            "cause (endpoint, key, time-out) and run again, and only the failed rows are retried.",
            report,
        )
    return pairs_ref, report


def _binarize_all(scored: list[dict], generation: GenerationConfig, out_dir: Path, seed: int) -> tuple[Ref, dict]:
    """Pairs from the judged rows, with their lineage, in the folder of this binarization setting."""
    key = sha256_text(generation.binarization, repr(generation.min_score_margin), str(seed))[:8]
    pairs_dir = out_dir / f"pairs-{key}"
    pairs_dir.mkdir(exist_ok=True)
    pairs, outcomes = [], Counter({"pair": 0, "tie": 0, "identical": 0, "empty": 0})
    per_generator: dict[str, Counter] = {label: Counter() for label in step_labels(generation)}
    scores: dict[str, list[float]] = {label: [] for label in per_generator}
    for r in scored:
        for err in r.get("generation_errors") or []:
            per_generator.setdefault(err["generator"], Counter())["failed"] += 1
        if r.get("scores") is None:
            continue
        for label, value in zip(r["candidate_generators"], r["scores"], strict=True):
            per_generator.setdefault(label, Counter())["candidates"] += 1
            scores.setdefault(label, []).append(value)
        rng = random.Random(f"{seed}:{r['row']}")
        pair, outcome = binarize(
            r["candidates"],
            r["scores"],
            r["candidate_generators"],
            generation.min_score_margin,
            generation.binarization,
            rng,
        )
        outcomes[outcome] += 1
        if pair:
            pairs.append({"prompt_id": r["prompt_id"], "prompt": r["instruction"], **pair})
            per_generator[pair["chosen_generator"]]["chosen"] += 1
            per_generator[pair["rejected_generator"]]["rejected"] += 1

    content = sha256_text(*(json.dumps(p, sort_keys=True, ensure_ascii=False) for p in pairs))
    definition_file = out_dir / "pipeline.yaml"
    definition = definition_file.read_text() if definition_file.exists() else ""
    lineage = {
        "content_sha256": content,  # of the pairs' rows (independent of the file encoding)
        "pipeline_sha256": sha256_text(definition),
        "candidate_settings": json.loads(candidate_settings(generation)),
        "binarization": generation.binarization,
        "min_score_margin": generation.min_score_margin,
        "seed": seed,
        "code_version": code_version(),
    }
    pairs_path = pairs_dir / "pairs.parquet"
    _write_rows(
        [{c: p[c] for c in PAIR_COLUMNS} for p in pairs],
        pairs_path,
        {"alignflow.lineage": json.dumps(lineage), "alignflow.pipeline": definition},
        schema=_pair_schema(),
    )
    (pairs_dir / "lineage.json").write_text(json.dumps(lineage, indent=2))
    if definition:
        (pairs_dir / "pipeline.yaml").write_text(definition)

    report = {
        "prompts": len(scored),
        "candidates": sum(len(r["candidates"] or []) for r in scored),
        "pairs": outcomes["pair"],
        "ties": outcomes["tie"],
        "identical": outcomes["identical"],
        "empty": outcomes["empty"],
        "mean_margin": round(sum(p["score_chosen"] - p["score_rejected"] for p in pairs) / len(pairs), 4)
        if pairs
        else 0.0,
        "binarization": generation.binarization,
        "min_score_margin": generation.min_score_margin,
        "judge": generation.judge.kind
        if generation.judge.kind == "offline"
        else f"ultrafeedback/{generation.judge.aspect}",
        "generators": [
            {
                "generator": label,
                "candidates": counts["candidates"],
                "failed": counts["failed"],
                "chosen": counts["chosen"],
                "rejected": counts["rejected"],
                "mean_score": round(sum(scores.get(label, [])) / len(scores[label]), 4) if scores.get(label) else None,
            }
            for label, counts in per_generator.items()
        ],
        "content_sha256": content,
        "pipeline_sha256": lineage["pipeline_sha256"],
    }
    return Ref(uri=pairs_path.resolve().as_uri(), sha256=sha256_file(pairs_path)), report
