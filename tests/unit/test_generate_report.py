"""The generate stage's typed report: report.json keeps each path's keys, and it survives Prefect's pickling."""

from __future__ import annotations

import json
import pickle

from alignflow.tasks.generation.report import GenerationReport, GeneratorStats
from alignflow.tasks.generation.stage import GenerationFailed

GENERATED_KEYS = [
    "prompts",
    "candidates",
    "pairs",
    "ties",
    "identical",
    "empty",
    "mean_margin",
    "binarization",
    "min_score_margin",
    "judge",
    "generators",
    "content_sha256",
    "pipeline_sha256",
    "judged",
    "failed",
    "success_rate",
    "min_success_rate",
    "failed_generations",
    "reused_rows",
    "generated_rows",
    "executor",
    "seconds",
    "responses_per_s",
    "output_tokens",
    "tokens_per_s",
    "generation_phase_s",
    "status",
]
IMPORTED_KEYS = ["source", "generated", "format", "rows", "prompts", "pairs", "columns", "content_sha256", "seconds"]


def generated_report(**changes) -> GenerationReport:
    values = {
        "prompts": 3,
        "candidates": 6,
        "pairs": 2,
        "ties": 1,
        "identical": 0,
        "empty": 0,
        "mean_margin": 0.25,
        "binarization": "best_vs_worst",
        "min_score_margin": 0.05,
        "judge": "offline",
        "generators": [
            GeneratorStats(generator="g0:m@t1.0", candidates=6, failed=0, chosen=2, rejected=2, mean_score=None)
        ],
        "content_sha256": "c" * 64,
        "pipeline_sha256": "p" * 64,
        "judged": 3,
        "failed": 0,
        "success_rate": 1.0,
        "min_success_rate": 0.5,
        "failed_generations": 0,
        "reused_rows": 3,
        "generated_rows": 0,
        "executor": "reused",
        "seconds": 0.0,
        "responses_per_s": None,  # nothing generated this time: set, so it stays in report.json
        "output_tokens": 0,
        "tokens_per_s": None,
        "generation_phase_s": None,
        "status": "ok",
    }
    return GenerationReport(**{**values, **changes})


def test_a_generated_report_dumps_its_keys_in_order_with_the_nones_it_set():
    report = generated_report()
    data = report.model_dump()
    assert list(data) == GENERATED_KEYS
    assert data["responses_per_s"] is None and data["generators"][0]["mean_score"] is None
    assert report.generated and "generated" not in data  # as before: only bring-your-own reports say it
    assert json.loads(report.model_dump_json()) == data


def test_an_imported_report_has_only_its_own_keys():
    report = GenerationReport(
        source="hh.jsonl",
        generated=False,
        format="standard",
        rows=4,
        prompts=4,
        pairs=4,
        columns=["prompt", "chosen", "rejected"],
        content_sha256="d" * 64,
        seconds=0.01,
    )
    assert list(report.model_dump()) == IMPORTED_KEYS
    assert report.model_dump()["generated"] is False and report.ties is None


def test_reports_and_the_failure_survive_pickling_with_their_keys():
    report = generated_report(status="failed")
    again = pickle.loads(pickle.dumps(report))
    assert again == report and again.model_dump() == report.model_dump()
    error = pickle.loads(pickle.dumps(GenerationFailed("too few", report)))
    assert str(error) == "too few" and error.report == report and list(error.report.model_dump()) == GENERATED_KEYS
