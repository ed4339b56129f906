"""`GET /api/token-usage/current`, `/daily` and `/time-series`: token usage from the stored requests.

Query parameters keep the reference's camelCase names (`accountId`, `projectId`) and accept the
snake-case aliases; every filter is optional (absent means all). Bad values are a 400 in Anthropic's
error shape, never a silently ignored filter.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from psycopg_pool import AsyncConnectionPool

from nexus.api.params import Query, bool_param, first, int_param
from nexus.errors import ProxyError
from nexus.pricing.sql import summed_cost
from nexus.usage import service
from nexus.usage.repo import Filters

if TYPE_CHECKING:
    from nexus.api.routes import ApiRoutes


def register(api: ApiRoutes) -> None:
    api.route("/api/token-usage/current", current)
    api.route("/api/token-usage/daily", daily)
    api.route("/api/token-usage/time-series", time_series)


def filters(query: Query, *, with_model: bool = True) -> Filters:
    return Filters(
        account_id=first(query, "accountId", "account_id"),
        project_id=first(query, "projectId", "project_id"),
        model=first(query, "model") if with_model else None,
    )


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _sums(row: dict[str, Any]) -> dict[str, Any]:
    """The sums as exact integers: they are `numeric` and may pass 64 bits (a stored count clamped to
    bigint's maximum plus any other), which `dump_json` writes with every digit."""
    return {
        "totalInputTokens": int(row["input_tokens"]),
        "totalOutputTokens": int(row["output_tokens"]),
        "totalTokens": service.total_tokens(row),
        "totalRequests": int(row["requests"]),
        "cacheCreationInputTokens": int(row["cache_creation_input_tokens"]),
        "cacheReadInputTokens": int(row["cache_read_input_tokens"]),
        "cacheCreation5mInputTokens": int(row["cache_creation_5m_input_tokens"]),
        "cacheCreation1hInputTokens": int(row["cache_creation_1h_input_tokens"]),
        "costUsd": summed_cost(row),
        "unpricedRequests": int(row["unpriced_requests"]),
    }


async def current(pool: AsyncConnectionPool, _: str, query: Query) -> dict[str, Any]:
    """The window `[now - window minutes, now)`; 300 minutes (the 5-hour window) by default."""
    minutes = int_param(query, "window", 300, 1, 7 * 24 * 60)
    f = filters(query)
    async with pool.connection() as conn:
        row = await service.current_window(conn, f, timedelta(minutes=minutes))
    window = row["window"]
    return {
        "accountId": f.account_id or "all",
        "projectId": f.project_id or "all",
        "model": f.model or "all",
        "windowMinutes": minutes,
        "windowStart": iso(window.start),
        "windowEnd": iso(window.end),
        **_sums(row),
    }


async def daily(pool: AsyncConnectionPool, _: str, query: Query) -> dict[str, Any]:
    """Per UTC day, account and project, and per model unless `aggregate=true`."""
    days = int_param(query, "days", 30, 1, 365)
    aggregate = bool_param(query, "aggregate")
    f = filters(query)
    async with pool.connection() as conn:
        rows = await service.daily_usage(conn, f, days, by_model=not aggregate)
    usage = []
    for row in rows:
        item: dict[str, Any] = {"date": row["date"].isoformat(), "accountId": row["account_id"]}
        item["projectId"] = row["project_id"]
        if not aggregate:
            item["model"] = row["model"]
        usage.append(item | _sums(row))
    return {"usage": usage, "days": days, "aggregate": aggregate}


async def time_series(pool: AsyncConnectionPool, _: str, query: Query) -> dict[str, Any]:
    """Every `interval` minutes over the last `hours`, the sums over the `window` hours before."""
    window_h = int_param(query, "window", 5, 1, 7 * 24)
    interval = int_param(query, "interval", 5, 1, 24 * 60)
    hours = int_param(query, "hours", 24, 0, 7 * 24)
    if (window_h * 60) % interval:
        raise ProxyError(400, "window (hours) must be a whole number of intervals (minutes).")
    if hours * 60 // interval + 1 > service.MAX_POINTS:
        raise ProxyError(400, f"at most {service.MAX_POINTS} points: raise interval or lower hours.")
    f = filters(query)
    async with pool.connection() as conn:
        points = await service.rolling_series(
            conn, f, span=timedelta(hours=hours), bucket=timedelta(minutes=interval), window=timedelta(hours=window_h)
        )
    return {
        "accountId": f.account_id or "all",
        "projectId": f.project_id or "all",
        "model": f.model or "all",
        "windowHours": window_h,
        "intervalMinutes": interval,
        "points": [{"time": iso(p["at"]), **_sums(p)} for p in points],
    }
