"""Reading a reference-system database: which of its tables and columns exist, and its rows in order.

Every version of the reference left a slightly different schema (OLD called the project column
`domain`; NEW dropped `streaming_chunks`; early ones lack `account_id` or the conversation columns),
so the columns read are the ones found, each cast to text: no column type can make a read fail, and
`rows.to_record` judges each value. `api_requests` is read in keyset order over
(`timestamp`, `request_id`), a batch at a time, so an interrupted import resumes after the last batch
it stored. Only reads: the reference database is never written to.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from nexus.importing.rows import FIELDS, ReferenceRow


class NotReferenceError(Exception):
    """The database given is not one the reference system wrote."""


#: `ReferenceRow` fields read from differently named columns in some versions.
ALIASES = {"project_id": ("project_id", "domain")}
REQUIRED = ("request_id", "timestamp", "project_id")


@dataclass(slots=True)
class Layout:
    """What the reference database holds."""

    tables: set[str]
    #: `ReferenceRow` field -> the column read for it (fields without a column read NULL)
    columns: dict[str, str] = field(default_factory=dict)

    def has(self, table: str) -> bool:
        return table in self.tables


def source_name(dsn: str) -> str:
    """Where the rows come from, without credentials: the checkpoint's key (`host:port/database`)."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "unknown"
    host = info.get("host") or "localhost"
    port = info.get("port") or "5432"
    return f"{host}:{port}/{info.get('dbname') or info.get('user') or ''}"


def connect(dsn: str) -> psycopg.Connection[Any]:
    """A read-only session on the reference database (autocommit: no transaction is held open between
    batches, so the reference system can keep running while its history is copied)."""
    conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    conn.execute("SET default_transaction_read_only = on")
    # text as UTF-8 whatever the server's encoding (psycopg hands SQL_ASCII text over as bytes): a
    # SQL_ASCII database's invalid bytes then fail to decode, and only their row is lost (`_one_by_one`)
    conn.execute("SET client_encoding = 'UTF8'")
    return conn


def layout(conn: psycopg.Connection[Any]) -> Layout:
    tables = {
        name
        for (name,) in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchall()
    }
    if "api_requests" not in tables:
        raise NotReferenceError("no api_requests table in the current schema")
    found = {
        name
        for (name,) in conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = 'api_requests'"
        ).fetchall()
    }
    columns = {}
    for name in FIELDS:
        for candidate in ALIASES.get(name, (name,)):
            if candidate in found:
                columns[name] = candidate
                break
    missing = [name for name in REQUIRED if name not in columns]
    if missing:
        raise NotReferenceError(f"api_requests has no {', '.join(missing)} column")
    if "envelope" in found and "message_keys" in found:
        raise NotReferenceError("this is a Nexus database (api_requests has envelope and message_keys)")
    return Layout(tables, columns)


def _select_list(lay: Layout) -> sql.Composed:
    parts: list[sql.Composable] = []
    for name in FIELDS:
        column = lay.columns.get(name)
        if column is None:
            parts.append(sql.SQL("NULL"))
        elif name == "timestamp":
            parts.append(sql.Identifier(column))
        else:
            parts.append(sql.SQL("{}::text").format(sql.Identifier(column)))
    return sql.SQL(", ").join(parts)


def count_after(conn: psycopg.Connection[Any], after: tuple[datetime, str] | None) -> int:
    """How many rows are left after the checkpoint (the progress bar's total)."""
    if after is None:
        row = conn.execute('SELECT count(*) FROM api_requests WHERE "timestamp" IS NOT NULL').fetchone()
    else:
        row = conn.execute(
            'SELECT count(*) FROM api_requests WHERE ("timestamp", request_id) > (%s, %s)', after
        ).fetchone()
    return int(row[0]) if row else 0


def count_without_time(conn: psycopg.Connection[Any]) -> int:
    """Rows no keyset reaches (a schema without NOT NULL on `timestamp`): reported as failed."""
    row = conn.execute('SELECT count(*) FROM api_requests WHERE "timestamp" IS NULL').fetchone()
    return int(row[0]) if row else 0


@dataclass(slots=True)
class Fetched:
    """One batch: rows that could be read, and the keys of rows that could not (with why)."""

    rows: list[ReferenceRow]
    unreadable: list[tuple[str, str]]
    last: tuple[datetime, str]


def batches(
    conn: psycopg.Connection[Any], lay: Layout, after: tuple[datetime, str] | None, size: int, limit: int | None = None
) -> Iterator[Fetched]:
    """`api_requests` after `after` in (`timestamp`, `request_id`) order, `size` rows at a time, at
    most `limit` rows in all."""
    select = _select_list(lay)
    keys_sql = sql.SQL(
        'SELECT "timestamp", request_id::text FROM api_requests WHERE "timestamp" IS NOT NULL {} '
        'ORDER BY api_requests."timestamp", api_requests.request_id LIMIT %s'
    )
    # ordered by the table's columns (the select list's `request_id::text` is named request_id too, and
    # its text order is not the keyset's uuid order under every collation)
    rows_sql = sql.SQL(
        'SELECT {} FROM api_requests WHERE "timestamp" IS NOT NULL {} '
        'ORDER BY api_requests."timestamp", api_requests.request_id LIMIT %s'
    )
    left = limit
    while left is None or left > 0:
        step = size if left is None else min(size, left)
        where = sql.SQL('AND ("timestamp", request_id) > (%s, %s)') if after else sql.SQL("")
        params: tuple[Any, ...] = (*after, step) if after else (step,)
        try:
            fetched = [ReferenceRow(*r) for r in conn.execute(rows_sql.format(select, where), params).fetchall()]
        except (psycopg.DataError, UnicodeDecodeError, ValueError):
            # a value the client cannot decode (a SQL_ASCII database holding invalid UTF-8): read the
            # batch's keys, then each row alone, so only the unreadable ones are lost
            keys = conn.execute(keys_sql.format(where), params).fetchall()
            if not keys:
                return
            yield _one_by_one(conn, select, keys)
            after = (keys[-1][0], keys[-1][1])
            left = None if left is None else left - len(keys)
            continue
        if not fetched:
            return
        last = fetched[-1]
        assert last.timestamp is not None and last.request_id is not None
        after = (last.timestamp, last.request_id)
        left = None if left is None else left - len(fetched)
        yield Fetched(fetched, [], after)


def _one_by_one(conn: psycopg.Connection[Any], select: sql.Composed, keys: list[tuple[Any, ...]]) -> Fetched:
    one = sql.SQL('SELECT {} FROM api_requests WHERE "timestamp" = %s AND request_id::text = %s').format(select)
    rows, unreadable = [], []
    for at, key in keys:
        try:
            found = conn.execute(one, (at, key)).fetchone()
        except (psycopg.DataError, UnicodeDecodeError, ValueError) as exc:
            unreadable.append((key, f"unreadable: {exc.__class__.__name__}: {str(exc)[:200]}"))
            continue
        if found is not None:
            rows.append(ReferenceRow(*found))
    return Fetched(rows, unreadable, (keys[-1][0], keys[-1][1]))


def chunks_for(conn: psycopg.Connection[Any], lay: Layout, request_ids: list[str]) -> dict[str, list[str]]:
    """The stored SSE chunks of these requests, in chunk order (OLD schemas; empty in practice)."""
    if not request_ids or not lay.has("streaming_chunks"):
        return {}
    out: dict[str, list[str]] = {}
    try:
        cur = conn.execute(
            "SELECT request_id::text, data FROM streaming_chunks WHERE request_id::text = ANY(%s) "
            "ORDER BY request_id, chunk_index",
            (request_ids,),
        )
        for request_id, data in cur.fetchall():
            if data is not None:
                out.setdefault(request_id, []).append(data)
    except (psycopg.DataError, UnicodeDecodeError, psycopg.errors.UndefinedColumn):
        return {}
    return out


def count_chunks(conn: psycopg.Connection[Any], lay: Layout) -> int:
    if not lay.has("streaming_chunks"):
        return 0
    row = conn.execute("SELECT count(*) FROM streaming_chunks").fetchone()
    return int(row[0]) if row else 0


def table_rows(conn: psycopg.Connection[Any], lay: Layout, table: str, wanted: tuple[str, ...]) -> list[dict[str, Any]]:
    """Every row of a small table (projects, analyses), the wanted columns that exist as text."""
    if not lay.has(table):
        return []
    found = {
        name
        for (name,) in conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = %s",
            (table,),
        ).fetchall()
    }
    present = [c for c in wanted if c in found]
    if not present:
        return []
    select = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in present)
    cur = conn.execute(sql.SQL("SELECT {} FROM {}").format(select, sql.Identifier(table)))
    return [dict(zip(present, row, strict=True)) for row in cur.fetchall()]


def credential_accounts(conn: psycopg.Connection[Any], lay: Layout) -> list[str]:
    """The account ids of the reference's stored credentials (never their tokens)."""
    for table in ("credentials", "anthropic_credentials"):
        if lay.has(table):
            try:
                cur = conn.execute(sql.SQL("SELECT account_id::text FROM {} ORDER BY 1").format(sql.Identifier(table)))
            except psycopg.Error:
                return []
            return [str(a) for (a,) in cur.fetchall()]
    return []


def count_table(conn: psycopg.Connection[Any], lay: Layout, table: str) -> int:
    if not lay.has(table):
        return 0
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    return int(row[0]) if row else 0
