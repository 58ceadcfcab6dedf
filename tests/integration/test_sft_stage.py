"""The optional SFT stage in the alignment flow's train task: SFTTrainer on Ray first, then DPO from its model."""

from __future__ import annotations

import pytest
from conftest import small_config

from alignflow.tasks.registry.tracking import start_run
from alignflow.tasks.runtime.state import Ref, sha256_file, sha256_tree, tracking_uri


@pytest.fixture(scope="module")
def train_ref(pairs_frame, tmp_path_factory) -> Ref:
    path = tmp_path_factory.mktemp("sft") / "train.parquet"
    pairs_frame.head(8).to_parquet(path, index=False)
    return Ref(uri=path.as_uri(), sha256=sha256_file(path))


def test_sft_then_dpo_in_the_train_task(prefect_harness, ray_session, tiny_model_path, train_ref, state_dir):
    from mlflow import MlflowClient

    from alignflow.flows.runbook import RunBook
    from alignflow.flows.stages import train
    from alignflow.tasks.training.driver import finished_stage

    cfg = small_config(
        "training.sft.enabled=true",
        "training.sft.max_steps=1",
        "training.max_steps=1",
        "training.scaling.num_workers=1",
        "training.loss_type=[sigmoid]",
    )
    uri = tracking_uri(cfg)
    run_id = start_run(uri, "test-sft", "sft-dpo", {}, {})
    base = Ref(uri=tiny_model_path.as_uri(), sha256=sha256_tree(tiny_model_path))
    book = RunBook(tracking=uri, run_id=run_id, tags={}, run_prefix="test-sft", scratch=state_dir / "scratch")
    trained = train(cfg.training, base, train_ref, str(state_dir / "ray"), book)

    sft, dpo = trained.stages["sft"], trained.stages["dpo"]
    assert sft.steps == 1 and dpo.steps == 1 and trained.wall_s >= dpo.wall_s
    assert sft.started_from == str(tiny_model_path)
    assert dpo.started_from == sft.model.loadable  # DPO's policy is the SFT model ...
    client = MlflowClient(uri)
    assert client.get_metric_history(run_id, "sft/loss")
    # ... and so is its reference: before the first update the policy equals the reference, rewards are 0.
    assert [m.value for m in client.get_metric_history(run_id, "train/rewards/chosen") if m.step == 1] == [0.0]
    assert sft.cost["forward_passes_per_example"] == 1.0 and dpo.cost["forward_passes_per_example"] == 4.0
    # A re-run whose preference stage had not finished reuses the finished SFT stage's model.
    reused = finished_stage(str(state_dir / "ray"), f"{dpo.run_name}-sft")
    assert reused and reused.model == sft.model and trained.model.path.is_dir()
