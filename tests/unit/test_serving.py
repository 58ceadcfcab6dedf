"""The served model (tasks/registry/serving.py): the completion alone, prompts and chats, strict options.

Fast tests call the pyfunc's predict in process on the tiny test model. The integration test
logs and registers it in a SQLite MLflow, serves `models:/NAME@champion` with `mlflow models
serve`, and asks it over HTTP.
"""

from __future__ import annotations

import json

import pytest
from mlflow.exceptions import MlflowException
from serving_requests import ALLOWED_FIELDS, ALLOWED_PARAMS, CHAT, PROMPT, assert_completion_only  # noqa: E402

from alignflow.tasks.registry.serving import DEFAULTS, HF_ARTIFACT, ServingModel, model_defaults


@pytest.fixture(scope="module")
def served(tiny_model_path) -> ServingModel:
    from mlflow.pyfunc import PythonModelContext

    model = ServingModel()
    context = PythonModelContext(
        artifacts={HF_ARTIFACT: str(tiny_model_path)}, model_config={"defaults": model_defaults(tiny_model_path)}
    )
    model.load_context(context)
    return model


def sampled(model: ServingModel, request: dict, seeds: range = range(6)) -> list[str]:
    import torch

    answers = []
    for seed in seeds:
        torch.manual_seed(seed)
        [answer] = model.predict(None, [request])
        answers.append(answer)
    return answers


def test_a_prompt_is_answered_with_the_completion_alone(served):
    answers = sampled(served, {"prompt": PROMPT, "max_new_tokens": 16, "do_sample": True})
    for answer in answers:
        assert_completion_only(answer)
    assert any(answers)  # the tiny model does write something
    # A plain prompt is one user turn through the chat template, the way the gate evaluated the model.
    chat = sampled(served, {"messages": [{"role": "user", "content": PROMPT}], "max_new_tokens": 16, "do_sample": True})
    assert chat == answers


def test_messages_are_answered_with_the_completion_alone(served):
    answers = sampled(served, {"messages": CHAT, "max_new_tokens": 16, "do_sample": True})
    for answer in answers:
        assert_completion_only(answer)
    assert any(answers)
    # MLflow's unwrapped chat format: one request in, one string out.
    one = served.predict(None, {"messages": CHAT, "max_new_tokens": 4})
    assert_completion_only(one)
    # Options come from the request, else params, else the model's generation config.
    [short] = served.predict(None, [{"messages": CHAT, "do_sample": False}], params={"max_new_tokens": 1})
    assert len(served.tokenizer(short, add_special_tokens=False)["input_ids"]) <= 1


@pytest.mark.parametrize(
    ("request_", "params", "message"),
    [
        ({"prompt": PROMPT, "max_tokens": 5}, None, f"unknown field(s) in inputs[0]: max_tokens; {ALLOWED_FIELDS}"),
        ({"prompt": PROMPT}, {"max_tokens": 5, "seed": 1}, f"unknown params: max_tokens, seed; {ALLOWED_PARAMS}"),
        (
            {"prompt": PROMPT, "max_new_tokens": 5000},
            None,
            "max_new_tokens: Input should be less than or equal to 1024",
        ),
        ({"prompt": PROMPT, "top_p": 0}, None, "top_p: Input should be greater than 0"),
        (
            {"messages": [{"role": "bot", "content": "hi"}]},
            None,
            "unknown role 'bot'; allowed: system, user, assistant",
        ),
        ({"messages": [{"role": "user", "content": "hi", "name": "x"}]}, None, "a message has only role and content"),
        ({"prompt": PROMPT, "messages": CHAT}, None, "give exactly one of `prompt` or `messages`"),
        ({"messages": []}, None, "`messages` is empty"),
    ],
)
def test_unknown_or_out_of_range_options_are_refused_by_name(served, request_, params, message):
    with pytest.raises(MlflowException) as refused:
        served.predict(None, [request_], params=params)
    assert message in refused.value.message
    assert refused.value.get_http_status_code() == 400


def test_mlflow_refuses_unknown_params_of_the_served_schema_only(served):
    """The served model makes MLflow's params check strict for its own schema (MLflow drops them)."""
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    ours = infer_signature([PROMPT], ["x"], params=DEFAULTS).params
    with pytest.raises(MlflowException, match=f"unknown params: bogus; {ALLOWED_PARAMS}"):
        mlflow.pyfunc._enforce_params_schema({"bogus": 1, "max_new_tokens": 8}, ours)
    assert mlflow.pyfunc._enforce_params_schema({"max_new_tokens": 8}, ours)["max_new_tokens"] == 8
    other = infer_signature([PROMPT], ["x"], params={"k": 1}).params
    assert mlflow.pyfunc._enforce_params_schema({"bogus": 1}, other) == {"k": 1}


def test_defaults_are_the_models_generation_config_within_bounds(tiny_model_path, tmp_path):
    config = json.loads((tiny_model_path / "generation_config.json").read_text())
    defaults = model_defaults(tiny_model_path)
    assert defaults["do_sample"] is config["do_sample"] and defaults["max_new_tokens"] == config["max_new_tokens"]
    (tmp_path / "generation_config.json").write_text(json.dumps({"max_new_tokens": 4096, "top_p": 0.9}))
    assert model_defaults(tmp_path) == {**DEFAULTS, "top_p": 0.9}
    assert model_defaults(tmp_path / "missing") == DEFAULTS
