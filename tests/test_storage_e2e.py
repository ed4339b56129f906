"""Storage end to end: real proxy processes, the fake upstream, a real PostgreSQL.

Every request through the proxy becomes exactly one row, readable at `/api/requests/{X-Request-ID}`
with its body rebuilt from the content store; a database outage or a `kill -9` loses nothing.
"""

from __future__ import annotations

import http.client
import os
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import anthropic
import orjson
import psycopg
import pytest

from nexus.storage.embedded import start_embedded
from nexus.storage.migrate import migrate
from tests.harness.control import FakeControl
from tests.harness.servers import run_proxy, spawn_proxy, stop
from tests.helpers import FAST, count_rows, get_json, health, set_database_reachable, wait_for

MODEL = "claude-sonnet-4-6"


@pytest.fixture
def stored_proxy(upstream_url: str, migrated_db: str, tmp_path: Path) -> Iterator[str]:
    env = {"CLAUDE_API_BASE_URL": upstream_url, "DATABASE_URL": migrated_db, "NEXUS_HOME": str(tmp_path), **FAST}
    with run_proxy(env) as url:
        yield url


def test_every_request_is_stored_and_readable_by_its_request_id(
    stored_proxy: str, migrated_db: str, fake: FakeControl
) -> None:
    client = anthropic.Anthropic(base_url=stored_proxy, api_key="sk-ant-api03-secret-key", max_retries=0)
    history = [{"role": "user", "content": "first question"}]
    ids = []
    for turn in range(3):
        raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=50, messages=history)
        reply = raw.parse()
        ids.append(raw.headers["x-request-id"])
        history = [
            *history,
            {"role": "assistant", "content": reply.content[0].text},
            {"role": "user", "content": f"q{turn}"},
        ]
    with client.messages.stream(model=MODEL, max_tokens=50, messages=history) as stream:
        final = stream.get_final_message()
        ids.append(stream.response.headers["x-request-id"])
    wait_for(lambda: count_rows(migrated_db) == 4, what="4 rows")

    sent_bodies = [r["body"] for r in fake.requests()]
    for rid, sent in zip(ids, sent_bodies, strict=True):
        row = get_json(f"{stored_proxy}/api/requests/{rid}")
        assert row["request_id"] == rid
        assert row["request_body"] == sent  # rebuilt from envelope + content-addressed parts
        assert row["response_status"] == 200 and row["model"] == MODEL
        assert row["usage"]["input_tokens"] > 0 and row["duration_ms"] >= 0
        assert row["project_id"] == urlsplit(stored_proxy).netloc  # from Host: IP hosts keep their port
        assert "x-api-key" not in row["request_headers"] and "authorization" not in row["request_headers"]
    streamed = get_json(f"{stored_proxy}/api/requests/{ids[-1]}")
    assert streamed["response_streaming"] is True
    assert streamed["usage"]["output_tokens"] == final.usage.output_tokens
    assert streamed["response_body"]["content"][0]["text"] == final.content[0].text
    listing = get_json(f"{stored_proxy}/api/requests?limit=3")
    assert [r["request_id"] for r in listing["requests"]] == ids[::-1][:3]  # newest first
    assert listing["next_cursor"]
    more = get_json(f"{stored_proxy}/api/requests?limit=3&before={listing['next_cursor']}")
    assert [r["request_id"] for r in more["requests"]] == [ids[0]]
    with psycopg.connect(migrated_db) as conn:
        blobs = conn.execute("SELECT count(*) FROM content_blobs WHERE kind = 0").fetchone()[0]  # type: ignore[index]
    # 1 + 3 + 5 + 7 = 16 messages sent; distinct: the first question, q0..q2, and the fake's reply,
    # which is the same text every turn, so stored once
    assert blobs == 5


def test_unknown_ids_are_404_and_malformed_ones_400_in_the_api_shape(stored_proxy: str) -> None:
    for rid, status, kind in (
        ("not-a-uuid", 400, "invalid_request_error"),
        ("01a20ff9-a7fd-799f-8b74-7e2b1304e5de", 404, "not_found_error"),
    ):
        with pytest.raises(urllib.error.HTTPError) as info:
            get_json(f"{stored_proxy}/api/requests/{rid}")
        assert info.value.code == status
        assert orjson.loads(info.value.read())["error"]["type"] == kind


def test_database_outage_loses_nothing(
    upstream_url: str, migrated_db: str, database_admin_url: str, tmp_path: Path
) -> None:
    dbname = psycopg.conninfo.conninfo_to_dict(migrated_db)["dbname"]
    env = {"CLAUDE_API_BASE_URL": upstream_url, "DATABASE_URL": migrated_db, "NEXUS_HOME": str(tmp_path), **FAST}
    client_ids: list[str] = []
    with run_proxy(env) as url:
        client = anthropic.Anthropic(base_url=url, api_key="sk-ant-x", max_retries=0)

        def send(n: int) -> None:
            for i in range(n):
                raw = client.messages.with_raw_response.create(
                    model=MODEL, max_tokens=5, messages=[{"role": "user", "content": f"m{len(client_ids)}-{i}"}]
                )
                client_ids.append(raw.headers["x-request-id"])

        send(100)
        set_database_reachable(database_admin_url, dbname, False)
        try:
            send(300)  # the proxy keeps serving while the database is away
            wait_for(lambda: health(url)["storage"]["spooled_batches"] > 0, what="spooling")
        finally:
            set_database_reachable(database_admin_url, dbname, True)
        send(100)
        wait_for(lambda: count_rows(migrated_db) == 500, timeout_s=30, what="all 500 rows")
        # the counter is bumped once a whole spool file is replayed, just after its last rows commit
        wait_for(lambda: health(url)["storage"]["replayed_batches"] > 0, what="replay counted")
        assert health(url)["storage"]["dropped_rows"] == 0
    with psycopg.connect(migrated_db) as conn:
        stored = {str(r[0]) for r in conn.execute("SELECT request_id FROM api_requests")}
    assert stored == set(client_ids)  # every request exactly once (the key forbids duplicates)


def test_kill_9_with_a_full_spool_then_restart_loses_nothing(
    upstream_url: str, migrated_db: str, database_admin_url: str, tmp_path: Path
) -> None:
    dbname = psycopg.conninfo.conninfo_to_dict(migrated_db)["dbname"]
    env = {"CLAUDE_API_BASE_URL": upstream_url, "DATABASE_URL": migrated_db, "NEXUS_HOME": str(tmp_path), **FAST}
    set_database_reachable(database_admin_url, dbname, False)
    try:
        proc, url = spawn_proxy(env, ready=False)  # not ready while its database is away, but serving
        client = anthropic.Anthropic(base_url=url, api_key="sk-ant-x", max_retries=0)
        ids = [
            client.messages.with_raw_response.create(
                model=MODEL, max_tokens=5, messages=[{"role": "user", "content": f"k{i}"}]
            ).headers["x-request-id"]
            for i in range(120)
        ]

        def all_spooled() -> bool:
            s = health(url)["storage"]
            return s["queue_depth"] == 0 and s["submitted"] == 120 and s["spooled_batches"] > 0

        wait_for(all_spooled, what="everything spooled")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert any((tmp_path / "spool").iterdir())
    finally:
        set_database_reachable(database_admin_url, dbname, True)
    proc2, _ = spawn_proxy(env)  # a new process replays the spool it finds at start
    try:
        wait_for(lambda: count_rows(migrated_db) == 120, timeout_s=30, what="replayed rows")
    finally:
        stop(proc2)
    with psycopg.connect(migrated_db) as conn:
        stored = sorted(str(r[0]) for r in conn.execute("SELECT request_id FROM api_requests"))
    assert stored == sorted(ids)


def test_postgresql_stopped_under_load_then_restarted(upstream_url: str, tmp_path: Path, pg_dir: Path) -> None:
    """A real server stop in the middle of 2,000 requests: all served, all stored exactly once."""
    db_dir = pg_dir / "pg"
    dsn, stop_db = start_embedded(db_dir)
    migrate(dsn)
    env = {"CLAUDE_API_BASE_URL": upstream_url, "DATABASE_URL": dsn, "NEXUS_HOME": str(tmp_path / "home"), **FAST}
    ids: list[str] = []
    try:
        with run_proxy(env) as url:
            parts = urlsplit(url)
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
            headers = {"content-type": "application/json", "x-api-key": "sk-ant-x", "anthropic-version": "2023-06-01"}
            for i in range(2000):
                if i == 500:
                    stop_db()  # the server goes away mid-load
                if i == 1500:
                    dsn2, stop_db = start_embedded(db_dir)  # and comes back at the same address
                    assert dsn2 == dsn
                body = orjson.dumps(
                    {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": f"{i}"}]}
                )
                conn.request("POST", "/v1/messages", body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                assert resp.status == 200  # the proxy kept serving throughout
                ids.append(resp.getheader("x-request-id"))
            conn.close()
            wait_for(lambda: count_rows(dsn) == 2000, timeout_s=60, what="2000 rows")
            storage = health(url)["storage"]
            assert storage["spooled_batches"] > 0 and storage["replayed_batches"] > 0
            assert storage["dropped_rows"] == 0
        with psycopg.connect(dsn) as db:
            stored = [str(r[0]) for r in db.execute("SELECT request_id FROM api_requests")]
        assert sorted(stored) == sorted(ids)  # each exactly once
    finally:
        stop_db()
