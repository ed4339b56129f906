"""SIGTERM: in-flight streams finish (up to SHUTDOWN_TIMEOUT_MS), their rows are stored, exit 0."""

from __future__ import annotations

import http.client
import signal
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg

from tests.harness.servers import spawn_proxy, stop

MODEL = "claude-sonnet-4-6"


def _stream(url: str, scenario: str, words: int, result: dict[str, Any], started: threading.Event) -> None:
    port = int(url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = orjson.dumps(
        {"model": MODEL, "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    headers = {
        "content-type": "application/json",
        "x-api-key": "sk-ant-x",
        "anthropic-version": "2023-06-01",
        "x-fake-scenario": scenario,
        "x-fake-text-tokens": str(words),
    }
    conn.request("POST", "/v1/messages", body=body, headers=headers)
    resp = conn.getresponse()
    result["status"], result["request_id"] = resp.status, resp.getheader("x-request-id")
    chunks = []
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            break
        chunks.append(chunk)
        started.set()
    result["body"] = b"".join(chunks)
    result["ended_at"] = time.monotonic()
    conn.close()


def _row(dsn: str, request_id: str) -> tuple[Any, ...] | None:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT outcome, response_status, error FROM api_requests WHERE request_id = %s", (request_id,)
        ).fetchone()


def _sigterm_during_stream(
    upstream_url: str, dsn: str, tmp_path: Path, scenario: str, words: int, shutdown_ms: int
) -> tuple[dict[str, Any], int, float]:
    env = {
        "CLAUDE_API_BASE_URL": upstream_url,
        "DATABASE_URL": dsn,
        "NEXUS_HOME": str(tmp_path),
        "SHUTDOWN_TIMEOUT_MS": str(shutdown_ms),
        # a batch interval longer than the test: the row can only be stored by the shutdown's flush
        "STORAGE_BATCH_INTERVAL_MS": "60000",
        "STORAGE_BATCH_SIZE": "1000",
    }
    proc, url = spawn_proxy(env)
    try:
        result: dict[str, Any] = {}
        started = threading.Event()
        client = threading.Thread(target=_stream, args=(url, scenario, words, result, started))
        client.start()
        assert started.wait(10), "the stream did not start"
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # the main PID only, as an orchestrator does
        code = proc.wait(60)
        client.join(30)
        return result, code, signalled
    finally:
        stop(proc)


def test_sigterm_lets_a_slow_stream_finish_and_stores_it(upstream_url: str, migrated_db: str, tmp_path: Path) -> None:
    # ~20 events 150 ms apart: the stream outlives the signal by ~3 s
    result, code, signalled = _sigterm_during_stream(upstream_url, migrated_db, tmp_path, "event-delay:150", 8, 30_000)
    assert code == 0
    assert result["status"] == 200 and b"event: message_stop" in result["body"]
    assert b"event: error" not in result["body"]
    assert result["ended_at"] - signalled > 1.0  # it really was in flight when the signal came
    assert _row(migrated_db, result["request_id"]) == ("completed", 200, None)


def test_the_shutdown_deadline_ends_a_stream_that_would_not(
    upstream_url: str, migrated_db: str, tmp_path: Path
) -> None:
    """A stream longer than SHUTDOWN_TIMEOUT_MS ends with an error event at the deadline; the row is
    stored as ended by the shutdown, and the proxy still exits 0 (not killed)."""
    result, code, signalled = _sigterm_during_stream(upstream_url, migrated_db, tmp_path, "event-delay:500", 40, 1000)
    assert code == 0
    body = result["body"]
    assert result["ended_at"] - signalled < 10, body[-300:]
    assert b"event: error" in body and b"shutting down" in body and b"event: message_stop" not in body
    row = _row(migrated_db, result["request_id"])
    assert row is not None and row[0] == "shutdown" and row[1] == 200, row


def test_sigterm_with_the_database_away_spools_what_is_queued(
    upstream_url: str, migrated_db: str, database_admin_url: str, tmp_path: Path
) -> None:
    """Rows the writer cannot write at shutdown go to the spool (exit 0), and the next start stores them."""
    from tests.helpers import count_rows, set_database_reachable, wait_for
    from tests.test_metrics import message, post

    name = str(psycopg.conninfo.conninfo_to_dict(migrated_db)["dbname"])
    env = {
        "CLAUDE_API_BASE_URL": upstream_url,
        "DATABASE_URL": migrated_db,
        "NEXUS_HOME": str(tmp_path),
        "STORAGE_BATCH_INTERVAL_MS": "60000",  # nothing is written before the shutdown
        "STORAGE_BATCH_SIZE": "1000",
    }
    proc, url = spawn_proxy(env)
    try:
        set_database_reachable(database_admin_url, name, False)
        ids = []
        for i in range(5):
            status, body = post(url, message(MODEL, f"queued {i}"), {})
            assert status == 200
            ids.append(orjson.loads(body)["id"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert any((tmp_path / "spool").iterdir())  # kept on disk, not lost
    finally:
        stop(proc)
        set_database_reachable(database_admin_url, name, True)
    again, _ = spawn_proxy(env)
    try:
        wait_for(lambda: count_rows(migrated_db) == 5, timeout_s=30, what="the spooled rows replayed")
    finally:
        stop(again)
