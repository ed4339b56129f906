"""Where a row goes that PostgreSQL refused even in its last-resort form: kept, with the error.

The row is kept exactly as it was encoded (its COPY tuple) in the `storage_quarantine` table, so it
can be retried as it is once the cause is fixed (`nexus storage quarantine --retry`), and everything
else in its batch is written. If even the quarantine table cannot take it (it does not exist yet, or
refuses), it goes to a file under `NEXUS_HOME/quarantine/`, framed like the spool, which the same
command lists and retries. Nothing is dropped without a trace.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg

from nexus.home import private_dir
from nexus.storage import frames

FILE_MAGIC = b"NXQ1"

INSERT = (
    "INSERT INTO storage_quarantine (table_name, column_count, request_id, row_data, sqlstate, error) "
    "VALUES (%s, %s, %s, %s, %s, %s)"
)


@dataclass(slots=True)
class QuarantinedRow:
    """One refused row. `id` is the table's id, or `file:<name>:<index>` for a row kept in a file."""

    id: str
    table_name: str
    column_count: int
    request_id: str | None
    row_data: bytes
    sqlstate: str | None
    error: str
    quarantined_at: float
    retries: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "table": self.table_name,
            "request_id": self.request_id,
            "sqlstate": self.sqlstate,
            "error": self.error,
            "bytes": len(self.row_data),
            "quarantined_at": self.quarantined_at,
            "retries": self.retries,
        }


def insert(conn: psycopg.Connection, row: QuarantinedRow) -> None:
    """Into the table, in the caller's transaction."""
    conn.execute(INSERT, (row.table_name, row.column_count, row.request_id, row.row_data, row.sqlstate, row.error))


def list_table(conn: psycopg.Connection, limit: int = 1000) -> list[QuarantinedRow]:
    cur = conn.execute(
        "SELECT id, table_name, column_count, request_id::text, row_data, sqlstate, error, "
        "extract(epoch from quarantined_at), retries FROM storage_quarantine ORDER BY id LIMIT %s",
        (limit,),
    )
    return [
        QuarantinedRow(str(r[0]), r[1], r[2], r[3], bytes(r[4]), r[5], r[6], float(r[7]), r[8]) for r in cur.fetchall()
    ]


def count_table(conn: psycopg.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM storage_quarantine").fetchone()[0])  # type: ignore[index]


class QuarantineFiles:
    """The fallback: one append-only file per process under `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._name = f"quarantine-{os.getpid()}.log"

    def append(self, row: QuarantinedRow) -> None:
        private_dir(self.directory)
        frames.append(self.directory / self._name, FILE_MAGIC, _pack(row))

    def rows(self) -> Iterator[QuarantinedRow]:
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("quarantine-*.log")):
            for index, payload in enumerate(frames.read(path, FILE_MAGIC)):
                (meta_len,) = struct.unpack_from(">I", payload)
                meta = orjson.loads(payload[4 : 4 + meta_len])
                yield QuarantinedRow(
                    f"file:{path.name}:{index}",
                    meta["table"],
                    meta["column_count"],
                    meta.get("request_id"),
                    payload[4 + meta_len :],
                    meta.get("sqlstate"),
                    meta.get("error", ""),
                    meta.get("quarantined_at", 0.0),
                    meta.get("retries", 0),
                )

    def remove(self, ids: set[str]) -> None:
        """Rewrite each file without the rows whose ids are given (after a successful retry)."""
        by_file: dict[str, list[QuarantinedRow]] = {}
        for row in self.rows():
            by_file.setdefault(row.id.split(":")[1], []).append(row)
        for name, rows in by_file.items():
            keep = [r for r in rows if r.id not in ids]
            if len(keep) == len(rows):
                continue
            path = self.directory / name
            if keep:
                frames.rewrite(path, FILE_MAGIC, [_pack(r) for r in keep])
            else:
                path.unlink(missing_ok=True)


def _pack(row: QuarantinedRow) -> bytes:
    meta = {k: v for k, v in row.summary().items() if k not in ("id", "bytes")} | {"column_count": row.column_count}
    encoded = orjson.dumps(meta)
    return struct.pack(">I", len(encoded)) + encoded + row.row_data


def now() -> float:
    return time.time()


def retry(conn: psycopg.Connection, row: QuarantinedRow) -> str | None:
    """Send a quarantined row again, as it is, then in its last-resort form; None when it is stored,
    else the error. Each attempt is its own transaction."""
    from nexus._core import NexusCoreError, copy_payload, copy_row_last_resort
    from nexus.storage.payload import STAGE_SQL, Batch, send
    from nexus.storage.records import BLOB_TYPES_BY_COUNT, REQUEST_TYPES_BY_COUNT

    for sql in STAGE_SQL:
        conn.execute(sql)  # type: ignore[arg-type]
    conn.commit()
    is_request = row.table_name == "api_requests"
    types = (REQUEST_TYPES_BY_COUNT if is_request else BLOB_TYPES_BY_COUNT).get(row.column_count)
    if types is None:
        return f"unknown column layout ({row.column_count} columns)"
    error = ""
    for attempt in ("as it is", "last resort"):
        try:
            data = row.row_data if attempt == "as it is" else copy_row_last_resort(types, row.row_data)
            payload = copy_payload([data])
            send(conn, Batch(payload, b"") if is_request else Batch(b"", payload))
            conn.commit()
            return None
        except (psycopg.Error, NexusCoreError) as exc:
            conn.rollback()
            error = f"{exc.__class__.__name__}: {exc}".replace("\x00", "\\u0000")[:500]
    return error


def delete(conn: psycopg.Connection, ids: list[int]) -> int:
    cur = conn.execute("DELETE FROM storage_quarantine WHERE id = ANY(%s)", (ids,))
    return cur.rowcount


def note_retry(conn: psycopg.Connection, row_id: int, error: str) -> None:
    conn.execute(
        "UPDATE storage_quarantine SET retries = retries + 1, last_retry_at = now(), error = %s WHERE id = %s",
        (error, row_id),
    )
