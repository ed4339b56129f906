"""The linker as the proxy runs it: memory first, the database on a miss, and never in the way.

A request is linked from memory before it is forwarded; the in-memory index answers almost always.
Only when it has no evidence where the database might (after a restart, when the index forgot, or
when another worker served the parent) are matching rows loaded, *beside* the upstream call, within
`LINK_LOOKUP_TIMEOUT_MS`, and the decision taken again before the row is stored: the request never
waits on the database. With several workers a lookup that still leaves evidence missing is asked again
a few times, a batch interval apart, since the parent may still be in another worker's write queue. Any
failure keeps the in-memory decision and is logged: linking never fails a request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from psycopg_pool import AsyncConnectionPool

from nexus._core import Reply, RequestAnalysis
from nexus.conversations import repository
from nexus.conversations.classify import SUBAGENT, classify
from nexus.conversations.linker import Link, Linker, LinkRequest
from nexus.conversations.session import request_session
from nexus.storage.pools import GuardedPool

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
        request_session(headers, analysis),
        agent_id,
        analysis.first_user_key,
        analysis.continuation_text,
        analysis.trimmed_hash,
    )


class LookupPool:
    """The linker's own small pool, opened on first use: its statements are prepared at once (the
    lookups repeat) and bounded by a server-side `statement_timeout`, so a slow database ends a query
    itself instead of the client cancelling it from a thread."""

    def __init__(self, dsn: str, timeout_ms: int, size: int = 2, options: str = "") -> None:
        self.dsn, self.timeout_ms, self.size, self.options = dsn, timeout_ms, size, options
        self._pool: GuardedPool | None = None

    async def __call__(self) -> AsyncConnectionPool:
        if self._pool is None:
            pool = GuardedPool(
                self.dsn,
                min_size=1,
                max_size=self.size,
                kwargs={
                    "options": f"-c statement_timeout={self.timeout_ms} {self.options}".strip(),
                    "prepare_threshold": 0,
                    "connect_timeout": 3,
                },
                open=False,
                timeout=self.timeout_ms / 1000,
                hang_after_s=self.timeout_ms / 1000 + 1,  # a server that hangs (pools.py)
            )
            await pool.open(wait=False)
            self._pool = pool
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()


class ConversationService:
    def __init__(
        self,
        linker: Linker,
        pool: Callable[[], Awaitable[AsyncConnectionPool]] | None = None,
        *,
        lookup_timeout_s: float = 1.0,
        lookback_days: int = 30,
        flush_wait_s: float = 0.0,
        max_lookups: int = 4,
    ) -> None:
        self.linker = linker
        self.pool = pool
        self.lookup_timeout_s = lookup_timeout_s
        self.lookback_days = lookback_days
        #: With several workers a parent served by another worker may still sit in that worker's write
        #: queue: a lookup that leaves evidence missing is tried again, about one batch interval apart.
        self.flush_wait_s = flush_wait_s
        #: Lookups under way at once; a miss beyond that keeps its in-memory decision (counted).
        self.max_lookups = max_lookups
        self._pending: dict[str, asyncio.Task[Link]] = {}
        self.lookups = 0
        self.lookup_failures = 0
        self.lookups_skipped = 0
        self.revised = 0

    def stats(self) -> dict[str, int]:
        """For /health: how often memory was not enough, and what the database changed."""
        return {
            "indexed_requests": len(self.linker.index),
            "lookups": self.lookups,
            "lookups_pending": len(self._pending),
            "lookups_skipped": self.lookups_skipped,
            "lookup_failures": self.lookup_failures,
            "revised_by_lookup": self.revised,
            "entries_examined": self.linker.index.examined,
        }

    async def link(self, req: LinkRequest) -> Link:
        """Decide from memory at once. When the database may know better, the lookup runs beside the
        upstream call (`settle` gives the revised link): the request never waits on the database,
        except behind its own parent's lookup when it arrives before that has finished."""
        try:
            link = self.linker.decide(req)
            waiting = self._pending.get(link.parent_request_id or "")
            if waiting is not None and not waiting.done():
                await asyncio.wait([waiting], timeout=self.lookup_timeout_s)
                link = self.linker.decide(req)
            self.linker.register(req, link)
            if link.missed and self.pool is not None:
                if len(self._pending) >= self.max_lookups:
                    self.lookups_skipped += 1
                else:
                    task = asyncio.ensure_future(self._resolve(req, link))
                    self._pending[req.request_id] = task
                    task.add_done_callback(lambda _: self._pending.pop(req.request_id, None))
            return link
        except Exception:
            log.exception("linking request %s failed; stored without conversation links", req.request_id)
            return Link(req.request_type)

    def pending(self, request_id: str) -> asyncio.Task[Link] | None:
        return self._pending.get(request_id)

    async def settle(self, request_id: str, link: Link | None) -> Link | None:
        """The final link of a request: `link`, or what its database lookup revised it to."""
        task = self._pending.get(request_id)
        if task is None:
            return link
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.lookup_timeout_s * 5 + 5 * self.flush_wait_s)
        except Exception:
            return link

    async def _resolve(self, req: LinkRequest, first: Link) -> Link:
        link = first
        try:
            # Another worker's row is in the database a batch interval after its own lookup settled,
            # which may itself have waited: ask a few times, a batch interval apart (all off the request path).
            for attempt in range(5 if self.flush_wait_s else 1):
                if attempt:
                    await asyncio.sleep(self.flush_wait_s)
                if await self._load(req):
                    link = self.linker.decide(req)
                if not link.missed:
                    break
            if (link.conversation_id, link.branch_id, link.parent_request_id) != (
                first.conversation_id,
                first.branch_id,
                first.parent_request_id,
            ):
                if link.evidence == "new":
                    link.conversation_id = first.conversation_id  # keep the id it was given
                else:
                    self.revised += 1
                self.linker.register(req, link)
            return link
        except Exception:
            log.exception("conversation lookup for %s failed; its in-memory link stands", req.request_id)
            return first

    async def _load(self, req: LinkRequest) -> bool:
        """Load the rows that could be evidence for `req` into the index; True if any were found."""
        assert self.pool is not None
        self.lookups += 1
        index = self.linker.index
        found = False
        try:  # no asyncio.timeout around queries: the pool bounds them (nexus/storage/pools.py)
            pool = await self.pool()
            async with pool.connection(timeout=self.lookup_timeout_s) as conn:
                entries = await repository.requests_with_hashes(  # the nearest 16 ancestors, and itself
                    conn,
                    req.project,
                    req.lookup_hashes(17),
                    req.timestamp,
                    self.lookback_days,
                    req.session,
                    req.agent_id,
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

    def complete(self, request_id: str, link: Link | None, ok: bool, reply: Reply | None) -> list[bytes]:
        """After the response: record the outcome; return the prompt keys of sub-agents the reply
        launched. `reply` is what the request path read of the reply once (`Outcome.reply`)."""
        if link is None or link.conversation_id is None:
            return []
        try:
            return self.linker.complete_reply(request_id, ok, reply)
        except Exception:
            log.exception("recording the outcome of %s for linking failed", request_id)
            return []
