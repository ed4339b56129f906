"""Writing the price table into `model_prices`, where the writer's cost expression reads it.

The table is replaced as a whole in one transaction, so it always equals the shipped prices plus the
operator's file of the last process that started: an entry removed from `PRICING_FILE` is gone after
the next start, and the writer prices each row with either the old table or the new one, never a mix.
Then the stored requests without a cost (stored before pricing existed, or of a model without a price
until now) are priced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from nexus.pricing.sql import REPRICE_UNPRICED
from nexus.pricing.table import Price
from nexus.storage.bulk_lock import BULK_UPDATE_LOCK

_COLUMNS = (
    "model, effective_from, input, output, cache_read, cache_write_5m, cache_write_1h, "
    "lc_above, lc_input, lc_output, lc_cache_read, lc_cache_write_5m, lc_cache_write_1h, note, source"
)


def _row(p: Price) -> tuple[Any, ...]:
    lc = p.long_context
    return (
        p.model,
        p.effective_from,
        p.input,
        p.output,
        p.cache_read,
        p.cache_write_5m,
        p.cache_write_1h,
        lc.above if lc else None,
        lc.input if lc else None,
        lc.output if lc else None,
        lc.cache_read if lc else None,
        lc.cache_write_5m if lc else None,
        lc.cache_write_1h if lc else None,
        p.note,
        p.source,
    )


#: Unpriced rows one start prices (about 3 s): more waits for `nexus pricing reprice --unpriced`.
START_REPRICE_LIMIT = 20_000


def reprice_unpriced(conn: psycopg.Connection[Any], limit: int) -> int:
    """Price up to `limit` of the newest stored requests without a cost; return how many got one."""
    with conn.transaction():
        conn.execute(BULK_UPDATE_LOCK)  # one bulk rewrite at a time (`nexus relink`: nexus.storage.bulk_lock)
        return conn.execute(REPRICE_UNPRICED, {"limit": limit}).rowcount


def sync_prices(conn: psycopg.Connection[Any], prices: Sequence[Price]) -> int:
    """Replace `model_prices` with `prices`, then price the stored requests that have no cost yet;
    return how many of those got one."""
    with conn.transaction():
        conn.execute("LOCK TABLE model_prices IN EXCLUSIVE MODE")
        conn.execute("DELETE FROM model_prices")
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO model_prices ({_COLUMNS}) VALUES ({', '.join(['%s'] * 15)})",  # noqa: S608 (constant)
                [_row(p) for p in prices],
            )
    return reprice_unpriced(conn, START_REPRICE_LIMIT)
