"""The whole flow, end to end, on the small config: generate -> validate -> train -> evaluate -> register.

Two training steps on 24 prompts cannot make a model better, so the gate must refuse it: the
first model gets no free pass. Promoted by hand, it then becomes the opponent and the starting
point of the next round (training.start_from=champion).
"""

from __future__ import annotations

import pytest
from conftest import small_config

from alignflow.tasks.runtime.state import tracking_uri

pytestmark = pytest.mark.integration

NAME = "test-e2e"
EVAL = ["evaluation.max_prompts=12", "evaluation.samples_per_prompt=2", "evaluation.max_new_tokens=12"]


@pytest.fixture(scope="module")
def first_run(prefect_harness, ray_session):
    from alignflow.flows.alignment import alignment

    return alignment(small_config(f"registry.model_name={NAME}", *EVAL))


def test_first_run_records_a_decision_with_its_evidence_and_lineage(first_run):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri(small_config()))
    version = client.get_model_version(NAME, first_run.version)
    assert first_run.against == "base" and first_run.n_prompts == 12
    assert first_run.win_rate_low <= first_run.win_rate <= first_run.win_rate_high
    assert version.tags["prefect_flow_run_id"] == first_run.flow_run_id
    for key in ("dataset_sha256", "config_hash", "git_commit", "method", "base_model", "model_sha256"):
        assert key in version.tags
    for key in ("gate.rule", "gate.win_rate", "gate.win_rate_ci95", "gate.n_prompts", "gate.outcome", "gate.reason"):
        assert key in version.tags
    assert version.tags["gate.against"] == "base"
    if not first_run.promoted:  # no free pass: no champion unless the interval cleared 0.5
        assert version.tags["gate.outcome"] == "not promoted" and "lower bound" in first_run.decision
        assert first_run.win_rate_low <= 0.5
    run = client.get_run(first_run.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["training.method"] == "dpo"
    for metric in ("eval/preference_accuracy", "eval/win_rate", "eval/win_rate_low", "eval/win_rate_high"):
        assert metric in run.data.metrics
    assert set(first_run.seconds) >= {"data", "train", "evaluate", "register"}


def test_next_round_starts_from_the_champion_and_must_beat_it(first_run):
    from mlflow import MlflowClient

    from alignflow.flows.alignment import alignment
    from alignflow.tasks.registry.promotion import promote

    uri = tracking_uri(small_config())
    if not first_run.promoted:
        promote(uri, NAME, first_run.version, reason="test: the next round needs a champion")
    second = alignment(small_config(f"registry.model_name={NAME}", "training.start_from=champion", *EVAL))
    assert int(second.version) == int(first_run.version) + 1 and second.against == "champion"
    client = MlflowClient(uri)
    tags = client.get_model_version(NAME, second.version).tags
    assert tags["started_from"] == "champion" and tags["gate.against"] == "champion"
    # Judged against the champion, and against the base model too: the rounds' trajectory, with its interval.
    assert float(tags["vs_base.low"]) <= float(tags["vs_base.win_rate"]) <= float(tags["vs_base.high"])
    assert tags["vs_base.n_prompts"] == "12" and tags["vs_base.samples_per_prompt"] == "2"
    assert [c["version"] for c in second.champions][:1] == [first_run.version]
    logged = client.get_run(second.mlflow_run_id).data.metrics["eval/vs_base/win_rate"]
    assert round(logged, 4) == float(tags["vs_base.win_rate"])
    expected = second.version if second.promoted else first_run.version
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == expected
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == second.version


def test_validation_gate_stops_before_training(first_run):
    from alignflow.flows.alignment import GateFailed, alignment

    with pytest.raises(GateFailed, match="validation.min_pairs"):
        alignment(small_config(f"registry.model_name={NAME}-gate", "validation.min_pairs=100000"))
