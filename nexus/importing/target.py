"""Writing imported rows into Nexus's database with the storage writer's own path, and the checkpoint.

Rows are built by `nexus.storage.records.build_batch` (bodies split into content-addressed parts, usage
read, client keys redacted, headers allow-listed) and sent as one COPY batch by
`nexus.storage.payload.send` (`ON CONFLICT DO NOTHING`, conversation summaries updated from the rows
actually inserted), in one transaction with the checkpoint: a batch is stored and remembered together
or not at all. A batch PostgreSQL refuses for its content goes through `nexus.storage.isolate` like
the writer's, so every row it accepts goes in and only the rest is quarantined (and counted failed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import psycopg

from nexus.storage import quarantine
from nexus.storage.failures import OUTAGE, classify
from nexus.storage.isolate import isolate
from nexus.storage.partitions import ensure_partition
from nexus.storage.payload import STAGE_SQL, Batch, send
from nexus.storage.records import ExchangeRecord, build_batch
from nexus.storage.writer import RecentKeys

log = logging.getLogger("nexus.importing")


@dataclass(slots=True)
class Checkpoint:
    last: tuple[datetime, str] | None  # the last (timestamp, request_id) stored; None: from the start


#: Request rows PostgreSQL refused even in their last-resort form: (request id, error).
Refused = list[tuple[str | None, str]]


def connect(dsn: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(dsn, autocommit=False, connect_timeout=10)
    with conn.cursor() as cur:
        for statement in STAGE_SQL:
            cur.execute(statement)  # type: ignore[arg-type]
    conn.commit()
    return conn


def read_checkpoint(conn: psycopg.Connection[Any], source: str, table: str) -> Checkpoint:
    row = conn.execute(
        "SELECT last_timestamp, last_key FROM reference_import_state WHERE source = %s AND table_name = %s",
        (source, table),
    ).fetchone()
    conn.commit()
    return Checkpoint(None if row is None or row[0] is None else (row[0], row[1]))


def forget_checkpoint(conn: psycopg.Connection[Any], source: str) -> None:
    conn.execute("DELETE FROM reference_import_state WHERE source = %s", (source,))
    conn.commit()


def save_checkpoint(
    conn: psycopg.Connection[Any],
    source: str,
    table: str,
    last: tuple[datetime, str] | None,
    counts: tuple[int, int, int, int],
    *,
    finished: bool = False,
    relink_from: datetime | None = None,
) -> None:
    """Add this batch's counts and move the checkpoint, in the caller's transaction; `relink_from` is
    the earliest row the batch stored (kept until `relinked`, so a run stopped before its relink
    leaves the next run to relink from there)."""
    conn.execute(
        "INSERT INTO reference_import_state AS s (source, table_name, last_timestamp, last_key, rows_read, "
        "imported, skipped, failed, finished_at, relink_from) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, "
        "CASE WHEN %s THEN now() END, %s) "
        "ON CONFLICT (source, table_name) DO UPDATE SET "
        "last_timestamp = coalesce(excluded.last_timestamp, s.last_timestamp), "
        "last_key = coalesce(excluded.last_key, s.last_key), "
        "rows_read = s.rows_read + excluded.rows_read, imported = s.imported + excluded.imported, "
        "skipped = s.skipped + excluded.skipped, failed = s.failed + excluded.failed, "
        "updated_at = now(), finished_at = excluded.finished_at, "
        "relink_from = least(s.relink_from, excluded.relink_from)",
        (source, table, *(last or (None, None)), *counts, finished, relink_from),
    )


def relink_pending(conn: psycopg.Connection[Any]) -> datetime | None:
    """The earliest imported row not relinked yet, over every source."""
    row = conn.execute("SELECT min(relink_from) FROM reference_import_state").fetchone()
    conn.commit()
    return row[0] if row else None


def relinked(conn: psycopg.Connection[Any]) -> None:
    conn.execute("UPDATE reference_import_state SET relink_from = NULL")
    conn.commit()


def present(conn: psycopg.Connection[Any], keys: list[tuple[str, datetime]]) -> set[str]:
    """The request ids among `keys` that Nexus already stores (at those times)."""
    if not keys:
        return set()
    times = [t for _, t in keys]
    cur = conn.execute(
        'SELECT request_id::text FROM api_requests WHERE request_id = ANY(%s::uuid[]) AND "timestamp" >= %s '
        'AND "timestamp" <= %s',
        ([k for k, _ in keys], min(times), max(times)),
    )
    return {r[0] for r in cur.fetchall()}


class Writer:
    """Builds and sends batches on one connection to Nexus's database."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.known = RecentKeys(50_000)
        self._days: set[date] = set()

    def partitions(self, days: set[date]) -> None:
        """Give imported history its own daily partitions (created before any row of the day is stored:
        a day already held by the DEFAULT partition cannot get one), so retention and partition pruning
        treat it like the proxy's rows. Each is committed at once: the lock it takes is held briefly. A
        role without the right to create them leaves the rows to the DEFAULT partition."""
        for day in sorted(days - self._days):
            try:
                ensure_partition(self.conn, day)
                self.conn.commit()
            except psycopg.errors.InsufficientPrivilege:
                self.conn.rollback()
            self._days.add(day)

    def rows(self, records: list[tuple[ExchangeRecord, str | None]]) -> tuple[Batch, list[bytes]]:
        """The COPY batch for `records` (each with the reference's conversation id to keep)."""
        if not records:
            return Batch(b"", b""), []
        built = build_batch([r for r, _ in records], self.known, conversations=[c for _, c in records])
        for request_id, why in built.lost:
            log.error("import: request %s could not be encoded: %s", request_id, why)
        return Batch(built.requests, built.blobs), built.new_keys

    def store(
        self, batch: Batch, keys: list[bytes], checkpoint: Callable[[psycopg.Connection[Any], Refused], None]
    ) -> Refused:
        """Send `batch` and run `checkpoint(conn, refused)` in the same transaction. A batch refused for
        its content is isolated (`nexus.storage.isolate`); the request rows refused even in their
        last-resort form are quarantined and returned, with the error."""
        try:
            send(self.conn, batch)
            checkpoint(self.conn, [])
            self.conn.commit()
        except Exception as exc:
            if self.conn.closed or classify(exc) == OUTAGE:
                raise
            self.conn.rollback()
            refused = self._isolate(batch)
            checkpoint(self.conn, refused)
            self.conn.commit()
        else:
            refused = []
        self.known.add_all(keys)
        return refused

    def _isolate(self, batch: Batch) -> Refused:
        refused: Refused = []

        def attempt(part: Batch) -> None:
            try:
                send(self.conn, part)
                self.conn.commit()
            except Exception:
                self.conn.rollback()
                raise

        def keep(row: quarantine.QuarantinedRow) -> None:
            quarantine.insert(self.conn, row)
            self.conn.commit()
            if row.table_name == "api_requests":
                refused.append((row.request_id, row.error))

        isolate(batch, attempt, keep)
        return refused
