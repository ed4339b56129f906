"""The dashboard's database access: a small read-only pool.

Every session is read-only (`default_transaction_read_only`) and statements time out, so the dashboard
can never write or hold a long lock even when it runs as a role that could; it needs no more than the
`nexus_reader` role (migration 0002).
"""

from __future__ import annotations

from typing import Any

from nexus.storage.pools import GuardedPool

READ_ONLY_OPTIONS = "-c default_transaction_read_only=on -c statement_timeout=15000"
#: A page's queries get this long before a database that hangs is given up (nexus/storage/pools.py).
HANG_AFTER_S = 20.0


def read_only_pool(database_url: str, max_size: int = 4, connect_kwargs: dict[str, Any] | None = None) -> GuardedPool:
    """Not opened: call `await pool.open(wait=False)` on the loop that will use it. No `check` on
    checkout: it would query outside the hang guard; a broken connection fails its query (503) and the
    pool replaces it."""
    return GuardedPool(
        database_url,
        min_size=1,
        max_size=max_size,
        kwargs={
            "options": READ_ONLY_OPTIONS,
            "application_name": "nexus-dashboard",
            "connect_timeout": 3,
            **(connect_kwargs or {}),
        },
        open=False,
        timeout=5,
        hang_after_s=HANG_AFTER_S,
    )
