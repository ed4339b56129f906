"""`GET /api/token-usage/current`, `/daily` and `/time-series`: token usage from the stored requests.

Query parameters keep the reference's camelCase names (`accountId`, `projectId`) and accept the
snake-case aliases; every filter is optional (absent means all). Bad values are a 400 in Anthropic's
error shape, never a silently ignored filter. The time series also carries the reference's view of the
same windows: output tokens against the 5-hour `tokenLimit`, with what `remaining` of it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec
from psycopg_pool import AsyncConnectionPool

from nexus.api import schemas
from nexus.api.contract import ACCOUNT, MODEL, PROJECT, Args, Operation, Param, declare, serve
from nexus.errors import ProxyError
from nexus.pricing.sql import summed_cost
from nexus.usage import service
from nexus.usage.repo import Filters

if TYPE_CHECKING:
    from nexus.api.table import RouteTable

CURRENT = declare(
    Operation(
        "/api/token-usage/current",
        "currentTokenUsage",
        "Token sums over the current window (5 hours by default)",
        schemas.CurrentUsage,
        (ACCOUNT, PROJECT, MODEL, Param("window", "int", "Window length, minutes.", default=300, low=1, high=10080)),
        reference="GET /api/token-usage/current?accountId&projectId&model&window",
    )
)
DAILY = declare(
    Operation(
        "/api/token-usage/daily",
        "dailyTokenUsage",
        "Token sums per UTC day, account, project (and model)",
        schemas.DailyUsageList,
        (
            ACCOUNT,
            PROJECT,
            MODEL,
            Param("days", "int", "Days back, today included.", default=30, low=1, high=365),
            Param("aggregate", "bool", "Sum over models (no `model` field)."),
        ),
        reference="GET /api/token-usage/daily?accountId&projectId&days&aggregate",
    )
)
SERIES = declare(
    Operation(
        "/api/token-usage/time-series",
        "tokenUsageTimeSeries",
        "Rolling window sums every `interval` minutes, with the 5-hour limit and what remains of it",
        schemas.TimeSeries,
        (
            ACCOUNT,
            PROJECT,
            MODEL,
            Param("window", "int", "Window length, hours.", default=5, low=1, high=168),
            Param("interval", "int", "Minutes between points.", default=5, low=1, high=1440),
            Param("hours", "int", "Hours of history.", default=24, low=0, high=168),
        ),
        reference="GET /api/token-usage/time-series?accountId&window&interval",
        description=(
            "Every `interval` minutes over the last `hours`, the sums over the `window` hours before each point. "
            "The window must be a whole number of intervals (400 otherwise), and a series holds "
            f"at most {service.MAX_POINTS} points (400 otherwise: raise `interval` or lower `hours`)."
        ),
    )
)


def register(api: RouteTable) -> None:
    serve(api, CURRENT, current)
    serve(api, DAILY, daily)
    serve(api, SERIES, time_series)


def filters(args: Args) -> Filters:
    return Filters(account_id=args["accountId"], project_id=args["projectId"], model=args.get("model"))


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _sums(row: dict[str, Any]) -> dict[str, Any]:
    """The sums as exact integers: they are `numeric` and may pass 64 bits (a stored count clamped to
    bigint's maximum plus any other), which `dump_json` writes with every digit."""
    return {
        "total_input_tokens": int(row["input_tokens"]),
        "total_output_tokens": int(row["output_tokens"]),
        "total_tokens": service.total_tokens(row),
        "total_requests": int(row["requests"]),
        "cache_creation_input_tokens": int(row["cache_creation_input_tokens"]),
        "cache_read_input_tokens": int(row["cache_read_input_tokens"]),
        "cache_creation5m_input_tokens": int(row["cache_creation_5m_input_tokens"]),
        "cache_creation1h_input_tokens": int(row["cache_creation_1h_input_tokens"]),
        "cost_usd": summed_cost(row),
        "unpriced_requests": int(row["unpriced_requests"]),
    }


async def current(pool: AsyncConnectionPool, args: Args) -> schemas.CurrentUsage:
    """The window `[now - window minutes, now)`; 300 minutes (the 5-hour window) by default."""
    minutes = args["window"]
    f = filters(args)
    async with pool.connection() as conn:
        row = await service.current_window(conn, f, timedelta(minutes=minutes))
    window = row["window"]
    return schemas.CurrentUsage(
        account_id=f.account_id or "all",
        project_id=f.project_id or "all",
        model=f.model or "all",
        window_minutes=minutes,
        window_start=iso(window.start),
        window_end=iso(window.end),
        **_sums(row),
    )


async def daily(pool: AsyncConnectionPool, args: Args) -> schemas.DailyUsageList:
    """Per UTC day, account and project, and per model unless `aggregate=true`."""
    days, aggregate = args["days"], args["aggregate"]
    async with pool.connection() as conn:
        rows = await service.daily_usage(conn, filters(args), days, by_model=not aggregate)
    usage = [
        schemas.DailyUsage(
            date=row["date"],
            account_id=row["account_id"],
            project_id=row["project_id"],
            model=msgspec.UNSET if aggregate else row["model"],
            **_sums(row),
        )
        for row in rows
    ]
    return schemas.DailyUsageList(usage=usage, days=days, aggregate=aggregate)


async def time_series(pool: AsyncConnectionPool, args: Args) -> schemas.TimeSeries:
    """Every `interval` minutes over the last `hours`, the sums over the `window` hours before."""
    window_h, interval, hours = args["window"], args["interval"], args["hours"]
    if (window_h * 60) % interval:
        raise ProxyError(400, "window (hours) must be a whole number of intervals (minutes).")
    if hours * 60 // interval + 1 > service.MAX_POINTS:
        raise ProxyError(400, f"at most {service.MAX_POINTS} points: raise interval or lower hours.")
    f = filters(args)
    async with pool.connection() as conn:
        points = await service.rolling_series(
            conn, f, span=timedelta(hours=hours), bucket=timedelta(minutes=interval), window=timedelta(hours=window_h)
        )
    limit = schemas.TOKEN_LIMIT
    return schemas.TimeSeries(
        account_id=f.account_id or "all",
        project_id=f.project_id or "all",
        model=f.model or "all",
        window_hours=window_h,
        interval_minutes=interval,
        token_limit=limit,
        points=[schemas.UsagePoint(time=iso(p["at"]), **_sums(p)) for p in points],
        time_series=[series_point(iso(p["at"]), int(p["output_tokens"]), limit) for p in points],
    )


def series_point(at: str, used: int, limit: int) -> schemas.SeriesPoint:
    """The reference's point: output tokens in the window, what remains of `limit` (never below 0)."""
    return schemas.SeriesPoint(
        time=at,
        output_tokens=used,
        cumulative_usage=used,
        remaining=max(0, limit - used),
        percentage_used=used / limit * 100,
    )
