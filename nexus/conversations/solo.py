"""What a solo process decided in memory, written to the shared linking tables in batches.

A solo process (`lease.py`) decides from memory, but the moment another process joins, that process will
decide from the shared tables: they must already hold everything decided alone. Writing each decision
in the request's path would cost what solo saves, so they are queued here and written every `EVERY_S`
in one transaction of a few multi-row statements (no lock, no read), off the request path; a hand-over
writes what is left before the newcomer is let in. What a reply added (its outcome, the sub-agents it
launched, a compaction's summary) follows the same way, and keeps doing so after the hand-over for the
requests decided alone that were still in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from psycopg_pool import AsyncConnectionPool

from nexus.conversations.index import Compaction, Invocation
from nexus.conversations.linker import Link, LinkRequest

log = logging.getLogger("nexus.conversations")

#: How often the queue is written while solo (a batch per interval), and once shared (another process
#: may be waiting on an outcome, as `shared.DONE_EVERY_S`).
EVERY_S, SHARED_EVERY_S = 0.25, 0.005
#: Decisions kept while the database cannot be written; beyond this the oldest are dropped (counted).
MAX_QUEUED = 200_000

#: The rows of a batch as one JSON document (one parameter: encoded by orjson in C, where a dozen
#: arrays dumped by psycopg cost ~40 us of the proxy's CPU per row).
ROWS = (
    'INSERT INTO link_requests (request_id, project_id, "timestamp", request_type, current_message_hash, '
    "conversation_id, branch_id, parent_request_id, is_subtask, parent_task_request_id, session_id, agent_id, status) "
    "SELECT i, p, to_timestamp(t), k, decode(h, 'hex'), c, b, r, s, q, e, a, z FROM json_to_recordset(%s::json) "
    "AS x(i uuid, p text, t float8, k text, h text, c uuid, b text, r uuid, s boolean, q uuid, e text, a text, "
    "z smallint) ON CONFLICT (request_id) DO NOTHING"
)
INVOCATIONS = (
    "INSERT INTO link_invocations (request_id, n, tool_use_id, project_id, conversation_id, session_id, "
    '"timestamp", prompt_key) SELECT * FROM unnest(%s::uuid[], %s::int[], %s::text[], %s::text[], %s::uuid[], '
    "%s::text[], %s::timestamptz[], %s::bytea[]) ON CONFLICT DO NOTHING"
)
COMPACTIONS = (
    'INSERT INTO link_compactions (request_id, project_id, conversation_id, branch_id, "timestamp", summary, '
    "session_id) SELECT * FROM unnest(%s::uuid[], %s::text[], %s::uuid[], %s::text[], %s::timestamptz[], "
    "%s::text[], %s::text[]) ON CONFLICT DO NOTHING"
)
OUTCOMES = (
    "UPDATE link_requests l SET status = u.status FROM unnest(%s::uuid[], %s::int2[]) AS u(request_id, status) "
    "WHERE l.request_id = u.request_id"
)
#: A sub-agent decided alone claimed one launch of its prompt by its spawner (twins are alike: the first).
CLAIM = (
    "UPDATE link_invocations SET claimed = true WHERE (request_id, n) = (SELECT request_id, n FROM link_invocations "
    "WHERE request_id = %s AND prompt_key = %s AND NOT claimed ORDER BY n LIMIT 1)"
)
SUBTASKS = (
    "INSERT INTO link_subtasks AS s (conversation_id, last_number) SELECT * FROM unnest(%s::uuid[], %s::int[]) "
    "ON CONFLICT (conversation_id) DO UPDATE SET last_number = greatest(s.last_number, excluded.last_number), "
    "updated_at = now()"
)


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class SoloLog:
    """The queue of decisions taken in memory and what their replies added, written in batches."""

    def __init__(self, pool: Callable[[], Awaitable[AsyncConnectionPool]], timeout_s: float = 1.0) -> None:
        self.pool, self.timeout_s = pool, timeout_s
        self.every_s = EVERY_S
        #: request id -> its `link_requests` row, keyed as `ROWS` reads it (its status, "z", updated in place
        #: until written).
        self._rows: dict[str, dict[str, Any]] = {}
        self._outcomes: dict[str, int] = {}  # for rows already written
        self._invocations: list[tuple[Any, ...]] = []
        self._compactions: list[tuple[Any, ...]] = []
        self._claims: list[tuple[str, bytes]] = []
        self._subtasks: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one batch at a time, in order
        self.written = 0
        self.failures = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._rows) + len(self._outcomes) + len(self._invocations) + len(self._compactions)

    def decided(self, req: LinkRequest, link: Link) -> None:
        self._rows[req.request_id] = {
            "i": req.request_id,
            "p": req.project,
            "t": req.timestamp,
            "k": req.request_type,
            "h": link.current_hash.hex() if link.current_hash is not None else None,
            "c": link.conversation_id,
            "b": link.branch_id,
            "r": link.parent_request_id,
            "s": link.is_subtask,
            "q": link.parent_task_request_id,
            "e": req.session,
            "a": req.agent_id,
            "z": 0,
        }
        if link.evidence == "subtask" and link.conversation_id is not None and link.parent_request_id is not None:
            if req.first_user_key is not None:
                self._claims.append((link.parent_request_id, req.first_user_key))
            number = int(str(link.branch_id).removeprefix("subtask_"))
            self._subtasks[link.conversation_id] = max(number, self._subtasks.get(link.conversation_id, 0))
        while len(self._rows) > MAX_QUEUED:
            self._rows.pop(next(iter(self._rows)))
            self.dropped += 1
        self._kick()

    def completed(
        self, request_id: str, status: int, invocations: list[tuple[int, Invocation]], compaction: Compaction | None
    ) -> None:
        row = self._rows.get(request_id)
        if row is not None:
            row["z"] = status
        else:
            self._outcomes[request_id] = status
        for n, inv in invocations:
            self._invocations.append(
                (
                    inv.request_id,
                    n,
                    inv.tool_use_id,
                    inv.project,
                    inv.conversation_id,
                    inv.session,
                    _at(inv.timestamp),
                    inv.prompt_key,
                )
            )
        if compaction is not None:
            c = compaction
            self._compactions.append(
                (c.request_id, c.project, c.conversation_id, c.branch_id, _at(c.timestamp), c.text, c.session)
            )
        self._kick()

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while len(self) or self._claims or self._subtasks:
            await asyncio.sleep(self.every_s)
            if not await self.flush():
                await asyncio.sleep(min(1.0, self.every_s * 20))  # the database is away: not in a loop

    async def flush(self) -> bool:
        """Write everything queued, in one transaction; False (all of it kept for the next try) on failure."""
        async with self._lock:
            rows, self._rows = self._rows, {}
            outcomes, self._outcomes = self._outcomes, {}
            invocations, self._invocations = self._invocations, []
            compactions, self._compactions = self._compactions, []
            claims, self._claims = self._claims, []
            subtasks, self._subtasks = self._subtasks, {}
            if not (rows or outcomes or invocations or compactions or claims or subtasks):
                return True
            try:
                pool = await self.pool()
                async with pool.connection(timeout=self.timeout_s) as conn, conn.transaction():
                    if rows:
                        await conn.execute(ROWS, (orjson.dumps(list(rows.values())).decode(),))
                    if invocations:
                        await conn.execute(INVOCATIONS, [list(col) for col in zip(*invocations, strict=True)])
                    if compactions:
                        await conn.execute(COMPACTIONS, [list(col) for col in zip(*compactions, strict=True)])
                    if outcomes:
                        await conn.execute(OUTCOMES, [list(outcomes), list(outcomes.values())])
                    for claim in claims:
                        await conn.execute(CLAIM, claim)
                    if subtasks:
                        await conn.execute(SUBTASKS, [list(subtasks), list(subtasks.values())])
            except Exception as exc:
                self.failures += 1
                log.warning("writing %d solo linking decisions failed (%s: %s)", len(rows), type(exc).__name__, exc)
                self._restore(rows, outcomes, invocations, compactions, claims, subtasks)
                return False
            self.written += len(rows)
            return True

    def _restore(
        self,
        rows: dict[str, dict[str, Any]],
        outcomes: dict[str, int],
        invocations: list[tuple[Any, ...]],
        compactions: list[tuple[Any, ...]],
        claims: list[tuple[str, bytes]],
        subtasks: dict[str, int],
    ) -> None:
        """Put an unwritten batch back in front of what was queued meanwhile (in order: a row before its
        outcome, a launch before its claim)."""
        for request_id, status in self._outcomes.items():
            if request_id in rows:
                rows[request_id]["z"] = status
            else:
                outcomes[request_id] = status
        rows.update(self._rows)
        self._rows, self._outcomes = rows, outcomes
        self._invocations = invocations + self._invocations
        self._compactions = compactions + self._compactions
        self._claims = claims + self._claims
        for conversation, number in self._subtasks.items():
            subtasks[conversation] = max(number, subtasks.get(conversation, 0))
        self._subtasks = subtasks
        while len(self._rows) > MAX_QUEUED:
            self._rows.pop(next(iter(self._rows)))
            self.dropped += 1

    async def drain(self, timeout_s: float) -> bool:
        """Write everything queued now, trying again until `timeout_s` has passed; True once written."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if await self.flush() and not (len(self) or self._claims or self._subtasks):
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)
