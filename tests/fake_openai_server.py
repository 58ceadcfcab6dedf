"""A real OpenAI-compatible HTTP server on 127.0.0.1 for the generation tests (stdlib http.server).

It speaks POST /v1/chat/completions like vLLM or TGI: generation requests get deterministic
answers, UltraFeedback judge requests (recognized by distilabel's system prompt) get one
"Rating: N" section per text. Connections are kept alive (HTTP/1.1), as vLLM's are. Markers in
a prompt inject failures:

    [flaky]          HTTP 500 on the first 2 requests for that prompt and model, then answers
    [fail]           HTTP 500 always, for models whose name contains "beta"
    [fail-all]       HTTP 500 always, every model
    [slow]           the first request for that prompt and model sleeps past the client's time-out
    [slow-always]    every request sleeps past the time-out, for models whose name contains "beta"
    [judge-flaky]    the judge's first answer does not parse, then it does
    [judge-garbage]  the judge's answer never parses
    [rate-limited]   HTTP 429 with a Retry-After on the first request for that prompt and model

Server-wide settings (attributes, changeable while it runs) model a busy server:

    latency_s        every answer takes this long (a fixed latency per request)
    capacity         more requests than this in flight at once get HTTP 429 with a Retry-After
    rate_limit_until every request before this time.monotonic() gets HTTP 429 with a Retry-After
    retry_after_s    the Retry-After those 429s carry

Every request is recorded (kind, model, prompt, status, when it arrived and was answered) so
tests can count LLM calls, and the Authorization header is checked against the expected key
(401 otherwise). `peak_in_flight` is the most requests the server was answering at once.
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
    arrived: float = 0.0  # time.monotonic()
    in_flight: int = 0  # requests the server was answering when this one arrived (itself included)


@dataclass
class FakeOpenAI:
    api_key: str
    slow_seconds: float = 2.5
    latency_s: float = 0.0
    capacity: int | None = None
    rate_limit_until: float = 0.0
    retry_after_s: float = 1.0
    requests: list[Request] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0
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

    def stats(self) -> dict:
        """Counts for a client in another process (GET /v1/stats): requests by kind and status, peak in flight."""
        with self._lock:
            by = Counter(f"{r.kind} {r.status}" for r in self.requests)
            return {"requests": len(self.requests), "by_kind_status": dict(by), "peak_in_flight": self.peak_in_flight}

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._attempts.clear()
            self.peak_in_flight = self.in_flight

    @contextmanager
    def answering(self) -> Iterator[int]:
        """Count one request in flight while it is answered; yields how many are (itself included)."""
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            now = self.in_flight
        try:
            yield now
        finally:
            with self._lock:
                self.in_flight -= 1

    # --- answering ------------------------------------------------------------------------------

    def answer(self, body: dict, authorization: str, in_flight: int = 1) -> tuple[int, dict, float]:
        """(status, JSON body, seconds to sleep first) for one request; `in_flight` counts it."""
        messages = body.get("messages") or []
        model = str(body.get("model", ""))
        is_judge = any(JUDGE_MARK in str(m.get("content", "")) for m in messages if m.get("role") == "system")
        user = next((str(m.get("content", "")) for m in messages if m.get("role") == "user"), "")
        prompt = _judged_instruction(user) if is_judge else user
        kind = "judge" if is_judge else "generate"
        with self._lock:
            self._attempts[(kind, model, prompt)] += 1
            attempt = self._attempts[(kind, model, prompt)]
        status, sleep, arrived = 200, self.latency_s, time.monotonic()
        if authorization != f"Bearer {self.api_key}":
            status = 401
        elif (
            arrived < self.rate_limit_until
            or (self.capacity is not None and in_flight > self.capacity)
            or ("[rate-limited]" in prompt and attempt == 1)
        ):
            status, sleep = 429, 0.0
        elif kind == "generate":
            always = "[fail-all]" in prompt or ("[fail]" in prompt and "beta" in model)
            if always or ("[flaky]" in prompt and attempt <= 2):
                status = 500
            elif ("[slow]" in prompt and attempt == 1) or ("[slow-always]" in prompt and "beta" in model):
                sleep = self.slow_seconds
        with self._lock:
            self.requests.append(Request(kind, model, prompt, status, arrived, in_flight))
        if status == 401:  # echoing what was presented, as some servers do: the client must not log it
            message = f"invalid api key {authorization.removeprefix('Bearer ')}"
            return status, {"error": {"message": message, "type": "invalid_request_error"}}, sleep
        if status == 429:
            return status, {"error": {"message": "injected rate limit", "type": "rate_limit_error"}}, sleep
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
        protocol_version = "HTTP/1.1"  # keep-alive: a client reuses its connections, as with vLLM
        # TCP_NODELAY, as uvicorn (vLLM) and every asyncio server set it. Without it the body, written after
        # the headers, waits for the client's delayed ACK of the headers: every answer took 44 ms more than
        # its latency (measured: 544 ms at --latency 0.5, 44 ms at 0), and kept-alive connections paid it.
        disable_nagle_algorithm = True

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if not self.path.rstrip("/").endswith("/stats"):  # what a benchmark in another process reads
                self.send_error(404)
                return
            data = json.dumps(fake.stats()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self.send_error(404)
                return
            body = json.loads(raw or b"{}")
            with fake.answering() as in_flight:
                status, payload, sleep = fake.answer(body, self.headers.get("Authorization", ""), in_flight)
                if sleep:
                    time.sleep(sleep)
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", f"{fake.retry_after_s:g}")
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and went away

        def log_message(self, *args) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 1024  # the default 5 refuses connections when a whole batch arrives at once

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
def running(slow_seconds: float = 2.5, **settings: object) -> Iterator[tuple[FakeOpenAI, str]]:
    """The server, with the key exported as KEY_VARIABLE (what a generator's api_key_env names);
    `settings`: latency_s, capacity, rate_limit_until, retry_after_s."""
    fake = FakeOpenAI(api_key=API_KEY, slow_seconds=slow_seconds, **settings)  # type: ignore[arg-type]
    httpd, url = serve(fake)
    os.environ[KEY_VARIABLE] = API_KEY
    try:
        yield fake, url
    finally:
        httpd.shutdown()
        os.environ.pop(KEY_VARIABLE, None)


def main() -> None:
    """Serve until killed, in a process of its own (bench/generation_endpoint.py); prints the base URL."""
    import argparse

    parser = argparse.ArgumentParser(description="The OpenAI-compatible test server (see the module doc).")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds every answer takes")
    parser.add_argument("--capacity", type=int, default=None, help="HTTP 429 past this many requests in flight")
    parser.add_argument("--retry-after", type=float, default=1.0, help="the Retry-After of those 429s")
    args = parser.parse_args()
    fake = FakeOpenAI(api_key=API_KEY, latency_s=args.latency, capacity=args.capacity, retry_after_s=args.retry_after)
    httpd, url = serve(fake)
    print(url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        httpd.shutdown()


if __name__ == "__main__":
    main()
