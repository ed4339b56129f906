"""Live updates: new requests pushed to open pages over Server-Sent Events.

One poller per dashboard process, whatever the number of viewers: while at least one page listens it
asks the database every `DASHBOARD_LIVE_INTERVAL_MS` for rows written since the last ones it saw,
renders each new row once, and hands it to every subscriber whose project filter matches. Work per
client is one bounded queue; a client that does not keep up is dropped (its browser reconnects and
reloads), and the number of clients and the life of one stream are capped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from psycopg_pool import AsyncConnectionPool

from nexus.storage import requests_repo

log = logging.getLogger("nexus.dashboard")

MAX_CLIENTS = 64
QUEUE_SIZE = 256
#: Rows written by a transaction that began before a later one committed carry an earlier
#: `created_at` (it is the transaction's start): look back this far and drop the ids already sent.
OVERLAP = timedelta(seconds=10)
#: Requests that started longer ago than this are not pushed when their row finally arrives.
OLDEST_START = timedelta(days=1)
BATCH = 200
#: An idle stream sends a comment this often, so a live client pulls at least this often...
HEARTBEAT_SECONDS = 15.0
#: ...and one that has not pulled for this long is gone (the server stopped driving its stream
#: without closing it, which Robyn does when a client disconnects): it is removed.
STALE_SECONDS = 2 * HEARTBEAT_SECONDS + 5


def _now() -> float:
    return asyncio.get_running_loop().time()


@dataclass(eq=False)
class Subscriber:
    project_id: str | None
    queue: asyncio.Queue[str | None] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    dropped: bool = False
    pulled_at: float = field(default_factory=_now)

    def touch(self) -> None:
        """Called each time the client's stream asks for its next message."""
        self.pulled_at = _now()


class LiveFeed:
    def __init__(
        self, pool: AsyncConnectionPool, render_row: Callable[[dict[str, Any]], str], interval_s: float
    ) -> None:
        self.pool = pool
        self.render_row = render_row
        self.interval_s = interval_s
        self.subscribers: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._since: datetime | None = None
        self.polls = 0

    def subscribe(self, project_id: str | None) -> Subscriber | None:
        self.prune()
        if len(self.subscribers) >= MAX_CLIENTS:
            return None
        sub = Subscriber(project_id)
        self.subscribers.add(sub)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def prune(self) -> None:
        """Forget subscribers whose stream is no longer being read."""
        cutoff = _now() - STALE_SECONDS
        for sub in [s for s in self.subscribers if s.pulled_at < cutoff]:
            self._drop(sub)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        """Poll while anyone listens; stop when the last subscriber leaves."""
        self._since = None
        while self.subscribers:
            self.prune()
            try:
                await self._poll()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away: keep the streams, try again later
                log.warning("live feed poll failed: %s: %s", exc.__class__.__name__, exc)
            await asyncio.sleep(self.interval_s)

    async def _poll(self) -> None:
        self.polls += 1
        async with self.pool.connection() as conn:
            if self._since is None:  # start from now: rows already stored are on the page already
                cur = await conn.execute("SELECT now()")
                now = await cur.fetchone()
                assert now is not None
                self._since = now[0]
                for old in await requests_repo.list_stored_since(
                    conn, stored_after=now[0] - OVERLAP, started_after=now[0] - OLDEST_START, limit=4 * BATCH
                ):
                    self._remember(str(old["request_id"]))
                return
            rows = await requests_repo.list_stored_since(
                conn, stored_after=self._since - OVERLAP, started_after=self._since - OLDEST_START, limit=BATCH
            )
        for row in rows:
            self._since = max(self._since, row["created_at"])
            rid = str(row["request_id"])
            if rid in self._seen:
                continue
            self._remember(rid)
            self._publish(row)

    def _remember(self, request_id: str) -> None:
        self._seen[request_id] = None
        if len(self._seen) > 4 * BATCH:
            self._seen.popitem(last=False)

    def _publish(self, row: dict[str, Any]) -> None:
        message = (
            "event: request\ndata: "
            + orjson.dumps(
                {"request_id": str(row["request_id"]), "project_id": row["project_id"], "html": self.render_row(row)}
            ).decode()
            + "\n\n"
        )
        for sub in list(self.subscribers):
            if sub.project_id is not None and sub.project_id != row["project_id"]:
                continue
            try:
                sub.queue.put_nowait(message)
            except asyncio.QueueFull:
                self._drop(sub)

    def _drop(self, sub: Subscriber) -> None:
        """A client that fell `QUEUE_SIZE` messages behind: end its stream."""
        sub.dropped = True
        self.unsubscribe(sub)
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(None)
