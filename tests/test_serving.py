"""The served model (tasks/registry/serving.py): the completion alone, prompts and chats, strict options.

Fast tests call the pyfunc's predict in process on the tiny test model. The integration test
logs and registers it in a SQLite MLflow, serves `models:/NAME@champion` with `mlflow models
serve`, and asks it over HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from alignflow.tasks.registry.serving import DEFAULTS, HF_ARTIFACT, ServingModel, model_defaults

PROMPT = "Why is the sky blue?"
CHAT = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": PROMPT}]
ALLOWED_FIELDS = "allowed: prompt, messages, max_new_tokens, temperature, top_p, do_sample"
ALLOWED_PARAMS = "allowed: max_new_tokens, temperature, top_p, do_sample"


@pytest.fixture(scope="module")
def served(tiny_model_path) -> ServingModel:
    from mlflow.pyfunc import PythonModelContext

    model = ServingModel()
    context = PythonModelContext(
        artifacts={HF_ARTIFACT: str(tiny_model_path)}, model_config={"defaults": model_defaults(tiny_model_path)}
    )
    model.load_context(context)
    return model


def assert_completion_only(text: object) -> None:
    """No prompt echoed, no chat-template markers, no surrounding whitespace."""
    assert isinstance(text, str)
    assert text == text.strip()
    assert not text.startswith(PROMPT[:8]) and PROMPT not in text
    assert "<|" not in text and "|>" not in text and "Answer briefly" not in text


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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ping(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"mlflow models serve exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.mark.integration
def test_mlflow_models_serve_answers_a_chat_with_the_completion_alone(tiny_model_path, state_dir, tmp_path):
    import requests
    from mlflow import MlflowClient

    from alignflow.tasks.registry.tracking import start_run
    from alignflow.tasks.registry.versions import export_champion, log_model_version

    name, root = "test-serving", state_dir / "serving"
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    run_id = start_run(uri, name, "serving", {}, {}, (root / "artifacts").as_uri())
    version = log_model_version(uri, run_id, name, tiny_model_path)
    MlflowClient(uri).set_registered_model_alias(name, "champion", version)
    exported = export_champion(uri, name, tmp_path / "champion")
    assert exported is not None and (exported / "config.json").is_file() and (exported / "tokenizer.json").is_file()

    port, log = _free_port(), tmp_path / "serve.log"
    bin_dir = Path(sys.executable).parent  # uvicorn, started by `mlflow models serve`, lives there
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{name}@champion"]
            + ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=tmp_path,
            env={**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        )
    url = f"http://127.0.0.1:{port}/invocations"
    try:
        _wait_ping(f"http://127.0.0.1:{port}/ping", proc, log, timeout=600)
        started = time.perf_counter()
        answer = requests.post(url, json={"messages": CHAT, "max_new_tokens": 16}, timeout=120)
        print(f"served chat request: {time.perf_counter() - started:.3f}s")
        assert answer.status_code == 200, answer.text
        assert_completion_only(answer.json())  # a bare JSON string

        batch = requests.post(url, json={"inputs": [{"messages": CHAT, "do_sample": True}] * 4}, timeout=120)
        assert batch.status_code == 200, batch.text
        completions = batch.json()["predictions"]
        assert len(completions) == 4 and any(completions)
        for text in completions:
            assert_completion_only(text)

        for body, message in [
            ({"messages": CHAT, "max_tokens": 5}, f"unknown field(s) in request: max_tokens; {ALLOWED_FIELDS}"),
            (
                {"inputs": [{"messages": CHAT}], "params": {"max_tokens": 5}},
                f"unknown params: max_tokens; {ALLOWED_PARAMS}",
            ),
        ]:
            refused = requests.post(url, json=body, timeout=120)
            assert 400 <= refused.status_code < 500, refused.text
            assert message in refused.json()["message"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
