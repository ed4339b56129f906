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
    """How many stored requests match the filters (the reference's `pagination.total`)."""
    clause, params = _filters(project_id, conversation_id, account_id, parent_task_request_id, None, find)
    cur = await conn.execute(f"SELECT count(*) FROM api_requests {clause}", params)  # noqa: S608 (constant SQL)
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
