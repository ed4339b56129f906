"""Daily partitions of `api_requests`: created ahead of time, dropped whole for retention.

Dropping a day is one catalog operation instead of a DELETE of millions of rows and the vacuum after
it. Rows for a day with no partition land in the DEFAULT partition, so nothing is ever refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import psycopg
from psycopg import sql

log = logging.getLogger("nexus.storage")

#: The session-level advisory lock held by the one process doing the hourly upkeep ("nexus_up"): every
#: proxy worker of every machine sharing the database schedules it, and the others skip it meanwhile.
UPKEEP_LOCK_KEY = 0x6E657875735F7570
#: A worker skips the upkeep that another did with the same settings less than this long ago: shorter
#: than its own hour, so the worker that did it last does it again an hour later.
UPKEEP_EVERY_S = 3300.0


@dataclass(slots=True)
class Upkeep:
    """What one run of `upkeep` did."""

    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    pruned: int = 0


def upkeep(
    conn: psycopg.Connection,
    retention_days: int,
    link_days: int,
    today: date | None = None,
    every_s: float | None = None,
) -> Upkeep | None:
    """The hourly upkeep (partitions for the coming days, retention, the shared linking tables' look-back
    window) unless another process is doing it right now, or (with `every_s`) did it with the same
    settings less than `every_s` ago (`nexus_upkeep`, migration 0018): then None at once, without waiting.

    `conn` must be in autocommit mode. The lock is session-level (`pg_try_advisory_lock`), not held by a
    transaction: each partition is still created and dropped in a transaction of its own, so a DROP's
    lock on `api_requests` is not kept for the whole upkeep; it is released before returning, also after
    a failure (a connection that broke releases it by ending its session). A run that failed is not
    recorded, so the next caller tries again.
    """
    if not conn.execute("SELECT pg_try_advisory_lock(%s)", (UPKEEP_LOCK_KEY,)).fetchone()[0]:  # type: ignore[index]
        log.debug("upkeep skipped: another process is doing it")
        return None
    name = f"hourly retention={retention_days} links={link_days}"
    try:
        if every_s is not None and _done_within(conn, name, every_s):
            log.debug("upkeep skipped: done less than %g s ago", every_s)
            return None
        done = Upkeep(created=ensure_partitions(conn, today=today))
        done.dropped = drop_expired_partitions(conn, retention_days, today)
        if link_days:
            from nexus.conversations.shared import prune  # not at import: conversations imports storage

            done.pruned = prune(conn, link_days)
        _record(conn, name)
        return done
    finally:
        if not conn.closed and not conn.broken:
            conn.execute("SELECT pg_advisory_unlock(%s)", (UPKEEP_LOCK_KEY,))


def _done_within(conn: psycopg.Connection, name: str, every_s: float) -> bool:
    try:
        row = conn.execute(
            "SELECT done_at > now() - make_interval(secs => %s) FROM nexus_upkeep WHERE name = %s", (every_s, name)
        ).fetchone()
    except (psycopg.errors.UndefinedTable, psycopg.errors.InsufficientPrivilege):
        return False  # migration 0018 not applied, or not granted: every worker does it, as before
    return bool(row and row[0])


def _record(conn: psycopg.Connection, name: str) -> None:
    try:
        conn.execute(
            "INSERT INTO nexus_upkeep (name, done_at) VALUES (%s, now()) "
            "ON CONFLICT (name) DO UPDATE SET done_at = excluded.done_at",
            (name,),
        )
    except (psycopg.errors.UndefinedTable, psycopg.errors.InsufficientPrivilege):
        pass


def partition_name(day: date) -> str:
    return f"api_requests_{day:%Y%m%d}"


def ensure_partitions(conn: psycopg.Connection, days_ahead: int = 7, today: date | None = None) -> list[str]:
    """Create the partitions for yesterday through `days_ahead` days from now; return those created."""
    today = today or datetime.now(UTC).date()
    created = []
    for offset in range(-1, days_ahead + 1):
        day = today + timedelta(days=offset)
        if ensure_partition(conn, day):
            created.append(partition_name(day))
    return created


def ensure_partition(conn: psycopg.Connection, day: date) -> bool:
    """Create `day`'s partition unless it exists (also for past days: `nexus import-reference` stores
    history in its own days, under the same retention); True when this call created it."""
    name = partition_name(day)
    if conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is not None:  # type: ignore[index]
        return False
    stmt = sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF api_requests FOR VALUES FROM ({}) TO ({})").format(
        sql.Identifier(name),
        sql.Literal(f"{day} 00:00:00+00"),
        sql.Literal(f"{day + timedelta(days=1)} 00:00:00+00"),
    )
    try:
        with conn.transaction():
            conn.execute(stmt)
        return True
    except psycopg.errors.CheckViolation:
        # rows for that day already sit in the default partition: keep them there
        log.warning("partition %s not created: the default partition holds rows for that day", name)
    except psycopg.errors.DuplicateTable:
        pass  # another process created it first
    return False


def drop_expired_partitions(conn: psycopg.Connection, retention_days: int, today: date | None = None) -> list[str]:
    """Drop whole daily partitions older than `retention_days` (0 keeps everything)."""
    if retention_days <= 0:
        return []
    cutoff = (today or datetime.now(UTC).date()) - timedelta(days=retention_days)
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'api_requests'::regclass AND c.relname ~ '^api_requests_[0-9]{8}$'"
    ).fetchall()
    dropped = []
    for (name,) in rows:
        day = datetime.strptime(name.removeprefix("api_requests_"), "%Y%m%d").date()
        if day < cutoff:
            with conn.transaction():
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
                # the day's hours leave the usage summary with its rows (no trigger sees a DROP)
                conn.execute(
                    "DELETE FROM usage_hourly WHERE hour >= %s AND hour < %s",
                    (f"{day} 00:00:00+00", f"{day + timedelta(days=1)} 00:00:00+00"),
                )
                conn.execute("DELETE FROM usage_daily WHERE day = %s", (day,))
                conn.execute("DELETE FROM usage_keys WHERE day = %s", (day,))
            dropped.append(name)
    return sorted(dropped)
