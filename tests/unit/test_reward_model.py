"""The reward_model section, held-out accuracy with its interval, the gate, and the reward pyfunc's predict."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from alignflow.conf.loader import ConfigError, load_config
from alignflow.conf.reward_model import REWARD_KNOBS, RewardModelConfig
from alignflow.tasks.reward.accuracy import pair_accuracy, wilson_interval
from alignflow.tasks.reward.register import decide, evidence_tags


def test_defaults_are_the_reward_models_own_knobs_and_name():
    reward = load_config().reward_model
    assert reward.method == "reward" and reward.trl_class == "reward"
    assert reward.model_name_or_path == load_config().training.model_name_or_path
    assert reward.model_name == "alignflow-smollm2-135m-instruct-reward"
    assert reward.knobs == RewardModelConfig().knobs and reward.knob("lora_task_type", str) == "SEQ_CLS"
    assert (
        reward.knob("learning_rate", float) == REWARD_KNOBS["learning_rate"]
        and reward.knob("num_train_epochs", float) == 1
    )
    assert reward.scaling.num_workers == 2 and reward.min_accuracy == 0.5
    assert "beta" not in reward.trl_kwargs() and reward.trl_kwargs()["use_cpu"] is True
    named = load_config(overrides=["reward_model.registered_model=rm", "reward_model.lora_r=8"]).reward_model
    assert named.model_name == "rm" and named.model_kwargs("m")["lora_r"] == 8
    tiny = load_config(overrides=["reward_model.model_name_or_path=builtin:tiny-llama"]).reward_model
    assert tiny.model_name == "alignflow-tiny-llama-reward"


@pytest.mark.parametrize(
    ("override", "key", "says"),
    [
        ("reward_model.lerning_rate=1e-4", "reward_model.lerning_rate", "unknown key"),
        ("reward_model.beta=0.1", "reward_model.beta", "unknown key"),  # DPO's, not RewardConfig's
        ("reward_model.max_length=abc", "reward_model.max_length", "RewardConfig.max_length"),
        ("reward_model.lora_task_type=CAUSAL_LM", "reward_model.lora_task_type", "SEQ_CLS"),
        ("reward_model.min_accuracy=1.5", "reward_model.min_accuracy", "less than 1"),
        ("reward_model.method=dpo", "reward_model.method", "reward"),
    ],
)
def test_a_bad_knob_names_its_key(override, key, says):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert f"  {key}: " in str(info.value) and says in str(info.value)


def test_trl_accepts_the_embedded_reward_config():
    from alignflow.conf.training import trl_problems

    assert trl_problems(load_config().reward_model) == []


def test_accuracy_counts_ties_half_and_its_interval_holds_it():
    result = pair_accuracy([2.0, 1.0, 0.5, 0.0], [1.0, 1.0, 1.0, -1.0])
    assert result.accuracy == pytest.approx(0.625) and result.n_pairs == 4
    assert 0.0 <= result.low < result.accuracy < result.high <= 1.0
    assert result.mean_margin == pytest.approx((1.0 + 0.0 - 0.5 + 1.0) / 4)
    low, high = wilson_interval(40, 50)  # Wilson's 95% interval of 0.8 at n=50: [0.670, 0.888]
    assert low == pytest.approx(0.670, abs=1e-3) and high == pytest.approx(0.888, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_the_gate_needs_the_lower_bound_above_min_accuracy():
    strong, weak = pair_accuracy([1.0] * 40, [0.0] * 40), pair_accuracy([1.0] * 6 + [0.0] * 4, [0.0] * 10)
    assert decide(strong, 0.5).passed and "exceeds 0.5" in decide(strong, 0.5).reason
    gate = decide(weak, 0.5)
    assert not gate.passed and "does not exceed" in gate.reason
    tags = evidence_tags(weak, gate)
    assert tags["gate.outcome"] == "not promoted" and tags["reward.n_pairs"] == "10"


def test_the_pyfunc_scores_each_conversations_last_turn(tiny_model_path, tmp_path):
    from mlflow.exceptions import MlflowException
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alignflow.tasks.registry.serving import HF_ARTIFACT
    from alignflow.tasks.reward.serving import RewardServingModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_path, num_labels=1, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id
    )
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    served = RewardServingModel()
    served.load_context(SimpleNamespace(artifacts={HF_ARTIFACT: str(tmp_path / "rm")}, model_config={}))
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there!"}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}]},
    ]
    rewards = served.predict(None, rows)
    assert len(rewards) == 2 and all(isinstance(r, float) for r in rewards)
    assert served.predict(None, rows[:1]) == pytest.approx(rewards[:1], abs=1e-5)  # batching changes nothing
    with pytest.raises(MlflowException, match="assistant"):
        served.predict(None, [{"messages": [{"role": "user", "content": "Hi"}]}])


def test_a_registered_reward_model_downloads_as_a_one_label_classifier(tiny_model_path, tmp_path):
    """The judge's contract: `models:/NAME@champion` gives back a plain HF folder of a one-label classifier."""
    import mlflow
    from registered import tiny_reward_model
    from transformers import AutoModelForSequenceClassification

    from alignflow.tasks.registry.serving import download_model_dir
    from alignflow.tasks.reward.scorer import load_reward_model

    uri, version = tiny_reward_model(tiny_model_path, tmp_path / "registry", "tiny-rm")
    mlflow.set_tracking_uri(uri)
    folder = download_model_dir("models:/tiny-rm@champion", tmp_path / "got")
    assert AutoModelForSequenceClassification.from_pretrained(folder).config.num_labels == 1
    assert len(load_reward_model(folder).scores([("Hi", "Hello")])) == 1
    loaded = mlflow.pyfunc.load_model(f"models:/tiny-rm/{version}")
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert len(loaded.predict([{"messages": messages}])) == 1
