"""The batch writer: records in from the request path, batched COPY out to PostgreSQL, nothing lost.

`submit()` is all the request path ever calls: an append to a deque under a lock, never I/O. A
dedicated thread (libpq and encoding stay off the request event loop) takes a batch when
`STORAGE_BATCH_SIZE` records wait or `STORAGE_BATCH_INTERVAL_MS` passed, and has the Rust core build
and encode the batch in one call (`records.build_batch`): each table's rows become one binary COPY
payload (safe by construction: NUL, lone surrogates, numbers and nesting PostgreSQL cannot hold are
repaired visibly and flagged), the encoding done with the GIL released so the event loop serving
requests keeps running, and both payloads are sent in one transaction (`payload.send`).

When a batch cannot be sent, what happens depends on why (`failures.classify`). The database being
away: the batch goes to the spool on disk and is replayed, in order, once it answers again. The
batch's content being refused: its rows are isolated (`isolate`), so every row PostgreSQL accepts goes
in, a refused row is stored in its last-resort form, and only what is refused even then is kept in the
quarantine (`quarantine`). Spool replay does the same, so no record ever blocks the ones after it.
"""

from __future__ import annotations

import gc
import logging
import random
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from nexus._core import KnownKeys, NexusCoreError, copy_rows
from nexus.observability.threads import name_this_thread
from nexus.settings import Settings
from nexus.storage import quarantine
from nexus.storage.failures import OUTAGE, UNKNOWN, classify, describe
from nexus.storage.isolate import isolate
from nexus.storage.migrate import pending_migrations
from nexus.storage.partitions import UPKEEP_EVERY_S, upkeep
from nexus.storage.payload import STAGE_SQL, Batch, merge_copy, send
from nexus.storage.records import BuiltBatch, ExchangeRecord, build_batch
from nexus.storage.spool import Spool, SpoolFullError
from nexus.storage.watchdog import Watchdog

log = logging.getLogger("nexus.storage")

#: An unsent row older than this makes storage "degraded" in /health.
STALE_AFTER_S = 60.0
#: A database call waiting longer than this is reported in /health (the watchdog ends it later).
SLOW_CALL_S = 5.0
#: When idle, the writer checks the database this often, so /health tells the truth without traffic.
PING_EVERY_S = 5.0
#: What a queued record holds besides its bodies (headers, analysis, link, the record itself), roughly.
RECORD_OVERHEAD = 4096
#: A batch the overflow thread encodes ends at this many counted bytes (`record_bytes`) even before
#: STORAGE_BATCH_SIZE rows: 200 rows of 50 KB bodies made ~10 MB of payloads held at once beside the
#: writer's own batch (the worker's memory peak under load). The writer's batches are not bounded so:
#: each of its batches costs GIL round trips with the busy event loop, and 4 MiB batches (~80 rows)
#: made it fall behind (more rows spooled, more CPU per request; docs/storage.md, "Memory").
BATCH_MAX_BYTES = 4 << 20
#: Deadlock detected, serialization failure: PostgreSQL ended the transaction to let another one (another
#: worker's batch) go on. Nothing is wrong with the batch or the database: it is sent again at once.
CONFLICTS = frozenset({"40P01", "40001"})
#: How many times a batch ended by such a conflict is sent again before it is spooled like an outage.
CONFLICT_RETRIES = 3
#: The most content keys the early-encoded batches are remembered to carry (they hold at most half of
#: STORAGE_MAX_QUEUE_BYTES: far fewer parts than this).
PENDING_KEYS = 1 << 20


def record_bytes(record: ExchangeRecord) -> int:
    """What a queued record keeps in memory, roughly: its bodies, which are almost all of it."""
    return len(record.request_body or b"") + len(record.response_body or b"") + RECORD_OVERHEAD


@dataclass(slots=True)
class Encoded:
    """Rows the overflow thread built and encoded ahead of the writer: sent before any newer row."""

    built: BuiltBatch
    rows: int
    #: Start (Unix s) of the oldest request in it, for /health's oldest unwritten row.
    oldest_s: float

    @property
    def size(self) -> int:
        return len(self.built.requests) + len(self.built.blobs)


class OutageError(Exception):
    """The database is away: the batch waits in the spool."""


@dataclass(slots=True)
class WriterMetrics:
    submitted: int = 0
    rows_written: int = 0
    batches_written: int = 0
    blobs_written: int = 0
    spooled_batches: int = 0
    spooled_rows: int = 0
    replayed_batches: int = 0
    replayed_rows: int = 0
    dropped_rows: int = 0
    #: Rows encoded early by the overflow thread because more than STORAGE_MAX_QUEUE_BYTES of records
    #: waited in memory: kept in memory as COPY payloads (about a tenth of a record's size), in order.
    overflow_encoded_rows: int = 0
    #: Rows sent to the spool because even their encoded payloads were past the bound.
    overflow_rows: int = 0
    flush_failures: int = 0
    #: Batches sent again because PostgreSQL ended them to break a deadlock with another worker's.
    deadlock_retries: int = 0
    refused_batches: int = 0  # batches PostgreSQL refused for their content (then isolated)
    rows_last_resort: int = 0  # rows stored in their last-resort form
    rows_quarantined: int = 0  # rows kept in the quarantine by this process
    quarantine_rows: int = 0  # rows in the quarantine table (all processes), as last counted
    quarantine_file_rows: int = 0  # rows in quarantine files of this machine
    last_flush_ms: float = 0.0
    last_error: str | None = None
    spool_bytes: int = 0
    queue_depth: int = 0
    queue_bytes: int = 0
    oldest_unwritten_s: float = 0.0
    database_ok: bool = False
    #: Whether the writer has connected once and looked at the migrations.
    migrations_checked: bool = False
    #: Migrations the database lacks, as found at the last connection (None: this role may not tell).
    migrations_pending: list[str] | None = None
    degraded_reasons: list[str] = field(default_factory=list)


#: A bounded set of content keys known to be in the database, oldest forgotten first. Kept in Rust
#: (`_core.KnownKeys`) so the row builder checks a batch's parts against it with the GIL released.
RecentKeys = KnownKeys


class StorageWriter:
    def __init__(
        self,
        dsn: str,
        *,
        batch_size: int,
        interval_ms: int,
        spool: Spool,
        max_queue: int = 50_000,
        max_queue_bytes: int = 8 << 20,
        known_keys: int = 50_000,
        retention_days: int = 0,
        link_days: int = 0,
        quarantine_files: quarantine.QuarantineFiles | None = None,
        write_timeout_ms: int = 15_000,
        on_batch: Callable[[float], None] | None = None,
        search: bool = True,
    ) -> None:
        self.dsn = dsn
        #: Build each row's search vector (STORAGE_SEARCH_ENABLED).
        self.search = search
        self.batch_size = batch_size
        self.interval_s = interval_ms / 1000
        self.spool = spool
        self.max_queue = max_queue
        #: Past this many bytes of records waiting in memory, the oldest are encoded early
        #: (`_overflow_run`); past half as many bytes of those payloads, the oldest go to the spool.
        self.max_queue_bytes = max_queue_bytes
        self._queued_bytes = 0
        self._encoded: deque[Encoded] = deque()
        #: Whether the last `_replay_spool` reached the database (see there).
        self._replay_ran = False
        self._encoded_bytes = 0
        self.metrics = WriterMetrics()
        self.quarantine_files = quarantine_files or quarantine.QuarantineFiles(spool.directory.parent / "quarantine")
        self._queue: deque[ExchangeRecord] = deque()
        lock = threading.Lock()
        self._cv = threading.Condition(lock)
        #: Wakes the overflow thread when more than `max_queue_bytes` wait (the queue's lock too).
        self._over_cv = threading.Condition(lock)
        self._stopping = False
        self._known = RecentKeys(known_keys)
        #: Content parts the batches encoded early (`_encoded`) carry: a later one leaves them out. So
        #: those batches leave memory only all together (`_take_all_encoded`), which clears this and
        #: counts an epoch; a batch encoded across that is encoded again carrying its own parts.
        self._pending = RecentKeys(PENDING_KEYS)
        self._epoch = 0
        self._conn: psycopg.Connection | None = None
        self._retry_at = 0.0
        self.retention_days = retention_days
        #: The shared linking tables keep this many days (LINK_LOOKBACK_DAYS); 0 leaves them alone.
        self.link_days = link_days
        # Never: the first idle moment maintains. (0.0 waited until the host had been up an hour, since
        # monotonic time counts from boot: a machine booted 30 min ago kept expired days 30 min longer.)
        self._maintained_at = float("-inf")
        #: Batches refused once with an error of no known class, by checksum: refused again, they are isolated.
        self._strikes: OrderedDict[int, str] = OrderedDict()
        self.write_timeout_s = write_timeout_ms / 1000
        self._watchdog = Watchdog(self.write_timeout_s)
        self._in_flight_since: float | None = None  # start (Unix s) of the oldest request in the batch being sent
        self._last_contact = 0.0
        self._backoff_s = 0.0
        #: Told the duration of each batch written (metrics), from the writer's thread.
        self.on_batch = on_batch
        self._thread = threading.Thread(target=self._run, name="nexus-storage-writer", daemon=True)
        self._overflow = threading.Thread(target=self._overflow_run, name="nexus-storage-overflow", daemon=True)

    # --- request path ----------------------------------------------------------------------------
    def submit(self, record: ExchangeRecord) -> None:
        """Queue one finished exchange. Never blocks on I/O."""
        with self._cv:
            if len(self._queue) >= self.max_queue:
                self.metrics.dropped_rows += 1
                log.error("storage queue full (%d); request %s not stored", self.max_queue, record.request_id)
                return
            self._queue.append(record)
            self._queued_bytes += record_bytes(record)
            self.metrics.submitted += 1
            if len(self._queue) >= self.batch_size:
                self._cv.notify()
            if self._queued_bytes > self.max_queue_bytes:
                self._over_cv.notify()

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        self._overflow.start()

    def close(self, timeout_s: float | None = None) -> None:
        """Flush (or spool) everything still queued, then stop. A database that hangs is given the
        write timeout (the watchdog then ends the call and that batch is spooled); whatever is still
        queued after that is spooled from here."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
            self._over_cv.notify()
        self._thread.join(timeout_s if timeout_s is not None else self.write_timeout_s + 5)
        if self._overflow.ident is not None:
            self._overflow.join(self.write_timeout_s)
        self._watchdog.stop()
        self._spool_leftovers()

    def _spool_leftovers(self) -> None:
        """At shutdown, what the writer did not send: queued records (a stuck writer) and batches the
        overflow thread encoded after the writer's last look."""
        with self._cv:
            records = list(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
            encoded = self._take_all_encoded()
        if encoded is not None:
            self._to_spool(Batch(encoded.built.requests, encoded.built.blobs), encoded.rows)
        if not records:
            return
        log.warning("storage: the writer is stuck; spooling %d queued rows at shutdown", len(records))
        self._spool_records(records)

    def _spool_records(self, records: list[ExchangeRecord]) -> None:
        """Build and encode `records` and keep them in the spool (no database involved)."""
        built = build_batch(records)
        self._count_lost(built)
        self._to_spool(Batch(built.requests, built.blobs), len(records) - len(built.lost))

    def queue_depth(self) -> int:
        """Rows waiting in memory: queued records and rows encoded early."""
        return len(self._queue) + sum(e.rows for e in list(self._encoded))

    def stuck_reason(self) -> str | None:
        """Why the writer cannot make progress (readiness), or None: its thread ended, a database call
        has waited past `SLOW_CALL_S`, or the queue is full."""
        if self._thread.ident is not None and not self._thread.is_alive() and not self._stopping:
            return "the writer thread has stopped"
        waiting = self._watchdog.busy_for()
        if waiting > SLOW_CALL_S:
            return f"a database call has been waiting {waiting:.0f} s"
        if len(self._queue) >= self.max_queue:
            return f"the write queue is full ({self.max_queue} rows)"
        return None

    def snapshot(self) -> dict[str, object]:
        """For /health: counters, and why storage is degraded (empty when it is not)."""
        m = self.metrics
        m.queue_depth = self.queue_depth()
        m.queue_bytes = self._queued_bytes + self._encoded_bytes
        m.spool_bytes = self.spool.size()
        encoded = list(self._encoded)
        candidates = [self._queue[0].started_at_us / 1e6 if self._queue else None]
        candidates += [encoded[0].oldest_s if encoded else None]
        candidates += [self._in_flight_since, self.spool.oldest_mtime()]
        found = [c for c in candidates if c is not None]
        oldest = min(found) if found else None
        m.oldest_unwritten_s = round(max(0.0, time.time() - oldest), 3) if oldest is not None else 0.0
        reasons = []
        if not m.database_ok:
            reasons.append("database unreachable" + (f": {m.last_error}" if m.last_error else ""))
        if m.spool_bytes:
            reasons.append(f"{m.spool_bytes} bytes wait in the spool")
        if m.oldest_unwritten_s > STALE_AFTER_S:
            reasons.append(f"the oldest unwritten row is {m.oldest_unwritten_s:.0f} s old")
        waiting = self._watchdog.busy_for()
        if waiting > SLOW_CALL_S:
            reasons.append(f"a database call has been waiting {waiting:.0f} s")
        if m.overflow_rows:
            reasons.append(
                f"{m.overflow_rows} rows were spooled because the database wrote slower than requests came "
                f"(more than {self.max_queue_bytes} bytes waited in memory)"
            )
        if m.dropped_rows:
            reasons.append(f"{m.dropped_rows} rows could not be stored (queue full or spool unavailable)")
        if m.quarantine_rows or m.quarantine_file_rows:
            reasons.append(
                f"{m.quarantine_rows + m.quarantine_file_rows} rows in quarantine (nexus storage quarantine)"
            )
        m.degraded_reasons = reasons
        out = {k: getattr(m, k) for k in m.__slots__}
        out["degraded"] = bool(reasons)
        return out

    # --- writer thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        name_this_thread()
        self._count_quarantine()
        self._replay_spool()
        while True:
            with self._cv:
                if not self._encoded and len(self._queue) < self.batch_size and not self._stopping:
                    self._cv.wait(self.interval_s)
                encoded = self._take_all_encoded()
                if encoded is None:
                    batch = self._take(None)
                else:
                    batch = []
                stopping = self._stopping and not self._queue and not self._encoded
            if encoded is not None:  # older than anything still queued: first
                self._in_flight_since = encoded.oldest_s
                try:
                    self._write_built(encoded.built, encoded.rows)
                finally:
                    self._in_flight_since = None
            elif batch:
                self._in_flight_since = batch[0].started_at_us / 1e6
                try:
                    self._write_batch(batch)
                finally:
                    self._in_flight_since = None
            elif self.spool.pending_files():
                self._replay_spool()
            else:
                self._maintain()
                self._ping()
            if stopping:
                break
        if self._conn is not None:
            self._conn.close()

    def _take(self, max_bytes: int | None) -> list[ExchangeRecord]:
        """The oldest waiting rows, up to STORAGE_BATCH_SIZE of them and `max_bytes` of counted bytes
        (at least one row). Called with the queue's lock held."""
        batch: list[ExchangeRecord] = []
        size = 0
        while self._queue and len(batch) < self.batch_size and (max_bytes is None or size < max_bytes):
            record = self._queue.popleft()
            batch.append(record)
            size += record_bytes(record)
        self._queued_bytes -= size
        return batch

    def _take_all_encoded(self) -> Encoded | None:
        """Every batch encoded early, oldest first, merged into one (the caller holds the lock): a
        writer that fell behind sends them in one transaction, not one per batch.

        They leave memory together because each may leave out parts an older one carries
        (`_pending`): together they hold every part the database is not known to hold, as every batch
        sent or spooled must; one of them alone might not. They hold at most about half of
        STORAGE_MAX_QUEUE_BYTES (`_encode_early` spills past it)."""
        if not self._encoded:
            return None
        taken = list(self._encoded)
        self._encoded.clear()
        self._encoded_bytes = 0
        self._pending.clear()
        self._epoch += 1
        if len(taken) == 1:
            return taken[0]
        # no new keys: what a sent batch adds to the known set is what `_deliver` sends (`_unsent`)
        built = BuiltBatch(
            merge_copy([e.built.requests for e in taken]), merge_copy([e.built.blobs for e in taken]), [], []
        )
        return Encoded(built, sum(e.rows for e in taken), taken[0].oldest_s)

    def _overflow_run(self) -> None:
        """Keep what waits in memory under `max_queue_bytes` while the writer thread is inside a
        database call (a slow COPY, a spool replay). Without it, traffic faster than the database grew
        a worker by the arrival rate times the call's length (hundreds of MB under load here).

        The oldest waiting records are built and encoded here, ahead of the writer, and kept in memory
        as COPY payloads: a queued record holds its bodies, its analysis and its headers (about three
        times the bytes counted), its payload about a tenth of them (the conversation's history is
        split into content parts stored once). So a short burst or one slow COPY costs neither disk
        nor the spool's replay; only when the encoded payloads too pass half the bound (a database
        slower than the traffic for long) do they go to the spool, already encoded, all together
        (`_take_all_encoded`)."""
        name_this_thread()
        while True:
            with self._over_cv:
                while not self._stopping and self._queued_bytes <= self.max_queue_bytes:
                    self._over_cv.wait()
                if self._stopping:
                    return
                batch = self._take(BATCH_MAX_BYTES)
            if batch:
                try:
                    self._encode_early(batch)
                except Exception:  # a bug, never content: this thread must not end (memory would grow)
                    log.exception("storage: rows could not be encoded early; spooling them one by one")
                    self._spool_one_by_one(batch)

    def _spool_one_by_one(self, records: list[ExchangeRecord]) -> None:
        for rec in records:
            try:
                self._spool_records([rec])
            except Exception:
                self.metrics.dropped_rows += 1
                log.exception("STORAGE LOSS: request %s could not be built", getattr(rec, "request_id", "?"))

    def _encode_early(self, records: list[ExchangeRecord]) -> None:
        # Parts the database holds are left out, as the writer does (`KnownKeys` is shared safely: it
        # locks), and so are parts an earlier batch still in memory carries (`_pending`): under a
        # backlog each batch used to carry its conversations' whole history again (~14 KB a row of
        # parts encoded where ~3 KB were new). If those batches left memory while this one was being
        # encoded (the writer took them, or they were spilled), it is encoded again with its own parts.
        with self._cv:
            epoch = self._epoch
        built = build_batch(records, self._known, pending=self._pending)
        rows = len(records) - self._count_lost(built)
        with self._cv:
            current = epoch == self._epoch
            spill = self._keep_encoded(built, rows, records) if current else None
        if not current:
            built = build_batch(records, self._known)  # self-contained: fits whatever memory holds now
            with self._cv:
                spill = self._keep_encoded(built, rows, records)
        if spill is not None:
            self.metrics.overflow_rows += spill.rows
            self._to_spool(Batch(spill.built.requests, spill.built.blobs), spill.rows)

    def _keep_encoded(self, built: BuiltBatch, rows: int, records: list[ExchangeRecord]) -> Encoded | None:
        """Keep a batch encoded early in memory (the caller holds the lock); past half the byte bound
        all of them are returned, merged, for the spool (they depend on each other's parts)."""
        self.metrics.overflow_encoded_rows += rows
        if rows:
            encoded = Encoded(built, rows, records[0].started_at_us / 1e6)
            self._encoded.append(encoded)
            self._encoded_bytes += encoded.size
            self._pending.add_all(built.new_keys)
        spill = self._take_all_encoded() if self._encoded_bytes > self.max_queue_bytes // 2 else None
        self._cv.notify()
        return spill

    def _write_batch(self, records: list[ExchangeRecord]) -> None:
        try:
            # one call: rows built and encoded by the Rust core, the encoding with the GIL released
            built = build_batch(records, self._known)
        except Exception:
            # build_batch never fails for a record's content: this is a bug. The records go one by
            # one, so only one that cannot be built is lost, loudly.
            log.exception("storage: a batch could not be built; building its rows one by one")
            self._write_one_by_one(records)
            return
        rows = len(records) - self._count_lost(built)
        if rows:
            self._write_built(built, rows)

    def _write_built(self, built: BuiltBatch, rows: int) -> None:
        """Send a built batch, after what waits in the spool when the queue allows; spool it when the
        database is away.

        Older spooled batches go first while the database answers and the queue is under its bound. A
        replay yields to a queue over the bound (`_over_bound`; or another worker replays the files
        left), and the batch in hand then goes straight to the database: sending it to the spool
        behind the others (as before) turned a burst into a cascade, every later row written to disk
        and read back, for as long as the traffic kept the queue near its bound (a third of the rows
        under c=32 here). No reader relies on that order: a batch carries every content part the
        database is not known to hold, so a row never points at a part that waits in the spool."""
        batch = Batch(built.requests, built.blobs)
        if self.spool.pending_files() and not self._replay_spool() and not self._replay_ran:
            self._to_spool(batch, rows)  # the database is away: behind the others
            return
        try:
            self._deliver(batch, rows)
        except OutageError:
            self._to_spool(batch, rows)
            return
        self.metrics.batches_written += 1

    def _count_lost(self, built: BuiltBatch) -> int:
        """Count and log the records the builder left out (a value no column can take: a bug)."""
        for request_id, why in built.lost:
            self.metrics.dropped_rows += 1
            log.error("STORAGE LOSS: request %s could not be encoded: %s", request_id, why)
        return len(built.lost)

    def _write_one_by_one(self, records: list[ExchangeRecord]) -> None:
        for rec in records:
            try:
                built = build_batch([rec])
            except Exception:
                self.metrics.dropped_rows += 1
                log.exception("STORAGE LOSS: request %s could not be built", getattr(rec, "request_id", "?"))
                continue
            if self._count_lost(built):
                continue
            batch = Batch(built.requests, built.blobs)
            try:
                self._deliver(batch, 1)
            except OutageError:
                self._to_spool(batch, 1)

    def _deliver(self, batch: Batch, rows: int) -> None:
        """Store `batch` (`rows` requests and its content parts the database is not known to hold),
        isolating refused rows; `OutageError` when the database is away. The parts sent are then
        known to be stored."""
        sent, keys = self._unsent(batch)
        started = time.perf_counter()
        try:
            self._send(sent)
        except Exception as exc:
            kind = classify(exc)
            if kind == UNKNOWN and not self._repeated(batch, exc):
                kind = OUTAGE
            self.metrics.last_error = describe(exc)
            if kind == OUTAGE:
                self.metrics.flush_failures += 1
                self._retry_at = max(self._retry_at, time.monotonic() + 1.0)
                log.warning("storage flush failed (%s); the batch waits in the spool", self.metrics.last_error)
                raise OutageError from exc
            self._isolate(sent, exc)
            return
        elapsed = time.perf_counter() - started
        self.metrics.last_flush_ms = elapsed * 1000
        if self.on_batch is not None:
            self.on_batch(elapsed)
        self.metrics.rows_written += rows
        self.metrics.blobs_written += len(keys)
        self._known.add_all(keys)

    def _unsent(self, batch: Batch) -> tuple[Batch, list[bytes]]:
        """`batch` without the content parts this worker has stored since it was encoded, or that it
        carries twice, and the keys of the parts it sends (`KnownKeys.unsent`).

        A batch built by the writer just now holds none of those, but one encoded ahead of a writer
        that fell behind, several of those merged into one, or one read back from the spool holds
        many (the batches before it carried the same conversations' parts): PostgreSQL parsed each as
        jsonb before skipping it, four fifths of the parts sent at saturation, which made a writer
        that fell behind fall further behind. Leaving out parts the database holds keeps the rule
        that a row never points at a part the database may lack."""
        if not batch.blobs:
            return batch, []
        try:
            blobs, keys = self._known.unsent(batch.blobs)
        except NexusCoreError:  # not a payload we can read: sent as it is, PostgreSQL judges it
            return batch, []
        return (batch if blobs is batch.blobs else Batch(batch.requests, blobs)), keys

    def _isolate(self, batch: Batch, exc: BaseException) -> None:
        self.metrics.refused_batches += 1
        log.warning("PostgreSQL refused a batch for its content (%s); isolating the rows it refuses", describe(exc))
        try:
            counts = isolate(batch, self._send, self._quarantine)
        except Exception as outage:
            self.metrics.flush_failures += 1
            self.metrics.last_error = describe(outage)
            raise OutageError from outage
        self.metrics.rows_written += counts.requests
        self.metrics.blobs_written += counts.blobs
        self.metrics.rows_last_resort += counts.last_resort
        self.metrics.rows_quarantined += counts.quarantined

    def _repeated(self, batch: Batch, exc: BaseException) -> bool:
        """True when this batch was refused before with the same error of no known class."""
        key = zlib.crc32(batch.requests) ^ zlib.crc32(batch.blobs)
        state = str(getattr(exc, "sqlstate", ""))
        if self._strikes.get(key) == state:
            del self._strikes[key]
            return True
        self._strikes[key] = state
        while len(self._strikes) > 1000:
            self._strikes.popitem(last=False)
        return False

    def _quarantine(self, row: quarantine.QuarantinedRow) -> None:
        """Keep a refused row: in the table, or in a file when the table refuses too."""
        log.error(
            "storage: a %s row (request %s) was refused even in its last-resort form and is quarantined: %s",
            row.table_name,
            row.request_id,
            row.error,
        )
        try:
            conn = self._connection()
            with self._watchdog.guard(conn):
                quarantine.insert(conn, row)
                conn.commit()
            self.metrics.quarantine_rows += 1
            return
        except Exception as exc:
            self._after_failure(exc)
            if classify(exc) == OUTAGE and not isinstance(exc, psycopg.errors.UndefinedTable):
                raise  # the database is away: the whole batch is spooled and isolated again later
        self.quarantine_files.append(row)
        self.metrics.quarantine_file_rows += 1

    def _count_quarantine(self) -> None:
        try:
            conn = self._connection()
            with self._watchdog.guard(conn):
                self.metrics.quarantine_rows = quarantine.count_table(conn)
                conn.commit()
        except Exception as exc:
            if self._conn is not None:
                self._after_failure(exc)
        try:
            self.metrics.quarantine_file_rows = sum(1 for _ in self.quarantine_files.rows())
        except OSError:
            pass

    def _maintain(self) -> None:
        """Hourly, when idle: partitions for the coming days, retention by dropping old days (skipped
        while another worker or machine on the same database does it, or did it in the last 55 minutes:
        `partitions.upkeep`), and a fresh count of the quarantine (rows retried or dropped by `nexus
        storage quarantine`)."""
        if time.monotonic() - self._maintained_at < 3600:
            return
        self._maintained_at = time.monotonic()
        try:
            conn = self._connection()
            conn.autocommit = True
            try:
                with self._watchdog.guard(conn):
                    done = upkeep(conn, self.retention_days, self.link_days, every_s=UPKEEP_EVERY_S)
            finally:
                if not conn.closed:
                    conn.autocommit = False
            if done is not None and done.dropped:
                log.info("retention: dropped partitions %s", ", ".join(done.dropped))
        except Exception as exc:
            self._maintained_at -= 3000  # try again in ten minutes
            log.warning("partition maintenance failed: %s", exc)
        self._count_quarantine()

    def _ping(self) -> None:
        """When idle, a `SELECT 1` now and then, so /health notices a database that went away."""
        now = time.monotonic()
        if now - self._last_contact < PING_EVERY_S or now < self._retry_at:
            return
        self._last_contact = now
        try:
            conn = self._connection()
            with self._watchdog.guard(conn):
                conn.execute("SELECT 1")
                conn.commit()
        except Exception as exc:
            if self.metrics.database_ok:  # news: the database went away while nothing was being written
                self.metrics.last_error = describe(exc)
            self._after_failure(exc)
            self.metrics.database_ok = False

    def _to_spool(self, batch: Batch, rows: int) -> None:
        try:
            self.spool.append(batch.parts())
            self.metrics.spooled_batches += 1
            self.metrics.spooled_rows += rows
        except (SpoolFullError, OSError) as exc:
            self.metrics.dropped_rows += rows
            self.metrics.last_error = f"spool: {exc}"
            log.error("STORAGE LOSS: %d rows could not be spooled: %s", rows, exc)

    def _replay_spool(self) -> bool:
        """Replay spooled batches; True when the spool is empty afterwards. `_replay_ran` says whether
        the database took what was replayed (files left: the replay yielded to the queue, or another
        worker is replaying them), as opposed to the database being away or a file unreadable."""
        self._replay_ran = False
        if not self.spool.pending_files():
            return True
        if time.monotonic() < self._retry_at:
            return False
        try:
            self.metrics.replayed_batches += self.spool.replay(self._replay_one, stop=self._over_bound)
        except OutageError:
            return False
        except Exception as exc:  # a spool file that cannot be read: logged, kept for inspection
            self.metrics.last_error = f"replay: {describe(exc)}"
            log.exception("spool replay failed")
            return False
        self._replay_ran = True
        return not self.spool.pending_files()

    def _over_bound(self) -> bool:
        """Whether more than `max_queue_bytes` wait in memory: a replay then yields to the queue (which
        sends its oldest rows to the spool), so replaying never lets memory grow."""
        return self._queued_bytes > self.max_queue_bytes and not self._stopping

    def _replay_one(self, payload: bytes) -> None:
        batch = Batch.unpack(payload)
        rows = len(copy_rows(batch.requests)) if batch.requests else 0
        self._deliver(batch, rows)
        self.metrics.replayed_rows += rows

    def _connection(self) -> psycopg.Connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if time.monotonic() < self._retry_at:
            raise ConnectionError("database unavailable; waiting before the next attempt")
        try:  # TCP keepalives (ignored on unix sockets): a peer that vanished is noticed within ~40 s
            conn = psycopg.connect(
                self.dsn,
                autocommit=False,
                connect_timeout=3,
                keepalives=1,
                keepalives_idle=20,
                keepalives_interval=5,
                keepalives_count=4,
            )
            with conn.cursor() as cur:
                for sql in STAGE_SQL:
                    cur.execute(sql)  # type: ignore[arg-type]
            conn.commit()
            self.metrics.migrations_pending = pending_migrations(conn)
            self.metrics.migrations_checked = True
            conn.commit()
        except Exception:
            # back off (1, 2, 4 ... 10 s) so a database that comes back is not flooded, and collect the
            # failed attempt now: psycopg leaves its socket to the cycle collector, which the proxy's
            # tuned GC rarely runs, and a hung server then ends up with hundreds of half-open sockets
            self._backoff_s = min(10.0, self._backoff_s * 2) if self._backoff_s else 1.0
            self._retry_at = time.monotonic() + self._backoff_s
            self.metrics.database_ok = False
            gc.collect(1)
            raise
        self._backoff_s = 0.0
        self._conn = conn
        self.metrics.database_ok = True
        return conn

    def _send(self, batch: Batch) -> None:
        """Send and commit `batch`; a transaction PostgreSQL ended to break a deadlock with another
        worker (or a serialization failure) is sent again at once, up to `CONFLICT_RETRIES` times,
        before it counts as an outage (and the batch is spooled)."""
        for attempt in range(CONFLICT_RETRIES + 1):
            conn = self._connection()
            try:
                with self._watchdog.guard(conn):
                    send(conn, batch, search=self.search)
                    conn.commit()
            except Exception as exc:
                self._after_failure(exc)
                if getattr(exc, "sqlstate", None) not in CONFLICTS or attempt == CONFLICT_RETRIES:
                    raise
                self.metrics.deadlock_retries += 1
                log.info("storage: another writer's transaction ended this batch's (%s); sent again", describe(exc))
                time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))  # jittered: the two do not meet again
                continue
            self._last_contact = time.monotonic()
            return

    def _after_failure(self, exc: BaseException) -> None:
        """Roll back a refused transaction and keep the connection; close one that failed itself."""
        conn = self._conn
        if conn is None:
            return
        if not conn.closed and not conn.broken:  # refused, but the connection itself is fine
            try:
                conn.rollback()
                return
            except psycopg.Error:
                pass
        try:
            conn.close()
        finally:
            self._conn = None
            self.metrics.database_ok = False
            self._retry_at = time.monotonic() + 1.0


def build_writer(settings: Settings, on_batch: Callable[[float], None] | None = None) -> StorageWriter | None:
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
        max_queue_bytes=settings.storage_max_queue_bytes,
        retention_days=settings.storage_retention_days,
        link_days=settings.link_lookback_days if settings.link_shared != "off" else 0,
        quarantine_files=quarantine.QuarantineFiles(settings.nexus_home / "quarantine"),
        write_timeout_ms=settings.storage_write_timeout_ms,
        on_batch=on_batch,
        search=settings.storage_search_enabled,
    )
