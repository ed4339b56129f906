"""Rebuilding the links of stored requests after a linker change: `nexus relink`.

Rows are read back in time order, their bodies rebuilt from the content store and analysed again by
the current Rust core, and replayed through the same linker the proxy runs (with the database as its
fallback for rows before `--since`). Conversation ids are kept wherever the new decision still starts
the conversation at the same request, so links to existing conversations survive a relink. The
conversation summaries are rebuilt from the updated rows at the end, in the same transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from nexus._core import NexusCoreError, analyze_request, join_body, read_reply
from nexus.conversations.index import LinkIndex
from nexus.conversations.linker import Link, Linker
from nexus.conversations.search import TITLE_BACKFILL
from nexus.conversations.service import ConversationService, link_request
from nexus.storage.bulk_lock import BULK_UPDATE_LOCK
from nexus.storage.payload import TOKEN_SUMS, capped_sum
from nexus.storage.records import LINK_COLUMNS, link_cells

BATCH = 500
ROW_COLUMNS = (
    "request_id::text, timestamp, project_id, path, request_headers, envelope::text, system_key, tools_key, "
    "message_keys, response_status, response_body, outcome, conversation_id::text, request_type"
)
#: Stored types that are never a conversation turn whatever their body (the analysis worker's requests).
KEPT_APART = frozenset({"analysis"})
#: The columns of `link_requests` a relink rewrites.
SHARED_COLUMNS = (
    "request_type",
    "conversation_id",
    "branch_id",
    "parent_request_id",
    "is_subtask",
    "parent_task_request_id",
    "current_message_hash",
)
UPDATE_COLUMNS = (
    ("request_id", "uuid"),
    ("timestamp", "timestamptz"),
    ("request_type", "text"),
    ("conversation_id", "uuid"),
    ("branch_id", "text"),
    ("parent_request_id", "uuid"),
    ("is_subtask", "boolean"),
    ("parent_task_request_id", "uuid"),
    ("current_message_hash", "bytea"),
    ("parent_message_hash", "bytea"),
    ("system_hash", "bytea"),
    ("task_prompt_keys", "bytea[]"),
)
#: Taken first (SHARE ROW EXCLUSIVE: readers go on, writers of the summaries wait, and so does another
#: relink): see `_apply`.
LOCK_CONVERSATIONS = "LOCK TABLE conversations IN SHARE ROW EXCLUSIVE MODE"
#: The `link_requests` rows to rewrite, locked in request id order, the order in which the linker's
#: one-statement updates of several rows (`shared.MARK_DONE`, through the primary key) lock them.
LOCK_SHARED_ROWS = (
    "SELECT 1 FROM link_requests l JOIN nexus_relink u USING (request_id) ORDER BY l.request_id FOR UPDATE OF l"
)
REBUILD_SUMMARIES = (
    """
DELETE FROM conversations;
INSERT INTO conversations (conversation_id, project_id, first_at, last_at, request_count, input_tokens, output_tokens,
    cache_creation_input_tokens, cache_read_input_tokens, latest_request_id)
SELECT conversation_id, min(project_id), min("timestamp"), max("timestamp"), count(*), {sums},
    (array_agg(request_id ORDER BY "timestamp" DESC))[1]
FROM api_requests WHERE conversation_id IS NOT NULL GROUP BY conversation_id;
""".format(sums=", ".join(capped_sum(c) for c in TOKEN_SUMS.values()))
    + TITLE_BACKFILL
)


@dataclass(slots=True)
class RelinkReport:
    rows: int = 0
    changed: int = 0
    conversations_before: int = 0
    conversations_after: int = 0


async def _rows(conn: AsyncConnection[Any], since: datetime | None) -> AsyncIterator[list[tuple[Any, ...]]]:
    where, params = ("WHERE timestamp >= %s", (since,)) if since else ("", ())
    async with conn.cursor(name="nexus_relink") as cur:
        await cur.execute(f"SELECT {ROW_COLUMNS} FROM api_requests {where} ORDER BY timestamp, request_id", params)  # noqa: S608
        while batch := await cur.fetchmany(BATCH):
            yield batch


async def _blobs(conn: AsyncConnection[Any], rows: list[tuple[Any, ...]]) -> dict[bytes, bytes]:
    keys = {bytes(k) for r in rows for k in [r[6], r[7], *(r[8] or [])] if k is not None}
    if not keys:
        return {}
    cur = await conn.execute("SELECT key, body::text FROM content_blobs WHERE key = ANY(%s)", (list(keys),))
    return {bytes(k): body.encode() for k, body in await cur.fetchall()}


def _body(row: tuple[Any, ...], blobs: dict[bytes, bytes]) -> bytes | None:
    envelope, system_key, tools_key, message_keys = row[5], row[6], row[7], row[8]
    if envelope is None:
        return None
    part = blobs.get
    messages = [part(bytes(k), b"null") for k in message_keys] if message_keys is not None else None
    return join_body(
        envelope.encode(),
        part(bytes(system_key)) if system_key is not None else None,
        part(bytes(tools_key)) if tools_key is not None else None,
        messages,
    )


async def relink(dsn: str, *, since: datetime | None = None, dry_run: bool = False) -> RelinkReport:
    report = RelinkReport()
    used: set[str] = set()
    keep: list[str | None] = [None]

    def new_id() -> str:  # keep the row's conversation id when no other new conversation took it
        old = keep[0]
        if old is not None and old not in used:
            used.add(old)
            return old
        fresh = str(uuid.uuid4())
        used.add(fresh)
        return fresh

    pool = AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False)
    await pool.open(wait=True, timeout=10)

    async def get_pool() -> AsyncConnectionPool:
        return pool

    service = ConversationService(Linker(LinkIndex(10_000_000), new_id), get_pool if since else None)
    updates: list[list[object]] = []
    try:
        async with await AsyncConnection.connect(dsn) as conn:
            cur = await conn.execute("SELECT count(DISTINCT conversation_id) FROM api_requests")
            report.conversations_before = (await cur.fetchone() or (0,))[0]
            async for rows in _rows(conn, since):
                blobs = await _blobs(conn, rows)
                for row in rows:
                    report.rows += 1
                    updates.append(await _relink_row(service, row, blobs, keep))
                    if updates[-1][3] != row[12]:
                        report.changed += 1
            if not dry_run:
                await _apply(conn, updates)
            cur = await conn.execute("SELECT count(DISTINCT conversation_id) FROM api_requests")
            report.conversations_after = (await cur.fetchone() or (0,))[0]
            if dry_run:
                report.conversations_after = len({u[3] for u in updates if u[3] is not None})
    finally:
        await pool.close()
    return report


async def _relink_row(
    service: ConversationService, row: tuple[Any, ...], blobs: dict[bytes, bytes], keep: list[str | None]
) -> list[object]:
    request_id, at, project, path, headers = row[0], row[1], row[2], row[3], row[4] or {}
    body = _body(row, blobs)
    analysis = None
    if body is not None and path.startswith("/v1/messages"):
        try:
            analysis = analyze_request(body, strict=False)
        except NexusCoreError:
            analysis = None
    keep[0] = row[12]
    if row[13] in KEPT_APART:  # its messages quote a conversation; it is none of its turns
        cells = link_cells(Link(row[13]))
        system_hash = analysis.system_hash if analysis is not None else None
        return [request_id, at, row[13], *(cells.get(n) for n in LINK_COLUMNS), system_hash, None]
    req = link_request(request_id, project, at.timestamp(), path.split("?", 1)[0], headers, analysis)
    link = await service.settle(request_id, await service.link(req))
    assert link is not None
    response = row[10]
    ok = row[9] == 200 and row[11] == "completed"
    reply = read_reply(orjson.dumps(response)) if response is not None else None
    keys = service.complete(request_id, link, ok, reply)
    system_hash = analysis.system_hash if analysis is not None else None
    cells = link_cells(link)
    return [request_id, at, link.request_type, *(cells.get(n) for n in LINK_COLUMNS), system_hash, keys or None]


async def _apply(conn: AsyncConnection[Any], updates: list[list[object]]) -> None:
    columns = ", ".join(f'"{n}" {t}' for n, t in UPDATE_COLUMNS)
    names = [n for n, _ in UPDATE_COLUMNS]
    assignments = ", ".join(f'"{n}" = u."{n}"' for n in names[2:])
    async with conn.transaction():
        # In the storage writer's lock order (no deadlock with a batch being stored): its one statement
        # upserts the conversation summaries, then its triggers the usage summaries (each in key
        # order). This transaction takes the conversations first too, all of them at once (the rebuild
        # below replaces every row), before its UPDATE's triggers lock any usage row: a batch that holds
        # conversation rows is waited for, one that comes later waits for the relink.
        await conn.execute(BULK_UPDATE_LOCK)  # one bulk rewrite at a time (repricing: nexus.storage.bulk_lock)
        await conn.execute(LOCK_CONVERSATIONS)
        await conn.execute(f"CREATE TEMP TABLE nexus_relink ({columns}) ON COMMIT DROP")  # type: ignore[arg-type]
        async with conn.cursor() as cur:
            async with cur.copy(f"COPY nexus_relink ({', '.join(names)}) FROM STDIN") as cp:  # type: ignore[arg-type]
                for update in updates:
                    await cp.write_row(update)
            await cur.execute(
                f"UPDATE api_requests r SET {assignments} FROM nexus_relink u "  # type: ignore[arg-type]  # noqa: S608
                'WHERE r.request_id = u.request_id AND r."timestamp" = u."timestamp"'
            )
            # What shared linking decides from (docs/scaling.md) follows, so later turns continue the
            # rebuilt links rather than the ones they replaced.
            shared = ", ".join(f'"{n}" = u."{n}"' for n in SHARED_COLUMNS)
            await cur.execute(LOCK_SHARED_ROWS)  # in request id order, as the linker's batched updates
            await cur.execute(
                f"UPDATE link_requests l SET {shared} FROM nexus_relink u WHERE l.request_id = u.request_id"  # type: ignore[arg-type]  # noqa: S608
            )
            for statement in REBUILD_SUMMARIES.strip().split(";\n"):
                await cur.execute(statement)  # type: ignore[arg-type]
