"""A local HTTP receiver for outbound integrations (Slack webhooks, telemetry, Spark): it records every
request on an ephemeral loopback port and answers with a status a test chooses per path."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Receiver:
    url: str
    received: list[Received] = field(default_factory=list)
    #: path -> (status, body) answered; anything else gets 200 `ok`.
    answers: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    #: path -> seconds to wait before answering (a slow receiver).
    delays: dict[str, float] = field(default_factory=dict)
    #: path -> `Location` header sent with the answer (a receiver that redirects).
    locations: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def clear(self) -> None:
        with self.lock:
            self.received.clear()


@contextmanager
def run_receiver() -> Iterator[Receiver]:
    receiver = Receiver("")

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            with receiver.lock:
                receiver.received.append(
                    Received(
                        self.command,
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                        time.monotonic(),
                    )
                )
            route = self.path.split("?", 1)[0]
            time.sleep(receiver.delays.get(route, 0.0))
            status, answer = receiver.answers.get(route, (200, b"ok"))
            self.send_response(status)
            self.send_header("content-type", "application/json" if answer.startswith((b"{", b"[")) else "text/plain")
            self.send_header("content-length", str(len(answer)))
            if route in receiver.locations:
                self.send_header("location", receiver.locations[route])
            self.end_headers()
            self.wfile.write(answer)

        do_POST = do_GET = do_PUT = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
