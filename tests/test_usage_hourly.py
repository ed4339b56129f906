"""The hourly usage summary (`usage_hourly`) and the daily key summary (`usage_keys`), migration 0016:
always what a fresh aggregate of `api_requests` gives, whatever wrote, replayed, repriced, moved,
deleted or dropped the rows; and the reads built on them answer what the same query over the rows
answers, for ranges that do not fall on whole hours."""

from __future__ import annotations

import random
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest

from nexus.api import oauth_usage
from nexus.conversations.repository import count_conversations
from nexus.conversations.search import MATCHES, Find
from nexus.demo_data import fill
from nexus.storage.partitions import drop_expired_partitions, ensure_partitions
from nexus.storage.requests_repo import count_requests_at_most
from nexus.usage import hourly, repo, rollups
from nexus.usage.repo import SUMS, Filters
from tests.usage_rows import insert_row

TODAY = date(2026, 12, 1)
COLUMNS = hourly.COLUMNS


def differences(conn: psycopg.Connection[Any]) -> tuple[int, int, int, int]:
    """Rows of the hourly and daily summaries, then of the keys, missing from a fresh aggregate of
    api_requests, and the other way round."""
    fresh = f"SELECT {hourly._FROM_ROWS} FROM api_requests GROUP BY 1, 2, 3, 4, 5, 6"  # noqa: S608
    table = f"SELECT {COLUMNS} FROM usage_hourly"  # noqa: S608
    keys = "SELECT DISTINCT (\"timestamp\" AT TIME ZONE 'UTC')::date, project_id, account_id, conversation_id, branch_id FROM api_requests"  # noqa: E501
    by_day = ", ".join(
        ["(\"timestamp\" AT TIME ZONE 'UTC')::date"] + [f"{expr} AS {name}" for name, expr in hourly.ROW_COLUMNS[1:-2]]
    )
    daily = f"SELECT {by_day} FROM api_requests GROUP BY 1, 2, 3, 4, 5, 6"  # noqa: S608
    days = f"SELECT day, {hourly.DAILY_COLUMNS} FROM usage_daily"  # noqa: S608
    out = []
    for a, b in (
        (table, fresh),
        (fresh, table),
        ("SELECT * FROM usage_keys", keys),
        (keys, "SELECT * FROM usage_keys"),
        (daily, days),
        (days, daily),
    ):
        row = conn.execute(f"SELECT count(*) FROM ({a} EXCEPT ALL {b}) AS x").fetchone()  # type: ignore[arg-type]  # noqa: S608
        assert row is not None
        out.append(int(row[0]))
    return out[0] + out[4], out[1] + out[5], out[2], out[3]


def test_the_writer_keeps_the_summaries_exact_through_replays_updates_deletes_and_drops(migrated_db: str) -> None:
    first = fill(migrated_db, 300, seed=5, days=4, batch_rows=64, today=TODAY)
    assert first.new == 300
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        assert differences(conn) == (0, 0, 0, 0)
        total = conn.execute("SELECT sum(requests) FROM usage_hourly").fetchone()
        assert total == (300,)
    # the same batches again (a retry, a spool replay): nothing stored twice, nothing counted twice
    again = fill(migrated_db, 300, seed=5, days=4, batch_rows=64, today=TODAY)
    assert again.new == 0
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        assert conn.execute("SELECT sum(requests) FROM usage_hourly").fetchone() == (300,)
        assert differences(conn) == (0, 0, 0, 0)
        # repricing (cost_usd), a relink that moves rows (keys and time), deletes, all in one transaction too
        with conn.transaction():
            conn.execute("UPDATE api_requests SET cost_usd = NULL WHERE request_id::text LIKE '%a'")
            moved = conn.execute(
                "UPDATE api_requests SET project_id = 'moved', branch_id = 'elsewhere', conversation_id = NULL, "
                'response_status = 529, "timestamp" = "timestamp" + interval \'90 minutes\' '
                "WHERE request_id::text LIKE '%b'"
            ).rowcount
            assert moved > 0
        gone = conn.execute("DELETE FROM api_requests WHERE request_id::text LIKE '%c'").rowcount
        assert gone > 0
        assert differences(conn) == (0, 0, 0, 0)
        left = conn.execute("SELECT count(*) FROM api_requests").fetchone()
        assert conn.execute("SELECT sum(requests) FROM usage_hourly").fetchone() == left
        # retention drops whole days: their summary rows go with them
        dropped = drop_expired_partitions(conn, retention_days=2, today=TODAY)
        assert dropped
        assert differences(conn) == (0, 0, 0, 0)
        conn.execute("TRUNCATE api_requests")
        assert conn.execute("SELECT count(*) FROM usage_hourly").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM usage_keys").fetchone() == (0,)


def test_the_migration_backfills_what_was_stored_before_it(migrated_db: str) -> None:
    fill(migrated_db, 120, seed=6, days=3, batch_rows=50, today=TODAY)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute("TRUNCATE usage_hourly, usage_keys")  # as before migration 0016
        sql = (hourly.__file__.rsplit("/usage/", 1)[0]) + "/storage/sql/0016_usage_hourly.sql"
        with open(sql, encoding="utf-8") as f:
            conn.execute(f.read())  # type: ignore[arg-type] (the migration is idempotent)
        assert differences(conn) == (0, 0, 0, 0)
        assert conn.execute("SELECT sum(requests) FROM usage_hourly").fetchone() == (120,)


@pytest.fixture
def rows(migrated_db: str) -> str:
    """Rows scattered over three days, several projects, accounts, models and statuses."""
    rng = random.Random(11)
    start = datetime(2026, 3, 8, tzinfo=UTC)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        ensure_partitions(conn, days_ahead=4, today=start.date())
        for _ in range(400):
            at = start + timedelta(seconds=rng.randrange(3 * 86400), microseconds=rng.randrange(10**6))
            insert_row(
                conn,
                at,
                project=rng.choice(["p1", "p2", "p3"]),
                account=rng.choice(["acc1", "acc2", None]),
                model=rng.choice(["claude-sonnet-4-6", "claude-haiku-4-5"]),
                input_tokens=rng.randrange(1000),
                output_tokens=rng.randrange(500),
                cache_5m=rng.choice([None, 5]),
                status=rng.choice([200, 200, 200, 429, 500, 400]),
            )
    return migrated_db


async def test_sums_over_any_range_equal_the_rows(rows: str) -> None:
    """Ranges that start and end inside hours: the summary's whole hours plus the partial hours' rows
    give exactly what a sum over api_requests gives."""
    rng = random.Random(12)
    base = datetime(2026, 3, 8, tzinfo=UTC)
    async with await psycopg.AsyncConnection.connect(rows) as conn:
        for _ in range(25):
            a = base + timedelta(seconds=rng.randrange(3 * 86400), microseconds=rng.randrange(10**6))
            b = a + timedelta(seconds=rng.randrange(1, 2 * 86400), microseconds=rng.randrange(10**6))
            filters = rng.choice(
                [Filters(), Filters(project_id="p2"), Filters(account_id="acc1", model="claude-haiku-4-5")]
            )
            where, params = filters.where(a, b)
            cur = await conn.execute(f"SELECT {SUMS} FROM api_requests WHERE {where}", params)  # type: ignore[arg-type]  # noqa: S608
            expected = await cur.fetchone()
            got = await repo.totals(conn, a, b, filters)
            assert expected is not None
            fields = ("requests", "input_tokens", "output_tokens", "cache_creation_5m_input_tokens", "cost_usd")
            assert tuple(got[f] for f in fields) == tuple(expected[i] for i in (0, 1, 2, 5, 7)), (a, b, filters)
        # the filter menus: values seen in a range, busiest first
        a, b = base + timedelta(hours=5, minutes=17), base + timedelta(days=1, hours=3, seconds=9)
        cur = await conn.execute(
            'SELECT project_id FROM api_requests WHERE "timestamp" >= %s AND "timestamp" < %s '
            "GROUP BY 1 ORDER BY count(*) DESC, 1",
            (a, b),
        )
        assert await repo.distinct_values(conn, "project_id", a, b) == [r[0] for r in await cur.fetchall()]


async def test_request_totals_come_from_the_summary_or_stop_at_the_cap(rows: str) -> None:
    async with await psycopg.AsyncConnection.connect(rows) as conn:

        async def count(sql: str, *params: object) -> int:
            cur = await conn.execute("SELECT count(*) FROM api_requests WHERE " + sql, params)  # type: ignore[arg-type]  # noqa: S608
            row = await cur.fetchone()
            assert row is not None
            return int(row[0])

        # keys of the summary: exact whatever the cap
        assert await count_requests_at_most(conn, 3, project_id="p1") == (await count("project_id = 'p1'"), False)
        at = datetime(2026, 3, 9, 7, 30, 0, 250, tzinfo=UTC)
        find = Find(
            account_id="acc2", model="claude-haiku-4-5", date_from=at, date_to=at + timedelta(hours=9), errors_only=True
        )
        expected = await count(
            "account_id = 'acc2' AND model = 'claude-haiku-4-5' AND \"timestamp\" >= %s AND \"timestamp\" <= %s "
            "AND (response_status >= 400 OR error IS NOT NULL)",
            at,
            at + timedelta(hours=9),
        )
        assert await count_requests_at_most(conn, 1, find=find) == (expected, False)
        # what the summary cannot answer (an exact status) stops at the cap, and says so
        assert await count_requests_at_most(conn, 5, find=Find(status=200)) == (5, True)
        few = await count("response_status = 429")
        assert await count_requests_at_most(conn, 10_000, find=Find(status=429)) == (few, False)


def test_a_month_of_filter_menus_reads_the_summary_not_the_requests(rows: str) -> None:
    """EXPLAIN: a 30-day menu query scans `usage_hourly` and at most the two partial hours' partitions
    of api_requests (it read all 30 partitions in full before: ~1.1 s per menu at 1,000,000 rows)."""
    end = datetime(2026, 3, 10, 12, 7, 30, tzinfo=UTC)
    src, params = hourly.source(end - timedelta(days=30), end)
    with psycopg.connect(rows) as conn:
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                f"EXPLAIN SELECT project_id, sum(requests) FROM {src} AS u GROUP BY 1",  # type: ignore[arg-type]  # noqa: S608
                params,
            ).fetchall()
        )
    assert "usage_hourly" in plan
    scanned = set(re.findall(r" on (api_requests_\w+)", plan))
    assert 1 <= len(scanned) <= 2, plan  # the first and the last hour's partitions, nothing between


async def test_conversation_totals_by_account_and_search_match_the_requests(migrated_db: str) -> None:
    """The account filter reads `usage_keys`, and a search's total walks the matches until its cap:
    both give what the requests say."""
    fill(migrated_db, 300, seed=8, days=3, batch_rows=64, today=TODAY)
    async with await psycopg.AsyncConnection.connect(migrated_db) as conn:
        cur = await conn.execute(
            "SELECT account_id, count(DISTINCT conversation_id) FROM api_requests "
            "WHERE account_id IS NOT NULL GROUP BY 1 ORDER BY 2 DESC LIMIT 1"
        )
        account, conversations = (await cur.fetchall())[0]
        assert await count_conversations(conn, account_id=account) == conversations
        cur = await conn.execute(
            f"SELECT count(DISTINCT conversation_id) FROM api_requests WHERE {MATCHES}",  # noqa: S608
            ("proxy",),
        )
        row = await cur.fetchone()
        assert row is not None and row[0] > 2
        assert await count_conversations(conn, q="proxy") == row[0]
        assert await count_conversations(conn, q="proxy", limit=10_000) == row[0]
        assert await count_conversations(conn, q="proxy", limit=2) == 2


def test_the_newest_rate_limit_reply_of_an_account_is_found_through_its_partial_index(rows: str) -> None:
    """GET /api/oauth-usage/{account} (EXPLAIN): the partial index of replies with the unified
    rate-limit headers, not every request of the account (~540 ms at 1,000,000 rows)."""
    with psycopg.connect(rows) as conn:
        conn.execute("SET enable_seqscan = off")  # a few hundred rows: make the planner show its index choice
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN " + oauth_usage.LATEST,  # type: ignore[arg-type]
                {"account": "acc1", "start": datetime(2026, 3, 1, tzinfo=UTC)},
            ).fetchall()
        )
        children = {
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'api_requests_ratelimit_idx'::regclass"
            ).fetchall()
        }
    used = set(re.findall(r"Index Scan using (\S+) on", plan))
    assert used and used <= children, plan


async def test_dashboard_stats_equal_the_same_counts_over_the_requests(migrated_db: str) -> None:
    """`GET /api/dashboard/stats` reads the summaries; the reference's counts over api_requests (the
    query it replaced) give the same numbers, over 30 days, the last 24 hours and their hours."""
    fill(migrated_db, 400, seed=4, days=3, batch_rows=64, today=TODAY)
    async with await psycopg.AsyncConnection.connect(migrated_db) as conn:
        cur = await conn.execute('SELECT max("timestamp") FROM api_requests')
        newest = (await cur.fetchone())[0]  # type: ignore[index]
        now = newest - timedelta(hours=3, minutes=17, microseconds=5)  # inside the data, off the hour
        cur = await conn.execute("SELECT account_id FROM api_requests WHERE account_id IS NOT NULL LIMIT 1")
        account = (await cur.fetchone())[0]  # type: ignore[index]
        for project_id, account_id in ((None, None), ("ml-platform", None), (None, account)):
            got = await rollups.dashboard_stats(conn, now, 2, project_id, account_id)
            where = 'conversation_id IS NOT NULL AND "timestamp" >= %(start)s'
            params: dict[str, Any] = {"start": now - timedelta(days=2), "recent": now - timedelta(hours=24)}
            for column, value in (("project_id", project_id), ("account_id", account_id)):
                if value is not None:
                    where += f" AND {column} = %({column})s"
                    params[column] = value
            cur = await conn.execute(
                "SELECT count(DISTINCT conversation_id), count(DISTINCT account_id), count(*), "  # noqa: S608
                "coalesce(sum(coalesce(input_tokens, 0)::numeric + coalesce(output_tokens, 0)), 0), "
                "count(DISTINCT branch_id), count(DISTINCT branch_id) FILTER (WHERE branch_id ~ '^subtask_'), "
                "count(DISTINCT branch_id) FILTER (WHERE branch_id ~ '^compact_'), "
                "coalesce(array_agg(DISTINCT model) FILTER (WHERE model IS NOT NULL), '{}') "
                f"FROM api_requests WHERE {where}",
                params,
            )
            expected = await cur.fetchone()
            assert expected is not None and expected[2] > 0
            fields = (
                "conversations",
                "users",
                "requests",
                "tokens",
                "branches",
                "subtask_branches",
                "compact_branches",
            )
            assert tuple(got[f] for f in fields) == tuple(expected[:7]), (project_id, account_id)
            assert sorted(got["models"]) == sorted(expected[7])
            cur = await conn.execute(
                "SELECT count(*), count(DISTINCT conversation_id), count(DISTINCT account_id) "  # noqa: S608
                f'FROM api_requests WHERE {where} AND "timestamp" >= %(recent)s',
                params,
            )
            last = await cur.fetchone()
            assert last is not None
            assert (got["last"]["requests"], got["last"]["conversations"], got["last"]["users"]) == tuple(last)
            cur = await conn.execute(
                "SELECT date_trunc('hour', \"timestamp\"), count(*), "  # noqa: S608
                "coalesce(sum(coalesce(input_tokens, 0)::numeric + coalesce(output_tokens, 0)), 0) "
                f'FROM api_requests WHERE {where} AND "timestamp" >= %(recent)s GROUP BY 1 ORDER BY 1 DESC LIMIT 24',
                params,
            )
            hours = [tuple(r) for r in await cur.fetchall()]
            assert [(h["hour"], h["requests"], h["tokens"]) for h in got["hours"]] == hours


def test_repricing_and_a_batch_being_stored_wait_for_each_other_without_deadlock(migrated_db: str) -> None:
    """Repricing writes only the usage summaries (in the triggers' key order); the writer's statement
    upserts conversation summaries, then the usage summaries in the same order. A reprice holding its
    usage rows must hold no conversation row, so a batch gets its conversations, waits for the usage
    rows, and goes on once the reprice commits: no cycle (`nexus relink`, which also rewrites the
    conversations, takes them first: tests/test_relink.py)."""
    import threading

    from nexus.pricing.sql import REPRICE_RANGE

    fill(migrated_db, 60, seed=3, days=2, batch_rows=30, today=TODAY)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute("UPDATE api_requests SET cost_usd = coalesce(cost_usd, 0) + 1")  # so that all are repriced
    period = {"start": datetime(1970, 1, 1, tzinfo=UTC), "end": datetime(2100, 1, 1, tzinfo=UTC)}
    with psycopg.connect(migrated_db) as reprice, psycopg.connect(migrated_db) as batch:
        assert reprice.execute(REPRICE_RANGE, period).rowcount == 60  # its transaction left open
        batch.execute("SET lock_timeout = '10s'")
        batch.execute("UPDATE conversations SET request_count = request_count")  # not held by the reprice
        failures: list[BaseException] = []

        def usage_half() -> None:
            try:
                batch.execute("UPDATE usage_hourly SET requests = requests")  # waits for the reprice
                batch.commit()
            except BaseException as exc:  # reported by the test
                failures.append(exc)

        thread = threading.Thread(target=usage_half, daemon=True)
        thread.start()
        thread.join(0.3)
        assert thread.is_alive()  # waiting for the reprice's usage rows
        reprice.commit()
        thread.join(10)
        assert not thread.is_alive() and failures == []
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        assert differences(conn) == (0, 0, 0, 0)
