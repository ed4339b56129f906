"""SQL for the reference system's rollups of `api_requests`: statistics, tenants, hourly counts, accounts
and the sliding window.

Like `nexus.usage.repo`, every query is bounded below by `timestamp >= %(start)s` (partitions pruned),
takes values as parameters only, and sums into `numeric` so no stored count can overflow a sum. Token
sums are input + output as the reference reported `totalTokens`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

_SUM = "coalesce(sum({}), 0)"
_BIN = "date_bin(%(bucket)s, \"timestamp\", TIMESTAMPTZ '1970-01-01 00:00:00+00')"


def _where(start: datetime | None, end: datetime | None, **equal: str | None) -> tuple[str, dict[str, Any]]:
    clauses: list[str] = ["true"]
    params: dict[str, Any] = {}
    if start is not None:
        clauses.append('"timestamp" >= %(start)s')
        params["start"] = start
    if end is not None:
        clauses.append('"timestamp" < %(end)s')
        params["end"] = end
    for column, value in equal.items():  # column names come from the callers' keyword names only
        if value is not None:
            clauses.append(f"{column} = %({column})s")
            params[column] = value
    return " AND ".join(clauses), params


async def _all(conn: AsyncConnection[Any], sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)  # type: ignore[arg-type]
        return await cur.fetchall()


async def stats(
    conn: AsyncConnection[Any], start: datetime | None, project_id: str | None, *, storage: bool = False
) -> dict[str, Any]:
    """Sums, errors, mean duration, distinct projects and requests per model and per type since `start`."""
    where, params = _where(start, None, project_id=project_id)
    extra = (
        ', min("timestamp") AS first_request_at, max("timestamp") AS last_request_at, '
        "count(DISTINCT conversation_id) AS conversation_count"
        if storage
        else ""
    )
    sql = (
        "SELECT count(*) AS requests, "  # noqa: S608 (constant SQL, values are parameters)
        f"{_SUM.format('input_tokens')} AS input_tokens, {_SUM.format('output_tokens')} AS output_tokens, "
        f"{_SUM.format('cache_creation_input_tokens')} AS cache_creation, "
        f"{_SUM.format('cache_read_input_tokens')} AS cache_read, "
        "coalesce(avg(duration_ms), 0)::float8 AS mean_duration_ms, "
        "count(*) FILTER (WHERE response_status >= 400 OR error IS NOT NULL) AS errors, "
        f"count(DISTINCT project_id) AS projects{extra} FROM api_requests WHERE {where}"
    )
    row = (await _all(conn, sql, params))[0]
    for key, column in (("by_model", "model"), ("by_type", "request_type")):
        grouped = await _all(
            conn,
            f"SELECT coalesce({column}, 'unknown') AS k, count(*) AS n FROM api_requests "  # noqa: S608
            f"WHERE {where} GROUP BY 1 ORDER BY 2 DESC, 1",
            params,
        )
        row[key] = {r["k"]: int(r["n"]) for r in grouped}
    return row


async def dashboard_stats(
    conn: AsyncConnection[Any], now: datetime, days: int, project_id: str | None, account_id: str | None
) -> dict[str, Any]:
    """The conversation-scoped rollup over the last `days` days, its last 24 hours and their hours."""
    where, params = _where(now - timedelta(days=days), None, project_id=project_id, account_id=account_id)
    where += " AND conversation_id IS NOT NULL"
    totals = (
        await _all(
            conn,
            "SELECT count(DISTINCT conversation_id) AS conversations, "  # noqa: S608 (constant SQL)
            "count(DISTINCT account_id) AS users, count(*) AS requests, "
            "coalesce(sum(coalesce(input_tokens, 0)::numeric + coalesce(output_tokens, 0)), 0) AS tokens, "
            "count(DISTINCT branch_id) AS branches, "
            "count(DISTINCT branch_id) FILTER (WHERE branch_id ~ '^subtask_') AS subtask_branches, "
            "count(DISTINCT branch_id) FILTER (WHERE branch_id ~ '^compact_') AS compact_branches, "
            "coalesce(array_agg(DISTINCT model) FILTER (WHERE model IS NOT NULL), '{}') AS models "
            f"FROM api_requests WHERE {where}",
            params,
        )
    )[0]
    recent = {**params, "recent": now - timedelta(hours=24)}
    last = (
        await _all(
            conn,
            "SELECT count(*) AS requests, count(DISTINCT conversation_id) AS conversations, "  # noqa: S608
            f'count(DISTINCT account_id) AS users FROM api_requests WHERE {where} AND "timestamp" >= %(recent)s',
            recent,
        )
    )[0]
    hours = await _all(
        conn,
        "SELECT date_trunc('hour', \"timestamp\") AS hour, count(*) AS requests, "  # noqa: S608
        "coalesce(sum(coalesce(input_tokens, 0)::numeric + coalesce(output_tokens, 0)), 0) AS tokens "
        f'FROM api_requests WHERE {where} AND "timestamp" >= %(recent)s GROUP BY 1 ORDER BY 1 DESC LIMIT 24',
        recent,
    )
    return {**totals, "last": last, "hours": hours}


async def weekly_conversations(
    conn: AsyncConnection[Any], start: datetime, project_id: str | None
) -> list[dict[str, Any]]:
    """Conversations per ISO week (Monday, UTC) of their first request, from `start` on."""
    where = "first_at >= %(start)s" + (" AND project_id = %(project_id)s" if project_id is not None else "")
    return await _all(
        conn,
        "SELECT (date_trunc('week', first_at AT TIME ZONE 'UTC'))::date AS week, count(*) AS n "  # noqa: S608
        f"FROM conversations WHERE {where} GROUP BY 1 ORDER BY 1",
        {"start": start, "project_id": project_id},
    )


async def projects(conn: AsyncConnection[Any], start: datetime) -> list[dict[str, Any]]:
    """Projects with requests since `start`, busiest first."""
    return await _all(
        conn,
        'SELECT project_id, count(*) AS n, max("timestamp") AS last_at FROM api_requests '
        'WHERE "timestamp" >= %(start)s GROUP BY 1 ORDER BY 2 DESC, 1',
        {"start": start},
    )


async def hourly(
    conn: AsyncConnection[Any], start: datetime, project_id: str | None, *, tokens: bool
) -> list[dict[str, Any]]:
    """Per project and UTC hour: requests, or output tokens."""
    where, params = _where(start, None, project_id=project_id)
    value = _SUM.format("output_tokens") if tokens else "count(*)"
    return await _all(
        conn,
        f"SELECT project_id, date_trunc('hour', \"timestamp\") AS hour, {value} AS n "  # noqa: S608
        f"FROM api_requests WHERE {where} GROUP BY 1, 2 ORDER BY 1, 2",
        params,
    )


async def accounts(conn: AsyncConnection[Any], start: datetime) -> list[dict[str, Any]]:
    """Per account and project since `start`: output and input tokens, requests, the latest request."""
    return await _all(
        conn,
        f"SELECT account_id, project_id, {_SUM.format('output_tokens')} AS output_tokens, "  # noqa: S608
        f'{_SUM.format("input_tokens")} AS input_tokens, count(*) AS requests, max("timestamp") AS last_at '
        'FROM api_requests WHERE "timestamp" >= %(start)s AND account_id IS NOT NULL GROUP BY 1, 2',
        {"start": start},
    )


async def output_by_bucket(
    conn: AsyncConnection[Any], start: datetime, bucket: timedelta, account_ids: list[str]
) -> list[dict[str, Any]]:
    """Output tokens per account and `bucket` (aligned on the epoch) since `start`."""
    return await _all(
        conn,
        f"SELECT account_id, {_BIN} AS b, {_SUM.format('output_tokens')} AS n FROM api_requests "  # noqa: S608
        'WHERE "timestamp" >= %(start)s AND account_id = ANY(%(accounts)s) GROUP BY 1, 2',
        {"start": start, "bucket": bucket, "accounts": account_ids},
    )


async def sliding_window(
    conn: AsyncConnection[Any], account_id: str, first: datetime, last: datetime, bucket: timedelta, window: timedelta
) -> list[dict[str, Any]]:
    """For each bucket start in `[first, last]`: the account's output tokens in the buckets of the
    `window` ending with it, and whether any reply in them said `allowed_warning` (the unified
    rate-limit status header)."""
    preceding = (window - timedelta(minutes=1)) // bucket
    warning = "response_headers ->> 'anthropic-ratelimit-unified-status' = 'allowed_warning'"
    sql = (
        f"WITH binned AS (SELECT {_BIN} AS b, "  # noqa: S608 (constant SQL, values are parameters)
        f"{_SUM.format('output_tokens')} AS n, bool_or({warning}) AS warned FROM api_requests "
        'WHERE account_id = %(account)s AND "timestamp" >= %(data_start)s AND "timestamp" < %(end)s GROUP BY 1) '
        "SELECT s.b AS time_bucket, sum(coalesce(x.n, 0)) OVER w AS tokens, "
        "coalesce(bool_or(x.warned) OVER w, false) AS warned "
        "FROM generate_series(%(data_first)s::timestamptz, %(last)s::timestamptz, %(bucket)s) AS s(b) "
        "LEFT JOIN binned x ON x.b = s.b "
        "WINDOW w AS (ORDER BY s.b ROWS BETWEEN %(preceding)s PRECEDING AND CURRENT ROW) ORDER BY s.b"
    )
    data_first = first - preceding * bucket
    params = {
        "bucket": bucket,
        "account": account_id,
        "data_start": data_first,
        "data_first": data_first,
        "end": last + bucket,
        "last": last,
        "preceding": preceding,
    }
    rows = await _all(conn, sql, params)
    return [r for r in rows if r["time_bucket"] >= first]
