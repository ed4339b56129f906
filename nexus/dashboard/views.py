"""What each page shows: queries through the storage and usage domains, shaped for the templates."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from psycopg import AsyncConnection

from nexus.analysis import queue as analysis_queue
from nexus.analysis import schema as analysis_schema
from nexus.api.params import cursor_param
from nexus.api.requests import next_cursor
from nexus.conversations import repository as conversations_repo
from nexus.conversations.search import Find
from nexus.dashboard import render, tree_page, usage_charts
from nexus.errors import ProxyError
from nexus.integrations.spark import find_recommendations
from nexus.storage import requests_repo
from nexus.usage import repo as usage_repo
from nexus.usage import service
from nexus.usage.repo import Filters

PAGE_SIZE = 50


class NotFound(Exception):
    pass


class BadRequest(Exception):
    pass


def parse_cursor(raw: str | None) -> tuple[datetime, str] | None:
    """The `before` cursor of the API (`<epoch µs>_<uuid>`), so links and API calls share one format."""
    if not raw:
        return None
    try:
        return cursor_param({"before": [raw]})
    except ProxyError:
        raise BadRequest("before must be a cursor from a 'next' link") from None


async def overview(conn: AsyncConnection[Any], now: datetime | None = None) -> dict[str, Any]:
    now = now or service.now_utc()
    day = service.window_ending(now, timedelta(hours=24))
    return {
        "day": await usage_repo.totals(conn, day.start, day.end),
        "window": await service.current_window(conn, Filters(), now=now),
        "by_model": await usage_repo.grouped(conn, day.start, day.end, ("model",), limit=20),
        "by_account": await service.window_by(conn, "account_id", now=now),
        "recent": await requests_repo.list_requests(conn, limit=20),
    }


async def requests_page(
    conn: AsyncConnection[Any],
    *,
    find: Find,
    params: dict[str, str],
    conversation_id: str | None,
    before: str | None,
) -> dict[str, Any]:
    if conversation_id is not None:
        try:
            conversation_id = str(uuid.UUID(conversation_id))
        except ValueError:
            raise BadRequest("conversation_id must be a UUID") from None
    rows = await requests_repo.list_requests(
        conn, limit=PAGE_SIZE, before=parse_cursor(before), conversation_id=conversation_id, find=find
    )
    return {
        "rows": rows,
        "next": next_cursor(rows, PAGE_SIZE),
        **await filter_menus(conn),
        "find": find,
        "params": params,
        "project_id": find.project_id,
        "conversation_id": conversation_id,
        "first_page": before is None,
        "stored_any": bool(rows) or await stored_any(conn),
    }


async def filter_menus(conn: AsyncConnection[Any]) -> dict[str, list[str]]:
    """The projects, accounts and models of the last 30 days, for the lists' filter menus."""
    now = service.now_utc()
    month = now - timedelta(days=30)
    return {
        "projects": await usage_repo.distinct_values(conn, "project_id", month, now),
        "accounts": await usage_repo.distinct_values(conn, "account_id", month, now),
        "models": await usage_repo.distinct_values(conn, "model", month, now),
    }


async def stored_any(conn: AsyncConnection[Any]) -> bool:
    """Whether any request is stored at all: an empty list then says how to send some, not "no match"."""
    cur = await conn.execute("SELECT EXISTS (SELECT 1 FROM api_requests)")
    row = await cur.fetchone()
    return bool(row and row[0])


async def request_page(conn: AsyncConnection[Any], request_id: str) -> dict[str, Any]:
    try:
        request_id = str(uuid.UUID(request_id))
    except ValueError:
        raise NotFound(request_id) from None
    row = await requests_repo.get_request(conn, request_id)
    if row is None:
        raise NotFound(request_id)
    return {
        "r": row,
        "conversation": render.conversation(row.get("request_body"), row.get("response_body")),
        "usage": render.request_usage(row.get("usage")),
        "request_headers": row.get("request_headers") or {},
        "response_headers": render.shown_response_headers(row.get("response_headers")),
        "spark": find_recommendations(row.get("request_body")),
    }


async def usage_page(
    conn: AsyncConnection[Any],
    filters: Filters,
    now: datetime | None = None,
    *,
    chart_bucket: str | None = None,
    chart_by: str | None = None,
) -> dict[str, Any]:
    now = now or service.now_utc()
    series = await service.rolling_series(
        conn, filters, span=timedelta(hours=24), bucket=timedelta(minutes=15), now=now
    )
    month = now - timedelta(days=30)
    by_account = await service.window_by(conn, "account_id", filters, now=now)
    accounts = await usage_repo.distinct_values(conn, "account_id", month, now)
    return {
        "filters": filters,
        "window": await service.current_window(conn, filters, now=now),
        "by_account": by_account,
        **await usage_charts.plan_context(
            conn,
            filters,
            accounts=accounts,
            by_account=by_account,
            series=series,
            bucket_name=chart_bucket,
            by=chart_by,
            now=now,
        ),
        "by_project": await service.window_by(conn, "project_id", filters, now=now),
        "series": series,
        "hourly": [p for p in series if p["at"].minute == 0][::-1],
        "daily": await service.daily_usage(conn, filters, 30, by_model=True, now=now),
        "accounts": accounts,
        "projects": await usage_repo.distinct_values(conn, "project_id", month, now),
    }


async def conversations_page(
    conn: AsyncConnection[Any], *, find: Find, params: dict[str, str], before: str | None
) -> dict[str, Any]:
    rows = await conversations_repo.list_conversations(
        conn,
        limit=PAGE_SIZE,
        before=parse_cursor(before),
        project_id=find.project_id,
        account_id=find.account_id,
        date_from=find.date_from,
        date_to=find.date_to,
        q=find.q,
        model=find.model,
        errors_only=find.errors_only,
    )
    return {
        "rows": rows,
        "next": next_cursor(rows, PAGE_SIZE, at="last_at", key="conversation_id"),
        **await filter_menus(conn),
        "find": find,
        "params": params,
        "project_id": find.project_id,
        "first_page": before is None,
        "stored_any": bool(rows) or await stored_any(conn),
    }


async def conversation_page(
    conn: AsyncConnection[Any], conversation_id: str, *, branch: str | None = None, tree_from: int = 0
) -> dict[str, Any]:
    try:
        conversation_id = str(uuid.UUID(conversation_id))
    except ValueError:
        raise NotFound(conversation_id) from None
    tree = await conversations_repo.get_conversation(conn, conversation_id)
    if tree is None:
        raise NotFound(conversation_id)
    number = {str(r["request_id"]): f"#{i}" for i, r in enumerate(tree["requests"], 1)}
    costs = [r["cost_usd"] for r in tree["requests"]]
    cost = {
        "requests": len(costs),
        "cost_usd": sum(c for c in costs if c is not None),
        "unpriced_requests": sum(c is None for c in costs),
    }
    analyses = [analysis_view(row) for row in await analysis_queue.for_conversation(conn, conversation_id)]
    return {
        "c": tree,
        "counts": conversations_repo.branch_counts([r["branch_id"] for r in tree["requests"]]),
        "number": number,
        **await tree_page.tree_context(conn, tree, number, branch=branch, tree_from=tree_from),
        "cost": cost,
        "analyses": analyses,
        "analysis_busy": any(a["status"] in ("pending", "processing") for a in analyses),
    }


def analysis_view(row: dict[str, Any]) -> dict[str, Any]:
    """One analysis for the page: its known sections in order, then any extra keys, each as lines."""
    data: dict[str, Any] = row["analysis_data"] if isinstance(row.get("analysis_data"), dict) else {}
    keys = [*analysis_schema.KEYS, *(k for k in data if k not in analysis_schema.KEYS)]
    sections = [
        {
            "key": key,
            "title": analysis_schema.TITLES.get(key, key),
            "lines": analysis_schema.items(data[key]),
            "single": isinstance(data[key], str),
        }
        for key in keys
        if key in data
    ]
    return {**row, "sections": sections}
