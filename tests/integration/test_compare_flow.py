"""The comparison flow end to end on the small config: SFT -> DPO and ORPO side by side on Ray,
one table with every column filled, nested MLflow runs, the best through the gate, a failing recipe
that does not sink the others.

It is also the suite's test of the train stage itself (a Ray Train fit costs ~15 s of start-up here, so each case
trains once): metrics at every logged step, the optional SFT stage before DPO (DPO's policy and reference are the
SFT model), and the finished SFT stage found again for a re-run."""

from __future__ import annotations

import pytest
from conftest import small_config

from alignflow.tasks.evaluation.comparison import COLUMNS
from alignflow.tasks.runtime.state import tracking_uri

NAME = "test-compare"
RECIPES = [
    "comparison.max_parallel=3",
    "training.scaling.num_workers=1",
    "training.scaling.resources_per_worker={CPU: 0.5}",  # three recipes side by side on two cores
    "training.loss_type=[sigmoid]",
    "comparison.recipes.sft-dpo.method=dpo",
    "comparison.recipes.sft-dpo.sft.enabled=true",
    "comparison.recipes.sft-dpo.sft.max_steps=2",
    "comparison.recipes.orpo.method=orpo",
    # Valid as far as the schema knows, refused by transformers when the worker builds the trainer.
    # TRL accepts it when the config loads; torch.compile refuses it when the recipe trains.
    "comparison.recipes.broken.torch_compile_backend=no-such-backend",
    "evaluation.max_prompts=4",
    "evaluation.samples_per_prompt=1",
    "evaluation.max_new_tokens=8",
    f"registry.model_name={NAME}",
]


@pytest.fixture(scope="module")
def compared(prefect_harness, ray_session):
    from alignflow.flows.compare import compare

    return compare(small_config(*RECIPES))


def test_recipes_fill_every_column(compared):
    rows = {r["recipe"]: r for r in compared.recipes}
    assert list(rows) == ["sft-dpo", "orpo", "broken"]
    for name in ("sft-dpo", "orpo"):
        row = rows[name]
        assert row["status"] == "completed", row
        assert list(row) == list(COLUMNS)
        assert all(row[c] is not None for c in COLUMNS if c != "detail"), row
        assert row["wall_s"] > 0 and row["compute_s"] > 0 and row["peak_mem_mb"] > 0
        assert 0.0 <= row["preference_accuracy"] <= 1.0 and 0.0 <= row["win_rate"] <= 1.0
        assert row["win_rate_vs"] == "base"  # no champion of this model yet
        assert row["win_rate_low"] <= row["win_rate"] <= row["win_rate_high"]
    # Measured with forward hooks: DPO runs policy and reference over chosen and rejected (4), ORPO the
    # policy only (2), the SFT stage one sequence per example on top of DPO's (4 + 1).
    assert rows["orpo"]["forward_passes_per_example"] == 2.0 and rows["orpo"]["forward_calls_per_step"] == 1.0
    assert rows["sft-dpo"]["forward_passes_per_example"] == 5.0
    assert rows["sft-dpo"]["stages"] == "sft -> dpo" and rows["sft-dpo"]["steps"] == 4
    assert compared.curves and compared.best in ("sft-dpo", "orpo")


def test_a_finished_sft_stage_is_found_again_for_a_rerun(compared, state_dir):
    from alignflow.tasks.training.driver import finished_stage

    # A re-run whose preference stage had not finished reuses the finished SFT stage's model (train_stages).
    markers = sorted((state_dir / "ray").glob("*-sft/alignflow_done.json"))
    assert markers
    reused = finished_stage(str(state_dir / "ray"), markers[0].parent.name)
    assert reused and reused.stage == "sft" and reused.steps == 2 and reused.model.path.is_dir()


def test_failing_recipe_is_marked_failed_with_its_reason(compared):
    broken = next(r for r in compared.recipes if r["recipe"] == "broken")
    assert broken["status"] == "failed"
    assert "no-such-backend" in broken["detail"].lower() and broken["detail"].startswith("train:")
    assert broken["preference_accuracy"] is None


def test_nested_runs_and_only_the_best_is_registered(compared):
    from mlflow import MlflowClient

    from alignflow.tasks.registry.tracking import child_runs

    uri = tracking_uri(small_config())
    client = MlflowClient(uri)
    parent = client.get_run(compared.mlflow_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["compare.best_recipe"] == compared.best
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "compare")}
    assert {"compare/table.json", "compare/curves.png"} <= artifacts
    children = {r.data.tags["recipe"]: r for r in child_runs(uri, parent.info.run_id)}
    assert set(children) == {"sft-dpo", "orpo", "broken"}
    broken_run = children["broken"]
    assert broken_run.info.status == "FAILED" and "no-such-backend" in broken_run.data.tags["failure_reason"].lower()
    assert (
        "sft/loss" in children["sft-dpo"].data.metrics and "eval/preference_accuracy" in children["orpo"].data.metrics
    )
    # Every logged step reaches the recipe's run (logging_steps=1, two steps). After SFT, DPO's policy and its
    # reference are the SFT model: before the first update they are equal, so the rewards are 0.
    orpo, sft_dpo = children["orpo"].info.run_id, children["sft-dpo"].info.run_id
    assert [m.step for m in client.get_metric_history(orpo, "train/loss")] == [1, 2]
    assert [m.value for m in client.get_metric_history(sft_dpo, "train/rewards/chosen") if m.step == 1] == [0.0]
    versions = client.search_model_versions(f"name = '{NAME}'")
    assert [v.run_id for v in versions] == [compared.children[compared.best]]
    # The first model of its name is judged against the base model like any other: a decision, not a free pass.
    tags = client.get_model_version(NAME, versions[0].version).tags
    assert tags["gate.against"] == "base" and "gate.win_rate_ci95" in tags
    assert compared.registry.promoted == (tags["gate.outcome"] == "promoted")
