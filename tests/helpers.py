"""Small helpers shared by the end-to-end tests: polling, reading the JSON API, the database."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson
import psycopg

#: Storage settings that make rows appear quickly in tests.
FAST = {"STORAGE_BATCH_INTERVAL_MS": "20", "STORAGE_BATCH_SIZE": "50"}


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (loopback)
        return orjson.loads(resp.read())


def health(url: str) -> Any:
    """The proxy's `/health` detail, whatever its status (503 while it is not ready: its database away)."""
    try:
        with urllib.request.urlopen(url + "/health", timeout=10) as resp:  # noqa: S310 (loopback)
            return orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return orjson.loads(exc.read())


def wait_for(predicate: Callable[[], bool], timeout_s: float = 15.0, what: str = "condition") -> None:
    """Poll until `predicate()` holds; bounded, so a broken test fails instead of hanging."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def count_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM api_requests").fetchone()[0]  # type: ignore[index]


def set_database_reachable(admin_dsn: str, dbname: str, reachable: bool) -> None:
    """Take one database away (refuse and cut its connections) or give it back, server untouched."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS {"true" if reachable else "false"}')
        if not reachable:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,))
