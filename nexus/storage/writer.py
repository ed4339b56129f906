"""The batch writer: records in from the request path, batched COPY out to PostgreSQL, nothing lost.

`submit()` is all the request path ever calls: an append to a deque under a lock, never I/O. A
dedicated thread (libpq and encoding stay off the request event loop) takes a batch when
`STORAGE_BATCH_SIZE` records wait or `STORAGE_BATCH_INTERVAL_MS` passed, builds rows, has the Rust core
encode each table's rows into one binary COPY payload, and sends both in one transaction through
staging tables with `INSERT ... ON CONFLICT DO NOTHING` (COPY cannot skip duplicates; the request id
is the key, so a replayed batch can never double a row). A batch that cannot be sent goes to the spool
on disk and is replayed, in order, once the database answers again.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

import psycopg

from nexus._core import encode_copy_binary
from nexus.settings import Settings
from nexus.storage.partitions import drop_expired_partitions, ensure_partitions
from nexus.storage.records import (
    BLOB_NAMES,
    BLOB_TYPES,
    REQUEST_NAMES_BY_COUNT,
    REQUEST_TYPES,
    ExchangeRecord,
    to_row,
)
from nexus.storage.spool import Spool, SpoolFullError

log = logging.getLogger("nexus.storage")

FRAME = struct.Struct(">II")
_BLOB_COLS = ", ".join(BLOB_NAMES)
# Statements built once from the constant column lists (no user input reaches them).
COPY_BLOBS = f"COPY nexus_stage_blobs ({_BLOB_COLS}) FROM STDIN (FORMAT binary)"
INSERT_BLOBS = (
    f"INSERT INTO content_blobs ({_BLOB_COLS}) SELECT {_BLOB_COLS} FROM nexus_stage_blobs "  # noqa: S608
    "ON CONFLICT (key) DO NOTHING"
)
#: Rows actually inserted (never a replayed duplicate) are folded into their conversation's summary.
_CONVERSATION_UPSERT = """
INSERT INTO conversations AS c (conversation_id, project_id, first_at, last_at, request_count, input_tokens,
    output_tokens, cache_creation_input_tokens, cache_read_input_tokens, latest_request_id)
SELECT conversation_id, min(project_id), min("timestamp"), max("timestamp"), count(*),
    coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), coalesce(sum(cache_creation_input_tokens), 0),
    coalesce(sum(cache_read_input_tokens), 0), (array_agg(request_id ORDER BY "timestamp" DESC))[1]
FROM ins WHERE conversation_id IS NOT NULL GROUP BY conversation_id ORDER BY conversation_id
ON CONFLICT (conversation_id) DO UPDATE SET
    first_at = least(c.first_at, excluded.first_at),
    last_at = greatest(c.last_at, excluded.last_at),
    request_count = c.request_count + excluded.request_count,
    input_tokens = c.input_tokens + excluded.input_tokens,
    output_tokens = c.output_tokens + excluded.output_tokens,
    cache_creation_input_tokens = c.cache_creation_input_tokens + excluded.cache_creation_input_tokens,
    cache_read_input_tokens = c.cache_read_input_tokens + excluded.cache_read_input_tokens,
    latest_request_id = CASE WHEN excluded.last_at >= c.last_at THEN excluded.latest_request_id
                             ELSE c.latest_request_id END
"""


def request_statements(names: list[str]) -> tuple[str, str]:
    """COPY into staging, then insert what is new and update the conversation summaries, for a column list."""
    cols = ", ".join(f'"{n}"' for n in names)
    copy = f"COPY nexus_stage_requests ({cols}) FROM STDIN (FORMAT binary)"
    insert = (
        f"WITH ins AS (INSERT INTO api_requests ({cols}) SELECT {cols} FROM nexus_stage_requests "  # noqa: S608
        'ON CONFLICT DO NOTHING RETURNING conversation_id, project_id, "timestamp", request_id, input_tokens, '
        "output_tokens, cache_creation_input_tokens, cache_read_input_tokens)" + _CONVERSATION_UPSERT
    )
    return copy, insert


REQUEST_STATEMENTS = {count: request_statements(names) for count, names in REQUEST_NAMES_BY_COUNT.items()}
COPY_REQUESTS, INSERT_REQUESTS = REQUEST_STATEMENTS[len(REQUEST_TYPES)]
COPY_HEADER = 19  # signature (11) + flags (4) + header extension length (4)


STAGE_SQL = (
    "CREATE TEMP TABLE IF NOT EXISTS nexus_stage_requests (LIKE api_requests INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS nexus_stage_blobs (LIKE content_blobs INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
)


@dataclass(slots=True)
class WriterMetrics:
    submitted: int = 0
    rows_written: int = 0
    batches_written: int = 0
    blobs_written: int = 0
    spooled_batches: int = 0
    replayed_batches: int = 0
    dropped_rows: int = 0
    flush_failures: int = 0
    last_flush_ms: float = 0.0
    last_error: str | None = None
    spool_bytes: int = 0
    queue_depth: int = 0
    database_ok: bool = False


class RecentKeys:
    """A bounded set of content keys known to be in the database, oldest forgotten first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[bytes, None] = OrderedDict()

    def __contains__(self, key: bytes) -> bool:
        return key in self._keys

    def add_all(self, keys: list[bytes]) -> None:
        for key in keys:
            self._keys[key] = None
            self._keys.move_to_end(key)
        while len(self._keys) > self.capacity:
            self._keys.popitem(last=False)


class StorageWriter:
    def __init__(
        self,
        dsn: str,
        *,
        batch_size: int,
        interval_ms: int,
        spool: Spool,
        max_queue: int = 50_000,
        known_keys: int = 50_000,
        retention_days: int = 0,
    ) -> None:
        self.dsn = dsn
        self.batch_size = batch_size
        self.interval_s = interval_ms / 1000
        self.spool = spool
        self.max_queue = max_queue
        self.metrics = WriterMetrics()
        self._queue: deque[ExchangeRecord] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._known = RecentKeys(known_keys)
        self._conn: psycopg.Connection | None = None
        self._retry_at = 0.0
        self.retention_days = retention_days
        self._maintained_at = 0.0
        self._thread = threading.Thread(target=self._run, name="nexus-storage-writer", daemon=True)

    # --- request path ----------------------------------------------------------------------------
    def submit(self, record: ExchangeRecord) -> None:
        """Queue one finished exchange. Never blocks on I/O."""
        with self._cv:
            if len(self._queue) >= self.max_queue:
                self.metrics.dropped_rows += 1
                log.error("storage queue full (%d); request %s not stored", self.max_queue, record.request_id)
                return
            self._queue.append(record)
            self.metrics.submitted += 1
            if len(self._queue) >= self.batch_size:
                self._cv.notify()

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush (or spool) everything still queued, then stop."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout_s)

    def snapshot(self) -> dict[str, object]:
        m = self.metrics
        m.queue_depth = len(self._queue)
        m.spool_bytes = self.spool.size()
        return {k: getattr(m, k) for k in m.__slots__}

    # --- writer thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        self._replay_spool()
        while True:
            with self._cv:
                if not self._queue and not self._stopping:
                    self._cv.wait(self.interval_s)
                elif len(self._queue) < self.batch_size and not self._stopping:
                    self._cv.wait(self.interval_s)
                batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
                stopping = self._stopping and not self._queue
            if batch:
                self._write_batch(batch)
            elif self.spool.pending_files():
                self._replay_spool()
            else:
                self._maintain()
            if stopping:
                break
        if self._conn is not None:
            self._conn.close()

    def _write_batch(self, batch: list[ExchangeRecord]) -> None:
        blobs: dict[bytes, tuple[int, bytes]] = {}
        rows = []
        for rec in batch:
            try:
                rows.append(to_row(rec, blobs, self._known))
            except Exception as exc:  # one bad record must not sink its batch
                self.metrics.dropped_rows += 1
                log.exception("request %s could not be turned into a row: %s", rec.request_id, exc)
        if not rows:
            return
        new_blobs = [[k, kind, body] for k, (kind, body) in blobs.items() if k not in self._known]
        try:
            req_copy = encode_copy_binary(REQUEST_TYPES, rows)
            blob_copy = encode_copy_binary(BLOB_TYPES, new_blobs) if new_blobs else b""
            payload = FRAME.pack(len(req_copy), len(blob_copy)) + req_copy + blob_copy
        except ValueError:
            self.metrics.dropped_rows += len(rows)
            log.exception("a batch of %d rows could not be encoded", len(rows))
            return
        if self.spool.pending_files() and not self._replay_spool():
            self._to_spool(payload, len(rows))  # keep order: older spooled batches go first
            return
        try:
            started = time.perf_counter()
            self._send(payload)
            self.metrics.last_flush_ms = (time.perf_counter() - started) * 1000
            self.metrics.rows_written += len(rows)
            self.metrics.batches_written += 1
            self.metrics.blobs_written += len(new_blobs)
            self._known.add_all([b[0] for b in new_blobs])
        except Exception as exc:
            self.metrics.flush_failures += 1
            self.metrics.last_error = f"{exc.__class__.__name__}: {exc}"[:500]
            log.warning("storage flush failed (%s); spooling %d rows", self.metrics.last_error, len(rows))
            self._to_spool(payload, len(rows))

    def _maintain(self) -> None:
        """Hourly, when idle: partitions for the coming days, and retention by dropping old days."""
        if time.monotonic() - self._maintained_at < 3600:
            return
        self._maintained_at = time.monotonic()
        try:
            conn = self._connection()
            conn.autocommit = True
            try:
                ensure_partitions(conn)
                dropped = drop_expired_partitions(conn, self.retention_days)
            finally:
                conn.autocommit = False
            if dropped:
                log.info("retention: dropped partitions %s", ", ".join(dropped))
        except Exception as exc:
            self._maintained_at -= 3000  # try again in ten minutes
            log.warning("partition maintenance failed: %s", exc)

    def _to_spool(self, payload: bytes, rows: int) -> None:
        try:
            self.spool.append(payload)
            self.metrics.spooled_batches += 1
        except (SpoolFullError, OSError) as exc:
            self.metrics.dropped_rows += rows
            self.metrics.last_error = f"spool: {exc}"
            log.error("STORAGE LOSS: %d rows could not be spooled: %s", rows, exc)

    def _replay_spool(self) -> bool:
        """Replay spooled batches; True when the spool is empty afterwards."""
        if not self.spool.pending_files():
            return True
        if time.monotonic() < self._retry_at:
            return False
        try:
            self.metrics.replayed_batches += self.spool.replay(self._send)
        except Exception as exc:
            self.metrics.last_error = f"replay: {exc.__class__.__name__}: {exc}"[:500]
            return False
        return not self.spool.pending_files()

    def _connection(self) -> psycopg.Connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if time.monotonic() < self._retry_at:
            raise ConnectionError("database unavailable; waiting before the next attempt")
        try:
            conn = psycopg.connect(self.dsn, connect_timeout=3, autocommit=False)
            with conn.cursor() as cur:
                for sql in STAGE_SQL:
                    cur.execute(sql)  # type: ignore[arg-type]
            conn.commit()
        except Exception:
            self._retry_at = time.monotonic() + 1.0
            self.metrics.database_ok = False
            raise
        self._conn = conn
        self.metrics.database_ok = True
        return conn

    def _send(self, payload: bytes) -> None:
        req_len, blob_len = FRAME.unpack_from(payload)
        req_copy = payload[FRAME.size : FRAME.size + req_len]
        blob_copy = payload[FRAME.size + req_len : FRAME.size + req_len + blob_len]
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                if blob_copy:
                    with cur.copy(COPY_BLOBS) as cp:  # type: ignore[arg-type]
                        cp.write(blob_copy)
                    cur.execute(INSERT_BLOBS)  # type: ignore[arg-type]
                if req_len:
                    copy_sql, insert_sql = REQUEST_STATEMENTS[struct.unpack_from(">h", req_copy, COPY_HEADER)[0]]
                    with cur.copy(copy_sql) as cp:  # type: ignore[arg-type]
                        cp.write(req_copy)
                    cur.execute(insert_sql)  # type: ignore[arg-type]
            conn.commit()
        except Exception:
            try:
                conn.close()
            finally:
                self._conn = None
                self.metrics.database_ok = False
                self._retry_at = time.monotonic() + 1.0
            raise


def build_writer(settings: Settings) -> StorageWriter | None:
    """The worker's writer, or None when storage is off or has no database to write to."""
    if not settings.storage_enabled:
        return None
    if settings.database_url is None:
        log.warning("STORAGE_ENABLED but no DATABASE_URL: requests are not stored (`nexus serve` embeds one)")
        return None
    spool = Spool(settings.nexus_home / "spool", settings.storage_spool_max_bytes)
    return StorageWriter(
        settings.database_url,
        batch_size=settings.storage_batch_size,
        interval_ms=settings.storage_batch_interval_ms,
        spool=spool,
        max_queue=settings.storage_max_queue,
        retention_days=settings.storage_retention_days,
    )
