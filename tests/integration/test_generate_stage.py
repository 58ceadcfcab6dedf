"""The generate stage runs a real distilabel pipeline on the tiny model."""

from __future__ import annotations

import pandas as pd
from conftest import small_config

from alignflow.tasks.generation.prompts import load_prompts
from alignflow.tasks.generation.rows import PAIR_COLUMNS
from alignflow.tasks.generation.stage import generate_preferences


def test_generate_writes_pairs_candidates_and_lineage(tiny_model_path, tmp_path):
    cfg = small_config("generation.max_prompts=8")
    rows = load_prompts(max_prompts=8)
    ref, report = generate_preferences(rows, cfg.generation, [str(tiny_model_path)] * 2, tmp_path)

    pairs = pd.read_parquet(ref.path)
    candidates = pd.read_parquet(tmp_path / "candidates.parquet")
    assert list(pairs.columns) == PAIR_COLUMNS
    assert report.prompts == 8 and len(candidates) == 8
    assert report.candidates == 16  # two generators, one response each
    # Every prompt is accounted for: a pair, or the reason it made none.
    assert report.pairs + report.ties + report.identical + report.empty == 8
    assert len(pairs) == report.pairs
    assert (pairs["score_chosen"] - pairs["score_rejected"] >= cfg.generation.min_score_margin).all()
    assert (pairs["chosen"] != pairs["rejected"]).all()
    assert "TextGeneration" in (tmp_path / "pipeline.yaml").read_text()
    assert len(ref.sha256) == 64
