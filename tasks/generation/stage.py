"""Stage 1, generate: prompts -> candidate responses -> judge scores -> chosen/rejected pairs.

The candidates and their scores come from a real distilabel pipeline (pipeline.py); binarize.py
makes the pairs. Nothing generated is dropped: every prompt ends as a pair, or counted as a
tie / identical / empty, or listed in failed_rows.jsonl with the reason it failed (an endpoint
error after the client's retries, a judge answer that never parsed). The stage fails when too
few prompts succeed (generation.min_success_rate), after writing what it has; running it again
retries only the rows that failed (scored rows are kept in scored.parquet, keyed by a
fingerprint of the settings that shape them; a row whose generators all answered and whose judge
failed goes to the judge alone).

Layout of `out_dir` (the flow keys it by the content of prompts, generators, judge and code):

    scored.parquet, scored.fingerprint   every prompt's candidates, scores and errors (resumable)
    candidates.parquet                   the same, for people: one row per prompt
    failed_rows.jsonl                    one line per failure: row, prompt, step, reason, row_failed
    failed_rows/attempt-<n>.jsonl        the same, for the rows attempt n ran (each attempt's are kept)
    pipeline.yaml                        the distilabel pipeline definition (prompts by hash)
    distilabel.log                       distilabel's log of the last attempt
    pairs-<key>/                         per binarization setting: pairs.parquet (with the pipeline
                                         definition and a content hash in its metadata), report.json,
                                         lineage.json, pipeline.yaml, failed_rows.jsonl
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from alignflow.conf.generation import GenerationConfig
from alignflow.tasks.generation.actors import own_ray, ray_gcs_address
from alignflow.tasks.generation.binarize import binarize_rows
from alignflow.tasks.generation.endpoints import check_api_keys
from alignflow.tasks.generation.fingerprint import candidate_settings, code_version
from alignflow.tasks.generation.pipeline import PipelineJob, run_in_worker
from alignflow.tasks.generation.report import GenerationReport
from alignflow.tasks.generation.rows import PAIR_COLUMNS, failures, pair_schema, previous_rows, read_rows, write_rows
from alignflow.tasks.runtime.chat_template import key_parts
from alignflow.tasks.runtime.state import Ref, sha256_file, sha256_text


class GenerationFailed(RuntimeError):
    """Too few prompts were generated and judged; what was generated is kept for a re-run."""

    def __init__(self, message: str, report: GenerationReport) -> None:
        super().__init__(message)
        self.report = report

    def __reduce__(self):  # picklable with its report (Prefect persists a failed task's exception)
        return (type(self), (str(self), self.report))


@dataclass
class _Plan:
    """What this attempt must do: the rows judged before are kept, the rest generated (or only judged again)."""

    fingerprint: str
    paths: list[str | None]
    templates: list[str | None]  # each LLM's chat template override (None: its model's own)
    judge_model: str | None  # a reward_model judge's local folder
    earlier: dict[int, dict]
    previous: dict[int, dict]  # judged rows of an earlier attempt of the same content
    to_rejudge: list[dict]  # rows whose candidates are there and only the judge failed
    todo: list[dict]  # rows to generate and judge


def _plan(
    rows: list[dict],
    generation: GenerationConfig,
    model_paths: list,
    out_dir: Path,
    seed: int,
    templates: list,
    judge_model: str | None = None,
) -> _Plan:
    slots = generation.llm_slots()
    paths = [*model_paths, *[None] * (len(slots) - len(model_paths))][: len(slots)]
    templates = [*templates, *[None] * (len(slots) - len(templates))][: len(slots)]
    rows = [{**r, "row": i} for i, r in enumerate(rows)]
    fingerprint = sha256_text(
        candidate_settings(generation),
        json.dumps(rows, sort_keys=True),
        json.dumps(paths),
        str(seed),
        code_version(),
        *(part for template in templates for part in key_parts(template)),
        *([judge_model] if judge_model else []),  # the folder; the flow's key holds its content hash
    )
    earlier = previous_rows(out_dir, fingerprint)
    previous = {i: r for i, r in earlier.items() if r.get("scores") is not None}
    to_rejudge = [r for i, r in sorted(earlier.items()) if i not in previous and only_the_judge_failed(r)]
    rejudge_ids = {r["row"] for r in to_rejudge}
    todo = [r for r in rows if r["row"] not in previous and r["row"] not in rejudge_ids]
    return _Plan(fingerprint, paths, templates, judge_model, earlier, previous, to_rejudge, todo)


def generate_preferences(
    rows: list[dict],
    generation: GenerationConfig,
    model_paths: list[str | None],
    out_dir: Path,
    seed: int = 0,
    ray_address: str | None = None,
    chat_templates: list[str | None] | None = None,
    judge_model: str | None = None,
) -> tuple[Ref, GenerationReport]:
    """Generate, judge and binarize; return the pairs' Ref and the stage report.

    `model_paths[i]` is the local model of llm_slots()[i] (None or missing for endpoints), and `chat_templates[i]`
    the chat template that replaces that model's own (None or missing: its own); `judge_model` a reward_model
    judge's local folder.
    Raises GenerationFailed, after writing every file, when the success rate is too low.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    check_api_keys(generation)  # before anything starts: a missing key fails in a second, naming the key
    plan = _plan(rows, generation, model_paths, out_dir, seed, chat_templates or [], judge_model)
    started = time.perf_counter()
    new: list[dict] = []
    rejudged: list[dict] = []
    if plan.todo or plan.to_rejudge:
        address = ray_gcs_address(ray_address) if generation.ray else None
        where = (address, own_ray(ray_address))
        if plan.to_rejudge:
            rejudged = _run(plan.to_rejudge, generation, plan, out_dir, seed, where, judge_only=True)
            rejudged = [{**plan.earlier[r["row"]], **r} for r in rejudged]  # the earlier row's columns, judged anew
        if plan.todo:
            new = _run(plan.todo, generation, plan, out_dir, seed, where)
        # The attempt finished and its rows are in scored.parquet: distilabel's cache would only
        # replay the same failures on a re-run (its key is the same), so it goes.
        shutil.rmtree(out_dir / "distilabel-cache", ignore_errors=True)
    generated_s = time.perf_counter() - started
    scored = sorted([*plan.previous.values(), *rejudged, *new], key=lambda r: r["row"])
    failed_lines, failed_file = _write_scored(scored, plan, {r["row"] for r in (*new, *rejudged)}, out_dir)
    binarized = binarize_rows(scored, generation, seed)
    pairs_ref, lineage = _write_pairs(binarized.pairs, generation, out_dir, seed)
    report = _report(generation, plan, scored, new, binarized, lineage, generated_s)
    pairs_dir = pairs_ref.path.parent
    shutil.copyfile(failed_file, pairs_dir / "failed_rows.jsonl")
    (pairs_dir / "report.json").write_text(json.dumps(report.model_dump(), indent=2))
    if report.status == "failed":
        top = Counter(f"{f['step']}: {f['reason'][:80]}" for f in failed_lines if f["row_failed"]).most_common(3)
        raise GenerationFailed(
            f"only {report.judged}/{len(scored)} prompts ({report.success_rate:.1%}) were generated and judged, below "
            f"generation.min_success_rate={generation.min_success_rate}. Top reasons: "
            + "; ".join(f"{reason} (x{n})" for reason, n in top)
            + f". Every failure with its reason: {failed_file}. What was generated is kept in {out_dir}: fix the "
            "cause (endpoint, key, time-out) and run again, and only the failed rows are retried.",
            report,
        )
    return pairs_ref, report


def _write_scored(scored: list[dict], plan: _Plan, attempted: set[int], out_dir: Path) -> tuple[list[dict], Path]:
    """scored.parquet (what a re-run resumes from), candidates.parquet, and the failures: failed_rows.jsonl (the
    latest) and each attempt's under failed_rows/."""
    write_rows(scored, out_dir / "scored.parquet")
    (out_dir / "scored.fingerprint").write_text(plan.fingerprint)
    write_rows([{k: v for k, v in r.items() if k not in ("row",)} for r in scored], out_dir / "candidates.parquet")
    failed_lines = failures(scored)
    failed_file = out_dir / "failed_rows.jsonl"
    failed_file.write_text(_jsonl(failed_lines))
    if plan.todo or plan.to_rejudge:
        history = out_dir / "failed_rows"
        history.mkdir(exist_ok=True)
        number = len(list(history.glob("attempt-*.jsonl"))) + 1
        (history / f"attempt-{number}.jsonl").write_text(_jsonl([f for f in failed_lines if f["row"] in attempted]))
    return failed_lines, failed_file


def _report(
    generation: GenerationConfig,
    plan: _Plan,
    scored: list[dict],
    new: list[dict],
    binarized,
    lineage: dict,
    generated_s: float,
) -> GenerationReport:
    new_candidates = sum(len(r["candidates"] or []) for r in new)
    spans = [(r["generation_started"], r["generation_finished"]) for r in new if r.get("generation_started")]
    # First generator batch started to last one finished: generation without start-up and judging.
    phase = max(b for _, b in spans) - min(a for a, _ in spans) if spans else None
    tokens = sum(r.get("output_tokens") or 0 for r in new)
    ok = sum(1 for r in scored if r.get("scores") is not None)
    success_rate = round(ok / len(scored), 4) if scored else 0.0
    judge, ran = generation.judge, bool(plan.todo or plan.to_rejudge)
    return GenerationReport(
        prompts=len(scored),
        candidates=sum(len(r["candidates"] or []) for r in scored),
        pairs=binarized.outcomes["pair"],
        ties=binarized.outcomes["tie"],
        identical=binarized.outcomes["identical"],
        empty=binarized.outcomes["empty"],
        mean_margin=binarized.mean_margin,
        binarization=generation.binarization,
        min_score_margin=generation.min_score_margin,
        judge={"ultrafeedback": f"ultrafeedback/{judge.aspect}", "reward_model": judge.label}.get(
            judge.kind, judge.kind
        ),
        generators=binarized.generators,
        content_sha256=lineage["content_sha256"],
        pipeline_sha256=lineage["pipeline_sha256"],
        judged=ok,
        failed=len(scored) - ok,
        success_rate=success_rate,
        min_success_rate=generation.min_success_rate,
        failed_generations=sum(len(r.get("generation_errors") or []) for r in scored),
        reused_rows=len(plan.previous),
        generated_rows=len(plan.todo),
        rejudged_rows=len(plan.to_rejudge),
        executor=("ray" if generation.ray else "local") if ran else "reused",
        **({"placements": placements(new)} if plan.todo else {}),
        seconds=round(generated_s, 1),
        responses_per_s=round(new_candidates / generated_s, 2) if plan.todo and generated_s else None,
        output_tokens=tokens,
        tokens_per_s=round(tokens / generated_s, 1) if plan.todo and generated_s else None,
        generation_phase_s=round(phase, 2) if phase else None,
        status="ok" if success_rate >= generation.min_success_rate else "failed",
    )


def placements(rows: list[dict]) -> list[dict[str, str]]:
    """Each process or Ray actor that generated `rows` with a local model, once, in step order."""
    seen = {json.dumps(p, sort_keys=True): p for r in rows for p in r.get("generated_on") or []}
    return sorted(seen.values(), key=lambda p: (p["step"], p["node"], p["pid"]))


def only_the_judge_failed(row: dict) -> bool:
    """A scored row whose generators all answered, and whose judge did not: only the judge needs to run again."""
    return (
        row.get("scores") is None
        and bool(row.get("judge_error"))
        and not row.get("generation_errors")
        and not row.get("row_error")
        and len(row.get("candidates") or []) >= 2
    )


def _run(
    rows: list[dict], generation: GenerationConfig, plan: _Plan, out_dir: Path, seed: int, where, judge_only=False
):
    """One pipeline run in a fresh process (run_in_worker's doc says why); its rows. `where`: the Ray cluster's
    address (None off Ray), and whether this process started that Ray."""
    attempt = out_dir / ("attempt-judge.parquet" if judge_only else "attempt.parquet")
    attempt.unlink(missing_ok=True)
    address, started_here = where
    job = PipelineJob(
        rows, generation, plan.paths, out_dir, seed, address, judge_only, plan.templates, plan.judge_model, started_here
    )
    run_in_worker(job)
    done = read_rows(attempt)
    attempt.unlink()
    return done


def _jsonl(lines: list[dict]) -> str:
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)


def _write_pairs(pairs: list[dict], generation: GenerationConfig, out_dir: Path, seed: int) -> tuple[Ref, dict]:
    """pairs.parquet with its lineage, in the folder of this binarization setting; the Ref and the lineage.

    The lineage (content hash of the rows, the pipeline definition's hash, the candidate settings,
    binarization, seed and code version) goes into the parquet metadata and lineage.json, so a
    copy of the file alone still says how it was made."""
    key = sha256_text(generation.binarization, repr(generation.min_score_margin), str(seed))[:8]
    pairs_dir = out_dir / f"pairs-{key}"
    pairs_dir.mkdir(exist_ok=True)
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
    write_rows(
        [{c: p[c] for c in PAIR_COLUMNS} for p in pairs],
        pairs_path,
        {"alignflow.lineage": json.dumps(lineage), "alignflow.pipeline": definition},
        schema=pair_schema(),
    )
    (pairs_dir / "lineage.json").write_text(json.dumps(lineage, indent=2))
    if definition:
        (pairs_dir / "pipeline.yaml").write_text(definition)
    return Ref(uri=pairs_path.resolve().as_uri(), sha256=sha256_file(pairs_path)), lineage
