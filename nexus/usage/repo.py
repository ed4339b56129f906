"""SQL for token usage: the one place `api_requests` is aggregated.

Sums over whole hours read the hourly summary (`usage_hourly`, migration 0016) through
`nexus.usage.hourly.source`, which adds the stored rows of the partial hours at a range's ends, so every
answer is what the same sum over `api_requests` gives, at a cost that does not grow with the requests
(docs/dashboard.md "Fast at scale"). Only series binned finer than an hour (`rolling` with 15-minute
buckets) read `api_requests` itself, bounded by `timestamp >= %(start)s AND timestamp < %(end)s`
(partitions pruned; the `(account_id, timestamp)` and `(project_id, timestamp)` indexes serve the
filtered variants). Grouping columns come from a fixed allow-list, never from a caller's string.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from nexus.pricing.sql import COST_SUMS
from nexus.usage import hourly
from nexus.usage.counts import CACHE_WRITE_1H_SQL, CACHE_WRITE_5M_SQL

#: Columns a caller may group or filter by, mapped to their SQL.
GROUPS = {"account_id": "account_id", "project_id": "project_id", "model": "model"}

#: The token sums every usage query returns, all `numeric`: a sum of bigint values can exceed bigint
#: (one clamped count is already its maximum), and `sum(bigint)` is `numeric` anyway, so nothing is cast
#: back to bigint. The bigint columns are summed as stored; the 5-minute / 1-hour split of cache writes
#: exists only in the `usage` JSON (`usage.cache_creation`), as upstream sent it, so each of its values
#: counts only when it is a token count and as 0 otherwise (`nexus.usage.counts`): no stored value can
#: make these queries fail.
SUMS = (
    "count(*) AS requests, "
    "coalesce(sum(input_tokens), 0) AS input_tokens, "
    "coalesce(sum(output_tokens), 0) AS output_tokens, "
    "coalesce(sum(cache_creation_input_tokens), 0) AS cache_creation_input_tokens, "
    "coalesce(sum(cache_read_input_tokens), 0) AS cache_read_input_tokens, "
    f"coalesce(sum({CACHE_WRITE_5M_SQL}), 0) AS cache_creation_5m_input_tokens, "
    f"coalesce(sum({CACHE_WRITE_1H_SQL}), 0) AS cache_creation_1h_input_tokens, "
    f"{COST_SUMS}"
)
SUM_FIELDS = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cache_creation_5m_input_tokens",
    "cache_creation_1h_input_tokens",
    "cost_usd",
    "unpriced_requests",
)


@dataclass(frozen=True, slots=True)
class Filters:
    """Optional equality filters; None means every value."""

    account_id: str | None = None
    project_id: str | None = None
    model: str | None = None

    def where(self, start: datetime, end: datetime) -> tuple[str, dict[str, Any]]:
        clauses = ['"timestamp" >= %(start)s', '"timestamp" < %(end)s']
        params: dict[str, Any] = {"start": start, "end": end}
        for name in GROUPS:
            value = getattr(self, name)
            if value is not None:
                clauses.append(f"{GROUPS[name]} = %({name})s")
                params[name] = value
        return " AND ".join(clauses), params

    def equal(self) -> dict[str, str | None]:
        """The filters as `nexus.usage.hourly.source` takes them."""
        return {"account_id": self.account_id, "project_id": self.project_id, "model": self.model}


#: The epoch that every bucket is aligned on.
_EPOCH = "TIMESTAMPTZ '1970-01-01 00:00:00+00'"
#: No filter: every account, project and model.
EVERYTHING = Filters()


def _group_sql(group_by: tuple[str, ...]) -> str:
    for name in group_by:
        if name not in GROUPS:
            raise ValueError(f"cannot group usage by {name!r}")
    return ", ".join(GROUPS[name] for name in group_by)


async def totals(
    conn: AsyncConnection[Any], start: datetime, end: datetime, filters: Filters = EVERYTHING
) -> dict[str, Any]:
    """Sums over `[start, end)`, plus error count, mean duration and the time of the latest request."""
    src, params = hourly.source(start, end, filters.equal())
    sql = f"SELECT {hourly.ROLL_SUMS}, {hourly.ROLL_EXTRAS} FROM {src} AS u"  # noqa: S608 (constant SQL)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        row = await cur.fetchone()
    assert row is not None  # an aggregate without GROUP BY always returns one row
    return row


async def grouped(
    conn: AsyncConnection[Any],
    start: datetime,
    end: datetime,
    group_by: tuple[str, ...],
    filters: Filters = EVERYTHING,
    *,
    limit: int = 500,
) -> list[dict[str, Any]]:
    """Sums over `[start, end)` per distinct value of `group_by`, largest token totals first."""
    cols = _group_sql(group_by)
    src, params = hourly.source(start, end, filters.equal())
    sql = (
        f"SELECT {cols}, {hourly.ROLL_SUMS}, max(last_at) AS last_request_at "  # noqa: S608 (allow-listed columns)
        f"FROM {src} AS u GROUP BY {cols} "
        "ORDER BY coalesce(sum(input_tokens), 0) + coalesce(sum(output_tokens), 0) DESC, sum(requests) DESC "
        "LIMIT %(limit)s"
    )
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, {**params, "limit": limit})
        return await cur.fetchall()


async def daily(
    conn: AsyncConnection[Any], start: datetime, end: datetime, filters: Filters = EVERYTHING, *, by_model: bool = True
) -> list[dict[str, Any]]:
    """Sums per UTC day x account x project (x model), newest day first."""
    keys = "account_id, project_id" + (", model" if by_model else "")
    src, params = hourly.daily_source(start, end, filters.equal())
    sql = (
        f"SELECT day AS date, {keys}, {hourly.ROLL_SUMS} "  # noqa: S608 (constant SQL)
        f"FROM {src} AS u GROUP BY 1, {keys} ORDER BY 1 DESC, {keys}"
    )
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()


async def rolling(
    conn: AsyncConnection[Any],
    first: datetime,
    last: datetime,
    bucket: timedelta,
    window: timedelta,
    filters: Filters = EVERYTHING,
) -> list[dict[str, Any]]:
    """For each bucket boundary `at` in `[first, last]` (a multiple of `bucket` from the epoch), the
    sums over `[at - window, at)`.

    Rows are binned once per bucket, then a window function over the dense series of buckets adds up
    the `window / bucket` buckets before each boundary: exact, because the window is a whole number of
    aligned buckets, and one pass over the rows however many points are asked for.
    """
    steps = window // bucket
    data_start = first - window
    sums = ", ".join(f"sum(coalesce(x.{f}, 0)) OVER w AS {f}" for f in SUM_FIELDS)
    if hourly.aligned(bucket):  # whole hours: the summary
        src, params = hourly.source(data_start, last, filters.equal())
        rows = f"SELECT date_bin(%(bucket)s, hour, {_EPOCH}) AS b, {hourly.ROLL_SUMS} FROM {src} AS u GROUP BY 1"  # noqa: S608
    else:
        where, params = filters.where(data_start, last)
        rows = (
            f'SELECT date_bin(%(bucket)s, "timestamp", {_EPOCH}) AS b, {SUMS} '  # noqa: S608 (constant SQL)
            f"FROM api_requests WHERE {where} GROUP BY 1"
        )
    sql = (
        f"WITH binned AS ({rows}), "  # noqa: S608 (constant SQL, values are parameters)
        "series AS (SELECT s.b + %(bucket)s AS at, "
        f"{sums} FROM generate_series(%(start)s::timestamptz, %(last_start)s::timestamptz, %(bucket)s) AS s(b) "
        "LEFT JOIN binned x ON x.b = s.b "
        "WINDOW w AS (ORDER BY s.b ROWS BETWEEN %(preceding)s PRECEDING AND CURRENT ROW)) "
        "SELECT * FROM series WHERE at >= %(first)s ORDER BY at"
    )
    params |= {
        "bucket": bucket,
        "start": data_start,
        "last_start": last - bucket,
        "preceding": steps - 1,
        "first": first,
    }
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()


async def distinct_values(conn: AsyncConnection[Any], column: str, start: datetime, end: datetime) -> list[str]:
    """The distinct non-null values of an allow-listed column seen in `[start, end)` (filter menus)."""
    col = _group_sql((column,))
    src, params = hourly.source(start, end)
    sql = (
        f"SELECT {col} AS v, sum(requests) AS n FROM {src} AS u "  # noqa: S608 (allow-listed column)
        f"WHERE {col} IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 200"
    )
    async with conn.cursor() as cur:
        await cur.execute(sql, params)
        return [r[0] for r in await cur.fetchall()]


#: `date_bin` aligned on the epoch: hours and UTC days, as `daily` and `rolling` align them.
_BIN = "date_bin(%(bucket)s, \"timestamp\", TIMESTAMPTZ '1970-01-01 00:00:00+00')"
#: A response status as the charts group it.
STATUS_CLASS = hourly.STATUS_CLASS


async def binned(
    conn: AsyncConnection[Any],
    start: datetime,
    end: datetime,
    bucket: timedelta,
    group: str,
    filters: Filters = EVERYTHING,
) -> list[dict[str, Any]]:
    """The sums per `bucket` (aligned on the epoch: hours, UTC days) and value of `group` over
    `[start, end)`, oldest first: the usage charts. Same sums (`SUMS`) as every other usage answer."""
    col = _group_sql((group,))
    if hourly.aligned(bucket):  # whole hours: the summary
        src, params = hourly.source(start, end, filters.equal())
        sql = (
            f"SELECT date_bin(%(bucket)s, hour, {_EPOCH}) AS at, {col} AS key, {hourly.ROLL_SUMS} "  # noqa: S608
            f"FROM {src} AS u GROUP BY 1, 2 ORDER BY 1, 2"
        )
    else:
        where, params = filters.where(start, end)
        sql = (
            f"SELECT {_BIN} AS at, {col} AS key, {SUMS} FROM api_requests "  # noqa: S608 (allow-listed column)
            f"WHERE {where} GROUP BY 1, 2 ORDER BY 1, 2"
        )
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, {**params, "bucket": bucket})
        return await cur.fetchall()


async def status_binned(
    conn: AsyncConnection[Any], start: datetime, end: datetime, bucket: timedelta, filters: Filters = EVERYTHING
) -> list[dict[str, Any]]:
    """Requests per `bucket` and status class (`STATUS_CLASS`) over `[start, end)`, oldest first."""
    if hourly.aligned(bucket):  # whole hours: the summary
        src, params = hourly.source(start, end, filters.equal())
        sql = (
            f"SELECT date_bin(%(bucket)s, hour, {_EPOCH}) AS at, status, sum(requests)::bigint AS requests "  # noqa: S608
            f"FROM {src} AS u GROUP BY 1, 2 ORDER BY 1, 2"
        )
    else:
        where, params = filters.where(start, end)
        sql = (
            f"SELECT {_BIN} AS at, {STATUS_CLASS} AS status, count(*) AS requests "  # noqa: S608 (constant SQL)
            f"FROM api_requests WHERE {where} GROUP BY 1, 2 ORDER BY 1, 2"
        )
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, {**params, "bucket": bucket})
        return await cur.fetchall()
