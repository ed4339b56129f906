"""STORAGE_SEARCH_ENABLED: the writer builds each row's search vector, or leaves it out when told to."""

from __future__ import annotations

import time
from pathlib import Path

import anthropic
import psycopg
import pytest

from tests.harness.servers import run_proxy


def _stored_vector(upstream_url: str, migrated_db: str, home: Path, **env: str) -> object:
    settings = {
        "CLAUDE_API_BASE_URL": upstream_url,
        "DATABASE_URL": migrated_db,
        "NEXUS_HOME": str(home),
        "STORAGE_BATCH_INTERVAL_MS": "20",
        **env,
    }
    with run_proxy(settings) as proxy:
        client = anthropic.Anthropic(base_url=proxy, api_key="sk-ant-api03-test", max_retries=0)
        raw = client.messages.with_raw_response.create(
            model="claude-sonnet-4-6", max_tokens=20, messages=[{"role": "user", "content": "find the zebra"}]
        )
        rid = raw.headers["x-request-id"]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with psycopg.connect(migrated_db) as conn:
                row = conn.execute(
                    "SELECT search_vector::text FROM api_requests WHERE request_id = %s", (rid,)
                ).fetchone()
            if row is not None:
                return row[0]
            time.sleep(0.05)
    pytest.fail("the request was not stored")


def test_rows_are_searchable_unless_search_is_turned_off(upstream_url: str, migrated_db: str, tmp_path: Path) -> None:
    on = _stored_vector(upstream_url, migrated_db, tmp_path / "on")
    assert isinstance(on, str) and "'zebra'" in on
    off = _stored_vector(upstream_url, migrated_db, tmp_path / "off", STORAGE_SEARCH_ENABLED="false")
    assert off is None
