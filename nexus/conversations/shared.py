"""Linking that every worker of every instance agrees on: the linker's state kept in PostgreSQL.

With one worker the in-memory index sees every request (`ConversationService`). With several workers,
or several machines behind a load balancer, a request's parent, its sibling (a fork) or the reply that
launched it may have gone through another process, and rows reach `api_requests` only when a batch is
flushed. So here each decision is taken from what all of them have decided, and written before the
request is forwarded, in three statements (autocommit):

1. `link_candidates` (migration 0017) takes a session-level advisory lock on (project, hash of the first
   message): every request that can be another's retry, parent or sibling (they share a history, so its
   first message), and twin sub-agents (the same prompt), decide one after the other, on any instance.
   In the same call one indexed query reads the candidates (the requests whose whole history is one of
   this request's prefixes, and their children) from `link_requests` (a VOLATILE function: the read
   takes its snapshot after the lock was granted); a one-message sub-agent request also reads the
   unclaimed launches of its prompt, a post-compaction request the recent compaction replies;
2. the unchanged `Linker` decides over a scratch index of those rows, so the rules are exactly the
   single worker's (docs/conversations.md); the request goes on with that decision;
3. the decision is inserted (with a sub-agent's claim and its `subtask_N` number, taken under a lock on
   its conversation, in one transaction) and committed, then the lock is released.

A process that is the only one linking against its database (`LINK_SHARED=auto`, `lease.py`) decides
in memory instead, as `ConversationService`, and writes its decisions here in batches (`solo.py`),
until another linking process appears.

What a reply adds (a failure, the sub-agents it launched, a compaction summary) is written when the
response ends. A child cannot start before the reply it continues has reached the client, but that
write may still be on its way: a sub-agent or post-compaction request that finds no launch or summary
asks again a few times, `WAIT_S` apart. Rows that predate these tables (an upgrade) or were pruned are
still found in `api_requests` when nothing here matches. Any failure falls back to the worker's
in-memory decision: linking never fails a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from nexus._core import Reply
from nexus.conversations import repository
from nexus.conversations.classify import COMPACTION, LINKED_TYPES, MAIN, SUBAGENT
from nexus.conversations.index import FAILED, OK, PENDING, Compaction, Entry, Invocation, LinkIndex
from nexus.conversations.lease import SHARED, SOLO, SoloLease
from nexus.conversations.linker import HASH, Link, Linker, LinkRequest, decided_fields
from nexus.conversations.service import ConversationService
from nexus.conversations.solo import SHARED_EVERY_S as SOLO_SHARED_EVERY_S
from nexus.conversations.solo import SoloLog

log = logging.getLogger("nexus.conversations")

#: Prefix hashes read per request: first the nearest few (the request itself, its parent a turn or a
#: message back), then, only when none of those is known, this many: a parent further back than that
#: is looked for in `api_requests` (as after an upgrade).
NEAR_HASHES, LOOKUP_HASHES = 3, 32
#: A sub-agent or post-compaction request that finds no launch or summary asks again, this far apart,
#: as long as a turn of its session that may have written one is still in flight (its outcome not
#: recorded), at most this long: the reply reached the client a moment before its write committed.
WAIT_S, MAX_WAIT_S = 0.01, 2.0
#: A turn in flight for longer than this is not waited for (its worker died before recording it).
IN_FLIGHT_S = 600.0
#: After a failure to reach the database, decisions are taken from memory for this long (then retried).
AWAY_S = 5.0
CLOCK_SLACK_S = 60.0
#: A decision is visible to every other session the moment it commits; waiting for its WAL to reach
#: the disk too would put an fsync in front of every request. A database crash may lose the last
#: fraction of a second of decisions (their rows in `api_requests` keep the links; `nexus relink`).
#: Its statements repeat with other values only: planned once (custom plans were half of a decision's
#: database time).
SHARED_OPTIONS = "-c synchronous_commit=off -c plan_cache_mode=force_generic_plan"
#: Decisions remembered until their request completes (requests in flight in one worker).
MAX_LIVE = 100_000
_COLS = (
    'request_id::text, project_id, "timestamp", request_type, current_message_hash, conversation_id::text, '
    "branch_id, parent_request_id::text, is_subtask, parent_task_request_id::text, session_id, agent_id, status"
)
#: The lock and the reads of a decision in one call (migration 0017): the candidates (as
#: `repository.REQUESTS_WITH_HASHES`: per hash the newest rows, of which the newest few overall and of the
#: request's session and agent) and, for those of the nearest proper prefix that has any (where the
#: parent is), a child with a smaller and one with a larger history hash than this request's, sub-agents
#: they spawned left out: "has the parent a child with another history?" is all the linker asks, and two
#: index probes answer it however many children (retries) the parent has.
CANDIDATES = "SELECT * FROM link_candidates(%s, %s::bytea[], %s, %s, %s, %s, %s, %s, %s, %s::uuid, %s, %s)"
UNLOCK = "SELECT pg_advisory_unlock(%s)"
BY_ID = f"SELECT {_COLS} FROM link_requests WHERE request_id = ANY(%s::uuid[])"  # noqa: S608
INVOCATIONS = (
    'SELECT request_id::text, n, tool_use_id, conversation_id::text, session_id, "timestamp" FROM link_invocations '
    'WHERE prompt_key = %s AND project_id = %s AND NOT claimed AND "timestamp" >= %s AND "timestamp" <= %s '
    'ORDER BY "timestamp" DESC, n DESC LIMIT 32'
)
COMPACTIONS = (
    'SELECT request_id::text, conversation_id::text, branch_id, "timestamp", summary, session_id FROM link_compactions '
    'WHERE project_id = %s AND "timestamp" >= %s AND "timestamp" <= %s ORDER BY "timestamp" DESC LIMIT 20'
)
INSERT = (
    'INSERT INTO link_requests (request_id, project_id, "timestamp", request_type, current_message_hash, '
    "conversation_id, branch_id, parent_request_id, is_subtask, parent_task_request_id, session_id, agent_id) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (request_id) DO NOTHING"
)
NEXT_SUBTASK = (
    "INSERT INTO link_subtasks AS s (conversation_id, last_number) VALUES (%s, 1) "
    "ON CONFLICT (conversation_id) DO UPDATE SET last_number = s.last_number + 1, updated_at = now() "
    "RETURNING last_number"
)

SEED_SUBTASKS = (
    "INSERT INTO link_subtasks AS s (conversation_id, last_number) VALUES (%s, %s) "
    "ON CONFLICT (conversation_id) DO UPDATE SET last_number = greatest(s.last_number, excluded.last_number)"
)
MARK_STATUS = "UPDATE link_requests SET status = %s WHERE request_id = %s"
MARK_DONE = "UPDATE link_requests SET status = %s WHERE request_id = ANY(%s::uuid[]) AND status = 0"
DONE_EVERY_S, DONE_BATCH = 0.005, 500
#: The turns whose outcome is recorded for every request: they may launch sub-agents or write a summary.
RECORDED_TYPES = frozenset({MAIN, COMPACTION})
CLAIM = "UPDATE link_invocations SET claimed = true WHERE request_id = %s AND n = %s"


def lock_key(*parts: str | bytes) -> int:
    """A signed 64-bit advisory lock key for these parts (a collision only serialises more)."""
    digest = hashlib.blake2b(digest_size=8)
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return int.from_bytes(digest.digest(), "big", signed=True)


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _entry(row: tuple[Any, ...]) -> Entry:
    """A `link_requests` row: failed, or pending until its outcome (a success) is known."""
    return repository.entry(row, FAILED if row[12] == FAILED else PENDING)


class SharedConversationService(ConversationService):
    """`ConversationService` whose decisions are taken from, and written to, the shared tables."""

    def __init__(
        self,
        linker: Linker,
        pool: Callable[[], Awaitable[AsyncConnectionPool]],
        *,
        lookup_timeout_s: float = 1.0,
        lookback_days: int = 30,
        wait_s: float = WAIT_S,
        max_wait_s: float = MAX_WAIT_S,
        lease: SoloLease | None = None,
    ) -> None:
        super().__init__(linker, pool, lookup_timeout_s=lookup_timeout_s, lookback_days=lookback_days)
        #: With a lease, decisions are taken in memory while this process is the only one linking
        #: (lease.py), and written to the shared tables in batches (solo.py).
        self.lease = lease
        self.solo_log = SoloLog(pool, lookup_timeout_s) if lease is not None else None
        if lease is not None:
            lease.on_handover = self._hand_over
        #: Decided alone and not yet completed (their outcome goes through `solo_log`, even once shared).
        self._solo_live: dict[str, LinkRequest] = {}
        self._solo_deciding = 0
        self._solo_idle = asyncio.Event()  # no decision in memory under way
        self._solo_idle.set()
        self.solo_decisions = 0
        self.shared_pool = pool
        self.wait_s, self.max_wait_s = wait_s, max_wait_s
        #: Decided here and not yet completed: what the completion write needs to know of them.
        self._live: dict[str, tuple[LinkRequest, Link]] = {}
        self._writes: set[asyncio.Task[None]] = set()
        self._failed_marked: set[str] = set()
        #: Turns that ended well and added nothing: recorded together, one statement a few ms apart.
        self._done: list[str] = []
        self._flusher: asyncio.Task[None] | None = None
        #: Decisions handed on whose insert has not committed yet (what a reply adds waits for it).
        self._inserting: dict[str, asyncio.Task[None]] = {}
        self.shared_decisions = 0
        self.shared_failures = 0
        self.shared_skipped = 0
        self._away_until = float("-inf")
        self.shared_waits = 0
        self.shared_ms = 0.0

    def stats(self) -> dict[str, int]:
        out = super().stats()
        out.update(
            shared=1,
            shared_decisions=self.shared_decisions,
            shared_failures=self.shared_failures,
            shared_skipped=self.shared_skipped,
            shared_waits=self.shared_waits,
            shared_ms_total=int(self.shared_ms),
        )
        if self.lease is not None and self.solo_log is not None:
            out.update(self.lease.stats())
            out.update(
                solo_decisions=self.solo_decisions,
                solo_rows_written=self.solo_log.written,
                solo_write_failures=self.solo_log.failures,
                solo_queued=len(self.solo_log),
            )
        return out

    def _database_away(self) -> bool:
        """After a failure the shared path is left alone for `AWAY_S`: with the database away, every
        request would otherwise wait out a connection timeout before falling back to memory."""
        if time.monotonic() < self._away_until:
            self.shared_skipped += 1
            return True
        return False

    async def link(self, req: LinkRequest) -> Link:
        if self.lease is not None and self.lease.state != SHARED and await self.lease.settled() == SOLO:
            return await self._link_solo(req)
        if req.request_type not in LINKED_TYPES or not req.prefix_hashes or self._database_away():
            return await super().link(req)
        started = time.perf_counter()
        try:
            link = await self._decide_shared(req)
        except Exception as exc:
            self.shared_failures += 1
            self._away_until = time.monotonic() + AWAY_S
            log.warning(
                "shared linking of %s failed (%s: %s); decided from this worker's memory",
                req.request_id,
                exc.__class__.__name__,
                exc,
            )
            return await super().link(req)
        finally:
            self.shared_ms += (time.perf_counter() - started) * 1000
        self.shared_decisions += 1
        self._live[req.request_id] = (req, link)
        if len(self._live) > MAX_LIVE:  # completed requests are removed; this only bounds a leak
            self._live.pop(next(iter(self._live)))
        return link

    # --- alone: decided in memory, written in batches ----------------------------------------------------
    async def _link_solo(self, req: LinkRequest) -> Link:
        """The single worker's decision (memory first, the database on a miss), queued for the shared
        tables once final (after its lookup, when it needed one)."""
        assert self.solo_log is not None
        self._solo_deciding += 1
        self._solo_idle.clear()
        try:
            link = await super().link(req)
        finally:
            self._solo_deciding -= 1
            if not self._solo_deciding:
                self._solo_idle.set()
        if req.request_type not in LINKED_TYPES or not req.prefix_hashes:
            return link
        self.solo_decisions += 1
        self._solo_live[req.request_id] = req
        if len(self._solo_live) > MAX_LIVE:  # completed requests are removed; this only bounds a leak
            self._solo_live.pop(next(iter(self._solo_live)))
        pending = self.pending(req.request_id)
        if pending is None:
            self.solo_log.decided(req, link)
        else:  # the row written is the settled link
            log_ = self.solo_log
            pending.add_done_callback(lambda t: log_.decided(req, t.result() if not t.cancelled() else link))
        return link

    async def _hand_over(self) -> None:
        """Another process joined: let the decisions under way end (their lookups too), then commit all
        that was decided alone (the lease lets the newcomer in only after this returns)."""
        assert self.solo_log is not None
        deadline = time.monotonic() + self.lookup_timeout_s * 5
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._solo_idle.wait(), self.lookup_timeout_s * 5)
        lookups = [t for t in self._pending.values() if not t.done()]
        if lookups:
            await asyncio.wait(lookups, timeout=max(0.0, deadline - time.monotonic()))
        await asyncio.sleep(0)  # the lookups' done callbacks queue their rows
        self.solo_log.every_s = SOLO_SHARED_EVERY_S
        await self.solo_log.drain(max(1.0, deadline - time.monotonic()))

    def _complete_solo(self, req: LinkRequest, link: Link | None, ok: bool, reply: Reply | None) -> list[bytes]:
        """Memory learns the outcome as a single worker's does; the shared tables get it in the next batch."""
        assert self.solo_log is not None
        keys = ConversationService.complete(self, req.request_id, link, ok, reply)
        index = self.linker.index
        invocations: list[tuple[int, Invocation]] = []
        for n, key in enumerate(keys):
            taken = {id(inv) for _, inv in invocations}
            held = index.invocations(req.project, key)
            inv = next((i for i in held if i.request_id == req.request_id and id(i) not in taken), None)
            if inv is not None:
                invocations.append((n, inv))
        compaction = None
        if req.request_type == COMPACTION and ok and index.compactions:
            last = index.compactions[-1]
            compaction = last if last.request_id == req.request_id else None
        self.solo_log.completed(req.request_id, OK if ok else FAILED, invocations, compaction)
        return keys

    async def _decide_shared(self, req: LinkRequest) -> Link:
        deadline = time.monotonic() + self.max_wait_s
        while True:
            decided: asyncio.Future[Link | None] = asyncio.get_running_loop().create_future()
            task = asyncio.ensure_future(self._attempt(req, time.monotonic() >= deadline, decided))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)
            link = await decided
            if link is not None:
                self._inserting[req.request_id] = task
                task.add_done_callback(lambda _: self._inserting.pop(req.request_id, None))
                return link
            self.shared_waits += 1  # the lock and the connection are released meanwhile
            await asyncio.sleep(self.wait_s)

    async def _attempt(self, req: LinkRequest, last: bool, decided: asyncio.Future[Link | None]) -> None:
        """One decision in one transaction, handed to `decided` as soon as it is taken (None when the
        reply this request follows may not be written yet and it is worth asking again); the decision
        is then inserted and committed while the request is already on its way upstream. The lock is
        held until that commit, so whoever decides next on any instance sees it."""
        try:
            await self._decide_and_insert(req, last, decided)
        except BaseException as exc:
            if not decided.done():
                decided.set_exception(exc)
            elif not isinstance(exc, asyncio.CancelledError):
                self.shared_failures += 1
                name = type(exc).__name__
                log.warning("storing the link decision of %s failed (%s: %s)", req.request_id, name, exc)
            else:
                raise

    async def _decide_and_insert(self, req: LinkRequest, last: bool, decided: asyncio.Future[Link | None]) -> None:
        """Three statements in autocommit: the lock and the reads in one call (`link_candidates`, migration
        0017; the request waits on this one only), the insert, the unlock (after the insert committed).
        psycopg's pipeline mode saved round trips but cost more client CPU than it saved here."""
        pool = await self.shared_pool()
        key = lock_key(req.project, req.prefix_hashes[:HASH])
        async with pool.connection(timeout=self.lookup_timeout_s) as conn:
            if not conn.autocommit:  # idle: set on the client, no round trip; every statement commits alone
                await conn.set_autocommit(True)
            done = False
            try:
                await self._decide_locked(conn, key, req, last, decided)
                done = True
            finally:
                try:
                    if done:
                        await conn.execute(UNLOCK, (key,))
                except BaseException:
                    done = False
                    raise
                finally:
                    if not done:  # the session's lock may be held: it goes with the connection
                        await conn.close()

    async def _decide_locked(
        self, conn: AsyncConnection[Any], key: int, req: LinkRequest, last: bool, decided: asyncio.Future[Link | None]
    ) -> None:
        # Asked before the launches are read: an outcome is committed with the launches of its reply,
        # so a turn seen still in flight here is either still so, or its launches are read below.
        ask = not last and self._could_be_late(req)
        linker, claims, newest, in_flight = await self._load_shared(conn, req, req.lookup_hashes(NEAR_HASHES), key, ask)
        # Whatever was committed before this lock was granted was decided first, whichever
        # instance's clock stamped it later: this decision comes after it (a second fork
        # stamped a millisecond earlier than the first still sees the first as a sibling).
        now = replace(req, timestamp=newest) if newest > req.timestamp else req
        link = linker.decide(now)
        if link.evidence == "new" and req.hash_count() > NEAR_HASHES:  # a parent further back
            wider = req.lookup_hashes(LOOKUP_HASHES)
            linker, claims, newest, _ = await self._load_shared(conn, req, wider, None, False)
            now = replace(req, timestamp=newest) if newest > req.timestamp else req
            link = linker.decide(now)
        if in_flight and self._may_be_late(req, link, linker):
            decided.set_result(None)
            return
        if link.evidence == "new" and link.missed:  # nothing shared: rows older than these tables
            if await self._load_stored(conn, req, linker.index):
                link = linker.decide(now)
        fields = decided_fields(req, link)
        row = (*fields[:2], _at(req.timestamp), *fields[3:])
        if link.evidence == "subtask" and link.conversation_id is not None:  # the row lock orders numbers
            async with conn.transaction():  # the number, the claim and the row together
                cur = await conn.execute(NEXT_SUBTASK, (link.conversation_id,))
                number = await cur.fetchone()
                link.branch_id = f"subtask_{number[0] if number else 1}"
                linker.register(now, link)
                for inv, claim in claims:
                    if inv.claimed:
                        await conn.execute(CLAIM, claim)
                        break
                link.missed = False
                decided.set_result(link)  # the request goes on; the insert and commit follow
                await conn.execute(INSERT, (*row[:6], link.branch_id, *row[7:]))
            return
        link.missed = False
        decided.set_result(link)  # the request goes on; the insert follows, committed before the unlock
        await conn.execute(INSERT, row)

    @staticmethod
    def _could_be_late(req: LinkRequest) -> bool:
        """A sub-agent's first request or a post-compaction request: what it needs is written when the
        reply it follows ends, which may be a moment after the client saw that reply."""
        if req.continuation_text is not None:
            return True
        return req.request_type == SUBAGENT and len(req.prefix_hashes) == 16 and req.first_user_key is not None

    @classmethod
    def _may_be_late(cls, req: LinkRequest, link: Link, linker: Linker) -> bool:
        """Such a request that found no launch or summary (nor, for a post-compaction one, a prefix), or
        found only another known session's: its own session's may be the one still on its way (two
        sessions that compacted to the same summary, or launched the same prompt, at the same time)."""
        if link.evidence in ("subtask", "compaction") and req.session is not None and link.parent_request_id:
            parent = linker.index.get(link.parent_request_id)
            return parent is not None and parent.session is not None and parent.session != req.session
        if link.evidence in ("retry", "subtask", "compaction"):
            return False
        if req.continuation_text is not None:
            return link.evidence != "prefix"
        return cls._could_be_late(req)

    async def _load_shared(
        self, conn: AsyncConnection[Any], req: LinkRequest, hashes: list[bytes], key: int | None, ask: bool
    ) -> tuple[Linker, list[tuple[Invocation, tuple[str, int]]], float, bool]:
        """A linker over a scratch index of what the shared tables know that could be evidence (the lock
        `key` taken first, unless None), and, when `ask`, whether a turn of this request's session that
        may launch sub-agents or write a summary has not had its outcome recorded yet (then the launch
        or summary may still be on its way)."""
        index = LinkIndex(capacity=100_000)
        # Up to a minute past the request's own stamp: another instance's clock, or a request stamped
        # later that still took the lock first (a decision comes after whatever committed before it).
        start, end = _at(req.timestamp) - timedelta(days=self.lookback_days), _at(req.timestamp + CLOCK_SLACK_S)
        since, until = (_at(req.timestamp - IN_FLIGHT_S), _at(req.timestamp + 1)) if ask else (None, None)
        params = (
            key,
            hashes,
            hashes[-1],
            req.request_type == COMPACTION,
            req.project,
            start,
            end,
            req.session,
            req.agent_id,
            req.request_id,
            since,
            until,
        )
        cur = await conn.execute(CANDIDATES, params)
        rows = await cur.fetchall()
        in_flight = bool(ask and rows and rows[0][0] is None and rows[0][12])
        entries = [_entry(r) for r in rows if r[0] is not None]
        claims: list[tuple[Invocation, tuple[str, int]]] = []
        wanted: list[str] = []
        if len(hashes) == 1 and req.first_user_key is not None:
            cur = await conn.execute(INVOCATIONS, (req.first_user_key, req.project, start, end))
            for rid, n, tool_use_id, conversation, session, at in reversed(await cur.fetchall()):
                prompt = req.first_user_key
                inv = Invocation(rid, tool_use_id, req.project, conversation, session, at.timestamp(), prompt)
                index.add_invocation(inv)
                claims.append((inv, (rid, n)))
                wanted.append(rid)
        if req.continuation_text is not None:
            cur = await conn.execute(COMPACTIONS, (req.project, _at(req.timestamp) - timedelta(days=7), end))
            for rid, conversation, branch, at, text, session in reversed(await cur.fetchall()):
                c = Compaction(rid, req.project, conversation, branch, at.timestamp(), text, session)
                index.compactions.append(c)
                wanted.append(rid)
        if wanted:
            cur = await conn.execute(BY_ID, (wanted,))
            entries += [_entry(r) for r in await cur.fetchall()]
        newest = req.timestamp
        for entry in sorted(entries, key=lambda e: e.timestamp):
            index.add(entry)
            newest = max(newest, entry.timestamp)
        for inv, _ in claims:
            newest = max(newest, inv.timestamp)
        for c in index.compactions:
            newest = max(newest, c.timestamp)
        return Linker(index, self.linker.new_id), claims, newest, in_flight

    async def _load_stored(self, conn: AsyncConnection[Any], req: LinkRequest, index: LinkIndex) -> bool:
        """The stored rows (`api_requests`) that could be evidence, for history older than the shared
        tables; True if any were found."""
        days = self.lookback_days
        entries = await repository.requests_with_hashes(
            conn, req.project, req.lookup_hashes(17), req.timestamp, days, req.session, req.agent_id
        )
        found = bool(entries)
        if req.first_user_key is not None and len(req.prefix_hashes) == 16 and req.request_type == SUBAGENT:
            spawners, invocations, counts = await repository.spawning_requests(
                conn, req.project, req.first_user_key, req.timestamp, days
            )
            entries += spawners
            for inv in invocations:
                index.add_invocation(inv)
            for conversation, number in counts.items():  # numbers taken before these tables existed
                await conn.execute(SEED_SUBTASKS, (conversation, number))
            found |= bool(invocations)
        if req.continuation_text is not None:
            compacted, compactions = await repository.recent_compactions(conn, req.project, req.timestamp, days)
            entries += compacted
            index.compactions.extend(compactions)
            found |= bool(compactions)
        for entry in entries:
            index.add(entry)
        return found

    # --- what a reply adds ---------------------------------------------------------------------------
    async def failed(self, request_id: str) -> None:
        """Mark a request failed as soon as its upstream answered with an error, before the client sees
        it: a client that retries at once (an SDK after a 529) must find the failure from any instance."""
        if request_id in self._solo_live and self.solo_log is not None:  # decided alone
            self.solo_log.completed(request_id, FAILED, [], None)  # with its row, if a hand-over comes first
            if not (self.lease and self.lease.solo):  # after one: another process may see its retry now
                await self.solo_log.flush()
            return
        live = self._live.get(request_id)
        if live is None or self._database_away():
            return
        try:
            await self._inserted(request_id)
            pool = await self.shared_pool()
            async with pool.connection(timeout=self.lookup_timeout_s) as conn:
                await conn.execute(MARK_STATUS, (FAILED, request_id))
            self._failed_marked.add(request_id)
        except Exception as exc:
            self.shared_failures += 1
            self._away_until = time.monotonic() + AWAY_S
            log.warning("marking %s failed for linking failed (%s: %s)", request_id, type(exc).__name__, exc)

    def complete(self, request_id: str, link: Link | None, ok: bool, reply: Reply | None) -> list[bytes]:
        solo = self._solo_live.pop(request_id, None)
        if solo is not None:
            return self._complete_solo(solo, link, ok, reply)
        live = self._live.pop(request_id, None)
        if live is None:
            return super().complete(request_id, link, ok, reply)
        req, decided = live
        spawned = reply.launches if ok and reply is not None else []  # (tool_use id, prompt key)
        keys = [key for _, key in spawned]
        if time.monotonic() < self._away_until:
            return keys  # nothing to write to
        marked = request_id in self._failed_marked
        self._failed_marked.discard(request_id)
        summary = reply.text if ok and reply is not None and req.request_type == COMPACTION else ""
        status = None if marked else OK if ok else FAILED
        if req.request_type not in RECORDED_TYPES and status == OK:
            status = None  # a sub-agent's success: nothing waits on it
        if status is None and not spawned and not summary:
            return keys  # nothing another request could need: no write at all
        if status == OK and not spawned and not summary:  # only "no longer in flight": batched
            self._done.append(request_id)
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.ensure_future(self._flush_done())
                self._writes.add(self._flusher)
                self._flusher.add_done_callback(self._writes.discard)
            return keys
        task = asyncio.ensure_future(self._write_outcome(req, decided, status, spawned, keys, summary))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return keys

    async def _write_outcome(
        self,
        req: LinkRequest,
        link: Link,
        status: int | None,
        spawned: list[tuple[str, bytes]],
        keys: list[bytes],
        summary: str,
    ) -> None:
        """In one transaction: the launches and the summary of a reply, then its outcome (so a request
        that sees the outcome recorded sees what the reply added)."""
        try:
            await self._inserted(req.request_id)
            pool = await self.shared_pool()
            async with pool.connection(timeout=self.lookup_timeout_s) as conn, conn.transaction():
                at = _at(req.timestamp)
                for n, ((tool_use_id, _), key) in enumerate(zip(spawned, keys, strict=True)):
                    await conn.execute(
                        "INSERT INTO link_invocations (request_id, n, tool_use_id, project_id, conversation_id, "
                        'session_id, "timestamp", prompt_key) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) '
                        "ON CONFLICT DO NOTHING",
                        (req.request_id, n, tool_use_id, req.project, link.conversation_id, req.session, at, key),
                    )
                if summary:
                    await conn.execute(
                        "INSERT INTO link_compactions (request_id, project_id, conversation_id, branch_id, "
                        '"timestamp", summary, session_id) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING',
                        (req.request_id, req.project, link.conversation_id, link.branch_id, at, summary, req.session),
                    )
                if status is not None:
                    await conn.execute(MARK_STATUS, (status, req.request_id))
        except Exception as exc:
            self.shared_failures += 1
            name = type(exc).__name__
            log.warning("writing the outcome of %s for linking failed (%s: %s)", req.request_id, name, exc)

    async def _flush_done(self) -> None:
        """Record the outcome of the turns that ended well and added nothing, in one statement per
        `DONE_EVERY_S` (what waits on them, a launch-less sub-agent, waits that much longer at most)."""
        while self._done:
            await asyncio.sleep(DONE_EVERY_S)
            ids, self._done = self._done[:DONE_BATCH], self._done[DONE_BATCH:]
            try:
                for request_id in ids:
                    await self._inserted(request_id)
                pool = await self.shared_pool()
                async with pool.connection(timeout=self.lookup_timeout_s) as conn:
                    await conn.execute(MARK_DONE, (OK, ids))
            except Exception as exc:
                self.shared_failures += 1
                log.warning("recording %d outcomes for linking failed (%s: %s)", len(ids), type(exc).__name__, exc)

    async def committed(self, request_id: str) -> None:
        """Return once this request's decision is committed (at once when it already is, or was decided
        alone or from memory). The proxy awaits it before it relays a successful answer: a decision is
        handed on before its insert commits, and with a fast upstream the client could otherwise send
        its next request (a sub-agent the reply launched, a retry) to another instance before this one
        is visible there as a turn in flight."""
        await self._inserted(request_id)

    async def _inserted(self, request_id: str) -> None:
        """Wait until this request's decision is committed (an update must find its row)."""
        task = self._inserting.get(request_id)
        if task is not None:
            await asyncio.wait([task], timeout=self.lookup_timeout_s * 2)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Let the outcome writes under way finish (a worker that stops), and what was decided alone."""
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=timeout_s)
        if self.solo_log is not None:
            await self.solo_log.drain(timeout_s)


PRUNE = (
    'DELETE FROM link_requests WHERE "timestamp" < %(cutoff)s',
    'DELETE FROM link_invocations WHERE "timestamp" < %(cutoff)s',
    'DELETE FROM link_compactions WHERE "timestamp" < %(cutoff)s',
    "DELETE FROM link_subtasks WHERE updated_at < %(cutoff)s",
)


def prune(conn: psycopg.Connection[Any], days: int) -> int:
    """Delete what the shared tables hold beyond the look-back window (the batch writer's hourly
    upkeep); the number of requests removed."""
    cutoff = datetime.now(UTC) - timedelta(days=days)
    removed = 0
    for n, sql in enumerate(PRUNE):
        cur = conn.execute(sql, {"cutoff": cutoff})  # type: ignore[arg-type]
        removed += cur.rowcount if n == 0 else 0
    return removed
