"""A real OpenAI-compatible HTTP server on 127.0.0.1 for the generation tests (stdlib http.server).

It speaks POST /v1/chat/completions like vLLM or TGI: generation requests get deterministic
answers, UltraFeedback judge requests (recognized by distilabel's system prompt) get one
"Rating: N" section per text. Markers in a prompt inject failures:

    [flaky]          HTTP 500 on the first 2 requests for that prompt and model, then answers
    [fail]           HTTP 500 always, for models whose name contains "beta"
    [fail-all]       HTTP 500 always, every model
    [slow]           the first request for that prompt and model sleeps past the client's time-out
    [slow-always]    every request sleeps past the time-out, for models whose name contains "beta"
    [judge-flaky]    the judge's first answer does not parse, then it does
    [judge-garbage]  the judge's answer never parses

Every request is recorded (kind, model, prompt, status) so tests can count LLM calls, and the
Authorization header is checked against the expected key (401 otherwise).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

JUDGE_MARK = "Your role is to evaluate text quality"


@dataclass
class Request:
    kind: str  # "generate" or "judge"
    model: str
    prompt: str  # the user prompt (generation) or the instruction being judged
    status: int


@dataclass
class FakeOpenAI:
    api_key: str
    slow_seconds: float = 2.5
    requests: list[Request] = field(default_factory=list)
    _attempts: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, kind: str | None = None, marker: str | None = None, model: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (kind is None or r.kind == kind)
                and (marker is None or marker in r.prompt)
                and (model is None or r.model == model)
            )

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._attempts.clear()

    # --- answering ------------------------------------------------------------------------------

    def answer(self, body: dict, authorization: str) -> tuple[int, dict, float]:
        """(status, JSON body, seconds to sleep first) for one request."""
        messages = body.get("messages") or []
        model = str(body.get("model", ""))
        is_judge = any(JUDGE_MARK in str(m.get("content", "")) for m in messages if m.get("role") == "system")
        user = next((str(m.get("content", "")) for m in messages if m.get("role") == "user"), "")
        prompt = _judged_instruction(user) if is_judge else user
        kind = "judge" if is_judge else "generate"
        with self._lock:
            self._attempts[(kind, model, prompt)] += 1
            attempt = self._attempts[(kind, model, prompt)]
        status, sleep = 200, 0.0
        if authorization != f"Bearer {self.api_key}":
            status = 401
        elif kind == "generate":
            always = "[fail-all]" in prompt or ("[fail]" in prompt and "beta" in model)
            if always or ("[flaky]" in prompt and attempt <= 2):
                status = 500
            elif ("[slow]" in prompt and attempt == 1) or ("[slow-always]" in prompt and "beta" in model):
                sleep = self.slow_seconds
        with self._lock:
            self.requests.append(Request(kind, model, prompt, status))
        if status == 401:  # echoing what was presented, as some servers do: the client must not log it
            message = f"invalid api key {authorization.removeprefix('Bearer ')}"
            return status, {"error": {"message": message, "type": "invalid_request_error"}}, sleep
        if status != 200:
            return status, {"error": {"message": "injected server error", "type": "server_error"}}, sleep
        n = int(body.get("n") or 1)
        if kind == "judge":
            texts = _judged_texts(user)
            garbage = "[judge-garbage]" in prompt or ("[judge-flaky]" in prompt and attempt == 1)
            contents = ["I cannot grade these texts, sorry." if garbage else _ratings(texts)] * n
        else:
            contents = [_generation(model, prompt, i) for i in range(n)]
        return 200, _completion(model, contents), sleep


def _judged_instruction(user: str) -> str:
    annotation = user.split("## Annotation", 1)[-1]
    match = re.search(r"Instruction: (.*?)\n", annotation)
    return match.group(1) if match else ""


def _judged_texts(user: str) -> list[str]:
    annotation = user.split("## Annotation", 1)[-1].split("### Output", 1)[0]
    return re.findall(r"<text \d+> (.*?)(?=\n<text \d+> |\n*$)", annotation, re.DOTALL)


def _ratings(texts: list[str]) -> str:
    """A deterministic rating per text: longer answers rate higher (1-5)."""
    sections = [
        f"#### Output for Text {i}\nRating: {min(5, 1 + len(t.split()) // 4)}\nRationale: judged by length."
        for i, t in enumerate(texts, start=1)
    ]
    return "\n\n".join(sections)


def _generation(model: str, prompt: str, index: int) -> str:
    topic = re.sub(r"\[[a-z-]+\]\s*", "", prompt).rstrip("?.!")
    if "beta" in model:
        return f"{topic}: not sure."
    return f"Answer {index + 1} from {model}. {topic} is explained here in a few careful words, step by step."


def _completion(model: str, contents: list[str]) -> dict:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": c}, "finish_reason": "stop"}
            for i, c in enumerate(contents)
        ],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": sum(len(c.split()) for c in contents),
            "total_tokens": 10 + sum(len(c.split()) for c in contents),
        },
    }


def serve(fake: FakeOpenAI) -> tuple[ThreadingHTTPServer, str]:
    """Start the server in a daemon thread; returns it and its base URL (…/v1)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self.send_error(404)
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            status, payload, sleep = fake.answer(body, self.headers.get("Authorization", ""))
            if sleep:
                time.sleep(sleep)
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and went away

        def log_message(self, *args) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256  # the default 5 refuses connections when a whole batch arrives at once

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


API_KEY = "sk-alignflow-test-0123456789abcdef"  # the fake server's key; tests assert it never lands on disk
KEY_VARIABLE = "ALIGNFLOW_TEST_LLM_KEY"


def endpoint(url: str, model: str, **settings: object) -> str:
    """A generator/judge LLM entry for a `generation....=` override, on the fake server."""
    fields = {"provider": "openai", "model": model, "base_url": url, "api_key_env": KEY_VARIABLE, **settings}
    return "{" + ", ".join(f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {v}" for k, v in fields.items()) + "}"


@contextmanager
def running(slow_seconds: float = 2.5) -> Iterator[tuple[FakeOpenAI, str]]:
    """The server, with the key exported as KEY_VARIABLE (what a generator's api_key_env names)."""
    fake = FakeOpenAI(api_key=API_KEY, slow_seconds=slow_seconds)
    httpd, url = serve(fake)
    os.environ[KEY_VARIABLE] = API_KEY
    try:
        yield fake, url
    finally:
        httpd.shutdown()
        os.environ.pop(KEY_VARIABLE, None)
