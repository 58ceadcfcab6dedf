"""`mlflow models serve` on a registered version: a chat request answered with the completion alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from registered import tiny_champion
from servers import free_port, wait_http
from serving_requests import ALLOWED_FIELDS, ALLOWED_PARAMS, CHAT, assert_completion_only


@pytest.mark.integration
def test_mlflow_models_serve_answers_a_chat_with_the_completion_alone(tiny_model_path, state_dir, tmp_path):
    import requests

    from alignflow.tasks.registry.versions import export_champion

    name = "test-serving"
    uri, version = tiny_champion(tiny_model_path, state_dir / "serving", name)
    exported = export_champion(uri, name, tmp_path / "champion")
    assert exported is not None and (exported / "config.json").is_file() and (exported / "tokenizer.json").is_file()

    port, log = free_port(), tmp_path / "serve.log"
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
        wait_http(f"http://127.0.0.1:{port}/ping", proc, 600, log)
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
