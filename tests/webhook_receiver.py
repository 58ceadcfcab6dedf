"""A webhook receiver on 127.0.0.1 for the notification tests: it records the JSON bodies POSTed to it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@contextmanager
def webhook_receiver(path: str = "/hooks/alignflow") -> Iterator[tuple[str, list[dict], dict[str, Any]]]:
    """(url, received bodies, behaviour); behaviour["fail"]: how many next POSTs get a 503,
    behaviour["status"]: the answer after those (204 by default)."""
    received: list[dict] = []
    behaviour: dict[str, Any] = {"fail": 0, "status": 204}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if behaviour["fail"] > 0:
                behaviour["fail"] -= 1
                self.send_response(503)
            else:
                received.append(body)
                self.send_response(behaviour["status"])
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}{path}", received, behaviour
    finally:
        server.shutdown()
        server.server_close()
