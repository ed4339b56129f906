"""SQL for reading stored requests: the one place the request tables are queried.

Lookups by id are narrowed to a two-day window around the time encoded in the UUIDv7 id, so the
planner prunes to one or two daily partitions instead of probing every partition's index.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from nexus.conversations.search import Find, few_matches, request_clauses
from nexus.ids import request_id_unix_ms
from nexus.pricing.sql import REQUEST_COST_USD
from nexus.usage import hourly

SUMMARY_COLUMNS = (
    "request_id, timestamp, project_id, account_id, model, request_type, conversation_id, branch_id, "
    "parent_request_id, is_subtask, parent_task_request_id, response_status, usage, duration_ms, "
    "first_byte_ms, method, path, input_tokens, output_tokens, cache_creation_input_tokens, "
    "cache_read_input_tokens, tool_call_count, response_streaming, outcome, error, attempts, " + REQUEST_COST_USD
)
DETAIL_COLUMNS = (
    SUMMARY_COLUMNS
    + ", request_headers, response_headers, response_body, envelope, system_key, tools_key, message_keys, "
    "storage_repairs"
)


async def get_request(conn: AsyncConnection[Any], request_id: str) -> dict[str, Any] | None:
    """One stored request with its body rebuilt from the content store."""
    ms = request_id_unix_ms(request_id)
    async with conn.cursor(row_factory=dict_row) as cur:
        if ms is not None:
            at = datetime.fromtimestamp(ms / 1000, UTC)
            await cur.execute(
                f"SELECT {DETAIL_COLUMNS} FROM api_requests WHERE request_id = %s "  # noqa: S608 (constant columns)
                "AND timestamp >= %s AND timestamp < %s",
                (request_id, at - timedelta(days=1), at + timedelta(days=1)),
            )
        else:
            await cur.execute(f"SELECT {DETAIL_COLUMNS} FROM api_requests WHERE request_id = %s", (request_id,))  # noqa: S608
        row = await cur.fetchone()
        if row is None:
            return None
        system_key, tools_key, message_keys = row.pop("system_key"), row.pop("tools_key"), row.pop("message_keys")
        keys = [k for k in (system_key, tools_key) if k is not None] + list(message_keys or [])
        blobs: dict[bytes, Any] = {}
        repaired = False
        if keys:
            await cur.execute(
                "SELECT key, body, raw IS NOT NULL AS repaired FROM content_blobs WHERE key = ANY(%s)", (keys,)
            )
            for r in await cur.fetchall():
                blobs[bytes(r["key"])] = r["body"]
                repaired |= r["repaired"]
    envelope = row.pop("envelope")
    if repaired:  # a message, system prompt or tool list was stored repaired (its original bytes are kept)
        row["storage_repairs"] = [*(row["storage_repairs"] or []), "content_repaired"]
    return {**row, "request_body": rebuild_body(envelope, system_key, tools_key, message_keys, blobs)}


def rebuild_body(
    envelope: Any,
    system_key: bytes | None,
    tools_key: bytes | None,
    message_keys: list[bytes] | None,
    blobs: dict[bytes, Any],
) -> Any:
    """The request body: the envelope plus its content-addressed parts."""
    if not isinstance(envelope, dict):
        return envelope
    body = dict(envelope)
    for field, key in (("system", system_key), ("tools", tools_key)):
        if key is not None:
            body[field] = blobs.get(bytes(key))
    if message_keys is not None:
        body["messages"] = [blobs.get(bytes(k)) for k in message_keys]
    return body


async def list_requests(
    conn: AsyncConnection[Any],
    *,
    limit: int,
    before: tuple[datetime, str] | None = None,
    project_id: str | None = None,
    conversation_id: str | None = None,
    account_id: str | None = None,
    parent_task_request_id: str | None = None,
    offset: int = 0,
    find: Find | None = None,
) -> list[dict[str, Any]]:
    """Newest first, keyset-paginated on (timestamp, request_id); `offset` skips rows after the cursor
    (the reference's pagination). `find`: search and filters (nexus/conversations/search.py)."""
    clause, params = _filters(project_id, conversation_id, account_id, parent_task_request_id, before, find)
    hits = find is not None and find.q is not None and await few_matches(conn, find.q)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(list_sql(clause, hits), (*params, limit, offset))  # type: ignore[arg-type]
        return await cur.fetchall()


def list_sql(clause: str, hits: bool) -> str:
    """The page query of `list_requests` for a WHERE `clause`. With `hits` (a search that matches
    few requests, `few_matches`), only the rows the GIN index finds are read and ordered: the clause
    is applied to them, never to a walk of the time index."""
    if hits:
        return (
            f"WITH found AS MATERIALIZED (SELECT {SUMMARY_COLUMNS} FROM api_requests {clause}) "  # noqa: S608
            "SELECT * FROM found ORDER BY timestamp DESC, request_id DESC LIMIT %s OFFSET %s"
        )
    return (
        f"SELECT {SUMMARY_COLUMNS} FROM api_requests {clause} "  # noqa: S608 (constant columns)
        "ORDER BY timestamp DESC, request_id DESC LIMIT %s OFFSET %s"
    )


async def count_requests(
    conn: AsyncConnection[Any],
    *,
    project_id: str | None = None,
    conversation_id: str | None = None,
    account_id: str | None = None,
    parent_task_request_id: str | None = None,
    find: Find | None = None,
) -> int:
    """How many stored requests match the filters (the reference's `pagination.total`), exactly."""
    total, _ = await count_requests_at_most(
        conn,
        None,
        project_id=project_id,
        conversation_id=conversation_id,
        account_id=account_id,
        parent_task_request_id=parent_task_request_id,
        find=find,
    )
    return total


async def count_requests_at_most(
    conn: AsyncConnection[Any],
    limit: int | None,
    *,
    project_id: str | None = None,
    conversation_id: str | None = None,
    account_id: str | None = None,
    parent_task_request_id: str | None = None,
    find: Find | None = None,
) -> tuple[int, bool]:
    """How many stored requests match the filters, and whether the count stopped at `limit` (None:
    never): a search or a duration filter over a million rows is otherwise a count of every match,
    seconds. Filters the hourly summary answers (project, account, model, dates, errors only) are
    counted there, exactly and at once, whatever `limit` says."""
    exact = await _summary_count(conn, project_id, account_id, conversation_id, parent_task_request_id, find)
    if exact is not None:
        return exact, False
    clause, params = _filters(project_id, conversation_id, account_id, parent_task_request_id, None, find)
    if limit is None:
        sql = f"SELECT count(*) FROM api_requests {clause}"  # noqa: S608 (constant SQL)
    else:
        sql = f"SELECT count(*) FROM (SELECT 1 FROM api_requests {clause} LIMIT %s) AS m"  # noqa: S608
        params = [*params, limit]
    cur = await conn.execute(sql, params)  # type: ignore[arg-type]
    row = await cur.fetchone()
    total = int(row[0]) if row else 0
    return total, limit is not None and total >= limit


async def _summary_count(
    conn: AsyncConnection[Any],
    project_id: str | None,
    account_id: str | None,
    conversation_id: str | None,
    parent_task_request_id: str | None,
    find: Find | None,
) -> int | None:
    """The count from `usage_hourly` when every filter is one of its keys or measures; else None."""
    find = find or Find()
    for at in (find.date_from, find.date_to):
        if at is not None and at.tzinfo is None:
            return None
    if conversation_id is not None or parent_task_request_id is not None:
        return None
    if find.q is not None or find.status is not None or find.min_duration_ms is not None:
        return None
    if find.max_duration_ms is not None:
        return None
    equal: dict[str, str | None] = {"model": find.model}
    for column, value, found in (
        ("project_id", project_id, find.project_id),
        ("account_id", account_id, find.account_id),
    ):
        if value is not None and found is not None and value != found:
            return None  # two different values: let the rows say (nothing matches)
        equal[column] = value if value is not None else found
    # `timestamp <= date_to`: timestamps have microseconds, so the range ends a microsecond later
    end = find.date_to + timedelta(microseconds=1) if find.date_to is not None else None
    if find.date_from is not None and end is not None and end <= find.date_from:
        return 0
    src, params = hourly.source(find.date_from, end, equal)
    measure = "errors" if find.errors_only else "requests"
    cur = await conn.execute(f"SELECT coalesce(sum({measure}), 0) FROM {src} AS u", params)  # noqa: S608
    row = await cur.fetchone()
    return int(row[0]) if row else 0


def _filters(
    project_id: str | None,
    conversation_id: str | None,
    account_id: str | None,
    parent_task_request_id: str | None,
    before: tuple[datetime, str] | None,
    find: Find | None = None,
) -> tuple[str, list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if before is not None:
        where.append("(timestamp, request_id) < (%s, %s)")
        params += [before[0], before[1]]
    for column, value in (
        ("project_id", project_id),
        ("conversation_id", conversation_id),
        ("account_id", account_id),
        ("parent_task_request_id", parent_task_request_id),
    ):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if find is not None:
        more, more_params = request_clauses(find)
        where += more
        params += more_params
    return ("WHERE " + " AND ".join(where)) if where else "", params


async def list_stored_since(
    conn: AsyncConnection[Any], *, stored_after: datetime, started_after: datetime, limit: int = 200
) -> list[dict[str, Any]]:
    """The newest `limit` requests whose rows were written after `stored_after`, oldest first (live views).

    Rows arrive when a request ends, so a long stream is written well after its `timestamp`: new rows
    are found by `created_at` (a BRIN index, migration 0004) and `started_after` bounds the partitions.
    """
    sql = (
        f"SELECT {SUMMARY_COLUMNS}, created_at FROM api_requests "  # noqa: S608 (constant columns)
        "WHERE created_at > %s AND timestamp >= %s ORDER BY created_at DESC, timestamp DESC LIMIT %s"
    )
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, (stored_after, started_after, limit))
        return (await cur.fetchall())[::-1]
