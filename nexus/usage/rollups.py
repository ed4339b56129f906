"""SQL for the reference system's rollups of `api_requests`: statistics, tenants, hourly counts, accounts
and the sliding window.

Like `nexus.usage.repo`, sums read the hourly summary (`nexus.usage.summary.source`: exact for any
range) and distinct conversations, users and branches the daily key summary (`usage_keys`), both kept
by migration 0016's triggers; what reads `api_requests` itself is bounded below by `timestamp >=
%(start)s` (partitions pruned) over hours, not months. Values are parameters only, and sums are
`numeric` so no stored count can overflow a sum. Token sums are input + output as the reference
reported `totalTokens`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from nexus.usage import hourly as summary

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
    src, params = summary.source(start, None, {"project_id": project_id})
    extra = ", min(first_at) AS first_request_at, max(last_at) AS last_request_at" if storage else ""
    sql = (
        "SELECT coalesce(sum(requests), 0)::bigint AS requests, "  # noqa: S608 (constant SQL, values are parameters)
        f"{_SUM.format('input_tokens')} AS input_tokens, {_SUM.format('output_tokens')} AS output_tokens, "
        f"{_SUM.format('cache_creation_input_tokens')} AS cache_creation, "
        f"{_SUM.format('cache_read_input_tokens')} AS cache_read, "
        "coalesce(sum(duration_ms) / nullif(sum(timed_requests), 0), 0)::float8 AS mean_duration_ms, "
        "coalesce(sum(errors), 0)::bigint AS errors, "
        f"count(DISTINCT project_id) AS projects{extra} FROM {src} AS u"
    )
    row = (await _all(conn, sql, params))[0]
    if storage:
        row["conversation_count"] = await _distinct_conversations(conn, start, project_id=project_id)
    for key, column in (("by_model", "model"), ("by_type", "request_type")):
        grouped = await _all(
            conn,
            f"SELECT coalesce({column}, 'unknown') AS k, sum(requests) AS n FROM {src} AS u "  # noqa: S608
            "GROUP BY 1 ORDER BY 2 DESC, 1",
            params,
        )
        row[key] = {r["k"]: int(r["n"]) for r in grouped}
    return row


def _keys(start: datetime | None, **equal: str | None) -> tuple[str, dict[str, Any]]:
    """A relation of the distinct (project, account, conversation, branch) of the requests since
    `start` whose columns equal `equal`'s values: the daily summary's whole days after `start`'s day,
    plus the stored rows of `start`'s own day from `start` on (the conversation index is not needed:
    one day's partition)."""
    conditions = [f"{column} = %(k_{column})s" for column, value in equal.items() if value is not None]
    params: dict[str, Any] = {f"k_{column}": value for column, value in equal.items() if value is not None}
    cols = "project_id, account_id, conversation_id, branch_id"
    if start is None:
        where = " AND ".join(conditions) or "true"
        return f"(SELECT {cols} FROM usage_keys WHERE {where})", params  # noqa: S608 (constant SQL)
    next_day = datetime.combine(start.astimezone(UTC).date(), datetime.min.time(), UTC) + timedelta(days=1)
    params |= {"k_start": start, "k_next": next_day, "k_day": next_day.date()}
    summary = " AND ".join([*conditions, "day >= %(k_day)s"])
    raw = " AND ".join([*conditions, '"timestamp" >= %(k_start)s', '"timestamp" < %(k_next)s'])
    return (
        f"(SELECT {cols} FROM usage_keys WHERE {summary} "  # noqa: S608 (constant SQL)
        f"UNION ALL SELECT DISTINCT {cols} FROM api_requests WHERE {raw})",
        params,
    )


async def _distinct_conversations(conn: AsyncConnection[Any], start: datetime | None, **equal: str | None) -> int:
    src, params = _keys(start, **equal)
    rows = await _all(conn, f"SELECT count(DISTINCT conversation_id) AS n FROM {src} AS k", params)  # noqa: S608
    return int(rows[0]["n"])


async def dashboard_stats(
    conn: AsyncConnection[Any], now: datetime, days: int, project_id: str | None, account_id: str | None
) -> dict[str, Any]:
    """The conversation-scoped rollup over the last `days` days, its last 24 hours and their hours."""
    start = now - timedelta(days=days)
    keys, params = _keys(start, project_id=project_id, account_id=account_id)
    totals = (
        await _all(
            conn,
            # each distinct count hashed on its own (count(DISTINCT) sorts: twice the time, spilled)
            f"WITH k AS MATERIALIZED (SELECT * FROM {keys} AS k WHERE conversation_id IS NOT NULL), "  # noqa: S608
            "b AS (SELECT DISTINCT branch_id FROM k WHERE branch_id IS NOT NULL) "
            "SELECT (SELECT count(*) FROM (SELECT DISTINCT conversation_id FROM k) AS x) AS conversations, "
            "(SELECT count(*) FROM (SELECT DISTINCT account_id FROM k WHERE account_id IS NOT NULL) AS x) AS users, "
            "(SELECT count(*) FROM b) AS branches, "
            "(SELECT count(*) FROM b WHERE branch_id ~ '^subtask_') AS subtask_branches, "
            "(SELECT count(*) FROM b WHERE branch_id ~ '^compact_') AS compact_branches",
            params,
        )
    )[0]
    src, sums = summary.source(start, None, {"project_id": project_id, "account_id": account_id})
    totals |= (
        await _all(
            conn,
            "SELECT coalesce(sum(linked_requests), 0)::bigint AS requests, "  # noqa: S608 (constant SQL)
            "coalesce(sum(linked_tokens), 0) AS tokens, "
            "coalesce(array_agg(DISTINCT model) FILTER (WHERE model IS NOT NULL AND linked_requests > 0), '{}') "
            f"AS models FROM {src} AS u",
            sums,
        )
    )[0]
    where, params = _where(start, None, project_id=project_id, account_id=account_id)
    where += " AND conversation_id IS NOT NULL"
    recent = {**params, "recent": now - timedelta(hours=24)}
    # the last 24 hours: distinct counts from their rows (a day's partitions), each hashed on its own;
    # requests and hours from the summary
    rows = f'FROM api_requests WHERE {where} AND "timestamp" >= %(recent)s'
    last = (
        await _all(
            conn,
            f"SELECT (SELECT count(*) FROM (SELECT DISTINCT conversation_id {rows}) AS x) AS conversations, "  # noqa: S608
            f"(SELECT count(*) FROM (SELECT DISTINCT account_id {rows} AND account_id IS NOT NULL) AS x) AS users",
            recent,
        )
    )[0]
    src, sums = summary.source(recent["recent"], None, {"project_id": project_id, "account_id": account_id})
    hours = await _all(
        conn,
        "SELECT date_trunc('hour', hour) AS hour, sum(linked_requests)::bigint AS requests, "  # noqa: S608
        f"sum(linked_tokens) AS tokens FROM {src} AS u GROUP BY 1 HAVING sum(linked_requests) > 0 "
        "ORDER BY 1 DESC",
        sums,
    )
    last["requests"] = sum(int(h["requests"]) for h in hours)  # every hour since, the partial first too
    return {**totals, "last": last, "hours": hours[:24]}


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
    src, params = summary.source(start, None)
    return await _all(
        conn,
        f"SELECT project_id, sum(requests)::bigint AS n, max(last_at) AS last_at FROM {src} AS u "  # noqa: S608
        "GROUP BY 1 ORDER BY 2 DESC, 1",
        params,
    )


async def hourly(
    conn: AsyncConnection[Any], start: datetime, project_id: str | None, *, tokens: bool
) -> list[dict[str, Any]]:
    """Per project and UTC hour: requests, or output tokens."""
    src, params = summary.source(start, None, {"project_id": project_id})
    value = _SUM.format("output_tokens") if tokens else "sum(requests)::bigint"
    return await _all(
        conn,
        f"SELECT project_id, date_trunc('hour', hour) AS hour, {value} AS n "  # noqa: S608
        f"FROM {src} AS u GROUP BY 1, 2 ORDER BY 1, 2",
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
