"""The evaluation on Ray workers (issue 27, item 2): the same held-out metrics, answers and verdicts as in the flow's
process, with the flow's process loading no model, and each share's placement recorded."""

from __future__ import annotations

import os

import pytest

from alignflow.conf.evaluation import EvaluationConfig
from alignflow.tasks.runtime.state import Ref, sha256_file, sha256_tree

pytestmark = pytest.mark.integration

# 40 prompts: two sampling batches of 32, so both workers draw; 4 pairs a batch: the held-out pairs split too.
SETTINGS = {"max_prompts": 40, "samples_per_prompt": 2, "max_new_tokens": 4, "batch_size": 4, "max_pairs": 12}


@pytest.fixture(scope="module")
def inputs(pairs_frame, tiny_model_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    pairs_frame.head(12).to_parquet(folder / "test.parquet", index=False)
    pairs_frame.tail(8).to_parquet(folder / "train.parquet", index=False)
    model = Ref(uri=tiny_model_path.as_uri(), sha256=sha256_tree(tiny_model_path))
    return model, folder / "test.parquet", folder / "train.parquet"


def test_workers_give_what_the_flows_process_gives_and_the_driver_loads_nothing(inputs, ray_session, monkeypatch):
    import torch

    from alignflow.tasks.evaluation import head_to_head, metrics
    from alignflow.tasks.evaluation.stage import evaluate

    model, test, train = inputs
    assert sha256_file(test)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a Ray worker with one CPU runs: the same arithmetic, bit for bit
    try:
        here = evaluate(EvaluationConfig(workers=0, **SETTINGS), 0.1, model, model, test, train, None)
    finally:
        torch.set_num_threads(threads)

    def refuse(*args, **kwargs):
        raise AssertionError("the flow's process loaded a model")

    monkeypatch.setattr(metrics, "load_causal_lm", refuse)
    monkeypatch.setattr(head_to_head, "load_causal_lm", refuse)
    on_ray = evaluate(EvaluationConfig(workers=2, **SETTINGS), 0.1, model, model, test, train, None)

    assert on_ray.held_out == here.held_out
    assert on_ray.head_to_head.rows == here.head_to_head.rows and on_ray.head_to_head.prompts == 40
    assert on_ray.head_to_head == here.head_to_head  # every answer, verdict and interval
    assert not here.placements
    # Each model's pairs and prompts in two shares: 3 pairs' shares (base, candidate) and 2 sampling shares each.
    pids = {p["pid"] for p in on_ray.placements}
    assert len(on_ray.placements) == 8 and str(os.getpid()) not in pids
    assert {p["device"] for p in on_ray.placements} == {"cpu"}
