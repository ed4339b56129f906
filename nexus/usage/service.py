"""Token usage windows: what the API and the dashboard ask for, in their terms.

The 5-hour rolling window is Anthropic's subscription limit period: what matters to a user is how many
tokens an account (or a project) spent in the last five hours, and how that rolling sum moved over
time. Times are UTC; a window is `[now - window, now)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection

from nexus.usage import repo
from nexus.usage.repo import EVERYTHING, Filters

FIVE_HOURS = timedelta(hours=5)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Longest series a caller may ask for, in points: bounds the work of one request.
MAX_POINTS = 2000


@dataclass(frozen=True, slots=True)
class Window:
    start: datetime
    end: datetime


def now_utc() -> datetime:
    return datetime.now(UTC)


def window_ending(now: datetime, length: timedelta) -> Window:
    return Window(now - length, now)


def align_up(at: datetime, bucket: timedelta) -> datetime:
    """The first bucket boundary (a multiple of `bucket` since the epoch) at or after `at`."""
    steps = -((EPOCH - at) // bucket)  # ceiling division
    return EPOCH + steps * bucket


def total_tokens(row: dict[str, Any]) -> int:
    """Input + output, as the reference reports `totalTokens`; cache tokens are reported beside it."""
    return int(row["input_tokens"]) + int(row["output_tokens"])


async def current_window(
    conn: AsyncConnection[Any], filters: Filters, length: timedelta = FIVE_HOURS, now: datetime | None = None
) -> dict[str, Any]:
    """Sums over `[now - length, now)` for the filtered account / project / model."""
    window = window_ending(now or now_utc(), length)
    row = await repo.totals(conn, window.start, window.end, filters)
    return {"window": window, **row}


async def window_by(
    conn: AsyncConnection[Any],
    group: str,
    filters: Filters = EVERYTHING,
    length: timedelta = FIVE_HOURS,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """The current window's sums per account, project or model."""
    window = window_ending(now or now_utc(), length)
    return await repo.grouped(conn, window.start, window.end, (group,), filters)


async def rolling_series(
    conn: AsyncConnection[Any],
    filters: Filters,
    *,
    span: timedelta = timedelta(hours=24),
    bucket: timedelta = timedelta(minutes=15),
    window: timedelta = FIVE_HOURS,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Points every `bucket` over the last `span`, each the sums over the `window` before it.

    The last point is the bucket boundary at or after `now`, so it includes the requests of the
    current, unfinished bucket.
    """
    if bucket <= timedelta(0) or window <= timedelta(0) or span < timedelta(0):
        raise ValueError("bucket and window must be positive")
    if window % bucket:
        raise ValueError("window must be a whole number of buckets")
    if span // bucket + 1 > MAX_POINTS:
        raise ValueError(f"at most {MAX_POINTS} points per series")
    last = align_up(now or now_utc(), bucket)
    first = last - (span // bucket) * bucket
    return await repo.rolling(conn, first, last, bucket, window, filters)


async def daily_usage(
    conn: AsyncConnection[Any], filters: Filters, days: int = 30, *, by_model: bool = True, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Per UTC day over the last `days` days (today included), newest first."""
    today = datetime.combine((now or now_utc()).date(), datetime.min.time(), UTC)
    start, end = today - timedelta(days=days - 1), today + timedelta(days=1)
    return await repo.daily(conn, start, end, filters, by_model=by_model)
