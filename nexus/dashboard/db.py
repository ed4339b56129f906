"""The dashboard's database access: a small read-only pool.

Every session is read-only (`default_transaction_read_only`) and statements time out, so the dashboard
can never write or hold a long lock even when it runs as a role that could; it needs no more than the
`nexus_reader` role (migration 0002).
"""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool

READ_ONLY_OPTIONS = "-c default_transaction_read_only=on -c statement_timeout=15000"


def read_only_pool(database_url: str, max_size: int = 4) -> AsyncConnectionPool:
    """Not opened: call `await pool.open(wait=False)` on the loop that will use it."""
    return AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=max_size,
        kwargs={"options": READ_ONLY_OPTIONS, "application_name": "nexus-dashboard"},
        check=AsyncConnectionPool.check_connection,
        open=False,
        timeout=10,
    )
