"""`GET /token-stats`: per-project token counters since this worker process started.

Kept in memory and updated once per finished `/v1/messages` request, so they cost a few dictionary
updates and work with storage disabled or the database away. They are per worker process (with
`PROXY_WORKERS` > 1 each worker answers for the requests it served, and the `X-Nexus-Worker-PID`
response header says which);
the durable, all-worker view is `/api/token-usage/*`, computed from the database.

The reply is read once, in Rust, for every consumer (`Outcome.reply`), so nothing is parsed here and
a JSON reply is counted whatever its size. Each count is added as storage writes it to its bigint
column (`nexus.usage.counts.column_count`): clamped into bigint's range, 0 when it is not an
integer. So a reply claiming 2**64 - 1 output tokens (the SSE observer reads counts as u64) or a
30-digit number adds what the database will hold, and both views agree. A total can still pass 64
bits, so the proxy writes them with `dump_json`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from nexus.api.schemas import TokenStats
from nexus.conversations.classify import AUXILIARY, LINKED_TYPES
from nexus.usage.counts import column_count


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
        # a stream's counts whatever its status; a JSON reply's only when it succeeded and has a usage
        reply = outcome.reply() if outcome.observer is not None or outcome.status < 400 else None
        if reply is None or (outcome.observer is None and reply.usage_json is None):
            return None
        counts = (
            column_count(reply.input_tokens),
            column_count(reply.output_tokens),
            column_count(reply.cache_read_input_tokens),
            column_count(reply.cache_creation_input_tokens),
        )
        tools = reply.tool_call_count or 0
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
