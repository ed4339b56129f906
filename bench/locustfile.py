"""Locust: Claude Code sessions against a Nexus deployment (or anything that serves `/v1/messages`).

    locust -f bench/locustfile.py --headless -u 32 -r 8 -t 2m --host http://127.0.0.1:3000 --csv /tmp/cc

Each simulated user plays Claude Code sessions one after another (bench/traffic.py): 40-60 KB bodies with
the three system blocks, ~20 tools and a history that grows by the real assistant reply plus a new
user turn or `tool_result` every request, so the gateway's linker and store see real conversations.
A session ends near 60 KB and the user starts the next one. Streams (80% by default) are timed three
ways: `POST /v1/messages [stream]` is the time to the response head, `SSE first token` the time to the
first `content_block_delta`, `SSE complete` the whole stream; a stream cut before `message_stop` fails.

Settings (environment):
    NEXUS_BENCH_STREAM_SHARE   share of streaming requests, 0-1 (0.8)
    NEXUS_BENCH_API_KEY        x-api-key sent (a Nexus client key when ENABLE_CLIENT_AUTH is on;
                               default: a dummy key that the fake upstream accepts)
    NEXUS_BENCH_THINK_S        pause between a user's requests, seconds (0)
    NEXUS_BENCH_PACING_MS      ask the fake upstream to pace stream events (x-fake-scenario: event-delay)

User prompts carry the fake upstream's `[[use_tool:...]]` marker so `nexus fake-upstream` answers with
tool calls; a real API reads it as text. Do not point this at api.anthropic.com unless you mean to pay
for the tokens: run Nexus with `CLAUDE_API_BASE_URL` at `nexus fake-upstream`.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import orjson
from locust import FastHttpUser, constant, events, task

from bench.traffic import CC_VERSION, Session, tools
from nexus._core import SseObserver

STREAM_SHARE = float(os.environ.get("NEXUS_BENCH_STREAM_SHARE", "0.8"))
API_KEY = os.environ.get("NEXUS_BENCH_API_KEY", "sk-ant-api03-nexus-bench")
THINK_S = float(os.environ.get("NEXUS_BENCH_THINK_S", "0"))
PACING_MS = os.environ.get("NEXUS_BENCH_PACING_MS")
TOOLS = tools(random.Random(CC_VERSION))  # identical for every session of one Claude Code version


class ClaudeCodeUser(FastHttpUser):
    wait_time = constant(THINK_S)
    # Claude Code keeps one connection; a long stream must not hit locust's default 60 s timeouts.
    network_timeout = 660.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        self.sessions = 0
        self.session = self._new_session()

    def _new_session(self) -> Session:
        self.sessions += 1
        seed = random.getrandbits(63)
        return Session(seed, stream_share=STREAM_SHARE, api_key=API_KEY, shared_tools=TOOLS)

    @task
    def turn(self) -> None:
        req = self.session.next_request()
        if req is None:  # the session reached ~60 KB: Claude Code would compact or the user start anew
            self.session = self._new_session()
            req = self.session.next_request()
            assert req is not None
        headers = dict(req.headers)
        if PACING_MS:
            headers["x-fake-scenario"] = f"event-delay:{PACING_MS}"
        if req.stream:
            self._stream(req.path, req.body, headers)
        else:
            self._json(req.path, req.body, headers)

    def _json(self, path: str, body: bytes, headers: dict[str, str]) -> None:
        with self.client.post(path, data=body, headers=headers, name="POST /v1/messages", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}: {(r.content or b'')[:200]!r}")
                return
            try:
                content = orjson.loads(r.content or b"{}")["content"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                r.failure("response is not a Messages API message")
                return
            self.session.record_reply(content)

    def _stream(self, path: str, body: bytes, headers: dict[str, str]) -> None:
        started = time.perf_counter()
        name = "POST /v1/messages [stream]"
        with self.client.post(path, data=body, headers=headers, name=name, stream=True, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}")
                return
            observer = SseObserver()
            first_token: float | None = None
            size = 0
            try:
                for chunk in r.iter_content(chunk_size=16 * 1024, decode_content=False):
                    data = chunk if isinstance(chunk, bytes) else chunk.encode()
                    size += len(data)
                    observer.feed(data)
                    if first_token is None and b"content_block_delta" in data:
                        first_token = time.perf_counter()
            except Exception as exc:  # the connection broke mid-stream
                r.failure(f"stream broken: {exc.__class__.__name__}")
                return
            done = time.perf_counter()
            complete = observer.saw_message_stop and observer.error is None
            if not complete:
                r.failure(f"stream incomplete (error event: {observer.error})")
        self._fire("SSE first token", name, first_token, started, 0)
        self._fire("SSE complete", name, done, started, size, None if complete else "incomplete stream")
        message = observer.message_json()
        if complete and message:
            self.session.record_reply(_content(message))

    def _fire(
        self, kind: str, name: str, at: float | None, started: float, size: int, error: str | None = None
    ) -> None:
        if at is None:
            return
        events.request.fire(
            request_type=kind,
            name=name,
            response_time=(at - started) * 1000,
            response_length=size,
            exception=Exception(error) if error else None,
            context={},
        )


def _content(message: bytes) -> list[dict[str, Any]]:
    content = orjson.loads(message).get("content")
    return content if isinstance(content, list) else []
