"""The batch writer on its own: batching, known-content skipping, loud loss when even the spool fails."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import psycopg

from nexus.storage.records import ExchangeRecord
from nexus.storage.spool import Spool
from nexus.storage.writer import StorageWriter


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
