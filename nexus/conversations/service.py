"""The linker as the proxy runs it: memory first, the database on a miss, and never in the way.

A request is linked before it is forwarded. The in-memory index answers almost always; only when it
has no evidence where the database might (after a restart, when the index forgot, or when another
worker served the parent) are matching rows loaded, within `LINK_LOOKUP_TIMEOUT_MS`, and the decision
taken again; with several workers a lookup that still leaves evidence missing is asked once more
after a batch interval, since the parent may still be in another worker's write queue. Any failure
degrades to "a new conversation" and is logged: linking never fails a request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from psycopg_pool import AsyncConnectionPool

from nexus._core import RequestAnalysis
from nexus.conversations import repository
from nexus.conversations.classify import COMPACTION, SUBAGENT, classify
from nexus.conversations.linker import SUBAGENT_TOOLS, Link, Linker, LinkRequest

log = logging.getLogger("nexus.conversations")


class Headers(Protocol):
    def get(self, key: str, default: Any = None, /) -> Any: ...


def link_request(
    request_id: str,
    project: str,
    timestamp: float,
    path: str,
    headers: Headers,
    analysis: RequestAnalysis | None,
) -> LinkRequest:
    """The linker's view of a request: built the same way by the proxy, `nexus replay` and `nexus relink`."""
    agent_id = headers.get("x-claude-code-agent-id") or None
    request_type = classify(path, analysis, agent_id)
    if analysis is None:
        return LinkRequest(request_id, project, timestamp, request_type)
    return LinkRequest(
        request_id,
        project,
        timestamp,
        request_type,
        analysis.prefix_hashes,
        headers.get("x-claude-code-session-id") or None,
        agent_id,
        analysis.first_user_key,
        analysis.continuation_text,
    )


def may_spawn_subagent(response_body: bytes | None, tool_names: list[str] | None) -> bool:
    """Cheap pre-check before a reply is parsed for Agent/Task tool calls."""
    if tool_names is not None:
        return any(name in SUBAGENT_TOOLS for name in tool_names)
    return response_body is not None and any(f'"{n}"'.encode() in response_body for n in SUBAGENT_TOOLS)


class ConversationService:
    def __init__(
        self,
        linker: Linker,
        pool: Callable[[], Awaitable[AsyncConnectionPool]] | None = None,
        *,
        lookup_timeout_s: float = 0.2,
        lookback_days: int = 30,
        flush_wait_s: float = 0.0,
    ) -> None:
        self.linker = linker
        self.pool = pool
        self.lookup_timeout_s = lookup_timeout_s
        self.lookback_days = lookback_days
        #: With several workers a parent served by another worker may still sit in that worker's write
        #: queue: an empty lookup is tried once more after about one batch interval.
        self.flush_wait_s = flush_wait_s
        self.lookups = 0
        self.lookup_failures = 0

    async def link(self, req: LinkRequest) -> Link:
        try:
            link = self.linker.decide(req)
            if link.missed and self.pool is not None:
                for attempt in range(2 if self.flush_wait_s else 1):
                    if attempt:
                        await asyncio.sleep(self.flush_wait_s)
                    if await self._load(req):
                        link = self.linker.decide(req)
                    if not link.missed:
                        break
            self.linker.register(req, link)
            return link
        except Exception:
            log.exception("linking request %s failed; stored without conversation links", req.request_id)
            return Link(req.request_type)

    async def _load(self, req: LinkRequest) -> bool:
        """Load the rows that could be evidence for `req` into the index; True if any were found."""
        assert self.pool is not None
        self.lookups += 1
        index = self.linker.index
        found = False
        try:
            async with asyncio.timeout(self.lookup_timeout_s):
                pool = await self.pool()
                async with pool.connection() as conn:
                    entries = await repository.requests_with_hashes(
                        conn, req.project, req.hashes(), req.timestamp, self.lookback_days
                    )
                    if req.first_user_key is not None and len(req.prefix_hashes) == 16 and req.request_type == SUBAGENT:
                        spawners, invocations, counts = await repository.spawning_requests(
                            conn, req.project, req.first_user_key, req.timestamp, self.lookback_days
                        )
                        entries += spawners
                        for inv in invocations:
                            index.add_invocation(inv)
                        for conversation, number in counts.items():
                            index.note_subtask(conversation, number)
                        found |= bool(invocations)
                    if req.continuation_text is not None:
                        compacted, compactions = await repository.recent_compactions(
                            conn, req.project, req.timestamp, self.lookback_days
                        )
                        entries += compacted
                        index.compactions.extend(compactions)
                        found |= bool(compactions)
        except Exception as exc:
            self.lookup_failures += 1
            log.warning("conversation lookup for %s failed (%s: %s)", req.request_id, exc.__class__.__name__, exc)
            return False
        for entry in entries:
            index.add(entry)
        return found or bool(entries)

    def complete(
        self, request_id: str, link: Link | None, ok: bool, body: bytes | None, tool_names: list[str] | None
    ) -> list[bytes]:
        """After the response: record the outcome; return the prompt keys of sub-agents the reply launched."""
        if link is None or link.conversation_id is None:
            return []
        message = None
        try:
            if ok and body and (link.request_type == COMPACTION or may_spawn_subagent(body, tool_names)):
                message = orjson.loads(body)
            return self.linker.complete(request_id, ok, message)
        except Exception:
            log.exception("recording the outcome of %s for linking failed", request_id)
            return []
