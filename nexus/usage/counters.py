"""`GET /token-stats`: per-project token counters since this worker process started.

Kept in memory and updated once per finished `/v1/messages` request, so they cost a few dictionary
updates and work with storage disabled or the database away. They are per worker process (with
`PROXY_WORKERS` > 1 each worker answers for the requests it served, and the `X-Nexus-Worker-PID`
response header says which);
the durable, all-worker view is `/api/token-usage/*`, computed from the database.

Each count is added as storage writes it to its bigint column (`nexus.usage.counts.column_count`):
clamped into bigint's range, 0 when it is not an integer. So a reply claiming 2**64 - 1 output
tokens (the SSE observer reads counts as u64) or a 30-digit number adds what the database will hold,
and both views agree. A total can still pass 64 bits, so the proxy writes them with `dump_json`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson

from nexus.api.schemas import TokenStats
from nexus.conversations.classify import AUXILIARY, LINKED_TYPES
from nexus.usage.counts import column_count

#: JSON responses larger than this are not parsed on the request path just to count their usage.
MAX_PARSED_BODY = 1024 * 1024


@dataclass(slots=True)
class ProjectCounters:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    request_count: int = 0
    error_count: int = 0
    tool_call_count: int = 0
    #: The reference's split: housekeeping requests (titles, quota probes) and conversation turns.
    query_evaluation_count: int = 0
    inference_count: int = 0
    last_updated_ms: int = 0

    def as_json(self) -> dict[str, Any]:
        stats = TokenStats(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_creation_input_tokens=self.cache_creation_input_tokens,
            cache_read_input_tokens=self.cache_read_input_tokens,
            request_count=self.request_count,
            error_count=self.error_count,
            query_evaluation_count=self.query_evaluation_count,
            inference_count=self.inference_count,
            tool_call_count=self.tool_call_count,
            last_updated=datetime.fromtimestamp(self.last_updated_ms / 1000, UTC).isoformat(timespec="milliseconds"),
        )
        built: dict[str, Any] = msgspec.to_builtins(stats)
        return built


def _usage_from_body(body: bytes | None) -> tuple[dict[str, Any], int] | None:
    """The reply's usage and tool calls. Read as storage reads it: orjson, else the standard library
    for what orjson refuses (a lone surrogate in the text, a number past a double), so a reply storage
    counts is counted here too."""
    if not body or len(body) > MAX_PARSED_BODY:
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):
            return None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("usage"), dict):
        return None
    content = parsed.get("content")
    tools = 0
    if isinstance(content, list):
        tools = sum(1 for b in content if isinstance(b, dict) and str(b.get("type", "")).endswith("tool_use"))
    return parsed["usage"], tools


class TokenCounters:
    """One per worker process; only its event loop touches it, so no lock is needed."""

    def __init__(self) -> None:
        self.projects: dict[str, ProjectCounters] = {}
        self.started_at = time.time()

    def observe(
        self, project_id: str, outcome: Any, request_type: str | None = None
    ) -> tuple[int, int, int, int] | None:
        """Count one finished request from the relay's outcome (stream observer or JSON body); return
        the tokens counted (input, output, cache read, cache creation), or None when the reply had no
        usage, so metrics and traces report the same numbers without reading the reply again."""
        c = self.projects.get(project_id)
        if c is None:
            c = self.projects[project_id] = ProjectCounters()
        c.request_count += 1
        if request_type in LINKED_TYPES:
            c.inference_count += 1
        elif request_type == AUXILIARY:
            c.query_evaluation_count += 1
        c.last_updated_ms = time.time_ns() // 1_000_000
        if outcome.status >= 400 or outcome.error or not outcome.status:
            c.error_count += 1
        observer = outcome.observer
        if observer is not None:
            counts = (
                column_count(observer.input_tokens),
                column_count(observer.output_tokens),
                column_count(observer.cache_read_input_tokens),
                column_count(observer.cache_creation_input_tokens),
            )
            tools = len(observer.tool_uses)
        else:
            found = _usage_from_body(outcome.response_body) if outcome.status < 400 else None
            if found is None:
                return None
            usage, tools = found
            counts = (
                column_count(usage.get("input_tokens")),
                column_count(usage.get("output_tokens")),
                column_count(usage.get("cache_read_input_tokens")),
                column_count(usage.get("cache_creation_input_tokens")),
            )
        c.input_tokens += counts[0]
        c.output_tokens += counts[1]
        c.cache_read_input_tokens += counts[2]
        c.cache_creation_input_tokens += counts[3]
        c.tool_call_count += tools
        return counts

    def snapshot(self, project_id: str | None = None) -> Any:
        """A map project -> counters, or one project's counters (null if this worker has not seen it)."""
        if project_id is not None:
            c = self.projects.get(project_id)
            return c.as_json() if c else None
        return {name: c.as_json() for name, c in sorted(self.projects.items())}

    def headers(self) -> list[tuple[str, str]]:
        """Which worker answered and since when: the counters are per process."""
        since = datetime.fromtimestamp(self.started_at, UTC).isoformat(timespec="seconds")
        return [("x-nexus-worker-pid", str(os.getpid())), ("x-nexus-stats-since", since)]
