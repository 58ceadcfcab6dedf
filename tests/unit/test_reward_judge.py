"""judge.kind reward_model: the config, the scorer, the generate stage's judge step and the pairwise judge."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from alignflow.conf.generation import JudgeConfig
from alignflow.tasks.evaluation import judges
from alignflow.tasks.evaluation.judges import PairToJudge, judge_both_orders, judge_labels
from alignflow.tasks.reward.models import judge_model_dir, reward_model_dir
from alignflow.tasks.reward.scorer import load_reward_model, to_unit


@pytest.fixture(scope="module")
def reward_model_folder(tiny_model_path: Path, tmp_path_factory) -> Path:
    """The tiny model with a one-label head (seeded, untrained): a reward model as transformers loads one."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("reward") / "model"
    AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=1).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"kind": "reward_model"}, "needs judge.model"),
        ({"kind": "reward_model", "model": "registry:champion"}, "name the reward model"),
        ({"kind": "reward_model", "model": "rm", "llm": {"provider": "openai", "model": "m"}}, "has no LLM"),
        ({"kind": "offline", "model": "rm"}, "only for kind reward_model"),
        ({"kind": "reward_model", "model": "rm", "resources": {"TPU": 1}}, "not among CPU, GPU, memory"),
    ],
)
def test_a_reward_model_judge_names_its_model_and_nothing_else(given, message):
    with pytest.raises(ValidationError, match=message):
        JudgeConfig(**given)


def test_labels_name_the_reward_model():
    panel = [JudgeConfig(kind="reward_model", model="registry:rm@champion"), JudgeConfig()]
    assert judge_labels(panel) == ["reward_model:registry:rm@champion", "offline"]


def test_scores_do_not_depend_on_the_batch(reward_model_folder):
    model = load_reward_model(reward_model_folder, batch_size=3)
    items = [("What is 2+2?", "Four."), ("What is 2+2?", "Two and two make four, always."), ("Hi", "Hello there")]
    together = model.scores(items)
    alone = [load_reward_model(reward_model_folder, batch_size=1).scores([item])[0] for item in items]
    assert together == pytest.approx(alone, abs=1e-5)  # right padding never reaches the head
    assert all(0.0 < to_unit(r) < 1.0 for r in together)
    assert to_unit(-1.0) < to_unit(0.0) == 0.5 < to_unit(1.0)


def test_the_judge_step_scores_every_candidate_and_skips_failed_rows(reward_model_folder):
    from alignflow.tasks.generation.steps import RewardModelJudge

    step = RewardModelJudge(name="judge", model_path=str(reward_model_folder), batch_size=2, input_batch_size=8)
    step.load()
    rows = [
        {
            "instruction": "Name a colour.",
            "candidates": ["Blue.", "Blue is a colour of the sky.", ""],
            "row_error": None,
        },
        {"instruction": "Say hi.", "candidates": [], "row_error": "generation failed: g0: time-out"},
    ]
    judged, failed = next(step.process(rows))
    expected = load_reward_model(reward_model_folder).scores([("Name a colour.", c) for c in rows[0]["candidates"]])
    assert judged["scores"] == pytest.approx(expected, abs=1e-5)  # the rewards themselves: a sigmoid saturates
    assert judged["ratings"] == [1 + min(4, int(to_unit(r) * 5)) for r in judged["scores"]]
    assert failed["scores"] is None and failed["judge_error"] is None  # the generation's failure, counted there


def test_pairwise_the_higher_reward_wins_ties_tie_and_each_answer_is_scored_once(monkeypatch):
    asked: list[list[tuple]] = []
    rewards = {"good": 2.0, "bad": -1.0, "same": 2.0}

    def fake_remote(config, model_dir):
        def scores(items):
            asked.append(items)
            return [rewards[answer] for _, answer in items]

        return scores, {"node": "n1", "pid": "1", "device": "cpu"}

    monkeypatch.setattr("alignflow.tasks.reward.actor.remote_reward_model", fake_remote)
    judge = judges.pair_judge(JudgeConfig(kind="reward_model", model="rm"), Path("rm"))
    pairs = [
        PairToJudge("p", "", "good", "bad"),
        PairToJudge("p", "", "bad", "good"),
        PairToJudge("p", "", "good", "same"),
    ]
    assert judge_both_orders(judge, pairs) == [1.0, 0.0, 0.5]
    assert sorted(a for batch in asked for _, a in batch) == ["bad", "good", "same"]  # the swapped order asks nothing


def test_a_missing_folder_or_registered_model_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"judge.model .*no reward model folder"):
        reward_model_dir(str(tmp_path / "nowhere"), f"sqlite:///{tmp_path / 'db'}", tmp_path)
    from alignflow.tasks.registry.export import ExportRefused

    with pytest.raises(ExportRefused, match="no registered model 'rm'"):
        reward_model_dir("registry:rm@champion", f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path)
    assert judge_model_dir(JudgeConfig(), "unused", tmp_path) is None
