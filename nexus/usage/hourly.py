"""Reading `usage_hourly` (migration 0016) as if it were `api_requests`, exactly, for any time range.

`usage_hourly` holds `api_requests` summed per UTC hour and key (project, account, model, request type,
status class), kept exact by triggers. A range `[start, end)` rarely falls on whole hours, so `source`
returns a relation of the same columns made of the summary's hours that lie wholly inside the range
plus the stored rows of the two partial hours at its ends, summed the same way (a time-index scan of
at most two hours). Any query that sums over it (`ROLL_SUMS`) therefore answers what the same query
over `api_requests` would, reading a few thousand summary rows instead of every request.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from nexus.usage.counts import CACHE_WRITE_1H_SQL, CACHE_WRITE_5M_SQL

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The key columns, the first an hour bucket.
KEYS = ("hour", "project_id", "account_id", "model", "request_type", "status")
#: A response status as the charts group it (the summary's `status`).
STATUS_CLASS = (
    "CASE WHEN response_status IS NULL THEN 'none' WHEN response_status < 300 THEN '2xx' "
    "WHEN response_status IN (429, 529) THEN response_status::text WHEN response_status < 500 THEN '4xx' "
    "ELSE '5xx' END"
)
_LINKED = "FILTER (WHERE conversation_id IS NOT NULL)"
#: The summary's columns computed from stored rows: the expressions of migration 0016's trigger.
ROW_COLUMNS = (
    ("hour", "date_bin('1 hour', \"timestamp\", TIMESTAMPTZ '1970-01-01 00:00:00+00')"),
    ("project_id", "project_id"),
    ("account_id", "account_id"),
    ("model", "model"),
    ("request_type", "request_type"),
    ("status", STATUS_CLASS),
    ("requests", "count(*)"),
    ("errors", "count(*) FILTER (WHERE response_status >= 400 OR error IS NOT NULL)"),
    ("linked_requests", f"count(*) {_LINKED}"),
    ("input_tokens", "coalesce(sum(input_tokens), 0)"),
    ("output_tokens", "coalesce(sum(output_tokens), 0)"),
    ("cache_creation_input_tokens", "coalesce(sum(cache_creation_input_tokens), 0)"),
    ("cache_read_input_tokens", "coalesce(sum(cache_read_input_tokens), 0)"),
    ("cache_creation_5m_input_tokens", f"coalesce(sum({CACHE_WRITE_5M_SQL}), 0)"),
    ("cache_creation_1h_input_tokens", f"coalesce(sum({CACHE_WRITE_1H_SQL}), 0)"),
    ("linked_tokens", f"coalesce(sum(coalesce(input_tokens, 0)::numeric + coalesce(output_tokens, 0)) {_LINKED}, 0)"),
    ("cost_usd", "coalesce(sum(cost_usd), 0)"),
    ("unpriced_requests", "count(*) FILTER (WHERE cost_usd IS NULL)"),
    ("duration_ms", "coalesce(sum(duration_ms::numeric), 0)"),
    ("timed_requests", "count(duration_ms)"),
    ("first_at", 'min("timestamp")'),
    ("last_at", 'max("timestamp")'),
)
COLUMNS = ", ".join(name for name, _ in ROW_COLUMNS)
_FROM_ROWS = ", ".join(f"{expr} AS {name}" for name, expr in ROW_COLUMNS)

#: The usage sums (`nexus.usage.repo.SUMS`) over a `source`.
ROLL_SUMS = (
    "coalesce(sum(requests), 0)::bigint AS requests, "
    "coalesce(sum(input_tokens), 0) AS input_tokens, "
    "coalesce(sum(output_tokens), 0) AS output_tokens, "
    "coalesce(sum(cache_creation_input_tokens), 0) AS cache_creation_input_tokens, "
    "coalesce(sum(cache_read_input_tokens), 0) AS cache_read_input_tokens, "
    "coalesce(sum(cache_creation_5m_input_tokens), 0) AS cache_creation_5m_input_tokens, "
    "coalesce(sum(cache_creation_1h_input_tokens), 0) AS cache_creation_1h_input_tokens, "
    "round(coalesce(sum(cost_usd), 0), 6)::float8 AS cost_usd, "
    "coalesce(sum(unpriced_requests), 0)::bigint AS unpriced_requests"
)
#: Failed requests, mean duration and the latest request over a `source` (as `repo.totals` reports them).
ROLL_EXTRAS = (
    "coalesce(sum(errors), 0)::bigint AS errors, "
    "(sum(duration_ms) / nullif(sum(timed_requests), 0))::float8 AS mean_duration_ms, "
    "max(last_at) AS last_request_at"
)


def hour_floor(at: datetime) -> datetime:
    return EPOCH + ((at - EPOCH) // HOUR) * HOUR


def hour_ceil(at: datetime) -> datetime:
    floor = hour_floor(at)
    return floor if floor == at else floor + HOUR


def source(
    start: datetime | None, end: datetime | None, equal: dict[str, str | None] | None = None
) -> tuple[str, dict[str, Any]]:
    """A parenthesised relation with the summary's columns that sums to exactly the rows of
    `api_requests` in `[start, end)` (None: unbounded) whose columns equal `equal`'s values (a None
    value: any). `equal`'s keys must be key columns of this module, never a caller's text."""
    conditions: list[str] = []
    params: dict[str, Any] = {}
    for column, value in (equal or {}).items():
        if column not in KEYS[1:5]:
            raise ValueError(f"cannot filter usage by {column!r}")
        if value is not None:
            conditions.append(f"{column} = %(h_{column})s")
            params[f"h_{column}"] = value
    lo = hour_ceil(start) if start is not None else None
    hi = hour_floor(end) if end is not None else None
    raw: list[tuple[datetime | None, datetime | None]] = []
    summary = True
    if lo is not None and hi is not None and lo >= hi:  # no whole hour inside: the rows themselves
        summary, raw = False, [(start, end)]
    else:
        if start is not None and lo != start:
            raw.append((start, lo))
        if end is not None and hi != end:
            raw.append((hi, end))
    parts = []
    if summary:
        where = list(conditions)
        if lo is not None:
            where.append("hour >= %(h_lo)s")
            params["h_lo"] = lo
        if hi is not None:
            where.append("hour < %(h_hi)s")
            params["h_hi"] = hi
        clause = " AND ".join(where) or "true"
        parts.append(f"SELECT {COLUMNS} FROM usage_hourly WHERE {clause}")  # noqa: S608 (constant columns)
    for i, (a, b) in enumerate(raw):
        where = [*conditions, f'"timestamp" >= %(h_a{i})s', f'"timestamp" < %(h_b{i})s']
        params[f"h_a{i}"], params[f"h_b{i}"] = a, b
        parts.append(
            f"SELECT {_FROM_ROWS} FROM api_requests WHERE {' AND '.join(where)} "  # noqa: S608 (constant SQL)
            "GROUP BY 1, 2, 3, 4, 5, 6"
        )
    return "(" + " UNION ALL ".join(parts) + ")", params


def aligned(bucket: timedelta) -> bool:
    """Whether buckets of this size (aligned on the epoch) are whole hours, so the summary serves them."""
    return bucket >= HOUR and bucket % HOUR == timedelta(0)


#: The daily summary's columns (`usage_daily`: the hourly ones without first/last, `day` for `hour`).
DAILY_COLUMNS = ", ".join(name for name, _ in ROW_COLUMNS[1:-2])


def daily_source(
    start: datetime, end: datetime, equal: dict[str, str | None] | None = None
) -> tuple[str, dict[str, Any]]:
    """Like `source`, with a `day` column (UTC) first: read from `usage_daily` when `[start, end)` is
    whole UTC days (a month's daily table: ~21,000 rows, not ~82,000 hourly ones), else the hourly
    source's rows with their day."""
    if start != hour_floor(start) or end != hour_floor(end) or (start - EPOCH) % DAY or (end - EPOCH) % DAY:
        src, hourly_params = source(start, end, equal)
        return f"(SELECT (hour AT TIME ZONE 'UTC')::date AS day, * FROM {src} AS h)", hourly_params  # noqa: S608
    conditions = ["day >= %(d_lo)s", "day < %(d_hi)s"]
    params: dict[str, Any] = {"d_lo": start.astimezone(UTC).date(), "d_hi": end.astimezone(UTC).date()}
    for column, value in (equal or {}).items():
        if column not in KEYS[1:5]:
            raise ValueError(f"cannot filter usage by {column!r}")
        if value is not None:
            conditions.append(f"{column} = %(d_{column})s")
            params[f"d_{column}"] = value
    where = " AND ".join(conditions)
    return f"(SELECT day, {DAILY_COLUMNS} FROM usage_daily WHERE {where})", params  # noqa: S608 (constant columns)
