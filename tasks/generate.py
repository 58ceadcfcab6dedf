"""Stage 1, generate: prompts -> candidate responses -> judge scores -> chosen/rejected pairs.

The candidates and their scores come from a real distilabel pipeline:

    LoadDataFromDicts >> [TextGeneration per generator] >> GroupColumns >> OfflineJudge

Binarization (best vs worst, with a minimum score margin) then runs over the scored
candidates. Ties and identical responses never become pairs; they are counted in the stage
report. All candidates are kept next to the pairs, so nothing generated is lost.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from conf.schema import GenerationConfig, GeneratorConfig
from tasks.state import Ref, sha256_file, sha256_text

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


def build_pipeline(rows: list[dict], generation: GenerationConfig, model_paths: list[str], cache_dir: Path, seed: int):
    """The distilabel pipeline; `model_paths[i]` is generator i's loadable model."""
    from distilabel.pipeline import Pipeline
    from distilabel.steps import GroupColumns, LoadDataFromDicts
    from distilabel.steps.tasks import TextGeneration

    from tasks.distilabel_steps import OfflineJudge, SeededTransformersLLM

    with Pipeline(name="alignflow-generate", cache_dir=cache_dir) as pipeline:
        load = LoadDataFromDicts(
            data=[{"prompt_id": r["id"], "instruction": r["prompt"], "reference": r["reference"]} for r in rows],
            batch_size=generation.input_batch_size,
        )
        generators = [
            TextGeneration(
                name=f"generator_{i}",
                llm=SeededTransformersLLM(
                    model=path,
                    device="cpu",
                    torch_dtype="float32",
                    seed=seed + i,
                    batch_size=generation.input_batch_size,
                    generation_kwargs=_generation_kwargs(gen),
                ),
                num_generations=gen.num_generations,
                group_generations=True,
                input_batch_size=generation.input_batch_size,
            )
            for i, (gen, path) in enumerate(zip(generation.generators, model_paths, strict=True))
        ]
        group = GroupColumns(
            columns=["generation"], output_columns=["generations"], input_batch_size=generation.input_batch_size
        )
        scorer = OfflineJudge(name="offline_judge", input_batch_size=generation.input_batch_size, total_rows=len(rows))
        load >> generators >> group >> scorer
    return pipeline


def _generation_kwargs(gen: GeneratorConfig) -> dict:
    return {
        "max_new_tokens": gen.max_new_tokens,
        "temperature": gen.temperature,
        "top_p": gen.top_p,
        "repetition_penalty": gen.repetition_penalty,
        "do_sample": True,
    }


def generator_labels(generation: GenerationConfig) -> list[str]:
    """One label per candidate position, in the order the judge flattens them."""
    return [
        f"g{i}:{Path(g.model).name}@t{g.temperature}"
        for i, g in enumerate(generation.generators)
        for _ in range(g.num_generations)
    ]


def code_version() -> str:
    """Hash of the code that shapes generated data, so a judge or binarization change is a cache miss."""
    from tasks import distilabel_steps, judge

    return sha256_text(*(Path(m.__file__).read_text() for m in (judge, distilabel_steps)), Path(__file__).read_text())


def _normalize(text: str) -> str:
    return " ".join(text.split())


def binarize(
    candidates: list[str], scores: list[float], labels: list[str], min_margin: float
) -> tuple[dict | None, str]:
    """Best vs worst distinct candidate, or None with the reason ('identical', 'tie', 'empty')."""
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
    (best, chosen, chosen_by), (worst, rejected, rejected_by) = ranked[0], ranked[-1]
    if best - worst < min_margin:
        return None, "tie"
    return {
        "chosen": chosen,
        "rejected": rejected,
        "score_chosen": best,
        "score_rejected": worst,
        "chosen_generator": chosen_by,
        "rejected_generator": rejected_by,
    }, "pair"


def run_pipeline(
    rows: list[dict], generation: GenerationConfig, model_paths: list[str], out_dir: Path, seed: int
) -> None:
    """Run the distilabel pipeline; writes scored.parquet and pipeline.yaml (its definition, for lineage)."""
    pipeline = build_pipeline(rows, generation, model_paths, out_dir / "distilabel-cache", seed)
    distiset = pipeline.run(use_cache=True)
    distiset["default"]["train"].to_parquet(str(out_dir / "scored.parquet"))
    pipeline.save(str(out_dir / "pipeline.yaml"), format="yaml")


def generate_preferences(
    rows: list[dict], generation: GenerationConfig, model_paths: list[str], out_dir: Path, seed: int = 0
) -> tuple[Ref, dict]:
    """Run the pipeline, binarize, write candidates.parquet + pairs.parquet; return the pairs' Ref and a report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # distilabel forks a process per step. Forking a process that already runs threads
    # (Prefect's event loop, torch's OpenMP pool) can deadlock the children, so the
    # pipeline runs in a freshly spawned process that has touched neither.
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(run_pipeline, rows, generation, model_paths, out_dir, seed).result()
    scored = pd.read_parquet(out_dir / "scored.parquet")
    generated_s = time.perf_counter() - started

    labels = generator_labels(generation)
    pairs, outcomes = [], {"pair": 0, "tie": 0, "identical": 0, "empty": 0}
    for row in scored.itertuples(index=False):
        pair, outcome = binarize(list(row.candidates), list(row.scores), labels, generation.min_score_margin)
        outcomes[outcome] += 1
        if pair:
            pairs.append({"prompt_id": row.prompt_id, "prompt": row.instruction, **pair})

    scored = scored[["prompt_id", "instruction", "reference", "candidates", "scores", "ratings"]]
    scored.to_parquet(out_dir / "candidates.parquet", index=False)
    pairs_path = out_dir / "pairs.parquet"
    pd.DataFrame(pairs, columns=PAIR_COLUMNS).to_parquet(pairs_path, index=False)

    n_candidates = int(scored["candidates"].map(len).sum())
    report = {
        "prompts": len(rows),
        "candidates": n_candidates,
        "pairs": outcomes["pair"],
        "ties": outcomes["tie"],
        "identical": outcomes["identical"],
        "empty": outcomes["empty"],
        "mean_margin": round(float(pd.Series([p["score_chosen"] - p["score_rejected"] for p in pairs]).mean()), 4)
        if pairs
        else 0.0,
        "seconds": round(generated_s, 1),
        "responses_per_s": round(n_candidates / generated_s, 2) if generated_s else None,
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    return Ref(uri=pairs_path.as_uri(), sha256=sha256_file(pairs_path)), report
