"""Migrations, partitions, retention and indexes against a real PostgreSQL."""

from __future__ import annotations

import threading
import time
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest

from nexus.storage.migrate import available_migrations, migrate
from nexus.storage.partitions import drop_expired_partitions, ensure_partitions, partition_name
from tests.conftest import with_database
from tests.harness.servers import run_proxy


@pytest.fixture
def empty_db(database_admin_url: str):  # type: ignore[no-untyped-def]
    name = "nexus_empty_" + datetime.now(UTC).strftime("%H%M%S%f")
    with psycopg.connect(database_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield with_database(database_admin_url, name)
    with psycopg.connect(database_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_migrate_is_idempotent_and_recorded(empty_db: str) -> None:
    first = migrate(empty_db)
    assert first == [m.name for m in available_migrations()]
    assert migrate(empty_db) == []
    with psycopg.connect(empty_db) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM nexus_migrations ORDER BY version")]
        assert versions == [m.version for m in available_migrations()]
        kind = conn.execute("SELECT relkind FROM pg_class WHERE relname = 'api_requests'").fetchone()
        assert kind == ("p",)  # declaratively partitioned


def test_concurrent_migrations_apply_once(empty_db: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(empty_db))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(len(r) for r in results) == [0, 0, 0, len(available_migrations())]


def _insert(conn: psycopg.Connection, ts: datetime) -> None:
    conn.execute(
        "INSERT INTO api_requests (request_id, timestamp, project_id, method, path) "
        "VALUES (gen_random_uuid(), %s, 'p', 'POST', '/v1/messages')",
        (ts,),
    )


def test_partitions_ahead_and_retention_drops_whole_days(migrated_db: str) -> None:
    today = datetime.now(UTC).date()
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        for offset in range(8):
            assert conn.execute("SELECT to_regclass(%s)", (partition_name(today + timedelta(days=offset)),)).fetchone()[
                0
            ]
        old = date(2020, 1, 1)
        ensure_partitions(conn, days_ahead=2, today=old)
        for d in range(3):
            _insert(conn, datetime(2020, 1, 1, 12, tzinfo=UTC) + timedelta(days=d))
        _insert(conn, datetime.now(UTC))
        _insert(conn, datetime(1999, 1, 1, tzinfo=UTC))  # no partition for that day: kept in default
        dropped = drop_expired_partitions(conn, retention_days=30)
        assert dropped == [partition_name(old - timedelta(days=1))] + [
            partition_name(old + timedelta(days=d)) for d in range(3)
        ]
        left = conn.execute("SELECT count(*) FROM api_requests").fetchone()[0]
        assert left == 2  # today's row and the default partition's row
        assert drop_expired_partitions(conn, retention_days=0) == []


def test_proxy_applies_retention_once_idle_after_start(migrated_db: str, upstream_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The writer's first maintenance runs at its first idle moment, however long ago the host booted."""
    old = datetime.now(UTC).date() - timedelta(days=5)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        ensure_partitions(conn, days_ahead=0, today=old)
    env = {"CLAUDE_API_BASE_URL": upstream_url, "DATABASE_URL": migrated_db, "STORAGE_RETENTION_DAYS": "2",
           "NEXUS_HOME": str(tmp_path)}  # fmt: skip
    with run_proxy(env), psycopg.connect(migrated_db, autocommit=True) as conn:
        deadline = time.monotonic() + 15
        while conn.execute("SELECT to_regclass(%s)", (partition_name(old),)).fetchone()[0] is not None:  # type: ignore[index]
            assert time.monotonic() < deadline, "expired partition still there 15 s after start"
            time.sleep(0.2)
        assert conn.execute("SELECT to_regclass(%s)", (partition_name(old + timedelta(days=4)),)).fetchone()[0]  # type: ignore[index]


@pytest.mark.parametrize(
    ("query", "index"),
    [
        (
            "SELECT request_id FROM api_requests ORDER BY timestamp DESC, request_id DESC LIMIT 50",
            "timestamp_request_id_idx",
        ),
        (
            "SELECT request_id FROM api_requests WHERE project_id = 'p' ORDER BY timestamp DESC LIMIT 50",
            "project_id_timestamp_idx",
        ),
        (
            "SELECT request_id FROM api_requests WHERE conversation_id = gen_random_uuid() ORDER BY timestamp",
            "conversation_id_timestamp_idx",
        ),
        (
            "SELECT request_id FROM api_requests WHERE current_message_hash = '\\x00'::bytea",
            "current_message_hash_timestamp_idx",
        ),
        (  # the linker's newest rows of one history: read in index order, however many there are
            "SELECT request_id FROM api_requests WHERE current_message_hash = '\\x00'::bytea "
            "ORDER BY timestamp DESC LIMIT 32",
            "current_message_hash_timestamp_idx",
        ),
        ("SELECT request_id FROM api_requests WHERE parent_request_id = gen_random_uuid()", "parent_request_id_idx"),
        (
            "SELECT request_id FROM api_requests WHERE task_prompt_keys @> ARRAY['\\x00'::bytea]",
            "task_prompt_keys_idx",
        ),
        (
            "SELECT request_id FROM api_requests WHERE project_id = 'p' AND request_type = 'compaction' "
            "AND response_status = 200 ORDER BY timestamp DESC LIMIT 20",
            "project_id_timestamp_idx1",
        ),
        (
            "SELECT conversation_id FROM conversations ORDER BY last_at DESC, conversation_id DESC LIMIT 50",
            "conversations_last_idx",
        ),
        (
            "SELECT conversation_id FROM conversations WHERE project_id = 'p' "
            "ORDER BY last_at DESC, conversation_id DESC LIMIT 50",
            "conversations_project_last_idx",
        ),
    ],
)
def test_lookups_use_their_index(migrated_db: str, query: str, index: str) -> None:
    with psycopg.connect(migrated_db) as conn:
        conn.execute("SET enable_seqscan = off")  # on an empty table the planner would scan anyway
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + query))  # type: ignore[arg-type]
    assert "Index" in plan and index in plan, plan  # partition indexes are named after their columns


def test_roles_writer_inserts_reader_only_reads(migrated_db: str) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute("SET ROLE nexus_reader")
        assert conn.execute("SELECT count(*) FROM api_requests").fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            _insert(conn, datetime.now(UTC))
        conn.execute("RESET ROLE")
        conn.execute("SET ROLE nexus_writer")
        _insert(conn, datetime.now(UTC))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM api_requests")
