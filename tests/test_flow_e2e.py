"""The whole flow, end to end, on the small config: generate -> validate -> train -> evaluate -> register."""

from __future__ import annotations

import pytest
from conftest import small_config

from alignflow.tasks.runtime.state import tracking_uri

NAME = "test-e2e"


@pytest.fixture(scope="module")
def first_run(prefect_harness, ray_session):
    from alignflow.flows.alignment import alignment

    return alignment(small_config(f"registry.model_name={NAME}"))


def test_first_run_registers_a_champion_with_lineage(first_run):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri(small_config()))
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert first_run["registry"]["promoted"] and str(champion.version) == first_run["registry"]["version"]
    assert champion.tags["dataset_sha256"] == first_run["dataset"]["sha256"]
    assert champion.tags["prefect_flow_run_id"] == first_run["flow_run_id"]
    for key in ("config_hash", "git_commit", "method", "base_model", "gate.outcome", "gate.reason", "model_sha256"):
        assert key in champion.tags
    run = client.get_run(first_run["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["training.method"] == "dpo"
    assert "eval/preference_accuracy" in run.data.metrics
    assert set(first_run["seconds"]) >= {"generate", "validate", "train", "evaluate", "register"}


def test_second_run_reuses_data_and_gates_the_champion(first_run):
    from mlflow import MlflowClient

    from alignflow.flows.alignment import alignment

    second = alignment(small_config(f"registry.model_name={NAME}"))
    assert second["dataset"] == first_run["dataset"]  # generation was a cache hit
    assert second["seconds"]["generate"] < 5
    assert int(second["registry"]["version"]) == int(first_run["registry"]["version"]) + 1
    client = MlflowClient(tracking_uri(small_config()))
    champion = client.get_model_version_by_alias(NAME, "champion")
    expected = second["registry"]["version"] if second["registry"]["promoted"] else first_run["registry"]["version"]
    assert str(champion.version) == expected
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == second["registry"]["version"]
    tags = client.get_model_version(NAME, second["registry"]["version"]).tags
    assert tags["gate.outcome"] in ("promoted", "not promoted")


def test_validation_gate_stops_before_training(first_run):
    from alignflow.flows.alignment import GateFailed, alignment

    with pytest.raises(GateFailed, match="validation.min_pairs"):
        alignment(small_config(f"registry.model_name={NAME}-gate", "validation.min_pairs=100000"))
