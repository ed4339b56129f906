"""Several workers writing to one PostgreSQL (PROXY_WORKERS > 1): no deadlock between their batches, a
deadlock victim's batch retried at once and never lost."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from nexus._core import copy_payload, copy_rows
from nexus.storage.payload import STAGE_SQL, Batch, send
from nexus.storage.records import build_batch
from nexus.storage.spool import Spool
from nexus.storage.writer import StorageWriter
from tests.test_writer import record, wait

#: Long enough that two transactions started together interleave row by row, whatever the machine's load.
ROW_DELAY_S = 0.4
#: Every table a batch's transaction upserts into, and so locks rows of, in the order it does.
UPSERTED = ("content_blobs", "conversations", "usage_hourly", "usage_daily", "usage_keys")


def slow_inserts(table: str) -> str:
    """Each row inserted into (or upserted in) `table` waits first: two transactions' row orders interleave."""
    return f"""
CREATE FUNCTION test_slow_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep({ROW_DELAY_S}); RETURN NEW; END $$;
CREATE TRIGGER test_slow_row BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION test_slow_row();
"""


def opposite_batches() -> tuple[Batch, Batch]:
    """Two workers' batches of two requests each, of the same two conversations of two projects (so also
    the same usage keys) and with the same new content parts, each in the opposite order of the other:
    what two workers see when each batches requests of the same conversations in its own order."""
    conversations = ["0b3e8a3e-0000-4000-8000-000000000001", "0b3e8a3e-0000-4000-8000-000000000002"]
    built = []
    for offset, order in ((1, (0, 1)), (3, (1, 0))):
        records = [record(offset + n, history=2) for n in range(2)]
        for rec, which in zip(records, order, strict=True):
            rec.project_id = f"project-{which}"
        built.append(build_batch(records, conversations=[conversations[which] for which in order]))
    parts = copy_rows(built[0].blobs)
    assert len(parts) == 3 and sorted(parts) == sorted(copy_rows(built[1].blobs))
    return (
        Batch(built[0].requests, copy_payload(parts)),
        Batch(built[1].requests, copy_payload(list(reversed(parts)))),
    )


@pytest.mark.parametrize("table", UPSERTED)
def test_two_workers_storing_the_same_keys_in_opposite_orders_do_not_deadlock(migrated_db: str, table: str) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(slow_inserts(table))  # type: ignore[arg-type]
    batches = opposite_batches()
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def worker(batch: Batch) -> None:
        with psycopg.connect(migrated_db) as conn:
            for sql in STAGE_SQL:
                conn.execute(sql)  # type: ignore[arg-type]
            conn.commit()
            start.wait()
            try:
                send(conn, batch)
                conn.commit()
            except psycopg.Error as exc:
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with psycopg.connect(migrated_db) as conn:
        assert conn.execute("SELECT count(*) FROM api_requests").fetchone() == (4,)
        assert conn.execute("SELECT count(*) FROM content_blobs").fetchone() == (3,)
        summaries = conn.execute("SELECT project_id, request_count FROM conversations ORDER BY 1").fetchall()
        assert summaries == [("project-0", 2), ("project-1", 2)]
        hours = conn.execute("SELECT project_id, requests FROM usage_hourly ORDER BY 1").fetchall()
        assert hours == [("project-0", 2), ("project-1", 2)]


def lock_waits(conn: psycopg.Connection, pid: int) -> int:
    """How many backends other than `pid` wait for a lock (the writer's, here)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> %s AND datname = "
        "current_database()",
        (pid,),
    ).fetchone()
    return int(row[0]) if row else 0


def test_a_deadlock_victims_batch_is_sent_again_at_once_and_nothing_is_lost(migrated_db: str, tmp_path: Path) -> None:
    """Another transaction holds one of the batch's new parts and then waits for one the writer has just
    inserted: PostgreSQL ends the writer's transaction (DeadlockDetected). The writer sends the batch
    again at once, not as an outage: nothing is spooled, nothing lost, the database still counted up.
    (The writer used to take the deadlock for the database being away: the batch went to the spool,
    and every batch behind it too for a second.)"""
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        # the writer detects the deadlock (its timeout is the shorter), so it is the one ended
        conn.execute(f"ALTER DATABASE {conn.info.dbname} SET deadlock_timeout = '3s'")  # type: ignore[arg-type]
    rec = record(1, history=2)
    parts = sorted(copy_rows(build_batch([rec]).blobs))  # the writer inserts them in key order
    other = psycopg.connect(migrated_db)
    try:
        other.execute("SET deadlock_timeout = '60s'")
        for sql in STAGE_SQL:
            other.execute(sql)  # type: ignore[arg-type]
        other.commit()
        send(other, Batch(b"", copy_payload(parts[-1:])))  # holds the last part, uncommitted
        writer = StorageWriter(migrated_db, batch_size=1, interval_ms=10, spool=Spool(tmp_path / "spool", 1 << 20))
        writer.start()
        try:
            writer.submit(rec)
            with psycopg.connect(migrated_db, autocommit=True) as watch:
                wait(lambda: lock_waits(watch, other.info.backend_pid) == 1)  # the writer waits for `other`
            done: list[BaseException | None] = []

            def close_the_cycle() -> None:
                try:
                    send(other, Batch(b"", copy_payload(parts[:1])))  # waits for the writer: a deadlock
                    other.commit()
                    done.append(None)
                except BaseException as exc:
                    done.append(exc)

            closer = threading.Thread(target=close_the_cycle)
            closer.start()
            closer.join(30)
            assert done == [None]  # `other` went on: the writer was the deadlock's victim
            wait(lambda: writer.metrics.rows_written == 1)
        finally:
            writer.close()
    finally:
        other.close()
    m = writer.metrics
    assert m.deadlock_retries == 1
    assert m.spooled_batches == 0 and m.flush_failures == 0 and m.dropped_rows == 0
    assert m.database_ok
    with psycopg.connect(migrated_db) as conn:
        assert conn.execute("SELECT count(*) FROM api_requests").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM content_blobs").fetchone() == (3,)


def test_a_batch_that_keeps_losing_deadlocks_is_spooled_and_replayed_not_lost(
    migrated_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nexus.storage import writer as writer_module

    real_send = writer_module.send
    ended = {"left": writer_module.CONFLICT_RETRIES + 1}

    def send_or_deadlock(conn: psycopg.Connection, batch: Batch, **kwargs: Any) -> None:
        if ended["left"]:
            ended["left"] -= 1
            raise psycopg.errors.DeadlockDetected("deadlock detected")
        real_send(conn, batch, **kwargs)

    monkeypatch.setattr(writer_module, "send", send_or_deadlock)
    writer = StorageWriter(migrated_db, batch_size=1, interval_ms=10, spool=Spool(tmp_path / "spool", 1 << 20))
    writer.start()
    try:
        writer.submit(record(1, history=1))
        wait(lambda: writer.metrics.replayed_rows == 1 and not writer.spool.pending_files())
    finally:
        writer.close()
    m = writer.metrics
    assert m.deadlock_retries == writer_module.CONFLICT_RETRIES
    assert m.spooled_rows == 1 and m.dropped_rows == 0
    with psycopg.connect(migrated_db) as conn:
        assert conn.execute("SELECT count(*) FROM api_requests").fetchone() == (1,)


def test_two_writers_replaying_one_spool_store_every_row_once(
    migrated_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two workers start on one spool directory left by an outage and replay it at once: every spooled
    row is stored, none is sent twice, and neither logs a failed replay (they used to replay each other's
    claimed files, and failed with FileNotFoundError on files the other had removed)."""
    spool_dir = tmp_path / "spool"
    spooled = []
    for worker in range(2):
        spool = Spool(spool_dir, 64 << 20, file_max_bytes=4096)
        spool._prefix = f"spool-{3000 + worker}-1"
        for n in range(20):
            rec = record(worker * 100 + n, history=1 + n % 3)
            built = build_batch([rec])
            spool.append(Batch(built.requests, built.blobs).pack())
            spooled.append(rec.request_id)
    writers = [
        StorageWriter(migrated_db, batch_size=10, interval_ms=10, spool=Spool(spool_dir, 64 << 20)) for _ in range(2)
    ]
    for w in writers:
        w.start()
    try:
        wait(lambda: not writers[0].spool.pending_files(), timeout_s=30)
    finally:
        for w in writers:
            w.close()
    assert "spool replay failed" not in caplog.text
    assert sum(w.metrics.replayed_rows for w in writers) == len(spooled)  # none sent twice
    with psycopg.connect(migrated_db) as conn:
        stored = conn.execute("SELECT count(*), count(DISTINCT request_id) FROM api_requests").fetchone()
    assert stored == (len(spooled), len(spooled))
