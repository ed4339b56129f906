"""`nexus replay --store` writes recorded traffic with its links; `nexus relink` rebuilds them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg

from nexus.conversations.relink import relink
from tests.test_linking_fixtures import FIXTURES, check

SCENARIO = "subagents_background"
LINK_COLUMNS = (
    "request_id::text, conversation_id::text, branch_id, parent_request_id::text, is_subtask, "
    "parent_task_request_id::text, request_type"
)


def nexus(*args: str, env: dict[str, str]) -> str:
    return subprocess.run(
        [sys.executable, "-m", "nexus.cli", *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    ).stdout


def stored_links(dsn: str) -> dict[str, tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return {r[0]: r[1:] for r in conn.execute(f"SELECT {LINK_COLUMNS} FROM api_requests")}  # noqa: S608


def as_lines(links: dict[str, tuple[Any, ...]], files: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {
        files[rid]: {
            "conversation_id": conv,
            "branch_id": branch,
            "parent_file": files.get(parent or ""),
            "is_subtask": sub,
            "parent_task_file": files.get(task or ""),
            "request_type": kind,
        }
        for rid, (conv, branch, parent, sub, task, kind) in links.items()
    }


def test_replay_stores_and_relink_rebuilds(migrated_db: str, tmp_path: Path) -> None:
    env = {"DATABASE_URL": migrated_db, "NEXUS_HOME": str(tmp_path), "STORAGE_BATCH_INTERVAL_MS": "10"}
    lines = [orjson.loads(line) for line in nexus("replay", str(FIXTURES / SCENARIO), env=env).splitlines()]
    files = {line["request_id"]: line["file"] for line in lines}
    before = stored_links(migrated_db)
    assert set(before) == set(files)  # every request stored, under the id replay printed
    check(SCENARIO, as_lines(before, files))
    with psycopg.connect(migrated_db) as conn:
        summary = conn.execute("SELECT conversation_id::text, request_count FROM conversations").fetchall()
    assert summary == [(lines[0]["conversation_id"], len(lines))]

    # a relink of intact links changes nothing, conversation ids included
    out = nexus("relink", env=env)
    assert "changed the conversation of 0" in out
    assert stored_links(migrated_db) == before

    # links lost (say, rows written by an older release): rebuilt from the stored bodies
    with psycopg.connect(migrated_db) as conn:
        conn.execute(
            "UPDATE api_requests SET conversation_id = NULL, branch_id = NULL, parent_request_id = NULL, "
            "is_subtask = false, parent_task_request_id = NULL, current_message_hash = NULL, request_type = NULL"
        )
        conn.execute("DELETE FROM conversations")
        conn.execute(  # what shared linking decided from, stale: the relink rewrites it too
            'INSERT INTO link_requests (request_id, project_id, "timestamp", request_type, conversation_id, branch_id) '
            "SELECT request_id, project_id, timestamp, 'main', gen_random_uuid(), 'stale' FROM api_requests"
        )
    assert "would change" in nexus("relink", "--dry-run", env=env)
    assert all(v[0] is None for v in stored_links(migrated_db).values())
    nexus("relink", env=env)
    check(SCENARIO, as_lines(stored_links(migrated_db), files))
    with psycopg.connect(migrated_db) as conn:
        count = conn.execute("SELECT sum(request_count) FROM conversations").fetchone()[0]  # type: ignore[index]
    assert count == len(lines)
    with psycopg.connect(migrated_db) as conn:
        differ = conn.execute(
            "SELECT count(*) FROM link_requests l JOIN api_requests r USING (request_id) WHERE "
            "(l.conversation_id, l.branch_id, l.parent_request_id, l.request_type) IS DISTINCT FROM "
            "(r.conversation_id, r.branch_id, r.parent_request_id, r.request_type)"
        ).fetchone()
    assert differ == (0,)


def replay_stored(dsn: str, home: Path) -> list[str]:
    """The scenario's recorded traffic stored by `nexus replay --store`; its output lines."""
    env = {"DATABASE_URL": dsn, "NEXUS_HOME": str(home), "STORAGE_BATCH_INTERVAL_MS": "10"}
    return nexus("replay", str(FIXTURES / SCENARIO), env=env).splitlines()


def start_relink(dsn: str, failures: list[BaseException]) -> threading.Thread:
    """`nexus relink` started in a thread; what it raises goes to `failures`."""

    def run() -> None:
        try:
            asyncio.run(relink(dsn))
        except BaseException as exc:  # reported by the test
            failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_relink_beside_a_batch_being_stored_waits_instead_of_deadlocking(migrated_db: str, tmp_path: Path) -> None:
    """The storage writer's statement upserts conversation summaries, then its triggers the usage
    summaries. A batch in the middle of that (simulated in the same order: the conversation rows, then
    the hour's usage row) while a relink runs: the relink must wait for it, not lock a usage row first
    and then wait for the conversations (a deadlock PostgreSQL breaks by failing one of them)."""
    lines = replay_stored(migrated_db, tmp_path)
    failures: list[BaseException] = []
    with psycopg.connect(migrated_db) as batch, psycopg.connect(migrated_db, autocommit=True) as watch:
        batch.execute("SET deadlock_timeout = '100ms'")  # a deadlock, if any, is found (here) at once
        batch.execute("UPDATE conversations SET request_count = request_count")  # the writer's first half
        thread = start_relink(migrated_db, failures)
        deadline = time.monotonic() + 30
        while not watch.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> %s "
            "AND datname = current_database()",
            (batch.info.backend_pid,),
        ).fetchone()[0]:  # type: ignore[index]
            assert thread.is_alive() and time.monotonic() < deadline, failures
            time.sleep(0.02)
        try:
            batch.execute("UPDATE usage_hourly SET requests = requests")  # its triggers' half
            batch.commit()
        except psycopg.errors.DeadlockDetected as exc:
            failures.append(exc)
            batch.rollback()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert failures == []
    with psycopg.connect(migrated_db) as conn:
        count = conn.execute("SELECT sum(request_count) FROM conversations").fetchone()[0]  # type: ignore[index]
    assert count == len(lines)


def test_relink_waits_for_a_repricing_before_touching_a_row(migrated_db: str, tmp_path: Path) -> None:
    """`nexus relink` and repricing each update many stored requests in one transaction, in an order
    a join decides, so two at once could each hold rows the other waits for (a deadlock that fails
    one of them). Both take the bulk-update lock first (nexus/storage/bulk_lock.py): a relink that
    starts while a repricing holds rows waits for the lock, never for one of those rows."""
    from nexus.pricing.sync import reprice_unpriced

    replay_stored(migrated_db, tmp_path)
    failures: list[BaseException] = []
    with psycopg.connect(migrated_db) as reprice, psycopg.connect(migrated_db, autocommit=True) as watch:
        with reprice.transaction():
            reprice_unpriced(reprice, 10**6)  # its lock, held until the outer transaction ends
            reprice.execute("UPDATE api_requests SET cost_usd = cost_usd")  # a repricing's rows, held
            thread = start_relink(migrated_db, failures)
            deadline = time.monotonic() + 30
            waits: list[tuple[Any, ...]] = []
            while not waits:
                assert thread.is_alive() and time.monotonic() < deadline, failures
                time.sleep(0.02)
                waits = watch.execute(
                    "SELECT l.locktype FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                    "WHERE NOT l.granted AND a.datname = current_database() AND l.pid <> %s",
                    (reprice.info.backend_pid,),
                ).fetchall()
            assert waits == [("advisory",)]
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert failures == []
