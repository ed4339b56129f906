"""Scripted replies, a replay queue and request recording for the fake Anthropic API.

The fake's built-in answers are a deterministic function of the request, which is enough for the
proxy's wire tests but not to drive a real client (Claude Code) through a tool loop, a sub-agent or a
compaction, nor to make the fake replay the responses of a recorded session. This module adds three
things, all controlled over HTTP on the fake's port (see `tests/harness/control.py`, `FakeControl`):

**Encoding.** `sse_events(message)` turns a final Message JSON into the API's exact SSE event
sequence: `message_start` (the message with empty content, `stop_reason: null`, the input and cache
usage and a small `output_tokens`), `ping`, then per block `content_block_start` (the block emptied:
text `""`, tool input `{}`, thinking and signature `""`; other blocks such as `redacted_thinking` or
server tool results whole), the deltas (`text_delta` in word groups, `citations_delta` per citation,
`input_json_delta` with the compact input JSON split into several `partial_json` pieces,
`thinking_delta` then one `signature_delta`), `content_block_stop`; then `message_delta` (stop reason,
stop sequence and cumulative usage) and `message_stop`. A non-stream request gets the message itself
as JSON. `complete_message(partial, request)` fills what a script leaves out (id, model, role,
`stop_reason` from the content, usage including `cache_creation.{ephemeral_5m,ephemeral_1h}`).

**Replies.** Two sources, consulted for each `/v1/messages` request that has no `x-fake-scenario`
header, before the fake's own answer:

1. The FIFO: `POST /_fake/replies {"replies": [entry, ...]}` appends entries; each following
   `/v1/messages` request takes the next one (streamed when the request has `"stream": true`).
   An entry is a final message (`{"type": "message", "content": [...], ...}`, possibly partial),
   an error (`{"error": 529}`, optionally with `"message"`), or a recorded response exactly as
   the recorder writes it (`{"status": 200, "body": <message>}` / `{"status": 529, "body":
   <error body>}`), so a fixture's responses can be replayed verbatim, or exact bytes (`{"raw": "text"}`
   or `{"raw_base64": "..."}`, with optional `content_type` and `status`) for what a broken or hostile
   upstream could send. `GET` tells how many are
   left, `DELETE` empties it. `count_tokens` and other paths never consume it.
2. The script: `POST /_fake/script {"rules": [rule, ...]}` replaces the rules (`"append": true`
   adds to them); `GET` returns them with their hit counts; `DELETE` clears them. The first rule
   whose `match` holds and whose `times` is not used up answers. A rule:

       {"name": "optional label",
        "match": {...all optional, all must hold...},
        "reply": {"message": {...}} | {"error": 529, "message": "..."} | {"status": 200, "body": {...}},
        "times": 1,                # optional: answer at most this many times
        "delay_ms": 0}             # optional: wait before answering

   Match keys: `path` (default `/v1/messages`; set it to script `/v1/messages/count_tokens`),
   `model`, `model_contains`, `stream`, `subagent` (the system prompt's billing block says
   `cc_is_subagent=true`), `system_contains`, `system_not_contains`, `has_tools`, `tool` (a tool
   of that name is offered), `last_user_text_contains`, `last_user_text_not_contains` (the text
   blocks of the last `user` message, `<system-reminder>`s included), `first_user_text_contains`,
   `user_text_contains` (any user message), `body_contains` (substring of the raw body),
   `has_tool_result` (the last user message carries `tool_result` blocks), `tool_result_for` (a
   `tool_use_id`, or a list of them that must all be answered), `tool_result_contains`,
   `min_messages` / `max_messages` (length of `messages`), `header` (`{name: substring}`). A
   string value of the `*_contains` keys may also be a list: all must occur.

**Recording.** `--record-dir DIR` (or `POST /_fake/record {"dir": DIR}`; `{"dir": null}` stops)
writes one JSON file per request to the API (control paths excluded), numbered in arrival order
(`0001-messages.json`, `0002-count_tokens.json`, ...), with exactly the keys `timestamp` (ISO 8601
UTC, arrival), `method`, `path` (with the query string), `headers` (as received, every credential
replaced by a fixed fake), `body` (the request JSON, parsed), and `response` with `status` and
`body` (the final message, rebuilt from the stream for streamed answers, or the JSON/error body).
This is the input format of `nexus replay DIR`.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from nexus._core import SseObserver
from nexus.fake_upstream.scenario import Scenario

REDACTED_API_KEY = "sk-ant-api03-REDACTED-0000000000000000000000000000000000000000000000000000"
REDACTED_BEARER = "Bearer sk-ant-REDACTED-00000000000000000000000000000000000000000000000000000"
CREDENTIAL_HEADERS = {
    "x-api-key": REDACTED_API_KEY,
    "authorization": REDACTED_BEARER,
    "proxy-authorization": REDACTED_BEARER,
    "cookie": "REDACTED",
    "x-nexus-key": "REDACTED",
}
SUBAGENT_MARK = "cc_is_subagent=true"
CONTROL_PATHS = ("/_fake/script", "/_fake/replies", "/_fake/record")
TOOL_USE_TYPES = ("tool_use", "server_tool_use", "mcp_tool_use")
TEXT_WORDS_PER_DELTA = 4
JSON_PIECES = 4


# --------------------------------------------------------------------------------- encoding


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def _pieces(text: str, n: int) -> list[str]:
    """`text` cut into at most `n` non-empty pieces of similar length (at least one piece)."""
    if not text:
        return [""]
    size = max(1, -(-len(text) // n))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _text_pieces(text: str) -> list[str]:
    """Word groups that keep their separators, so the pieces join back to `text` exactly."""
    words = re.findall(r"\S+\s*|\s+", text)
    return ["".join(words[i : i + TEXT_WORDS_PER_DELTA]) for i in range(0, len(words), TEXT_WORDS_PER_DELTA)]


def _block_events(index: int, block: dict[str, Any]) -> list[bytes]:
    kind = block.get("type")
    deltas: list[dict[str, Any]] = []
    if kind == "text":
        opening: dict[str, Any] = {k: v for k, v in block.items() if k != "citations"}
        opening["text"] = ""
        if "citations" in block:
            opening["citations"] = []
        deltas = [{"type": "text_delta", "text": t} for t in _text_pieces(block.get("text", ""))]
        deltas += [{"type": "citations_delta", "citation": c} for c in block.get("citations") or []]
    elif kind in TOOL_USE_TYPES:
        opening = {**block, "input": {}}
        raw = orjson.dumps(block.get("input", {})).decode()
        raw = "" if raw == "{}" else raw  # the API sends a single empty piece for an empty input
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in _pieces(raw, JSON_PIECES)]
    elif kind == "thinking":
        opening = {**block, "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": t} for t in _text_pieces(block.get("thinking", ""))]
        deltas.append({"type": "signature_delta", "signature": block.get("signature", "")})
    else:  # redacted_thinking, web_search_tool_result, ...: sent whole at the start
        opening = block
    out = [_event("content_block_start", {"type": "content_block_start", "index": index, "content_block": opening})]
    out += [_event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}) for d in deltas]
    out.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    return out


def sse_events(message: dict[str, Any]) -> list[bytes]:
    """The API's SSE events for a final message, one `bytes` per event."""
    usage = dict(message.get("usage") or {})
    start_usage = {**usage, "output_tokens": min(1, int(usage.get("output_tokens", 0) or 0))}
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage}
    out = [_event("message_start", {"type": "message_start", "message": start}), _event("ping", {"type": "ping"})]
    for i, block in enumerate(message.get("content") or []):
        out += _block_events(i, block)
    delta_usage = {
        k: usage[k]
        for k in (
            "input_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "output_tokens",
            "server_tool_use",
        )
        if k in usage
    }
    delta = {"stop_reason": message.get("stop_reason"), "stop_sequence": message.get("stop_sequence")}
    out.append(_event("message_delta", {"type": "message_delta", "delta": delta, "usage": delta_usage}))
    out.append(_event("message_stop", {"type": "message_stop"}))
    return out


def encode_sse(message: dict[str, Any]) -> bytes:
    """The whole SSE body for a final message."""
    return b"".join(sse_events(message))


def _output_tokens(content: list[dict[str, Any]]) -> int:
    n = 0
    for block in content:
        n += len(str(block.get("text", "")).split()) + len(str(block.get("thinking", "")).split())
        if "input" in block:
            n += len(orjson.dumps(block["input"])) // 4
    return max(1, n)


def complete_message(partial: dict[str, Any], request: dict[str, Any] | None, input_tokens: int = 1) -> dict[str, Any]:
    """A full Message from what a script gave: missing id, model, stop reason and usage filled in."""
    content = list(partial.get("content") or [])
    stop = "tool_use" if any(b.get("type") == "tool_use" for b in content) else "end_turn"
    usage = {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": _output_tokens(content),
        "service_tier": "standard",
    }
    given = partial.get("usage") or {}
    usage.update(given)
    if "cache_creation" not in given and given.get("cache_creation_input_tokens"):
        usage["cache_creation"] = {
            "ephemeral_5m_input_tokens": given["cache_creation_input_tokens"],
            "ephemeral_1h_input_tokens": 0,
        }
    message = {
        "id": "msg_01" + secrets.token_hex(11),
        "type": "message",
        "role": "assistant",
        "model": (request or {}).get("model", "claude-sonnet-4-6"),
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
    }
    message.update({k: v for k, v in partial.items() if k not in ("content", "usage")})
    message["usage"] = usage
    return message


# --------------------------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True)
class Reply:
    """What to answer: a final message, or a status with a JSON body (an error, a count, ...)."""

    message: dict[str, Any] | None = None
    status: int = 200
    body: Any = None
    error_message: str | None = None
    delay_ms: float = 0
    raw: bytes | None = None  # the exact response body (hostile upstreams: NUL, lone surrogates, ...)
    content_type: str = "application/json"

    @classmethod
    def parse(cls, spec: dict[str, Any], delay_ms: float = 0) -> Reply:
        if not isinstance(spec, dict):
            raise ValueError(f"a reply must be a JSON object, not {spec!r}")
        if "raw" in spec or "raw_base64" in spec:  # exact bytes: whatever a broken upstream could send
            raw = base64.b64decode(spec["raw_base64"]) if "raw_base64" in spec else str(spec["raw"]).encode()
            kind = str(spec.get("content_type", "application/json"))
            return cls(status=int(spec.get("status", 200)), raw=raw, content_type=kind, delay_ms=delay_ms)
        if "message" in spec:
            return cls(message=spec["message"], delay_ms=delay_ms)
        if spec.get("type") == "message" or "content" in spec:
            return cls(message=spec, delay_ms=delay_ms)
        if "error" in spec and isinstance(spec["error"], int):
            return cls(status=spec["error"], error_message=spec.get("message"), delay_ms=delay_ms)
        if "status" in spec:
            status, body = int(spec["status"]), spec.get("body")
            if status == 200 and isinstance(body, dict) and body.get("type") == "message":
                return cls(message=body, delay_ms=delay_ms)
            return cls(status=status, body=body, delay_ms=delay_ms)
        raise ValueError(f"a reply needs `message`, `content`, `error` or `status`: {spec!r}")


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    return [b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"]


def _tool_results(content: Any) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return []
    return [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]


def _result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, str):
        return content
    return "\n".join(_texts(content))


@dataclass(slots=True)
class RequestView:
    """The request features rules match on, computed once per request."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    raw: bytes
    system_text: str = ""
    user_texts: list[str] = field(default_factory=list)
    last_user_text: str = ""
    last_results: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, path: str, headers: dict[str, str], body: dict[str, Any], raw: bytes) -> RequestView:
        view = cls(path, headers, body, raw)
        system = body.get("system")
        view.system_text = "\n".join(_texts(system))
        users = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
        view.user_texts = ["\n".join(_texts(m.get("content"))) for m in users]
        if users:
            view.last_user_text = view.user_texts[-1]
            view.last_results = _tool_results(users[-1].get("content"))
        return view


def _all_in(needles: str | list[str], hay: str) -> bool:
    return all(n in hay for n in ([needles] if isinstance(needles, str) else needles))


def _none_in(needles: str | list[str], hay: str) -> bool:
    return not any(n in hay for n in ([needles] if isinstance(needles, str) else needles))


MATCHERS: dict[str, Any] = {
    "path": lambda v, r: r.path == v,
    "model": lambda v, r: r.body.get("model") == v,
    "model_contains": lambda v, r: _all_in(v, str(r.body.get("model", ""))),
    "stream": lambda v, r: bool(r.body.get("stream")) == v,
    "subagent": lambda v, r: (SUBAGENT_MARK in r.system_text) == v,
    "system_contains": lambda v, r: _all_in(v, r.system_text),
    "system_not_contains": lambda v, r: _none_in(v, r.system_text),
    "has_tools": lambda v, r: bool(r.body.get("tools")) == v,
    "tool": lambda v, r: any(isinstance(t, dict) and t.get("name") == v for t in r.body.get("tools") or []),
    "last_user_text_contains": lambda v, r: _all_in(v, r.last_user_text),
    "last_user_text_not_contains": lambda v, r: _none_in(v, r.last_user_text),
    "first_user_text_contains": lambda v, r: bool(r.user_texts) and _all_in(v, r.user_texts[0]),
    "user_text_contains": lambda v, r: _all_in(v, "\n".join(r.user_texts)),
    "body_contains": lambda v, r: _all_in(v, r.raw.decode("utf-8", "replace")),
    "has_tool_result": lambda v, r: bool(r.last_results) == v,
    "tool_result_for": lambda v, r: (
        set([v] if isinstance(v, str) else v) <= {b.get("tool_use_id") for b in r.last_results}
    ),
    "tool_result_contains": lambda v, r: _all_in(v, "\n".join(_result_text(b) for b in r.last_results)),
    "min_messages": lambda v, r: len(r.body.get("messages") or []) >= v,
    "max_messages": lambda v, r: len(r.body.get("messages") or []) <= v,
    "header": lambda v, r: all(s in r.headers.get(k.lower(), "") for k, s in v.items()),
}


@dataclass(slots=True)
class Rule:
    match: dict[str, Any]
    reply: Reply
    times: int | None = None
    name: str = ""
    hits: int = 0
    spec: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: dict[str, Any]) -> Rule:
        match = dict(spec.get("match") or {})
        unknown = set(match) - set(MATCHERS)
        if unknown:
            raise ValueError(f"unknown match keys {sorted(unknown)}; known: {sorted(MATCHERS)}")
        match.setdefault("path", "/v1/messages")
        times = spec.get("times")
        reply = Reply.parse(spec.get("reply") or {}, float(spec.get("delay_ms", 0)))
        return cls(match, reply, None if times is None else int(times), str(spec.get("name", "")), 0, spec)

    def matches(self, view: RequestView) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        return all(MATCHERS[k](v, view) for k, v in self.match.items())

    def describe(self) -> dict[str, Any]:
        return {**self.spec, "hits": self.hits}


class Scripted:
    """The fake's scripted state: rules, the FIFO of next replies, and the recorder."""

    def __init__(self, record_dir: str | None = None) -> None:
        self.rules: list[Rule] = []
        self.fifo: list[Reply] = []
        self.recorder = Recorder(record_dir) if record_dir else None

    def reset(self) -> None:
        """Forget rules and queued replies; a recording in progress goes on."""
        self.rules.clear()
        self.fifo.clear()

    def choose(self, path: str, headers: dict[str, str], body: dict[str, Any], raw: bytes) -> Reply | None:
        """The reply for this request, or None to let the fake answer by itself."""
        if path == "/v1/messages" and self.fifo:
            return self.fifo.pop(0)
        if not self.rules:
            return None
        view = RequestView.of(path, headers, body, raw)
        for rule in self.rules:
            if rule.matches(view):
                rule.hits += 1
                return rule.reply
        return None

    def control(self, method: str, path: str, raw: bytes) -> tuple[int, Any]:
        """One `/_fake/script|replies|record` call; returns (status, JSON payload)."""
        try:
            payload = orjson.loads(raw) if raw else {}
            if path == "/_fake/script":
                if method == "POST":
                    rules = [Rule.parse(r) for r in payload.get("rules", [])]
                    self.rules = [*self.rules, *rules] if payload.get("append") else rules
                elif method == "DELETE":
                    self.rules.clear()
                return 200, {"rules": [r.describe() for r in self.rules]}
            if path == "/_fake/replies":
                if method == "POST":
                    entries = payload if isinstance(payload, list) else payload.get("replies", [])
                    self.fifo.extend(Reply.parse(e) for e in entries)
                elif method == "DELETE":
                    self.fifo.clear()
                return 200, {"queued": len(self.fifo)}
            if path == "/_fake/record":
                if method == "POST":
                    where = payload.get("dir")
                    self.recorder = Recorder(where) if where else None
                rec = self.recorder
                return 200, {"dir": rec and str(rec.dir), "recorded": rec.count if rec else 0}
        except (ValueError, TypeError, AttributeError) as exc:
            return 400, {"type": "error", "error": {"type": "invalid_request_error", "message": str(exc)}}
        return 404, {"error": "unknown control path"}

    async def respond(
        self,
        fake: Any,
        proto: Any,
        index: int,
        request: dict[str, Any],
        input_tokens: int,
        reply: Reply,
        rl: list[tuple[str, str]],
    ) -> None:
        """Answer with `reply` through the fake's own plumbing (headers, errors, disconnect handling)."""
        if reply.delay_ms:
            await asyncio.sleep(reply.delay_ms / 1000)
        if reply.raw is not None:
            return proto.response_bytes(reply.status, [*rl, ("content-type", reply.content_type)], reply.raw)
        if reply.message is None:
            headers = [*rl, ("retry-after", "1")] if reply.status == 429 else rl
            if reply.body is None:
                return fake._error(proto, reply.status, headers, reply.error_message)
            return fake._json(proto, reply.status, reply.body, headers)
        message = complete_message(reply.message, request, input_tokens)
        if isinstance(proto, _RecordingProto):
            proto.recording.message = message
        if not request.get("stream"):
            return fake._json(proto, 200, message, rl)
        return await fake._stream(proto, index, message, Scenario(), rl, sse_events(message))


# --------------------------------------------------------------------------------- recording


def redact(headers: dict[str, str]) -> dict[str, str]:
    """Headers with every credential replaced by a fixed fake (never the real value, not even a prefix)."""
    return {k: CREDENTIAL_HEADERS.get(k.lower(), v) for k, v in headers.items()}


def _slug(path: str) -> str:
    tail = path.rstrip("/").rsplit("/", 1)[-1] or "root"
    return re.sub(r"[^A-Za-z0-9_-]+", "_", tail)[:40]


class Recorder:
    """Writes one file per request, numbered in arrival order, when its response is complete."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.count = len(list(self.dir.glob("[0-9][0-9][0-9][0-9]-*.json")))

    def begin(self, scope: Any, raw: bytes) -> Recording:
        with self._lock:
            self.count += 1
            number = self.count
        headers: dict[str, str] = {}
        for k, v in scope.headers.items():
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        try:
            body: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        path = scope.path + (f"?{scope.query_string}" if scope.query_string else "")
        record = {
            "timestamp": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "method": scope.method,
            "path": path,
            "headers": redact(headers),
            "body": body,
        }
        return Recording(self.dir / f"{number:04d}-{_slug(scope.path)}.json", record)


class Recording:
    """One request being answered: wraps the RSGI protocol to see the response go by."""

    def __init__(self, target: Path, record: dict[str, Any]) -> None:
        self.target = target
        self.record = record
        self.status = 0
        self.raw_body = b""
        self.observer: SseObserver | None = None
        self.message: dict[str, Any] | None = None  # set when the exact final message is known

    def wrap(self, proto: Any) -> _RecordingProto:
        return _RecordingProto(proto, self)

    def finish(self) -> None:
        body: Any
        if self.message is not None:
            body = self.message
        elif self.observer is not None:
            rebuilt = self.observer.message_json()
            body = orjson.loads(rebuilt) if rebuilt else None
            if self.observer.error is not None:
                etype, emsg = self.observer.error
                body = {"type": "error", "error": {"type": etype, "message": emsg}, "partial_message": body}
        else:
            try:
                body = orjson.loads(self.raw_body) if self.raw_body else None
            except orjson.JSONDecodeError:
                body = self.raw_body.decode("utf-8", "replace")
        self.record["response"] = {"status": self.status, "body": body}
        tmp = self.target.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(self.record, option=orjson.OPT_INDENT_2))
        tmp.replace(self.target)


class _RecordingProto:
    def __init__(self, inner: Any, rec: Recording) -> None:
        self._inner = inner
        self._rec = rec
        self.recording = rec

    def __call__(self) -> Any:
        return self._inner()

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self._rec.status, self._rec.raw_body = status, body
        self._inner.response_bytes(status, headers, body)

    def response_str(self, status: int, headers: list[tuple[str, str]], body: str) -> None:
        self._rec.status, self._rec.raw_body = status, body.encode()
        self._inner.response_str(status, headers, body)

    def response_empty(self, status: int, headers: list[tuple[str, str]]) -> None:
        self._rec.status = status
        self._inner.response_empty(status, headers)

    def response_stream(self, status: int, headers: list[tuple[str, str]]) -> _RecordingTransport:
        self._rec.status = status
        self._rec.observer = SseObserver()
        return _RecordingTransport(self._inner.response_stream(status, headers), self._rec.observer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _RecordingTransport:
    def __init__(self, inner: Any, observer: SseObserver) -> None:
        self._inner = inner
        self._observer = observer

    async def send_bytes(self, data: bytes) -> None:
        self._observer.feed(data)
        await self._inner.send_bytes(data)

    async def send_str(self, data: str) -> None:
        self._observer.feed(data.encode())
        await self._inner.send_str(data)
