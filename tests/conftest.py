"""Shared fixtures: a real fake-upstream process and real proxy processes in front of it."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import hypothesis  # noqa: F401 (imported at collection, not lazily by its plugin at session end: see below)
import psycopg
import pytest

from nexus.storage.embedded import start_embedded
from nexus.storage.migrate import migrate
from tests.harness.control import FakeControl
from tests.harness.servers import run_fake_upstream, run_proxy

# Hypothesis's pytest plugin imports hypothesis in its terminal summary when no test did, deep inside
# pytest's hooks; pytest's assertion rewriter then parses it there, which CPython 3.11.7 can fail with
# "AST constructor recursion depth mismatch" (a CPython bug): a run of a few tests exited with an error.

FAST_RETRIES = {
    "UPSTREAM_RETRY_BASE_DELAY_MS": "20",
    "UPSTREAM_RETRY_MAX_DELAY_MS": "2000",
    "UPSTREAM_MAX_ATTEMPTS": "3",
}


@pytest.fixture(scope="session")
def upstream_url() -> Iterator[str]:
    with run_fake_upstream() as url:
        yield url


@pytest.fixture(scope="session")
def proxy_url(upstream_url: str) -> Iterator[str]:
    with run_proxy({"CLAUDE_API_BASE_URL": upstream_url, **FAST_RETRIES}) as url:
        yield url


@pytest.fixture(scope="session")
def tight_proxy_url(upstream_url: str) -> Iterator[str]:
    """A proxy with short timeouts and a small body limit, for the failure cases."""
    env = {
        "CLAUDE_API_BASE_URL": upstream_url,
        "CLAUDE_API_TIMEOUT": "1500",
        "STREAM_IDLE_TIMEOUT_MS": "1000",
        "MAX_REQUEST_SIZE": str(1024 * 1024),
        **FAST_RETRIES,
    }
    with run_proxy(env) as url:
        yield url


@pytest.fixture
def fake(upstream_url: str) -> Iterator[FakeControl]:
    control = FakeControl(upstream_url)
    control.reset()
    yield control
    control.reset()


# --- PostgreSQL ----------------------------------------------------------------------------------


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at database `name`."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    """A directory for a PostgreSQL data dir, outside pytest's basetemp: another pytest session starting
    on the machine resets /tmp/pytest-of-<user> to mode 0700, which locks out the server's own user."""
    path = Path(tempfile.mkdtemp(prefix="nexus-test-pg-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def database_admin_url() -> Iterator[str]:
    """A real PostgreSQL server: `NEXUS_TEST_DATABASE_URL` when set, else a throwaway embedded one."""
    given = os.environ.get("NEXUS_TEST_DATABASE_URL")
    if given:
        yield given
        return
    # Not under pytest's basetemp (see `pg_dir`).
    data_dir = Path(tempfile.mkdtemp(prefix="nexus-test-pg-"))
    url, stop_server = start_embedded(data_dir, database="postgres")
    try:
        yield url
    finally:
        stop_server()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def migrated_template(database_admin_url: str) -> Iterator[str]:
    name = f"nexus_template_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    migrate(with_database(database_admin_url, name))
    try:
        yield name
    finally:
        with psycopg.connect(database_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def migrated_db(database_admin_url: str, migrated_template: str) -> Iterator[str]:
    """A fresh, migrated database of its own for one test (a cheap copy of a migrated template)."""
    name = f"nexus_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template}"')
    try:
        yield with_database(database_admin_url, name)
    finally:
        with psycopg.connect(database_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many of the tests that passed exercise Nexus itself, and how many its test tooling."""
    passed = terminalreporter.stats.get("passed", [])
    tooling = sum(1 for report in passed if "tooling" in report.keywords)
    terminalreporter.write_line(
        f"{len(passed) - tooling} passed tests exercise Nexus itself; {tooling} test the tooling "
        "(fake upstream, benchmark generators)"
    )
