"""Connection pools for the services' reads, where a database that hangs cannot freeze the process.

A query that waits on a frozen server must not be ended by cancelling it: psycopg then sends
PostgreSQL a cancel request, which with a libpq older than 17 is a blocking call that holds the GIL
while the frozen postmaster never answers, so the whole process stops (the attack pass saw one
`/api/*` call freeze the proxy's streams). So no caller wraps a query in `asyncio.timeout`; instead
every use of a connection from a `GuardedPool` gets `hang_after_s`: past it, the connection's socket
is shut down (the same way the writer's watchdog does it), the query fails at once with an
`OperationalError`, the caller answers 503, and the pool throws the connection away. A slow but
living server ends long statements itself (`statement_timeout`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from nexus.storage.watchdog import shut_down


class GuardedPool(AsyncConnectionPool):
    def __init__(self, *args: Any, hang_after_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hang_after_s = hang_after_s

    @asynccontextmanager
    async def connection(  # type: ignore[override]
        self,
        timeout: float | None = None,  # noqa: ASYNC109 (the pool's own parameter: waiting for a connection)
        *,
        hang_after_s: float | None = None,
    ) -> AsyncIterator[AsyncConnection[Any]]:
        async with super().connection(timeout) as conn:
            limit = hang_after_s if hang_after_s is not None else self.hang_after_s
            handle = asyncio.get_running_loop().call_later(limit, shut_down, conn)
            try:
                yield conn
            finally:
                handle.cancel()
