"""Realistic Claude Code sessions stored through the real writer path: `nexus demo-data --requests N`.

What for: a dashboard and an API have to be judged (and benchmarked: bench/dashboard.py) against a
database that looks like production, not against a handful of rows. So every row here is built the
way the proxy builds it: the request body goes through the Rust analysis and the conversation linker
(`nexus.conversations`) exactly as the proxy's request path does, the record through
`nexus.storage.records.build_batch` (bodies split into content-addressed parts, usage read) and the batch
through `nexus.storage.payload.send` (binary COPY, search vectors, conversation titles and summaries
updated from the rows inserted), with the importer's writer (`nexus.importing.target.Writer`) so a
batch PostgreSQL refuses is isolated and daily partitions are created first.

The traffic: sessions played by `bench.traffic.Session` (the Claude Code 2.1 request shape: billing
line, identity, ~20 tools, growing history, tool calls and one `Agent` sub-agent per session), with
replies invented by the session; spread over `--days` days before today, over a few projects,
accounts and models; some requests fail (overloaded, rate limited, invalid) and are retried as Claude
Code does; and a share of the sessions are the recorded real-client scenarios of
`tests/fixtures/claude_code` (compactions, forks into branches, background sub-agents, a 529 retry),
replayed with their own session and request ids.

Idempotent-ish: request ids and times derive from `--seed` and today's date (UTC), so the same
command run twice on the same day stores nothing new (`ON CONFLICT DO NOTHING`).
"""

from __future__ import annotations

import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from nexus.conversations.linker import Linker
from nexus.conversations.replay import Recorded, analyze, load_recording
from nexus.conversations.service import link_request
from nexus.storage.records import ExchangeRecord

PROJECTS = ("acme-web", "payments-api", "infra", "data-pipeline", "mobile-app", "docs-site", "ml-platform", "billing")
ACCOUNTS = ("acct-alice", "acct-bob", "acct-carol", "acct-dave", "acct-erin", None)
#: (model, weight): Sonnet most of the time, Opus for the hard sessions, Haiku for the quick ones.
MODELS = (("claude-sonnet-4-6", 0.6), ("claude-opus-4-6", 0.25), ("claude-haiku-4-5", 0.15))
#: Upstream errors a request may meet before its retry: (status, error type, message).
ERRORS = (
    (529, "overloaded_error", "Overloaded"),
    (429, "rate_limit_error", "This request would exceed the rate limit for your organization"),
    (500, "api_error", "Internal server error"),
    (400, "invalid_request_error", "prompt is too long: 212000 tokens > 200000 maximum"),
)
ERROR_SHARE = 0.02
RECORDED_SHARE = 0.05
FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "claude_code"


@dataclass(slots=True)
class Summary:
    requests: int = 0  # rows offered to the writer
    new: int = 0  # rows the database did not hold yet (a second run with the same seed on the same day: 0)
    sessions: int = 0
    recorded_sessions: int = 0
    errors: int = 0
    refused: int = 0  # rows PostgreSQL refused even alone (quarantined)
    seconds: float = 0.0


def _traffic() -> Any:
    try:
        from bench import traffic
    except ImportError as exc:  # an installed wheel has no bench/: the generator lives in the source tree
        raise RuntimeError("nexus demo-data needs a source checkout (bench/traffic.py)") from exc
    return traffic


def _request_id(rng: random.Random, unix_ms: int) -> str:
    """A UUIDv7 like `nexus.ids.new_request_id`, with its random part from `rng` (so reproducible)."""
    value = (unix_ms & 0xFFFF_FFFF_FFFF) << 80 | rng.getrandbits(80)
    value = (value & ~(0xF << 76)) | (0x7 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    return str(uuid.UUID(int=value))


def _pick_model(rng: random.Random) -> str:
    return rng.choices([m for m, _ in MODELS], weights=[w for _, w in MODELS])[0]


def _usage(rng: random.Random, body: bytes, turn: int, output: int) -> dict[str, int]:
    """Plausible usage for a body: ~4 bytes a token, most of the prompt read from the cache after turn 1."""
    prompt = max(1, len(body) // 4)
    if turn == 0:
        first = {"input_tokens": 4 + rng.randrange(20), "cache_creation_input_tokens": prompt}
        return {**first, "cache_read_input_tokens": 0, "output_tokens": output}
    fresh = min(prompt, 200 + rng.randrange(2_500))
    return {"input_tokens": 3 + rng.randrange(10), "cache_creation_input_tokens": fresh,
            "cache_read_input_tokens": prompt - fresh, "output_tokens": output}  # fmt: skip


class Generator:
    """Yields `ExchangeRecord`s, session after session, until `requests` have been produced."""

    def __init__(self, requests: int, *, seed: int = 1, days: int = 30, today: date | None = None) -> None:
        self.total, self.seed, self.days = requests, seed, max(1, days)
        day = today or datetime.now(UTC).date()
        self.end_us = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1_000_000)
        self.traffic = _traffic()
        self.tools = self.traffic.tools(random.Random(self.traffic.CC_VERSION))
        self.recordings = (
            [load_recording(d) for d in sorted(FIXTURES.iterdir()) if d.is_dir()] if FIXTURES.is_dir() else []
        )
        self.recordings = [r for r in self.recordings if r]
        self.summary = Summary()

    def records(self) -> Iterator[ExchangeRecord]:
        produced, index = 0, 0
        while produced < self.total:
            rng = random.Random(self.seed * 1_000_003 + index)
            index += 1
            start_us = self.end_us - int(rng.random() * self.days * 86_400 * 1_000_000)
            project, account = rng.choice(PROJECTS), rng.choice(ACCOUNTS)
            if self.recordings and rng.random() < RECORDED_SHARE:
                session: Iterator[ExchangeRecord] = self._recorded(rng, start_us, project, account)
                self.summary.recorded_sessions += 1
            else:
                session = self._generated(rng, start_us, project, account)
            self.summary.sessions += 1
            for record in session:
                yield record
                produced += 1
                if produced >= self.total:
                    return

    # --- sessions played by bench.traffic ------------------------------------------------------
    def _generated(
        self, rng: random.Random, now_us: int, project: str, account: str | None
    ) -> Iterator[ExchangeRecord]:
        traffic = self.traffic
        min_kb = rng.randrange(6, 24)
        session = traffic.Session(
            rng.getrandbits(48), min_kb=min_kb, max_kb=min_kb + rng.randrange(8, 90), shared_tools=self.tools
        )
        model = _pick_model(rng)
        linker = Linker(new_id=lambda: str(uuid.UUID(int=rng.getrandbits(128), version=4)))
        turn = 0
        while (req := session.next_request()) is not None:
            body = req.body.replace(b'"model":"' + traffic.MODEL.encode() + b'"', b'"model":"' + model.encode() + b'"')
            reply = session.synthetic_reply()
            if rng.random() < ERROR_SHARE:  # an upstream error, then Claude Code's retry of the same body
                status, kind, text = rng.choice(ERRORS)
                error = {"type": "error", "error": {"type": kind, "message": text}}
                yield self._record(rng, linker, now_us, project, account, req.headers, body, req.stream, status, error)
                self.summary.errors += 1
                now_us += rng.randrange(1, 8) * 1_000_000
            tool = any(b.get("type") == "tool_use" for b in reply)
            message: dict[str, Any] = {
                "id": f"msg_01{rng.getrandbits(88):022x}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": reply,
                "stop_reason": "tool_use" if tool else "end_turn",
                "stop_sequence": None,
                "usage": _usage(rng, body, turn, 40 + rng.randrange(900)),
            }
            yield self._record(rng, linker, now_us, project, account, req.headers, body, req.stream, 200, message)
            session.record_reply(reply)
            turn += 1
            now_us += rng.randrange(4, 120) * 1_000_000

    def _record(
        self,
        rng: random.Random,
        linker: Linker,
        at_us: int,
        project: str,
        account: str | None,
        headers: dict[str, str],
        body: bytes,
        stream: bool,
        status: int,
        response: dict[str, Any],
    ) -> ExchangeRecord:
        """One exchange, linked by the proxy's own linker and carrying what the proxy would store."""
        path = "/v1/messages"
        request_id = _request_id(rng, at_us // 1000)
        analysis = analyze(path, body)
        req = link_request(request_id, project, at_us / 1e6, path, headers, analysis)
        link = linker.decide(req)
        linker.register(req, link)
        keys = linker.complete(request_id, status == 200, response)
        stored_headers = [(k, v) for k, v in headers.items() if k != "x-api-key"]
        record = ExchangeRecord(
            request_id, at_us, project, account, "POST", "/v1/messages?beta=true", stored_headers, body
        )
        record.response_status = status
        record.response_headers = [("content-type", "text/event-stream" if stream else "application/json")]
        record.response_body = orjson.dumps(response)
        record.streamed = stream and status == 200
        usage = response.get("usage")
        if record.streamed and isinstance(usage, dict):  # what the stream observer would have read
            record.usage_json = orjson.dumps(usage)
            record.input_tokens = usage.get("input_tokens")
            record.output_tokens = usage.get("output_tokens")
            record.cache_creation_input_tokens = usage.get("cache_creation_input_tokens")
            record.cache_read_input_tokens = usage.get("cache_read_input_tokens")
            content = response.get("content") or []
            record.tool_call_count = sum(1 for b in content if b.get("type") == "tool_use")
        record.duration_ms = 0 if status != 200 else 800 + rng.randrange(40_000)
        record.first_byte_ms = 150 + rng.randrange(2_500)
        record.attempts = 1
        if status != 200:
            record.outcome, record.error = "upstream_error", f"upstream answered {status}"
        record.analysis, record.link, record.request_type = analysis, link, link.request_type
        record.task_prompt_keys = keys or None
        return record

    # --- recorded real-client scenarios ----------------------------------------------------------
    def _recorded(
        self, rng: random.Random, start_us: int, project: str, account: str | None
    ) -> Iterator[ExchangeRecord]:
        """A recorded scenario replayed at `start_us`: its own Claude Code session id, times shifted."""
        recording: list[Recorded] = rng.choice(self.recordings)
        first = recording[0].timestamp
        linker = Linker(new_id=lambda: str(uuid.UUID(int=rng.getrandbits(128), version=4)))
        sessions: dict[str, str] = {}
        for rec in recording:
            headers = dict(rec.headers)
            old = headers.get("x-claude-code-session-id")
            if old:
                headers["x-claude-code-session-id"] = sessions.setdefault(
                    old, str(uuid.UUID(int=rng.getrandbits(128), version=4))
                )
            at_us = start_us + int((rec.timestamp - first) * 1_000_000)
            response = rec.response if isinstance(rec.response, dict) else {}
            body = rec.body or b"{}"
            stream = b'"stream":true' in body
            yield self._record(rng, linker, at_us, project, account, headers, body, stream, rec.status or 200, response)


def fill(
    dsn: str,
    requests: int,
    *,
    seed: int = 1,
    days: int = 30,
    batch_rows: int = 500,
    progress: Callable[[int, float], None] | None = None,
    today: date | None = None,
) -> Summary:
    """Store `requests` generated requests in the (migrated) database at `dsn`."""
    from nexus.importing.target import Writer, connect

    generator = Generator(requests, seed=seed, days=days, today=today)
    summary = generator.summary
    conn = connect(dsn)
    writer = Writer(conn)
    first = datetime.fromtimestamp(generator.end_us / 1e6, UTC).date() - timedelta(days=generator.days)
    writer.partitions({first + timedelta(days=i) for i in range(generator.days + 2)})
    before = _count(conn)
    started = time.monotonic()
    pending: list[tuple[ExchangeRecord, str | None]] = []

    def flush() -> None:
        batch, keys = writer.rows(pending)
        refused = writer.store(batch, keys, lambda _conn, _refused: None)
        summary.refused += len(refused)
        summary.requests += len(pending)
        pending.clear()
        if progress is not None:
            progress(summary.requests, time.monotonic() - started)

    try:
        for record in generator.records():
            pending.append((record, None))
            if len(pending) >= batch_rows:
                flush()
        if pending:
            flush()
        summary.new = _count(conn) - before
    finally:
        conn.close()
    summary.seconds = time.monotonic() - started
    return summary


def _count(conn: Any) -> int:
    row = conn.execute("SELECT count(*) FROM api_requests").fetchone()
    conn.commit()
    return int(row[0]) if row else 0


def print_progress(total: int) -> Callable[[int, float], None]:
    """A progress line on stderr, rewritten in place."""

    def show(done: int, seconds: float) -> None:
        rate = done / seconds if seconds > 0 else 0.0
        sys.stderr.write(f"\rstored {done:,}/{total:,} requests ({rate:,.0f}/s)   ")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show
