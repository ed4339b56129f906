"""Usage sums, 5-hour windows, rolling series and daily sums against a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from nexus.storage.partitions import ensure_partitions, partition_name
from nexus.usage import repo, service
from nexus.usage.repo import Filters
from tests.usage_rows import insert_row

NOW = datetime(2026, 3, 10, 12, 7, 30, tzinfo=UTC)
H = timedelta(hours=1)


@pytest.fixture
def db(migrated_db: str) -> str:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        ensure_partitions(conn, days_ahead=2, today=NOW.date() - timedelta(days=3))
        ensure_partitions(conn, days_ahead=1, today=NOW.date())
        # inside the 5-hour window ending at NOW
        insert_row(conn, NOW - 5 * H, input_tokens=100, output_tokens=10)  # the window's first instant: in
        insert_row(conn, NOW - H, input_tokens=200, output_tokens=20, cache_creation=70, cache_5m=30, cache_1h=40)
        insert_row(conn, NOW - H, project="p2", input_tokens=1, output_tokens=2, cache_read=500)
        insert_row(conn, NOW - H, account="acc2", model="claude-haiku-4-5", input_tokens=7, output_tokens=3)
        # outside it
        insert_row(conn, NOW - 5 * H - timedelta(microseconds=1), input_tokens=1000, output_tokens=1000)
        insert_row(conn, NOW, input_tokens=3000, output_tokens=3000)  # the window's end is excluded
        insert_row(conn, NOW - timedelta(days=2), input_tokens=40, output_tokens=4)
    return migrated_db


async def test_current_window_edges_filters_and_cache_tokens(db: str) -> None:
    async with await psycopg.AsyncConnection.connect(db) as conn:
        acc1 = await service.current_window(conn, Filters(account_id="acc1"), now=NOW)
        assert acc1["requests"] == 3
        assert (acc1["input_tokens"], acc1["output_tokens"]) == (301, 32)
        assert acc1["cache_read_input_tokens"] == 500
        assert acc1["cache_creation_input_tokens"] == 70
        assert (acc1["cache_creation_5m_input_tokens"], acc1["cache_creation_1h_input_tokens"]) == (30, 40)
        assert service.total_tokens(acc1) == 333
        assert acc1["window"].start == NOW - 5 * H and acc1["window"].end == NOW

        p1 = await service.current_window(conn, Filters(account_id="acc1", project_id="p1"), now=NOW)
        assert (p1["requests"], p1["input_tokens"], p1["cache_read_input_tokens"]) == (2, 300, 0)
        haiku = await service.current_window(conn, Filters(model="claude-haiku-4-5"), now=NOW)
        assert (haiku["requests"], haiku["input_tokens"], haiku["output_tokens"]) == (1, 7, 3)
        everyone = await service.current_window(conn, Filters(), now=NOW)
        assert everyone["requests"] == 4
        short = await service.current_window(conn, Filters(), timedelta(minutes=61), now=NOW)
        assert short["requests"] == 3  # the row 5 h back is out of a 61-minute window
        later = await service.current_window(conn, Filters(), now=NOW + timedelta(microseconds=1))
        assert later["requests"] == 4 and later["input_tokens"] == 3208  # the first row left, the `NOW` one came in
        nobody = await service.current_window(conn, Filters(account_id="nobody"), now=NOW)
        assert nobody["requests"] == 0 and nobody["input_tokens"] == 0 and nobody["last_request_at"] is None


async def test_window_grouped_per_account_and_project(db: str) -> None:
    async with await psycopg.AsyncConnection.connect(db) as conn:
        accounts = {r["account_id"]: r for r in await service.window_by(conn, "account_id", now=NOW)}
        assert set(accounts) == {"acc1", "acc2"}
        assert accounts["acc1"]["requests"] == 3 and accounts["acc2"]["output_tokens"] == 3
        projects = {r["project_id"]: r for r in await service.window_by(conn, "project_id", now=NOW)}
        assert projects["p2"]["cache_read_input_tokens"] == 500 and projects["p1"]["requests"] == 3
        with pytest.raises(ValueError):
            await repo.grouped(conn, NOW - H, NOW, ("request_headers",))


async def test_rolling_series_is_the_window_sum_at_each_bucket(db: str) -> None:
    async with await psycopg.AsyncConnection.connect(db) as conn:
        points = await service.rolling_series(
            conn, Filters(account_id="acc1"), span=6 * H, bucket=timedelta(minutes=30), now=NOW
        )
    # boundaries every 30 min; the last one at or after NOW (12:30), 6 h back is 06:30
    assert points[0]["at"] == datetime(2026, 3, 10, 6, 30, tzinfo=UTC)
    assert points[-1]["at"] == datetime(2026, 3, 10, 12, 30, tzinfo=UTC)
    assert len(points) == 13
    by_time = {p["at"].strftime("%H:%M"): p for p in points}
    # rows: 07:07:30 (100 in), 07:07:29.999999 (1000 in), 11:07:30 (200 in, plus p2 row of 1 in), 12:07:30 (3000 in)
    assert by_time["07:00"]["input_tokens"] == 0
    assert by_time["07:30"]["input_tokens"] == 1100  # [02:30, 07:30)
    assert by_time["11:30"]["input_tokens"] == 1301
    assert by_time["12:00"]["input_tokens"] == 1301  # [07:00, 12:00) still holds the 07:07 rows
    assert by_time["12:30"]["input_tokens"] == 3201  # [07:30, 12:30): the 07:07 rows left, 12:07 came in
    assert by_time["12:30"]["cache_creation_1h_input_tokens"] == 40
    with pytest.raises(ValueError):
        await service.rolling_series(conn, Filters(), bucket=timedelta(minutes=7))


async def test_daily_sums_per_model_and_aggregated(db: str) -> None:
    async with await psycopg.AsyncConnection.connect(db) as conn:
        rows = await service.daily_usage(conn, Filters(account_id="acc1"), days=7, now=NOW)
        agg = await service.daily_usage(conn, Filters(), days=7, by_model=False, now=NOW)
        one_day = await service.daily_usage(conn, Filters(), days=1, by_model=False, now=NOW)
    keyed = {(str(r["date"]), r["project_id"], r["model"]): r for r in rows}
    assert keyed[("2026-03-10", "p1", "claude-sonnet-4-6")]["input_tokens"] == 100 + 200 + 1000 + 3000
    assert keyed[("2026-03-10", "p2", "claude-sonnet-4-6")]["cache_read_input_tokens"] == 500
    assert keyed[("2026-03-08", "p1", "claude-sonnet-4-6")]["output_tokens"] == 4
    assert [str(r["date"]) for r in rows] == sorted((str(r["date"]) for r in rows), reverse=True)
    by_key = {(str(r["date"]), r["account_id"], r["project_id"]): r for r in agg}
    assert by_key[("2026-03-10", "acc2", "p1")]["requests"] == 1
    assert "model" not in agg[0]
    assert {str(r["date"]) for r in one_day} == {"2026-03-10"}


def _plan(conn: psycopg.Connection, sql: str, params: dict[str, object]) -> str:
    return "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql, params))  # type: ignore[arg-type]


def test_usage_queries_prune_partitions_and_use_the_indexes(db: str) -> None:
    f = Filters(account_id="acc1")
    where, params = f.where(NOW - 5 * H, NOW)
    with psycopg.connect(db) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = _plan(conn, f"SELECT {repo.SUMS} FROM api_requests WHERE {where}", params)  # noqa: S608
        assert "api_requests_20260310" in plan
        assert "api_requests_20260308" not in plan and "api_requests_default" not in plan, plan
        assert "account_id_timestamp_idx" in plan, plan
        where, params = Filters(project_id="p1").where(NOW - 5 * H, NOW)
        plan = _plan(conn, f"SELECT {repo.SUMS} FROM api_requests WHERE {where}", params)  # noqa: S608
        assert "project_id_timestamp_idx" in plan and "api_requests_20260309" not in plan, plan


def test_live_feed_query_uses_the_created_at_brin_index(migrated_db: str) -> None:
    """A day of rows written in time order: "stored in the last 10 s" is read from the BRIN index."""
    now = datetime.now(UTC)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        ensure_partitions(conn, days_ahead=0, today=(now - timedelta(days=3)).date())
        conn.execute(
            "INSERT INTO api_requests (request_id, timestamp, created_at, project_id, method, path) "
            "SELECT gen_random_uuid(), t, t + interval '2 seconds', 'p', 'POST', '/v1/messages' "
            "FROM generate_series(%s::timestamptz - interval '20 hours', %s::timestamptz, interval '3 seconds') t",
            (now, now),
        )
        conn.execute("ANALYZE api_requests")
        plan = _plan(
            conn,
            "SELECT request_id FROM api_requests WHERE created_at > %(a)s AND timestamp >= %(b)s",
            {"a": now - timedelta(seconds=10), "b": now - timedelta(days=1)},
        )
    assert "created_at_idx" in plan and "Bitmap Index Scan" in plan, plan
    old = partition_name((now - timedelta(days=3)).date())
    assert old not in plan, plan  # exists, but is pruned
