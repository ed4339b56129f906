"""The batch writer on its own: batching, known-content skipping, loud loss when even the spool fails."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from nexus.storage.payload import Batch
from nexus.storage.records import ExchangeRecord
from nexus.storage.spool import Spool
from nexus.storage.writer import StorageWriter, record_bytes


def record(i: int, history: int) -> ExchangeRecord:
    body = {
        "model": "m",
        "max_tokens": 5,
        "system": "sys",
        "messages": [{"role": "user", "content": f"turn {t}"} for t in range(history)],
    }
    return ExchangeRecord(
        request_id=f"01a20ff9-a7fd-7{i:03x}-8b74-7e2b1304e5de",
        started_at_us=int(time.time() * 1_000_000),
        project_id="p",
        account_id=None,
        method="POST",
        path="/v1/messages",
        request_headers=[("x-api-key", "sk-ant-secret"), ("user-agent", "test")],
        request_body=orjson.dumps(body),
        response_status=200,
        response_headers=[("request-id", "req_1")],
        response_body=orjson.dumps(
            {"type": "message", "usage": {"input_tokens": 3, "output_tokens": 4}, "content": []}
        ),
    )


def wait(predicate, timeout_s: float = 10) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_rows_are_batched_and_known_parts_not_resent(migrated_db: str, tmp_path: Path) -> None:
    writer = StorageWriter(migrated_db, batch_size=10, interval_ms=20, spool=Spool(tmp_path, 1 << 20))
    writer.start()
    try:
        for i in range(25):
            writer.submit(record(i, history=i % 5 + 1))
        wait(lambda: writer.metrics.rows_written == 25)
    finally:
        writer.close()
    m = writer.metrics
    assert m.batches_written >= 3  # 10 + 10 + 5 at least
    assert m.blobs_written == 6  # "sys" and five distinct messages, each sent once
    with psycopg.connect(migrated_db) as conn:
        row = conn.execute(
            "SELECT request_headers, usage, input_tokens, message_count FROM api_requests "
            "ORDER BY message_count DESC LIMIT 1"
        ).fetchone()
    assert row == ({"user-agent": "test"}, {"input_tokens": 3, "output_tokens": 4}, 3, 5)  # no credential stored


def test_database_down_and_spool_unwritable_is_loud_not_fatal(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    writer = StorageWriter(
        "postgresql://nobody@127.0.0.1:1/none", batch_size=5, interval_ms=10, spool=Spool(blocker / "spool", 1 << 20)
    )
    writer.start()
    try:
        for i in range(5):
            writer.submit(record(i, 1))  # never raises on the request path
        wait(lambda: writer.metrics.dropped_rows == 5)
    finally:
        writer.close()
    assert writer.metrics.last_error and writer.metrics.last_error.startswith("spool:")
    assert writer.snapshot()["database_ok"] is False


def _run_over_the_bound(migrated_db: str, tmp_path: Path, records: list[ExchangeRecord]) -> StorageWriter:
    """Queue `records` before the writer starts where the bound allows 10, then let it write them all."""
    size = max(map(record_bytes, records))
    writer = StorageWriter(
        migrated_db, batch_size=10, interval_ms=20, spool=Spool(tmp_path / "spool", 64 << 20), max_queue_bytes=size * 10
    )
    for r in records:  # queued before the thread starts: all wait where 10 may
        writer.submit(r)
    assert writer.snapshot()["queue_bytes"] == sum(map(record_bytes, records))
    writer.start()
    try:
        wait(lambda: writer.metrics.rows_written == len(records) and not writer.spool.size())
    finally:
        writer.close()
    assert writer.snapshot()["queue_bytes"] == 0 and writer.queue_depth() == 0
    with psycopg.connect(migrated_db) as conn:
        stored = conn.execute("SELECT count(DISTINCT request_id) FROM api_requests").fetchone()
    assert stored == (len(records),)
    return writer


def test_a_burst_over_the_byte_bound_is_encoded_in_memory_not_spooled(migrated_db: str, tmp_path: Path) -> None:
    """Rows of one conversation (a long shared history, one new turn each) past STORAGE_MAX_QUEUE_BYTES
    are encoded early into COPY payloads a fraction of their size and written from memory: a burst or
    one slow COPY must not cost the spool's fsync and replay (before, every row over the bound went
    to disk, under ordinary load at c=32 with 50 KB bodies, and /health said degraded)."""
    history = [{"role": "user", "content": "h" * 20_000}, {"role": "assistant", "content": "a" * 20_000}]
    records = []
    for i in range(30):
        r = record(i, history=1)
        body = orjson.loads(r.request_body or b"")
        body["messages"] = [*history, {"role": "user", "content": f"turn {i}"}]
        r.request_body = orjson.dumps(body)
        records.append(r)
    writer = _run_over_the_bound(migrated_db, tmp_path, records)
    m = writer.metrics
    # over the bound until at most 10 wait: 20 rows encoded early (10 when the writer thread took one
    # batch first), none spooled
    assert m.overflow_encoded_rows in (10, 20) and m.dropped_rows == 0
    assert m.overflow_rows == m.spooled_rows == m.replayed_rows == 0
    assert not writer.snapshot()["degraded"]


def test_more_than_the_byte_bound_encoded_goes_to_disk_then_to_the_database(migrated_db: str, tmp_path: Path) -> None:
    """A database slower than the traffic must cost disk, not memory: rows past STORAGE_MAX_QUEUE_BYTES
    are encoded early, and once those payloads pass half the bound (here each row's 40 KB is its own,
    nothing to share) the oldest are spooled, and replayed once the database catches up; nothing is
    lost. (Before the bound, 50,000 queued rows of ~70 KB could hold gigabytes in one worker.)"""
    records = [record(i, history=3) for i in range(50)]
    for r in records:
        r.request_body = (r.request_body or b"")[:-1] + b',"pad":"' + b"x" * 40_000 + b'"}'
    writer = _run_over_the_bound(migrated_db, tmp_path, records)
    m = writer.metrics
    assert m.overflow_encoded_rows in (30, 40) and m.dropped_rows == 0
    assert 0 < m.overflow_rows <= m.overflow_encoded_rows  # at most half the bound stays in memory
    assert m.spooled_rows == m.replayed_rows == m.overflow_rows


def test_a_replay_yields_to_the_queue_between_records(tmp_path: Path) -> None:
    """The spool's replay stops before a record when told to (the writer's memory queue is over its
    bound), keeps the rest in order, and sends it on the next replay."""
    spool = Spool(tmp_path / "spool", 1 << 20)
    for n in range(4):
        spool.append(b"batch %d" % n)
    sent: list[bytes] = []
    assert spool.replay(sent.append, stop=lambda: len(sent) >= 2) == 2
    assert sent == [b"batch 0", b"batch 1"] and spool.pending_files()
    assert spool.replay(sent.append) == 2
    assert sent == [b"batch %d" % n for n in range(4)] and not spool.pending_files()


def test_an_early_encoded_batch_ends_at_its_byte_bound(
    migrated_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The overflow thread took STORAGE_BATCH_SIZE rows at a time: with large bodies, one batch of tens
    of MB encoded at once beside the writer's own. Its batches now end at `BATCH_MAX_BYTES` of counted
    bytes, and every row is still stored. (Before, the ten 1 MiB rows past the bound here went as one
    10 MiB batch.)"""
    from nexus.storage import writer as writer_module

    records = [record(i, history=2) for i in range(12)]
    for r in records:
        r.request_body = (r.request_body or b"")[:-1] + b',"pad":"' + b"x" * (1 << 20) + b'"}'
    size = record_bytes(records[0])
    built: list[tuple[str, int]] = []
    real = writer_module.build_batch

    def counting(batch, *args, **kwargs):  # type: ignore[no-untyped-def]
        built.append((threading.current_thread().name, sum(record_bytes(r) for r in batch)))
        return real(batch, *args, **kwargs)

    monkeypatch.setattr(writer_module, "build_batch", counting)
    writer = StorageWriter(
        migrated_db, batch_size=200, interval_ms=20, spool=Spool(tmp_path / "spool", 64 << 20), max_queue_bytes=size
    )
    for r in records:  # all queued before the threads start: 11 rows past the bound
        writer.submit(r)
    writer.start()
    try:
        wait(lambda: writer.metrics.rows_written == 12, timeout_s=30)
    finally:
        writer.close()
    early = [n for name, n in built if name == "nexus-storage-overflow"]
    assert early and sum(n for _, n in built) == 12 * size
    assert all(n < writer_module.BATCH_MAX_BYTES + size for n in early)


def test_encoded_batches_merge_into_one_copy_with_shared_parts(migrated_db: str) -> None:
    """Batches encoded apart (each with the content parts it shares with the other) go to the database
    as one COPY per table: every row once, a shared part stored once, nothing refused."""
    from nexus._core import copy_rows
    from nexus.storage.payload import STAGE_SQL, Batch, merge_copy, send
    from nexus.storage.records import build_batch

    first, second = build_batch([record(i, 3) for i in range(4)]), build_batch([record(i, 4) for i in range(4, 9)])
    merged = Batch(merge_copy([first.requests, second.requests]), merge_copy([first.blobs, second.blobs]))
    assert copy_rows(merged.requests) == copy_rows(first.requests) + copy_rows(second.requests)
    assert len(copy_rows(merged.blobs)) == len(copy_rows(first.blobs)) + len(copy_rows(second.blobs))
    with psycopg.connect(migrated_db) as conn:
        for sql in STAGE_SQL:
            conn.execute(sql)  # type: ignore[arg-type]
        send(conn, merged)
        conn.commit()
        rows = conn.execute("SELECT count(*), count(DISTINCT request_id) FROM api_requests").fetchone()
        blobs = conn.execute("SELECT count(*) FROM content_blobs").fetchone()
    assert rows == (9, 9)
    assert blobs == (5,)  # "sys" and four distinct turns, shared by both batches


def test_a_new_batch_is_not_spooled_behind_a_replay_that_yields_to_the_queue(migrated_db: str, tmp_path: Path) -> None:
    """With batches in the spool and the queue over its byte bound (the replay yields to it), the
    batch in hand goes straight to the database. Before, it went to the spool behind the others, and
    so did every later one while the traffic kept the queue near its bound: a third of the rows under
    c=32 written to disk and read back. The spooled rows are written once the queue allows."""
    from nexus.storage.payload import Batch
    from nexus.storage.records import build_batch

    spool = Spool(tmp_path / "spool", 64 << 20)
    old = build_batch([record(900, 2)])
    spool.append(Batch(old.requests, old.blobs).parts())
    queued = [record(i, 2) for i in range(5)]
    writer = StorageWriter(migrated_db, batch_size=10, interval_ms=20, spool=spool, max_queue_bytes=1 << 20)
    writer.max_queue_bytes = record_bytes(queued[0])  # over the bound once two wait (below the setting's minimum)
    for r in queued:
        writer.submit(r)
    writer._write_built(build_batch([record(901, 2)]), 1)  # what the writer thread does with a batch in hand
    m = writer.metrics
    assert m.rows_written == 1 and m.spooled_rows == 0 and spool.pending_files()
    writer.start()
    try:
        wait(lambda: writer.metrics.rows_written == 7 and not spool.pending_files())
    finally:
        writer.close()
    with psycopg.connect(migrated_db) as conn:
        stored = conn.execute("SELECT count(DISTINCT request_id) FROM api_requests").fetchone()
    assert stored == (7,)


def test_batches_encoded_earlier_send_only_the_parts_the_database_lacks(migrated_db: str, tmp_path: Path) -> None:
    """A batch read back from the spool, or batches encoded ahead of the writer and merged into one,
    carry the content parts of their conversations again (they were encoded before the batches with
    those parts were written). PostgreSQL parsed every staged part as jsonb before `ON CONFLICT`
    skipped it: at c=32 four fifths of the parts sent were such repeats, and the writer that had
    fallen behind fell further behind. Now a part this worker has stored, or one the batch already
    carries, is left out; the rows still find every part."""
    from nexus._core import copy_rows
    from nexus.storage.payload import Batch, merge_copy
    from nexus.storage.records import build_batch

    spool = Spool(tmp_path / "spool", 64 << 20)
    writer = StorageWriter(migrated_db, batch_size=10, interval_ms=20, spool=spool)
    sent: list[int] = []
    send = writer._send

    def counting(batch: Batch) -> None:
        sent.append(len(copy_rows(batch.blobs)) if batch.blobs else 0)
        send(batch)

    writer._send = counting  # type: ignore[method-assign]
    writer._write_built(build_batch([record(i, 3) for i in range(3)]), 3)  # "sys", turns 0-2
    assert sent == [4]
    late = build_batch([record(10, 5)])  # encoded before those were written: all six parts
    spool.append(Batch(late.requests, late.blobs).parts())
    assert writer._replay_spool()
    assert sent[-1] == 2  # turns 3 and 4 only
    first, second = build_batch([record(20, 6)]), build_batch([record(21, 7)])  # encoded apart
    merged = Batch(merge_copy([first.requests, second.requests]), merge_copy([first.blobs, second.blobs]))
    writer._deliver(merged, 2)
    assert sent[-1] == 2  # turns 5 and 6, once each (the two carried 13 parts between them)
    with psycopg.connect(migrated_db) as conn:
        rows = conn.execute(
            "SELECT count(*), count(b.key) FROM api_requests r CROSS JOIN LATERAL unnest(r.message_keys) m(key) "
            "LEFT JOIN content_blobs b ON b.key = m.key"
        ).fetchone()
        stored = conn.execute("SELECT count(*) FROM content_blobs").fetchone()
    assert rows == (3 * 3 + 5 + 6 + 7,) * 2  # every message of every row has its part
    assert stored == (8,)
    assert writer.metrics.rows_written == 6


def _shared_history(ids: range) -> list[ExchangeRecord]:
    """Rows of one conversation: a long shared history (two parts) and a new turn each."""
    history = [{"role": "user", "content": "h" * 20_000}, {"role": "assistant", "content": "a" * 20_000}]
    records = []
    for i in ids:
        r = record(i, history=1)
        body = orjson.loads(r.request_body or b"")
        body["messages"] = [*history, {"role": "user", "content": f"turn {i}"}]
        r.request_body = orjson.dumps(body)
        records.append(r)
    return records


def _parts(payload: bytes) -> int:
    from nexus._core import copy_rows

    return len(copy_rows(payload)) if payload else 0


def test_batches_encoded_early_carry_a_shared_part_once_and_leave_memory_together(
    migrated_db: str, tmp_path: Path
) -> None:
    """Under a backlog the overflow thread encodes batch after batch of the same conversations, and
    each carried their whole history again (the parts were not stored yet): ~14 KB a row encoded where
    ~3 KB were new, most of the thread's CPU at c=32. A batch now leaves out parts an earlier batch
    still in memory carries, so those batches go to the database, or to the spool, all together: one
    of them alone could point at a part only another holds. Every row finds every part."""
    spool = Spool(tmp_path / "spool", 64 << 20)
    writer = StorageWriter(migrated_db, batch_size=10, interval_ms=20, spool=spool, max_queue_bytes=1 << 30)
    first, second = _shared_history(range(3)), _shared_history(range(3, 6))
    writer._encode_early(first)
    writer._encode_early(second)
    assert [_parts(e.built.blobs) for e in writer._encoded] == [6, 3]  # "sys", 2 history parts, 3 turns; 3 turns
    writer.max_queue_bytes = 2  # past half the bound: all of them go to the spool, as one batch
    writer._encode_early(_shared_history(range(6, 8)))
    assert not writer._encoded and writer.metrics.overflow_rows == 8 and len(spool.pending_files()) == 1
    assert writer._replay_spool()
    with psycopg.connect(migrated_db) as conn:
        rows = conn.execute(
            "SELECT count(DISTINCT r.request_id), count(*), count(b.key) FROM api_requests r "
            "CROSS JOIN LATERAL unnest(r.message_keys) m(key) LEFT JOIN content_blobs b ON b.key = m.key"
        ).fetchone()
    assert rows == (8, 24, 24)


def test_a_batch_encoded_while_the_others_left_memory_carries_its_own_parts(
    migrated_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The overflow thread encodes outside the lock: if the writer takes the batches encoded early in
    the meantime (their parts then in flight, maybe spooled), the new batch must not rely on them. It is
    encoded again with its own parts; the writer's merged batch and it are each complete."""
    from nexus.storage import writer as writer_module

    writer = StorageWriter(migrated_db, batch_size=10, interval_ms=20, spool=Spool(tmp_path / "spool", 64 << 20))
    writer._encode_early(_shared_history(range(3)))
    real = writer_module.build_batch
    taken: list[Any] = []

    def racing(batch, *args, **kwargs):  # type: ignore[no-untyped-def]
        built = real(batch, *args, **kwargs)
        if not taken:
            with writer._cv:
                taken.append(writer._take_all_encoded())  # the writer, meanwhile
        return built

    monkeypatch.setattr(writer_module, "build_batch", racing)
    writer._encode_early(_shared_history(range(3, 6)))
    assert taken[0] is not None and _parts(taken[0].built.blobs) == 6
    assert [_parts(e.built.blobs) for e in writer._encoded] == [6]  # its own "sys" and history too
    monkeypatch.setattr(writer_module, "build_batch", real)
    spool = writer.spool
    spool.append(Batch(taken[0].built.requests, taken[0].built.blobs).parts())  # say the writer's send failed
    writer._write_built(writer._take_all_encoded().built, 3)  # type: ignore[union-attr]
    with psycopg.connect(migrated_db) as conn:
        found = conn.execute(
            "SELECT count(*), count(b.key) FROM api_requests r "
            "CROSS JOIN LATERAL unnest(r.message_keys) m(key) LEFT JOIN content_blobs b ON b.key = m.key"
        ).fetchone()
    assert found == (18, 18)


def test_the_overflow_thread_survives_a_batch_it_cannot_encode(
    migrated_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in encoding one early batch used to end the overflow thread, and with it the byte bound on
    the write queue. The rows are spooled one by one instead; the thread goes on."""
    from nexus.storage import writer as writer_module

    records = _shared_history(range(12))
    real = writer_module.build_batch
    failed: list[int] = []

    def failing_once(batch, *args, **kwargs):  # type: ignore[no-untyped-def]
        if threading.current_thread().name == "nexus-storage-overflow" and not failed:
            failed.append(len(batch))
            raise RuntimeError("a bug")
        return real(batch, *args, **kwargs)

    monkeypatch.setattr(writer_module, "build_batch", failing_once)
    size = record_bytes(records[0])
    writer = StorageWriter(
        migrated_db, batch_size=4, interval_ms=20, spool=Spool(tmp_path / "spool", 64 << 20), max_queue_bytes=size * 2
    )
    for r in records:
        writer.submit(r)
    writer.start()
    try:
        wait(lambda: writer.metrics.rows_written == 12, timeout_s=30)
        assert writer._overflow.is_alive()
    finally:
        writer.close()
    assert failed and writer.metrics.dropped_rows == 0


def test_the_writer_session_runs_without_jit_and_compresses_with_lz4(migrated_db: str, tmp_path: Path) -> None:
    """The writer's session turns JIT off (compiling the batch insert was 14% of PostgreSQL's CPU for
    statements that run in milliseconds) and compresses with lz4 what has no method of its own: the
    staged rows and the search vector, where pglz was another 11%. A long prompt's stored search
    vector shows it."""
    words = " ".join(f"word{n} thing{n * 7} item{n * 13}" for n in range(600))  # a vector of ~40 KB
    big = record(1, 1)
    big.request_body = orjson.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": words}]})
    writer = StorageWriter(migrated_db, batch_size=10, interval_ms=20, spool=Spool(tmp_path, 1 << 20))
    writer.start()
    try:
        writer.submit(big)
        wait(lambda: writer.metrics.rows_written == 1)
        conn = writer._conn
        assert conn is not None
        with writer._cv:  # the writer thread is idle between batches; its session is read here
            settings = "SELECT current_setting('jit'), current_setting('default_toast_compression')"
            jit, compression = conn.execute(settings).fetchone()  # type: ignore[misc]
            conn.rollback()
    finally:
        writer.close()
    with psycopg.connect(migrated_db) as db:
        lz4 = db.execute(
            "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
        ).fetchone()
        stored = db.execute("SELECT pg_column_compression(search_vector) FROM api_requests").fetchone()
    assert jit == "off"
    if lz4 is not None and lz4[0]:
        assert (compression, stored) == ("lz4", ("lz4",))


def test_merged_payloads_are_the_rows_of_each_in_order_and_a_bad_one_is_refused() -> None:
    """`merge_copy` (Rust `merge_payloads`) gives what framing every payload's rows again gives, byte
    for byte, empty payloads included, and refuses a payload that is not one."""
    from nexus._core import NexusCoreError, copy_payload, copy_rows
    from nexus.storage.payload import merge_copy
    from nexus.storage.records import build_batch

    first, second = build_batch([record(i, 3) for i in range(4)]), build_batch([record(i, 4) for i in range(4, 9)])
    payloads = [first.requests, b"", second.requests]
    assert merge_copy(payloads) == copy_payload([row for p in payloads if p for row in copy_rows(p)])
    assert merge_copy([first.requests]) is first.requests
    with pytest.raises(NexusCoreError):
        merge_copy([first.requests, first.requests[:-3]])
