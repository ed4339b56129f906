"""`nexus demo-data`: generated Claude Code sessions stored through the writer's path, read back."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date

import psycopg

from nexus.conversations.search import MATCHES
from nexus.demo_data import fill
from nexus.storage.requests_repo import _filters, list_sql

TODAY = date(2026, 12, 1)


def test_demo_data_fills_rows_conversations_costs_and_search(migrated_db: str) -> None:
    summary = fill(migrated_db, 200, seed=3, days=5, batch_rows=64, today=TODAY)
    assert summary.requests == summary.new == 200 and summary.refused == 0 and summary.sessions >= 2
    with psycopg.connect(migrated_db) as conn:
        rows, priced, linked, searchable, days, projects, models = conn.execute(
            "SELECT count(*), count(cost_usd), count(conversation_id), count(search_vector), "
            'count(DISTINCT "timestamp"::date), count(DISTINCT project_id), count(DISTINCT model) FROM api_requests'
        ).fetchone()  # type: ignore[misc]
        assert rows == 200
        assert priced >= 190 and linked >= 190 and searchable >= 190
        assert days >= 2 and projects >= 2 and models >= 2
        lo, hi = conn.execute('SELECT min("timestamp"), max("timestamp") FROM api_requests').fetchone()  # type: ignore[misc]
        assert lo.date() >= date(2026, 11, 26) and hi.date() <= date(2026, 12, 2)
        subtasks = conn.execute("SELECT count(*) FROM api_requests WHERE is_subtask").fetchone()
        assert subtasks is not None and subtasks[0] >= 1
        conversations, titled = conn.execute("SELECT count(*), count(title) FROM conversations").fetchone()  # type: ignore[misc]
        assert conversations >= 2 and titled == conversations
        # a word of the generated prose is found by full-text search
        search = f"SELECT count(*) FROM api_requests WHERE {MATCHES}"  # noqa: S608 (a constant)
        found = conn.execute(search, ("proxy",)).fetchone()  # type: ignore[arg-type]
        assert found is not None and found[0] > 0
    again = fill(migrated_db, 200, seed=3, days=5, batch_rows=64, today=TODAY)  # same seed, same day
    assert again.requests == 200 and again.new == 0
    with psycopg.connect(migrated_db) as conn:
        assert conn.execute("SELECT count(*) FROM api_requests").fetchone() == (200,)


def test_demo_data_command(migrated_db: str) -> None:
    env = {**os.environ, "DATABASE_URL": migrated_db}
    out = subprocess.run(
        [sys.executable, "-m", "nexus.cli", "demo-data", "--requests", "50", "--seed", "9", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "stored 50 requests (50 new)" in out.stdout
    with psycopg.connect(migrated_db) as conn:
        assert conn.execute("SELECT count(*) FROM api_requests").fetchone() == (50,)


def test_subtasks_of_a_request_are_read_through_an_index(migrated_db: str) -> None:
    """GET /api/requests/{id}/subtasks: the sub-agent rows are found by `parent_task_request_id`'s
    index (migration 0013), not by reading every partition (bench/dashboard.py found ~300 ms at 230k)."""
    fill(migrated_db, 200, seed=5, days=3, today=TODAY)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute("ANALYZE api_requests")
        row = conn.execute("SELECT parent_task_request_id FROM api_requests WHERE is_subtask LIMIT 1").fetchone()
        assert row is not None and row[0] is not None
        conn.execute("SET enable_seqscan = off")  # a 200-row table: judge the plan PostgreSQL can make
        clause, params = _filters(None, None, None, str(row[0]), None)
        plan = "\n".join(
            r[0]
            for r in conn.execute("EXPLAIN " + list_sql(clause, False), (*params, 50, 0)).fetchall()  # type: ignore[operator]
        )
        assert "Index Cond: (parent_task_request_id = " in plan, plan
        assert "Seq Scan" not in plan, plan
