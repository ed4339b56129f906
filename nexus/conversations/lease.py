"""The solo lease: whether this process is the only one linking against its database.

Shared linking (`shared.py`) costs a transaction per request so that several processes agree. A process
that is alone needs none of it: its memory sees every request. This lease tells the two apart, in
PostgreSQL itself, on one dedicated connection per linking process:

* Every linking process holds a session-level advisory lock on `MEMBERS` for as long as it links.
* A process (with `LINK_SHARED=auto`) that gets it EXCLUSIVE (`pg_try_advisory_lock`) is *solo*: no other
  process holds it in any mode, so no other process is linking. It listens on `nexus_link_join` (from
  before it tries the lock, so no join can be missed) and decides in memory, writing its decisions to the
  shared tables in batches, off the request path (`solo.py`).
* Any other process is a *member*: it sends `NOTIFY nexus_link_join`, then blocks on the SHARED lock. That
  request is granted only once nobody holds the exclusive lock.
* The solo process, on a join notification (or when this connection breaks), stops deciding in memory:
  requests arriving meanwhile wait; it lets the decisions under way end, commits everything it decided
  alone (`on_handover`), then takes the shared lock (a session's own advisory locks never conflict with
  each other, so this is granted at once) and only then releases the exclusive one. The newcomer's shared
  lock is therefore granted only after every solo decision is committed, and it decides nothing before
  it holds that lock (or `JOIN_WAIT_S` has passed: see below). From then on both decide shared.

Why it is safe: a shared decision reads what was committed before its transaction lock was granted. Every
decision a solo process took was committed before any other process could start deciding, and a solo
process decides nothing in memory once it knows of another. A process never becomes solo again until it
restarts: once another process has been seen, the only safe state left is shared, and it costs nothing
to keep (the members leave whenever they like; the next process to start alone is solo again).

The limits, all of them falling back to shared decisions, which are always right:
* a newcomer whose shared lock is not granted within `JOIN_WAIT_S` (a solo process that hangs) decides
  shared anyway and keeps asking for the lock in the background, so no third process can become solo;
* a lost dedicated connection ends solo at once (its locks go with it); the decisions not yet committed
  are written through the pool before any shared decision is taken here, but a process that started in
  the moment between the loss and that write may have decided without them (`nexus relink` repairs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

log = logging.getLogger("nexus.conversations")

#: The advisory lock key every linking process of a database holds (an arbitrary fixed 64-bit number).
MEMBERS = 0x6E65787573_4C4B  # "nexusLK"
CHANNEL = "nexus_link_join"
#: How long a newcomer waits for the solo process to hand over before it decides shared anyway.
JOIN_WAIT_S = 5.0

STARTING, SOLO, HANDING_OVER, SHARED = "starting", "solo", "handing_over", "shared"


class SoloLease:
    """The membership of one linking process (see the module docstring for the protocol)."""

    def __init__(
        self,
        dsn: str,
        *,
        may_be_solo: bool = True,
        join_wait_s: float = JOIN_WAIT_S,
        on_handover: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.dsn, self.may_be_solo, self.join_wait_s = dsn, may_be_solo, join_wait_s
        #: Commits every decision taken alone; called once, before the lock is shared.
        self.on_handover = on_handover
        self.state = STARTING
        self._settled = asyncio.Event()
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        #: Holding the members lock, in either mode (a process that lost it takes it again, shared).
        self.held = False
        self.handovers = 0
        self.join_timeouts = 0
        self.lost = 0

    @property
    def solo(self) -> bool:
        return self.state == SOLO

    def stats(self) -> dict[str, int]:
        return {
            "solo": int(self.state == SOLO),
            "solo_handovers": self.handovers,
            "solo_join_timeouts": self.join_timeouts,
            "solo_lease_lost": self.lost,
        }

    async def settled(self) -> str:
        """The state once it is neither starting nor handing over (started on first use); bounded: a
        lease that cannot settle in time is taken as shared, which is always safe."""
        if self.state == STARTING and self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        if self.state in (STARTING, HANDING_OVER):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), self.join_wait_s * 2)
        return self.state if self.state == SOLO else SHARED

    async def _start(self) -> None:
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=3, keepalives_idle=10, keepalives_interval=5
            )
            self._conn = conn
            if self.may_be_solo:
                await conn.execute(f"LISTEN {CHANNEL}")  # before the lock: no join can be missed
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (MEMBERS,))
                row = await cur.fetchone()
                if row is not None and row[0]:
                    self.held = True
                    self._set(SOLO)
                    self._task = asyncio.ensure_future(self._watch(conn))
                    log.info("linking alone against this database: decisions taken in memory (solo lease)")
                    return
                await conn.execute(f"UNLISTEN {CHANNEL}")
            if not await self._member(conn):
                self._task = asyncio.ensure_future(self._join_later(conn))
        except Exception as exc:
            log.warning("the linking lease failed (%s: %s); deciding shared", type(exc).__name__, exc)
            self._task = asyncio.ensure_future(self._rejoin())
        self._set(SHARED)

    async def _member(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        """Announce this process, then wait (bounded) for the solo process, if any, to hand over."""
        await conn.execute(f"NOTIFY {CHANNEL}")
        if await self._join(conn, self.join_wait_s):
            return True
        self.join_timeouts += 1
        log.warning("the solo linking process did not hand over in %g s; deciding shared", self.join_wait_s)
        return False

    async def _join(self, conn: psycopg.AsyncConnection[Any], wait_s: float) -> bool:
        """Block on the shared lock for at most `wait_s`; True once held."""
        await conn.execute(f"SET lock_timeout = {int(wait_s * 1000)}")
        try:
            await conn.execute("SELECT pg_advisory_lock_shared(%s)", (MEMBERS,))
        except psycopg.errors.LockNotAvailable:
            return False
        self.held = True
        return True

    async def _join_later(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Keep asking for the shared lock, so that no later process can think itself alone."""
        try:
            while not await self._join(conn, 60):
                pass
        except Exception:
            await self._rejoin()

    async def _rejoin(self) -> None:
        """A member whose connection was lost (or never made) takes the shared lock again on a new one,
        for as long as it links: otherwise a process started later could think itself alone."""
        self.held = False
        while True:
            await asyncio.sleep(1.0)
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.dsn, autocommit=True, connect_timeout=3, keepalives_idle=10, keepalives_interval=5
                )
                old, self._conn = self._conn, conn
                if old is not None:
                    with contextlib.suppress(Exception):
                        await old.close()
                if not await self._member(conn):
                    await self._join_later(conn)
                return
            except Exception as exc:
                log.debug("taking the linking lease again failed (%s: %s)", type(exc).__name__, exc)

    async def _watch(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Solo until a join notification, or until this connection breaks."""
        lost = False
        try:
            async for _ in conn.notifies(stop_after=1):
                break
        except Exception as exc:
            lost, self.held = True, False
            self.lost += 1
            log.warning("the linking lease connection was lost (%s: %s); deciding shared", type(exc).__name__, exc)
        else:
            if self.state != SOLO:  # closed
                return
            lost = conn.closed or conn.broken
            self.lost += lost
            self.held = not lost
        await self._hand_over(conn, lost)

    async def _hand_over(self, conn: psycopg.AsyncConnection[Any], lost: bool) -> None:
        self._set(HANDING_OVER)
        try:
            if self.on_handover is not None:
                await self.on_handover()
        except Exception as exc:
            log.warning("committing the solo linking decisions failed (%s: %s)", type(exc).__name__, exc)
        finally:
            if not lost:
                try:  # shared first (granted at once: it is this session's own lock), then exclusive released
                    await conn.execute("SELECT pg_advisory_lock_shared(%s)", (MEMBERS,))
                    await conn.execute("SELECT pg_advisory_unlock(%s)", (MEMBERS,))
                    await conn.execute(f"UNLISTEN {CHANNEL}")
                except Exception as exc:
                    self.lost += 1
                    lost = True
                    log.warning("sharing the linking lease failed (%s: %s)", type(exc).__name__, exc)
            self.handovers += 1
            self._set(SHARED)
            log.info("another process links against this database: decisions shared from now on")
            if lost:
                self._task = asyncio.ensure_future(self._rejoin())

    def _set(self, state: str) -> None:
        self.state = state
        if state in (STARTING, HANDING_OVER):
            self._settled.clear()
        else:
            self._settled.set()

    async def close(self) -> None:
        """Leave (the locks go with the connection)."""
        self.state = SHARED
        for task in (self._task, self._starting):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
