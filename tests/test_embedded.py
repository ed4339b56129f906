"""The embedded PostgreSQL that `nexus serve` starts when no DATABASE_URL is given."""

from __future__ import annotations

from pathlib import Path

import psycopg

from nexus.storage.embedded import start_embedded
from nexus.storage.migrate import migrate


def test_data_survives_a_restart(pg_dir: Path) -> None:
    url, stop = start_embedded(pg_dir / "pg")
    try:
        migrate(url)
        with psycopg.connect(url) as conn:
            conn.execute(
                "INSERT INTO api_requests (request_id, timestamp, project_id, method, path) "
                "VALUES (gen_random_uuid(), now(), 'kept', 'POST', '/v1/messages')"
            )
    finally:
        stop()
    url2, stop2 = start_embedded(pg_dir / "pg")
    try:
        assert url2 == url  # same socket directory, same URL: clients keep working across restarts
        assert migrate(url2) == []
        with psycopg.connect(url2) as conn:
            assert conn.execute("SELECT project_id FROM api_requests").fetchall() == [("kept",)]
    finally:
        stop2()
