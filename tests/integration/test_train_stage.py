"""The train stage: TRL on Ray Train workers, metrics into MLflow, the model back as a Ref."""

from __future__ import annotations

import pytest
from conftest import small_config

from alignflow.tasks.registry.tracking import start_run
from alignflow.tasks.runtime.state import Ref, sha256_file, tracking_uri
from alignflow.tasks.training.driver import train_model
from alignflow.tasks.training.job import TrainJob


@pytest.fixture(scope="module")
def train_ref(pairs_frame, tmp_path_factory) -> Ref:
    path = tmp_path_factory.mktemp("train") / "train.parquet"
    pairs_frame.to_parquet(path, index=False)
    return Ref(uri=path.as_uri(), sha256=sha256_file(path))


# DPO on two workers, with the same checks, is tests/integration/test_train_distributed.py's 1-vs-2 workers test (one Ray
# fit costs ~30 s here, most of it Ray Train's start-up: each method/worker case is trained once in the suite).
@pytest.mark.parametrize(("method", "workers"), [("orpo", 1)])
def test_train_runs_on_ray_and_logs_to_mlflow(method, workers, ray_session, tiny_model_path, train_ref, state_dir):
    from mlflow import MlflowClient
    from transformers import AutoModelForCausalLM

    cfg = small_config(f"training.method={method}", f"training.scaling.num_workers={workers}")
    uri = tracking_uri(cfg)
    run_id = start_run(uri, "test-train", f"train-{method}", {}, {})
    trained = train_model(
        TrainJob(
            cfg.training,
            str(tiny_model_path),
            train_ref,
            str(state_dir / "ray"),
            f"test-{method}-{workers}",
            uri,
            run_id,
        )
    )
    assert trained.steps == 2 and trained.stage == method and trained.num_workers == workers
    assert trained.model.path.is_dir() and len(trained.model.sha256) == 64
    AutoModelForCausalLM.from_pretrained(trained.model.path)  # the final model loads

    history = MlflowClient(uri).get_metric_history(run_id, "train/loss")
    assert [m.step for m in history] == [1, 2]
    if method == "dpo":
        assert MlflowClient(uri).get_metric_history(run_id, "train/rewards/accuracies")
