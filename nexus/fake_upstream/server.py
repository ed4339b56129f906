"""A faithful fake of the Anthropic Messages API, for tests, benchmarks and offline trials.

It speaks the real wire format: the error envelope and types per status, `request-id` and
`anthropic-ratelimit-*` headers on every response (plus the `-unified-*` ones for OAuth bearer
tokens), and SSE streams in the API's exact event order (`message_start`, `ping`, per block
`content_block_start` / `content_block_delta`* / `content_block_stop`, `message_delta` with cumulative
usage, `message_stop`). Replies are deterministic functions of the request, so a test can compare a
direct call with one through the proxy.

Faults are chosen per request with the header `x-fake-scenario: <spec>` (an end-to-end header, so it
travels through the proxy), or queued with `POST /_fake/scenarios {"scenarios": [spec, ...]}`: each
later `/v1/messages` request without the header takes the next one. Specs:

    ok                      a normal answer
    error:<status>          the API's error for that status (400 401 403 404 413 429 500 503 529);
                            429 carries `retry-after: 1`, or `error:429:retry-after=<s>`; 401 (as
                            the fake's own, for a missing or revoked credential) `x-should-retry: false`
    delay:<ms>              wait before sending the response head
    event-delay:<ms>        pace stream events
    hang                    never answer; hold the request until the client leaves
    hang-after:<n>          stream n events, then go silent with the connection open
    drop-after:<n>          stream n events, then abort the connection (no terminating chunk)
    error-event-after:<n>   stream n events, then an `overloaded_error` error event, then end

The reply's text has `--text-tokens` words (12 by default), or `x-fake-text-tokens: <n>` words for one
request (longer streams for load tests).

Observation: `GET /_fake/requests` (what was received, bounded), `GET /_fake/events` (how each
streamed or held connection ended: `completed`, `client_disconnected` or `dropped`), `POST
/_fake/reset`, `GET /_fake/health`.

Scripted replies (rules and a FIFO of final messages), the SSE encoder they use, and recording every
request to a directory (`--record-dir`) live in `nexus.fake_upstream.scripted`; see its docstring.

OAuth: `POST /v1/oauth/token` (refresh and authorization-code grants, single-use rotating refresh
tokens) and `GET /oauth/authorize` (the browser sign-in), configured with `/_fake/oauth` (`FakeOAuth`).

Tool use is deterministic too: with `tools` in the request, a `tool_choice` of `tool`/`any`, or the
marker `[[use_tool:NAME {json input}]]` in the last user message, the reply calls that tool. A
compaction request (Claude Code's `/compact` prompt) is answered with an `<analysis>` and a `<summary>`
naming a digest of the history, so the conversation after `/compact` can be joined to it offline.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import re
import secrets
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import orjson

from nexus.fake_upstream import scripted
from nexus.fake_upstream.scenario import Scenario
from nexus.ports import PortInUseError, ensure_port_free

MODELS = [
    ("claude-opus-4-6", "Claude Opus 4.6", "2026-02-05T00:00:00Z"),
    ("claude-sonnet-4-6", "Claude Sonnet 4.6", "2026-02-17T00:00:00Z"),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-01T00:00:00Z"),
]
ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error."),
    503: ("api_error", "Service unavailable."),
    529: ("overloaded_error", "Overloaded"),
}
REPLY_WORDS = "Hello! This is a deterministic reply from the fake Anthropic API: naïve café ✓.".split()
TOOL_MARKER = re.compile(r"\[\[use_tool:([A-Za-z0-9_-]+)\s*(\{.*?\})?\]\]", re.S)


#: Claude Code's `/compact` (and auto-compact) request ends with a user message holding this sentence.
COMPACTION_PROMPT = "Your task is to create a detailed summary of the conversation so far"


def _compaction_summary(messages: Any) -> str:
    """The reply to a compaction request, in the shape Claude Code asks for (`<analysis>` then
    `<summary>`), so the history it starts after `/compact` quotes a summary the gateway can join to
    this reply. The summary names a digest of the history: two compactions never quote the same text."""
    digest = hashlib.sha256(orjson.dumps(messages)).hexdigest()[:16]
    return (
        "<analysis>\nThe fake Anthropic API does not read the conversation; a model would think here.\n</analysis>\n\n"
        f"<summary>\n1. Primary Request and Intent: a conversation of {len(messages)} messages, summarised by "
        f"the fake Anthropic API (history {digest}).\n2. Pending Tasks: none.\n</summary>"
    )


def _rid(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(18).replace("-", "a").replace("_", "b")


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class FakeAnthropic:
    """The RSGI application."""

    def __init__(
        self,
        *,
        event_delay_ms: float = 0,
        text_tokens: int = 12,
        record_bodies: bool = True,
        max_records: int = 10_000,
        record_dir: str | None = None,
    ) -> None:
        self.event_delay_s = event_delay_ms / 1000
        self.text_tokens = text_tokens
        self.record_bodies = record_bodies
        self.requests: deque[dict[str, Any]] = deque(maxlen=max_records)
        self.events: deque[dict[str, Any]] = deque(maxlen=max_records)
        self.queue: deque[Scenario] = deque()
        self.count = 0
        self._reset_cache: tuple[int, str] = (0, "")
        self.oauth = FakeOAuth()
        self.scripted = scripted.Scripted(record_dir)

    # --- plumbing ----------------------------------------------------------------------------
    def _ratelimit_headers(self, oauth: bool) -> list[tuple[str, str]]:
        now = int(time.time())
        if self._reset_cache[0] != now:
            reset = (datetime.fromtimestamp(now, UTC) + timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
            self._reset_cache = (now, reset)
        reset = self._reset_cache[1]
        headers = [("request-id", _rid("req_"))]
        for kind, limit in (
            ("requests", 4000),
            ("tokens", 2_000_000),
            ("input-tokens", 1_600_000),
            ("output-tokens", 400_000),
        ):
            headers += [
                (f"anthropic-ratelimit-{kind}-limit", str(limit)),
                (f"anthropic-ratelimit-{kind}-remaining", str(limit - 1)),
                (f"anthropic-ratelimit-{kind}-reset", reset),
            ]
        if oauth:
            headers += [
                ("anthropic-ratelimit-unified-status", "allowed"),
                ("anthropic-ratelimit-unified-representative-claim", "five_hour"),
                ("anthropic-ratelimit-unified-5h-status", "allowed"),
                ("anthropic-ratelimit-unified-5h-utilization", "0.12"),
                ("anthropic-ratelimit-unified-5h-reset", str(now + 3600)),
                ("anthropic-ratelimit-unified-7d-status", "allowed"),
                ("anthropic-ratelimit-unified-7d-utilization", "0.34"),
                ("anthropic-ratelimit-unified-7d-reset", str(now + 86400)),
            ]
        return headers

    def _json(self, proto: Any, status: int, payload: object, headers: list[tuple[str, str]]) -> None:
        proto.response_bytes(status, [("content-type", "application/json"), *headers], orjson.dumps(payload))

    def _error(self, proto: Any, status: int, headers: list[tuple[str, str]], message: str | None = None) -> None:
        etype, default = ERRORS.get(status, ("api_error", "Error."))
        request_id = headers[0][1] if headers and headers[0][0] == "request-id" else _rid("req_")
        body = {"type": "error", "error": {"type": etype, "message": message or default}, "request_id": request_id}
        if status == 401:  # as the API's: no retry cures a refused credential (Claude Code obeys this)
            headers = [*headers, ("x-should-retry", "false")]
        self._json(proto, status, body, headers)

    def _record_event(self, index: int, outcome: str, sent: int) -> None:
        self.events.append({"request_index": index, "outcome": outcome, "events_sent": sent, "at": time.time()})

    # --- RSGI entry ----------------------------------------------------------------------------
    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            return
        path: str = scope.path
        if path.startswith("/_fake/"):
            await self._control(scope, proto, path)
            return
        if path == "/v1/oauth/token":
            await self.oauth.token(proto, await proto())
            return
        if path == "/oauth/authorize":
            self.oauth.authorize(proto, scope.query_string)
            return
        raw = await proto()
        recording = self.scripted.recorder.begin(scope, raw) if self.scripted.recorder else None
        try:
            await self._api(scope, recording.wrap(proto) if recording else proto, path, raw)
        finally:
            if recording is not None:
                recording.finish()

    async def _api(self, scope: Any, proto: Any, path: str, raw: bytes) -> None:
        index = self.count
        self.count += 1
        header_items = scope.headers.items()
        headers: dict[str, str] = {}
        for k, v in header_items:
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        body: Any = None
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = raw.decode("utf-8", "replace")
        self.requests.append(
            {
                "index": index,
                "method": scope.method,
                "path": path,
                "query": scope.query_string,
                "headers": headers,
                "body": body if self.record_bodies else None,
                "received_at": time.time(),
            }
        )
        if path == "/api/hello":  # Claude Code's connectivity probe: HEAD, no credentials
            return proto.response_empty(200, [("content-type", "application/json")])
        if path.startswith("/v1beta/models/") and path.endswith(":generateContent"):
            return self._gemini(proto, path, headers, body, raw)
        auth = headers.get("authorization", "")
        rl = self._ratelimit_headers(oauth=auth.startswith("Bearer sk-ant-oat"))
        if not headers.get("x-api-key") and not auth.startswith("Bearer "):
            return self._error(proto, 401, rl, "x-api-key header is required")
        if auth.startswith("Bearer sk-ant-oat"):
            if "oauth-2025-04-20" not in headers.get("anthropic-beta", ""):
                return self._error(proto, 401, rl, "OAuth authentication is currently not supported.")
            if self.oauth.reject_access or auth[7:] in self.oauth.revoked_access:
                return self._error(proto, 401, rl, "OAuth token has expired.")
        if path.startswith("/v1/models") and scope.method == "GET":
            return self._models(proto, path, scope.query_string, rl)
        if scope.method != "POST" or path not in ("/v1/messages", "/v1/messages/count_tokens"):
            return self._error(proto, 404, rl, f"Not found: {scope.method} {path}")
        if not headers.get("anthropic-version"):
            return self._error(proto, 400, rl, "anthropic-version: header is required")
        if not isinstance(body, dict):
            return self._error(proto, 400, rl, "Request body must be a JSON object.")
        missing = [f for f in ("model", "messages") if f not in body]
        if path == "/v1/messages" and "max_tokens" not in body:
            missing.append("max_tokens")
        if missing:
            return self._error(proto, 400, rl, f"{missing[0]}: Field required")
        if not isinstance(body["messages"], list) or not body["messages"]:
            return self._error(proto, 400, rl, "messages: at least one message is required")
        input_tokens = max(1, len(raw) // 4)
        spec = headers.get("x-fake-scenario")
        reply = None if spec else self.scripted.choose(path, headers, body, raw)
        if reply is not None:
            return await self.scripted.respond(self, proto, index, body, input_tokens, reply, rl)
        if path == "/v1/messages/count_tokens":
            return self._json(proto, 200, {"input_tokens": input_tokens}, rl)

        try:
            scenario = Scenario.parse(spec) if spec else (self.queue.popleft() if self.queue else Scenario())
        except ValueError as exc:
            return self._error(proto, 400, rl, str(exc))
        tokens = headers.get("x-fake-text-tokens")
        if tokens is not None and not (tokens.isdigit() and int(tokens) <= 100_000):
            return self._error(proto, 400, rl, f"x-fake-text-tokens must be an integer 0-100000, got {tokens!r}")
        text_tokens = self.text_tokens if tokens is None else int(tokens)
        await self._messages(proto, index, body, raw, input_tokens, scenario, rl, text_tokens)
        return None

    # --- Gemini (the analysis worker's other provider) -----------------------------------------
    def _gemini(self, proto: Any, path: str, headers: dict[str, str], body: Any, raw: bytes) -> None:
        """`POST /v1beta/models/{model}:generateContent`, key in `x-goog-api-key`. The request is shown to
        the script rules as a Messages request (system instruction, one user message of its texts), so the
        same rules answer both providers; a message reply's text becomes the candidate's text."""
        if not headers.get("x-goog-api-key"):
            error = {
                "code": 403,
                "message": "Method doesn't allow unregistered callers.",
                "status": "PERMISSION_DENIED",
            }
            return self._json(proto, 403, {"error": error}, [])
        if not isinstance(body, dict) or not isinstance(body.get("contents"), list):
            error = {"code": 400, "message": "contents is required", "status": "INVALID_ARGUMENT"}
            return self._json(proto, 400, {"error": error}, [])

        def texts(content: Any) -> str:
            parts = content.get("parts") if isinstance(content, dict) else None
            return "\n".join(str(p.get("text", "")) for p in parts or [] if isinstance(p, dict))

        model = path.removeprefix("/v1beta/models/").removesuffix(":generateContent")
        view = {
            "model": model,
            "system": texts(body.get("systemInstruction")),
            "messages": [{"role": "user", "content": "\n".join(texts(c) for c in body["contents"])}],
        }
        reply = self.scripted.choose("/v1/messages", headers, view, raw)
        if reply is not None and reply.raw is not None:
            return proto.response_bytes(reply.status, [("content-type", reply.content_type)], reply.raw)
        if reply is not None and reply.message is None:
            error = {"code": reply.status, "message": reply.error_message or "error", "status": "UNAVAILABLE"}
            return self._json(proto, reply.status, {"error": error}, [])
        if reply is not None and reply.message is not None:
            content = reply.message.get("content") or []
            text = "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
        else:
            text = " ".join(REPLY_WORDS[i % len(REPLY_WORDS)] for i in range(self.text_tokens))
        prompt_tokens = max(1, len(raw) // 4)
        answer = {
            "candidates": [
                {"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}
            ],
            "usageMetadata": {
                "promptTokenCount": prompt_tokens,
                "candidatesTokenCount": max(1, len(text) // 4),
                "totalTokenCount": prompt_tokens + max(1, len(text) // 4),
            },
            "modelVersion": model,
        }
        return self._json(proto, 200, answer, [])

    # --- /v1/messages --------------------------------------------------------------------------
    def _content(self, body: dict[str, Any], text_tokens: int) -> tuple[list[dict[str, Any]], str]:
        text = " ".join(REPLY_WORDS[i % len(REPLY_WORDS)] for i in range(text_tokens))
        blocks: list[dict[str, Any]] = [{"type": "text", "text": text}]
        tools = body.get("tools") or []
        # Claude Code 2.1 appends `system`-role messages after the user's turn (the
        # `mid-conversation-system` beta: agent types, skills); the turn being answered is the last
        # message of another role, or the tool marker and tool results would never be seen.
        turns = [m for m in body["messages"] if not (isinstance(m, dict) and m.get("role") == "system")]
        last = turns[-1] if turns else None
        if not isinstance(last, dict) or last.get("role") != "user":
            return blocks, "end_turn"
        content = last.get("content")
        last_text = (
            content
            if isinstance(content, str)
            else " ".join(b.get("text", "") for b in content or [] if isinstance(b, dict) and b.get("type") == "text")
        )
        if COMPACTION_PROMPT in last_text:  # Claude Code may send it beside the last tool result
            return [{"type": "text", "text": _compaction_summary(body["messages"])}], "end_turn"
        if isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
            return blocks, "end_turn"
        if not tools:
            return blocks, "end_turn"
        choice = body.get("tool_choice") or {}
        name: str | None = None
        tool_input: Any = {}
        if (match := TOOL_MARKER.search(last_text)) is not None:
            name = match.group(1)
            tool_input = orjson.loads(match.group(2)) if match.group(2) else {}
        elif choice.get("type") == "tool":
            name = choice.get("name")
        elif choice.get("type") == "any":
            name = tools[0].get("name")
        if name is None:
            return blocks, "end_turn"
        blocks.append({"type": "tool_use", "id": _rid("toolu_"), "name": name, "input": tool_input})
        return blocks, "tool_use"

    async def _messages(
        self,
        proto: Any,
        index: int,
        body: dict[str, Any],
        raw: bytes,
        input_tokens: int,
        scenario: Scenario,
        rl: list[tuple[str, str]],
        text_tokens: int,
    ) -> None:
        kind = scenario.kind
        if kind == "delay":
            await asyncio.sleep(scenario.value / 1000)
        elif kind == "hang":
            await proto.client_disconnect()
            self._record_event(index, "client_disconnected", 0)
            return
        elif kind == "error":
            headers = [*rl, ("retry-after", scenario.retry_after)] if scenario.value == 429 else rl
            self._error(proto, scenario.value, headers)
            return
        blocks, stop_reason = self._content(body, text_tokens)
        cache_read = raw.count(b'"cache_control"') * 64
        output_tokens = sum(len(b.get("text", "").split()) + len(orjson.dumps(b.get("input", ""))) // 4 for b in blocks)
        usage = {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cache_read,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }
        message = {
            "id": _rid("msg_01"),
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": blocks,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
        if not body.get("stream"):
            self._json(proto, 200, message, rl)
            return
        await self._stream(proto, index, message, scenario, rl)

    def _stream_events(self, message: dict[str, Any]) -> list[bytes]:
        usage = message["usage"]
        start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
        out = [_event("message_start", {"type": "message_start", "message": start}), _event("ping", {"type": "ping"})]
        for i, block in enumerate(message["content"]):
            if block["type"] == "text":
                out.append(
                    _event(
                        "content_block_start",
                        {"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}},
                    )
                )
                words = block["text"].split(" ")
                for j in range(0, len(words), 3):
                    piece = " ".join(words[j : j + 3]) + (" " if j + 3 < len(words) else "")
                    delta = {"type": "text_delta", "text": piece}
                    out.append(
                        _event("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta})
                    )
            else:
                opening = {**block, "input": {}}
                out.append(
                    _event("content_block_start", {"type": "content_block_start", "index": i, "content_block": opening})
                )
                partial = orjson.dumps(block["input"]).decode()
                for j in range(0, len(partial), 7):
                    delta = {"type": "input_json_delta", "partial_json": partial[j : j + 7]}
                    out.append(
                        _event("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta})
                    )
            out.append(_event("content_block_stop", {"type": "content_block_stop", "index": i}))
        final_usage = {
            k: usage[k]
            for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")
        }
        out.append(
            _event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                    "usage": final_usage,
                },
            )
        )
        out.append(_event("message_stop", {"type": "message_stop"}))
        return out

    async def _stream(
        self,
        proto: Any,
        index: int,
        message: dict[str, Any],
        scenario: Scenario,
        rl: list[tuple[str, str]],
        events: list[bytes] | None = None,
    ) -> None:
        events = events or self._stream_events(message)
        kind, n = scenario.kind, scenario.value
        delay = n / 1000 if kind == "event-delay" else self.event_delay_s
        limit = n if kind in ("hang-after", "drop-after", "error-event-after") else len(events)
        headers = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"), *rl]
        if kind == "drop-after":
            # A declared length the body never reaches: the server must cut the connection mid-body,
            # which is what a client sees when the upstream dies (not a clean end of stream).
            headers.append(("content-length", str(sum(map(len, events)) + 1024)))
        transport = proto.response_stream(200, headers)
        gone = asyncio.ensure_future(proto.client_disconnect())
        sent = 0
        try:
            for event in events[:limit]:
                if gone.done():
                    self._record_event(index, "client_disconnected", sent)
                    return
                await transport.send_bytes(event)
                sent += 1
                if delay:
                    await asyncio.wait({gone}, timeout=delay)
            if kind == "hang-after":
                await gone
                self._record_event(index, "client_disconnected", sent)
                return
            if kind == "drop-after":
                self._record_event(index, "dropped", sent)
                return  # the body falls short of its declared length: the server cuts the connection
            if kind == "error-event-after":
                error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
                await transport.send_bytes(_event("error", error))
            if gone.done():
                self._record_event(index, "client_disconnected", sent)
            else:
                self._record_event(index, "completed", sent)
        except Exception:  # the client went away while we were writing
            self._record_event(index, "client_disconnected", sent)
        finally:
            gone.cancel()

    # --- other endpoints -------------------------------------------------------------------------
    def _models(self, proto: Any, path: str, query: str, rl: list[tuple[str, str]]) -> None:
        data = [{"type": "model", "id": i, "display_name": n, "created_at": c} for i, n, c in MODELS]
        if path.startswith("/v1/models/"):
            wanted = path.removeprefix("/v1/models/")
            found = [m for m in data if m["id"] == wanted]
            if not found:
                return self._error(proto, 404, rl, f"model: {wanted}")
            return self._json(proto, 200, found[0], rl)
        limit = 20
        for pair in query.split("&"):
            if pair.startswith("limit="):
                limit = int(pair[6:] or 20)
        page = data[:limit]
        payload = {"data": page, "has_more": len(data) > limit, "first_id": page[0]["id"], "last_id": page[-1]["id"]}
        return self._json(proto, 200, payload, rl)

    async def _control(self, scope: Any, proto: Any, path: str) -> None:
        raw = await proto()
        if path in scripted.CONTROL_PATHS:
            return self._json(proto, *self.scripted.control(scope.method, path, raw), [])
        if path == "/_fake/health":
            return self._json(proto, 200, {"status": "ok"}, [])
        if path == "/_fake/requests":
            return self._json(proto, 200, list(self.requests), [])
        if path == "/_fake/events":
            return self._json(proto, 200, list(self.events), [])
        if path == "/_fake/oauth":
            if scope.method == "POST":
                self.oauth.configure(orjson.loads(raw))
            return self._json(proto, 200, self.oauth.describe(), [])
        if path == "/_fake/reset":
            self.oauth = FakeOAuth()
            self.requests.clear()
            self.events.clear()
            self.queue.clear()
            self.scripted.reset()
            return self._json(proto, 200, {"status": "reset"}, [])
        if path == "/_fake/scenarios" and scope.method == "POST":
            specs = orjson.loads(raw).get("scenarios", [])
            self.queue.extend(Scenario.parse(s) for s in specs)
            return self._json(proto, 200, {"queued": len(self.queue)}, [])
        return self._json(proto, 404, {"error": "unknown control path"}, [])


class FakeOAuth:
    """The OAuth side: `POST /v1/oauth/token` (refresh and authorization-code grants) and `GET /oauth/authorize`.

    Refresh tokens are single-use and rotate, as Anthropic's do; every token call is counted.
    `GET /oauth/authorize?...` stands in for the browser sign-in: it answers, as text, the `code#state`
    the real callback page shows, and remembers the PKCE challenge so the exchange can check the
    verifier (S256), the redirect URI, the state and the client id, once per code.

    Configure with `POST /_fake/oauth {"refresh_token": ..., "expires_in": s, "delay_ms": ms,
    "revoke_access": token, "reject_access": bool, "fail_next": n}` (`reject_access` answers 401 to every
    OAuth bearer token; `fail_next` answers 503 to the next n token calls); `GET /_fake/oauth` tells how
    many token calls arrived (`calls`, `grants`).
    """

    def __init__(self) -> None:
        self.valid_refresh: set[str] = set()
        self.revoked_access: set[str] = set()
        self.reject_access = False
        self.calls = 0
        self.grants: list[str] = []
        self.expires_in = 3600
        self.delay_s = 0.0
        self.issued = 0
        self.codes: dict[str, dict[str, str]] = {}
        self.fail_next = 0

    def configure(self, cfg: dict[str, Any]) -> None:
        if cfg.get("refresh_token"):
            self.valid_refresh.add(cfg["refresh_token"])
        if cfg.get("revoke_access"):
            self.revoked_access.add(cfg["revoke_access"])
        self.reject_access = bool(cfg.get("reject_access", self.reject_access))
        self.fail_next = int(cfg.get("fail_next", self.fail_next))
        self.expires_in = int(cfg.get("expires_in", self.expires_in))
        self.delay_s = float(cfg.get("delay_ms", self.delay_s * 1000)) / 1000

    def describe(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "grants": list(self.grants),
            "valid_refresh_tokens": sorted(self.valid_refresh),
            "issued": self.issued,
        }

    def authorize(self, proto: Any, query: str) -> None:
        params = {k: v[0] for k, v in parse_qs(query).items()}
        needed = ("client_id", "redirect_uri", "code_challenge", "state")
        if (
            params.get("response_type") != "code"
            or params.get("code_challenge_method") != "S256"
            or not all(params.get(k) for k in needed)
        ):
            proto.response_bytes(400, [("content-type", "text/plain")], b"bad authorize request")
            return
        code = _rid("fakecode_")
        self.codes[code] = {k: params[k] for k in needed}
        proto.response_bytes(200, [("content-type", "text/plain")], f"{code}#{params['state']}".encode())

    async def token(self, proto: Any, raw: bytes) -> None:
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        try:
            req = orjson.loads(raw)
        except orjson.JSONDecodeError:
            req = {}
        grant = req.get("grant_type") if isinstance(req, dict) else None
        self.grants.append(str(grant))
        if self.fail_next > 0:
            self.fail_next -= 1
            body = {"error": "server_error", "error_description": "The token service is unavailable"}
            proto.response_bytes(503, [("content-type", "application/json")], orjson.dumps(body))
            return
        if grant == "refresh_token" and req.get("client_id"):
            error = self._spend_refresh(req.get("refresh_token"))
        elif grant == "authorization_code" and req.get("client_id"):
            error = self._spend_code(req)
        else:
            error = ("invalid_request", "grant_type and client_id are required")
        headers = [("content-type", "application/json")]
        if error is not None:
            body = {"error": error[0], "error_description": error[1]}
            proto.response_bytes(400, headers, orjson.dumps(body))
            return
        proto.response_bytes(200, headers, orjson.dumps(self._issue(with_account=grant == "authorization_code")))

    def _spend_refresh(self, token: Any) -> tuple[str, str] | None:
        if token not in self.valid_refresh:
            return ("invalid_grant", "Refresh token not found or invalid")
        self.valid_refresh.discard(token)  # single use: it rotates
        return None

    def _spend_code(self, req: dict[str, Any]) -> tuple[str, str] | None:
        grant = self.codes.pop(str(req.get("code")), None)  # single use
        if grant is None:
            return ("invalid_grant", "Invalid or already used authorization code")
        verifier = str(req.get("code_verifier") or "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if challenge != grant["code_challenge"]:
            return ("invalid_grant", "PKCE verification failed")
        for field in ("client_id", "redirect_uri", "state"):
            if req.get(field) != grant[field]:
                return ("invalid_grant", f"{field} does not match the authorization request")
        return None

    def _issue(self, *, with_account: bool) -> dict[str, Any]:
        self.issued += 1
        new_refresh = f"sk-ant-ort01-fake-{self.issued}-{secrets.token_hex(8)}"
        self.valid_refresh.add(new_refresh)
        answer: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": f"sk-ant-oat01-fake-{self.issued}-{secrets.token_hex(8)}",
            "refresh_token": new_refresh,
            "expires_in": self.expires_in,
            "scope": "user:inference user:profile",
        }
        if with_account:
            answer["account"] = {"uuid": "00000000-0000-4000-8000-00000000fa4e", "email_address": "owner@example.com"}
        return answer


def app_from_env() -> FakeAnthropic:
    """Granian factory: options come from the environment so worker processes see them."""
    return FakeAnthropic(
        event_delay_ms=float(os.environ.get("FAKE_ANTHROPIC_EVENT_DELAY_MS", "0")),
        text_tokens=int(os.environ.get("FAKE_ANTHROPIC_TEXT_TOKENS", "12")),
        record_bodies=os.environ.get("FAKE_ANTHROPIC_RECORD_BODIES", "1") == "1",
        record_dir=os.environ.get("FAKE_ANTHROPIC_RECORD_DIR") or None,
    )


def serve(
    host: str = "127.0.0.1",
    port: int = 8123,
    event_delay_ms: float = 0,
    text_tokens: int = 12,
    record_bodies: bool = True,
    record_dir: str | None = None,
) -> None:
    from granian import Granian
    from granian.constants import Interfaces, Loops
    from granian.log import LogLevels

    # Granian binds with SO_REUSEPORT: a second fake on a busy port started silently and the kernel
    # split the requests (and `/_fake/requests`, scenarios, OAuth state) between the two processes.
    ensure_port_free(host, port, "--port")
    print(f"nexus fake-upstream on http://{host}:{port} (point CLAUDE_API_BASE_URL at it)", flush=True)
    os.environ["FAKE_ANTHROPIC_EVENT_DELAY_MS"] = str(event_delay_ms)
    os.environ["FAKE_ANTHROPIC_TEXT_TOKENS"] = str(text_tokens)
    os.environ["FAKE_ANTHROPIC_RECORD_BODIES"] = "1" if record_bodies else "0"
    os.environ["FAKE_ANTHROPIC_RECORD_DIR"] = os.path.abspath(record_dir) if record_dir else ""
    Granian(
        "nexus.fake_upstream.server:app_from_env",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.RSGI,
        loop=Loops.uvloop,
        workers=1,
        log_level=LogLevels.warning,
        websockets=False,
        workers_kill_timeout=2,
    ).serve()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="fake-anthropic", description="A faithful fake of the Anthropic API.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--event-delay-ms", type=float, default=0)
    ap.add_argument("--text-tokens", type=int, default=12)
    ap.add_argument("--no-record-bodies", action="store_true")
    ap.add_argument("--record-dir", help="write one JSON file per API request here (see nexus.fake_upstream.scripted)")
    args = ap.parse_args(argv)
    try:
        serve(args.host, args.port, args.event_delay_ms, args.text_tokens, not args.no_record_bodies, args.record_dir)
    except PortInUseError as exc:
        raise SystemExit(f"Error: {exc}") from None


if __name__ == "__main__":
    main()
