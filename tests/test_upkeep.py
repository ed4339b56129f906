"""The hourly upkeep (partitions, retention, the shared linking tables' window) runs in one process at a
time per database: every proxy worker of every machine schedules it, the others skip it meanwhile."""

from __future__ import annotations

import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from nexus.storage import partitions
from nexus.storage.partitions import UPKEEP_LOCK_KEY, partition_name, upkeep
from nexus.storage.spool import Spool
from nexus.storage.writer import StorageWriter

WAITING_PRUNES = (
    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
    "AND query LIKE 'DELETE FROM link_requests%%' AND datname = current_database()"
)


def wait(predicate, timeout_s: float = 10) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_two_workers_upkeep_at_once_only_one_does_it(migrated_db: str, tmp_path: Path) -> None:
    """Worker A's upkeep is held up inside its work (another session locks a table it prunes); worker B's
    upkeep, started meanwhile, returns at once instead of doing (and waiting for) the same work."""
    writers = [
        StorageWriter(migrated_db, batch_size=10, interval_ms=20, spool=Spool(tmp_path / n, 1 << 20), link_days=7)
        for n in ("a", "b")
    ]
    with psycopg.connect(migrated_db) as blocker, psycopg.connect(migrated_db, autocommit=True) as watch:
        blocker.execute("LOCK TABLE link_requests IN ACCESS EXCLUSIVE MODE")
        first = threading.Thread(target=writers[0]._maintain, daemon=True)
        first.start()
        wait(lambda: watch.execute(WAITING_PRUNES).fetchone()[0] == 1)  # type: ignore[index]
        second = threading.Thread(target=writers[1]._maintain, daemon=True)
        started = time.monotonic()
        second.start()
        second.join(timeout=5)
        try:
            assert not second.is_alive(), "the second worker waited for the first one's upkeep"
            assert time.monotonic() - started < 2
            assert watch.execute(WAITING_PRUNES).fetchone()[0] == 1  # type: ignore[index]
        finally:
            blocker.rollback()
            first.join(timeout=10)
            second.join(timeout=10)
        assert not first.is_alive()
    for writer in writers:
        if writer._conn is not None:
            writer._conn.close()


def test_upkeep_skips_while_another_session_holds_it(migrated_db: str) -> None:
    day = date(2031, 3, 4)
    with psycopg.connect(migrated_db, autocommit=True) as other, psycopg.connect(migrated_db, autocommit=True) as conn:
        assert other.execute("SELECT pg_try_advisory_lock(%s)", (UPKEEP_LOCK_KEY,)).fetchone()[0]  # type: ignore[index]
        assert upkeep(conn, retention_days=0, link_days=0, today=day) is None
        assert conn.execute("SELECT to_regclass(%s)", (partition_name(day),)).fetchone()[0] is None  # type: ignore[index]
        other.execute("SELECT pg_advisory_unlock(%s)", (UPKEEP_LOCK_KEY,))
        done = upkeep(conn, retention_days=0, link_days=0, today=day)
        assert done is not None and partition_name(day) in done.created
        # released afterwards: another session gets it
        assert other.execute("SELECT pg_try_advisory_lock(%s)", (UPKEEP_LOCK_KEY,)).fetchone()[0]  # type: ignore[index]


def test_upkeep_releases_its_lock_after_a_failure(migrated_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*_: object, **__: object) -> list[str]:
        raise psycopg.errors.InsufficientPrivilege("no right to drop")

    monkeypatch.setattr(partitions, "drop_expired_partitions", refused)
    with psycopg.connect(migrated_db, autocommit=True) as conn, psycopg.connect(migrated_db, autocommit=True) as other:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            upkeep(conn, retention_days=30, link_days=0)
        assert other.execute("SELECT pg_try_advisory_lock(%s)", (UPKEEP_LOCK_KEY,)).fetchone()[0]  # type: ignore[index]


def test_a_worker_skips_the_upkeep_another_did_within_the_period(migrated_db: str, tmp_path: Path) -> None:
    """Workers' hours are not aligned: the one that comes later in the hour finds the upkeep done (with the
    same settings) and skips it; it runs again once the period has passed, or for other settings."""
    ahead = partition_name(datetime.now(UTC).date() + timedelta(days=7))
    writers = [
        StorageWriter(migrated_db, batch_size=10, interval_ms=20, spool=Spool(tmp_path / n, 1 << 20), retention_days=d)
        for n, d in (("a", 30), ("b", 30), ("c", 60))
    ]
    try:
        with psycopg.connect(migrated_db, autocommit=True) as conn:
            writers[0]._maintain()
            assert conn.execute("SELECT name FROM nexus_upkeep").fetchall() == [("hourly retention=30 links=0",)]
            conn.execute(f'DROP TABLE "{ahead}"')
            writers[1]._maintain()  # done a moment ago: skipped
            assert conn.execute("SELECT to_regclass(%s)", (ahead,)).fetchone() == (None,)
            writers[2]._maintain()  # other settings (another retention): done
            assert conn.execute("SELECT to_regclass(%s)", (ahead,)).fetchone() != (None,)
            conn.execute(f'DROP TABLE "{ahead}"')
            conn.execute("UPDATE nexus_upkeep SET done_at = now() - interval '56 minutes'")
            writers[1]._maintained_at = float("-inf")  # its hour has come again
            writers[1]._maintain()
            assert conn.execute("SELECT to_regclass(%s)", (ahead,)).fetchone() != (None,)
    finally:
        for writer in writers:
            if writer._conn is not None:
                writer._conn.close()


def test_the_upkeep_runs_without_migration_0018(migrated_db: str) -> None:
    """A database that lacks the `nexus_upkeep` table (migration pending): every worker does the upkeep,
    as before the table existed."""
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute("DROP TABLE nexus_upkeep")
        for _ in range(2):
            assert upkeep(conn, retention_days=0, link_days=0, every_s=3300) is not None
