"""The batch writer on its own: batching, known-content skipping, loud loss when even the spool fails."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import psycopg
import pytest

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


def test_more_than_the_byte_bound_waiting_goes_to_disk_then_to_the_database(migrated_db: str, tmp_path: Path) -> None:
    """A database slower than the traffic must cost disk, not memory: past STORAGE_MAX_QUEUE_BYTES the
    oldest waiting rows are spooled, and replayed once the queue is back under the bound; nothing is
    lost. (Before the bound, 50,000 queued rows of ~70 KB could hold gigabytes in one worker.)"""
    records = [record(i, history=3) for i in range(50)]
    for r in records:
        r.request_body = (r.request_body or b"")[:-1] + b',"pad":"' + b"x" * 40_000 + b'"}'
    size = record_bytes(records[0])
    writer = StorageWriter(
        migrated_db, batch_size=10, interval_ms=20, spool=Spool(tmp_path / "spool", 64 << 20), max_queue_bytes=size * 10
    )
    for r in records:  # queued before the thread starts: 50 wait where 10 may
        writer.submit(r)
    assert writer.snapshot()["queue_bytes"] == size * 50
    writer.start()
    try:
        wait(lambda: writer.metrics.rows_written == 50 and not writer.spool.size())
    finally:
        writer.close()
    m = writer.metrics
    # over the bound until at most 10 wait: 40 rows spooled, or 30 when the writer thread took one
    # batch to the database first
    assert m.overflow_rows in (30, 40) and m.dropped_rows == 0
    assert m.spooled_rows == m.replayed_rows == m.overflow_rows
    assert writer.snapshot()["queue_bytes"] == 0
    with psycopg.connect(migrated_db) as conn:
        stored = conn.execute("SELECT count(DISTINCT request_id) FROM api_requests").fetchone()
    assert stored == (50,)


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


def test_a_batch_ends_at_its_byte_bound(migrated_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """STORAGE_BATCH_SIZE rows of large bodies made one batch of tens of MB, held (encoded, then sent
    or spooled) at once: a batch now ends at `BATCH_MAX_BYTES` of counted bytes, and every row is still
    stored. (Before, the ten 1 MiB rows queued here went as one 10 MiB batch.)"""
    from nexus.storage import writer as writer_module

    records = [record(i, history=2) for i in range(10)]
    for r in records:
        r.request_body = (r.request_body or b"")[:-1] + b',"pad":"' + b"x" * (1 << 20) + b'"}'
    built: list[int] = []
    real = writer_module.build_batch

    def counting(batch, *args):  # type: ignore[no-untyped-def]
        built.append(sum(record_bytes(r) for r in batch))
        return real(batch, *args)

    monkeypatch.setattr(writer_module, "build_batch", counting)
    writer = StorageWriter(migrated_db, batch_size=200, interval_ms=20, spool=Spool(tmp_path / "spool", 64 << 20))
    for r in records:  # all queued before the thread starts: one batch, were it bounded by rows only
        writer.submit(r)
    writer.start()
    try:
        wait(lambda: writer.metrics.rows_written == 10)
    finally:
        writer.close()
    size = record_bytes(records[0])
    assert len(built) >= 3 and sum(built) == 10 * size
    assert all(b < writer_module.BATCH_MAX_BYTES + size for b in built)
