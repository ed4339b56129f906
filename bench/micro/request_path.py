"""Nexus's own Python cost per proxied request, without the network: the real `ProxyApp` handler driven
through in-memory stand-ins for Granian's RSGI objects and the pyreqwest upstream response.

Everything the stack does (sockets, HTTP parsing, the Rust runtimes' thread hops) is left out, so what
remains is exactly the code Nexus adds on top of the floor (bench/floor_proxy.py): body checks, header
rules, auth, retries and timeouts, the relay loop, the SSE observer and building the storage record.
Deterministic and single-threaded, so a change of a few microseconds shows, where the end-to-end
harness on a shared 2-core machine cannot tell 10% apart.

    python -m bench.micro.request_path [--requests 3000]      # prints us per request, JSON and stream
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import orjson

from bench import traffic
from nexus.fake_upstream.server import FakeAnthropic


def _bodies(stream: bool, passes: int = 4) -> list[bytes]:
    """Real Claude Code sessions (so the linker finds parents), a new token per pass: ~500 bodies."""
    corpus = [r.body for r in traffic.corpus(8, stream_share=1.0 if stream else 0.0)]
    token = traffic.TOKEN.encode()
    return [b.replace(token, b"%06x" % p) for p in range(passes) for b in corpus]


BODIES_JSON, BODIES_STREAM = _bodies(False), _bodies(True)
HEADERS = [*traffic.corpus_headers().items(), ("host", "127.0.0.1:3000"), ("content-length", "0")]


def _upstream_reply() -> tuple[list[tuple[str, str]], bytes, list[bytes]]:
    """Headers, JSON body and SSE chunks exactly as the fake upstream would answer."""
    fake = FakeAnthropic()
    headers = fake._ratelimit_headers(oauth=False)
    blocks, stop = [{"type": "text", "text": "Hello! This is a deterministic reply from the fake API."}], "end_turn"
    usage = {"input_tokens": 12000, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 11000}
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": traffic.MODEL, "content": blocks}
    message |= {"stop_reason": stop, "stop_sequence": None, "usage": {**usage, "output_tokens": 12}}
    return headers, orjson.dumps(message), fake._stream_events(message)


UP_HEADERS, UP_JSON, UP_EVENTS = _upstream_reply()


class _Headers:
    """Granian's request headers / pyreqwest's HeaderMap: `items()` and `get()`."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items
        self._map = dict(items)

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def get(self, key: str, default: str | None = None) -> str | None:
        return self._map.get(key, default)

    def keys(self) -> list[str]:
        return list(self._map)

    def __contains__(self, key: object) -> bool:
        return key in self._map


class _Scope:
    proto = "http"
    method = "POST"
    path = "/v1/messages"
    query_string = "beta=true"
    client = "127.0.0.1:50000"
    authority = "127.0.0.1:3000"

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.headers = _Headers(headers)


class _Transport:
    def __init__(self) -> None:
        self.sent = 0

    async def send_bytes(self, data: bytes) -> None:
        self.sent += len(data)


class _Proto:
    """Granian's RSGI HTTP protocol object, in memory."""

    def __init__(self, body: bytes, gone: asyncio.Future[None]) -> None:
        self.body = body
        self.gone = gone
        self.status = 0

    async def __call__(self) -> bytes:
        return self.body

    def __aiter__(self) -> _Proto:
        self._left = [self.body]
        return self

    async def __anext__(self) -> bytes:
        if not self._left:
            raise StopAsyncIteration
        return self._left.pop()

    def client_disconnect(self) -> asyncio.Future[None]:
        return self.gone

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status

    def response_stream(self, status: int, headers: list[tuple[str, str]]) -> _Transport:
        self.status = status
        return _Transport()


class _Reader:
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = iter(chunks)

    async def read_chunk(self) -> bytes | None:
        await asyncio.sleep(0)  # a real read yields to the loop
        return next(self._chunks, None)


class _Response:
    def __init__(self, stream: bool) -> None:
        content_type = "text/event-stream; charset=utf-8" if stream else "application/json"
        self.status = 200
        self.headers = _Headers([("content-type", content_type), *UP_HEADERS])
        self._stream = stream
        self.body_reader = _Reader(UP_EVENTS if stream else [UP_JSON])

    def get_header(self, key: str) -> str | None:
        return self.headers.get(key)

    async def bytes(self) -> bytes:
        await asyncio.sleep(0)
        return UP_JSON


class _Request:
    def __init__(self, stream: bool) -> None:
        self.stream = stream

    async def __aenter__(self) -> _Response:
        await asyncio.sleep(0)
        return _Response(self.stream)

    async def __aexit__(self, *exc: object) -> None:
        return None


class _Upstream:
    base_url = "http://upstream"

    def request(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes | None) -> _Request:
        return _Request(body is not None and b'"stream":true' in body[-64:])

    async def close(self) -> None:
        return None


class _Writer:
    """Takes records like the storage writer's `submit` (a deque append), never writes them."""

    def __init__(self) -> None:
        self.records: list[Any] = []

    def submit(self, record: Any) -> None:
        if len(self.records) > 1000:
            self.records.clear()
        self.records.append(record)

    def close(self) -> None:
        return None


def make_app(*, storage: bool = True) -> Any:
    """The proxy as a worker runs it, storage and linking on, but records are kept in memory and the
    linker's database fallback is off (an in-memory index hit is the common case)."""
    from nexus.proxy.app import ProxyApp
    from nexus.settings import load_settings

    settings = load_settings(storage_enabled=False, claude_api_base_url="http://upstream")
    app = ProxyApp(settings)
    app.upstream = _Upstream()  # type: ignore[assignment]
    if storage:
        app.writer = _Writer()  # type: ignore[assignment]
        try:
            from nexus.conversations.index import LinkIndex
            from nexus.conversations.linker import Linker
            from nexus.conversations.service import ConversationService
        except ImportError:  # a tree from before conversation linking
            pass
        else:
            app.conversations = ConversationService(Linker(LinkIndex(settings.link_index_size)), None)
    return app


async def _requests(app: Any, bodies: list[bytes], n: int) -> float:
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()
    scopes = [_Scope([(k, v) if k != "content-length" else (k, str(len(b))) for k, v in HEADERS]) for b in bodies]
    started = time.perf_counter()
    for i in range(n):
        j = i % len(bodies)
        proto = _Proto(bodies[j], gone)
        await app.__rsgi__(scopes[j], proto)
        assert proto.status == 200, proto.status
    return (time.perf_counter() - started) / n


def per_request_us(kind: str, n: int = 2000, *, storage: bool = True) -> float:
    """Best of three runs of `n` requests, in microseconds per request."""
    import uvloop

    app = make_app(storage=storage)
    bodies = BODIES_STREAM if kind == "stream" else BODIES_JSON

    async def best() -> float:
        await _requests(app, bodies, 200)  # warm-up
        return min([await _requests(app, bodies, n) for _ in range(3)])

    return uvloop.run(best()) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000)
    args = ap.parse_args()
    for kind in ("json", "stream"):
        print(f"{kind:6} {per_request_us(kind, args.requests):7.1f} us per request (Nexus's Python, no network)")


if __name__ == "__main__":
    main()
