"""Held-out metrics from real log-probs of the tiny model."""

from __future__ import annotations

import pytest

from alignflow.tasks.evaluation.metrics import evaluate_models


def test_base_model_against_itself_has_no_preference(tiny_model_path, pairs_frame, tmp_path):
    path = tmp_path / "test.parquet"
    pairs_frame.head(6).to_parquet(path, index=False)
    metrics = evaluate_models(tiny_model_path, tiny_model_path, path, beta=0.1, batch_size=4, champion=tiny_model_path)
    assert metrics.pairs == 6
    for who in ("candidate", "base", "champion"):
        scores = metrics.of(who)
        assert scores["preference_accuracy"] == 0.0
        assert scores["reward_margin"] == pytest.approx(0.0, abs=1e-6)
        assert 0.0 <= scores["logp_accuracy"] <= 1.0
        assert scores["chosen_nll"] > 0


def test_empty_test_split_is_a_clear_error(tiny_model_path, pairs_frame, tmp_path):
    path = tmp_path / "test.parquet"
    pairs_frame.head(0).to_parquet(path, index=False)
    with pytest.raises(ValueError, match="validation.test_size"):
        evaluate_models(tiny_model_path, tiny_model_path, path, beta=0.1)
