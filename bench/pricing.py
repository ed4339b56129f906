"""What pricing costs the usage queries: the same aggregates with and without the cost sums.

Inserts `--rows` requests over the last few hours (a mix of priced and unpriced models, cache splits
on half of them) into a fresh embedded PostgreSQL (or `--database-url`), prices them (the backfill a
first start does), then times the 5-hour window total and the per-day breakdown with the cost columns
and with the token sums alone, best of `--repeat` runs each, and prints the ratio.

    python -m bench.pricing --rows 200000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from nexus.pricing.sql import REPRICE_UNPRICED
from nexus.storage.embedded import start_embedded
from nexus.storage.migrate import migrate
from nexus.usage import repo

MODELS = ["claude-sonnet-4-5-20250929", "claude-opus-4-6", "claude-haiku-4-5-20251001", "claude-nova-9"]


def fill(dsn: str, rows: int) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO api_requests (request_id, timestamp, project_id, account_id, method, path, model, "
            "response_status, input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens, "
            "usage, outcome) "
            "SELECT gen_random_uuid(), %s - (i %% 14400) * interval '1 second', 'p' || (i %% 5), 'acc' || (i %% 3), "
            "'POST', '/v1/messages', (%s::text[])[1 + i %% 4], 200, 100 + i %% 900, 50 + i %% 300, i %% 2000, "
            "i %% 50000, "
            "CASE WHEN i %% 2 = 0 THEN jsonb_build_object('cache_creation', jsonb_build_object("
            "'ephemeral_5m_input_tokens', (i %% 2000) / 4, "
            "'ephemeral_1h_input_tokens', (i %% 2000) - (i %% 2000) / 4)) "
            "ELSE '{}'::jsonb END, 'completed' FROM generate_series(1, %s) AS i",
            (now, MODELS, rows),
        )
        t = time.perf_counter()
        priced = conn.execute(REPRICE_UNPRICED, {"limit": 10**9}).rowcount
        took = time.perf_counter() - t
        print(f"priced {priced} stored requests in {took:.2f} s ({priced / took:,.0f} rows/s): the one-time backfill")
        conn.execute("ANALYZE api_requests")


async def _time(dsn: str, repeat: int, with_cost: bool) -> tuple[float, float]:
    saved = repo.SUMS
    if not with_cost:
        repo.SUMS = saved[: saved.index(", round(coalesce(sum(cost_usd)")]
    try:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            now = datetime.now(UTC)
            best_total = best_daily = float("inf")
            for _ in range(repeat):
                t = time.perf_counter()
                await repo.totals(conn, now - timedelta(hours=5), now)
                best_total = min(best_total, time.perf_counter() - t)
                t = time.perf_counter()
                await repo.daily(conn, now - timedelta(days=2), now)
                best_daily = min(best_daily, time.perf_counter() - t)
            return best_total, best_daily
    finally:
        repo.SUMS = saved


def main() -> None:
    import asyncio

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--database-url")
    args = ap.parse_args()
    stop: Any = None
    dsn = args.database_url
    if dsn is None:
        dsn, stop = start_embedded(Path(tempfile.mkdtemp(prefix="nexus-bench-")))
    try:
        migrate(dsn)
        fill(dsn, args.rows)
        plain = asyncio.run(_time(dsn, args.repeat, with_cost=False))
        priced = asyncio.run(_time(dsn, args.repeat, with_cost=True))
    finally:
        if stop is not None:
            stop()
    print(f"usage queries over {args.rows} requests (best of {args.repeat}):")
    for name, a, b in (("5-hour total", plain[0], priced[0]), ("per day", plain[1], priced[1])):
        print(f"  {name:14s} tokens only {a * 1000:8.1f} ms   with cost {b * 1000:8.1f} ms   {b / a:.2f}x")


if __name__ == "__main__":
    main()
