"""The linker's database lookups read a bounded number of rows, however often a history was stored.

A body sent ten thousand times leaves ten thousand rows with one `current_message_hash`; a lookup for a
request with that history must read what it reads for a body stored once (counted from the plan's
actual rows, not timed), and still find the rows of the request's own session among them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from nexus.conversations import repository

HASH = b"\x01" * 16
PARENT_HASH = b"\x02" * 16
# Noon (UTC) of the current day: the rows lie within one daily partition whatever the time the suite
# runs (just after midnight they spanned two, and a merge of two partitions' scans reads a few more rows)
NOW = time.time() // 86400 * 86400 + 12 * 3600
PARENT = "00000000-0000-7000-8000-000000000001"


def store_identical(dsn: str, count: int, *, offset: int = 0) -> None:
    """`count` rows with the same history from as many sessions (the newest last), all children of one
    parent, among four times as many rows of other histories."""
    with psycopg.connect(dsn) as conn:
        for per in (1, 4):  # one row a second of the repeated history, four of others
            conn.execute(
                'INSERT INTO api_requests (request_id, "timestamp", project_id, method, path, request_type, '
                "current_message_hash, conversation_id, branch_id, parent_request_id, session_id, response_status) "
                "SELECT gen_random_uuid(), to_timestamp(%(now)s) - make_interval(secs => %(offset)s + %(count)s - i / "
                "%(per)s), 'p', 'POST', '/v1/messages', 'main', "
                "CASE WHEN %(per)s = 1 THEN %(hash)s ELSE decode(md5(random()::text), 'hex') END, gen_random_uuid(), "
                "'main', CASE WHEN %(per)s = 1 THEN %(parent)s::uuid ELSE gen_random_uuid() END, "
                "'session-' || (i / %(per)s + %(offset)s), 200 "
                "FROM generate_series(1, %(count)s * %(per)s) AS i",
                {"now": NOW, "offset": offset, "count": count, "per": per, "hash": HASH, "parent": PARENT},
            )


def lookup(dsn: str, session: str | None) -> tuple[list[Any], int]:
    """The entries `requests_with_hashes` returns, and the rows of api_requests it read doing so
    (PostgreSQL's own per-transaction counters: rows read by sequential scans and fetched by index)."""

    async def go() -> tuple[list[Any], int]:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            entries = await repository.requests_with_hashes(conn, "p", [PARENT_HASH, HASH], NOW + 1, 30, session, None)
            cur = await conn.execute(
                "SELECT coalesce(sum(coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)), 0) "
                "FROM pg_stat_xact_user_tables WHERE relname LIKE 'api_requests%%'"
            )
            row = await cur.fetchone()
            assert row is not None
            return entries, int(row[0])

    return asyncio.run(go())


def children_read(dsn: str) -> int:
    """Rows the children lookup reads for a parent with thousands of children."""
    start, end = repository._window(NOW + 1, 30)
    with psycopg.connect(dsn) as conn:
        conn.execute(repository.CHILDREN_OF, {"parents": [PARENT], "start": start, "end": end}).fetchall()
        row = conn.execute(
            "SELECT coalesce(sum(coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)), 0) "
            "FROM pg_stat_xact_user_tables WHERE relname LIKE 'api_requests%'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_hash_stored_thousands_of_times_costs_a_lookup_what_it_costs_once(migrated_db: str) -> None:
    store_identical(migrated_db, 50)
    with psycopg.connect(migrated_db) as conn:
        conn.execute("ANALYZE api_requests")
    _, few = lookup(migrated_db, "session-1")
    few_children = children_read(migrated_db)
    store_identical(migrated_db, 5_000, offset=100)
    with psycopg.connect(migrated_db) as conn:
        conn.execute("ANALYZE api_requests")
    _, many = lookup(migrated_db, "session-1")
    # a merge of the daily partitions' index scans reads one row ahead in each partition
    assert 0 < few <= repository.HASH_ROWS + 8 and many <= few + 8, (few, many)
    assert few_children <= repository.CHILD_ROWS + 8 and children_read(migrated_db) <= few_children + 8


@pytest.mark.parametrize("session", ["session-3000", "session-2980"])
def test_the_requests_own_session_is_found_among_many_identical_rows(migrated_db: str, session: str) -> None:
    """The newest rows of a hash come back, and beyond the newest few those of the request's session."""
    store_identical(migrated_db, 3_000)
    entries, _ = lookup(migrated_db, session)
    same_history = [e for e in entries if e.current == HASH]
    assert [e.session for e in same_history if e.session == session] == [session]
    assert len(same_history) <= repository.HASH_GROUP_ROWS * 4
    assert len(entries) <= repository.HASH_CANDIDATES * (1 + repository.CHILD_ROWS)
    newest = max(same_history, key=lambda e: e.timestamp)
    assert newest.session == "session-3000"
