"""Probes and start-up: liveness, readiness that follows the database, one clear line when the proxy
cannot start."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import psycopg

from tests.harness.servers import free_port, run_proxy
from tests.helpers import FAST, set_database_reachable, wait_for


def probe(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (loopback)
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def test_ready_follows_the_database_and_live_does_not(
    upstream_url: str, migrated_db: str, database_admin_url: str, tmp_path: Path
) -> None:
    """Started while PostgreSQL is away: serving (live) but not ready, and `/health` says 503 with
    the reason (it used to say healthy); ready once the database answers, not ready again while it is
    away, ready after."""
    name = str(psycopg.conninfo.conninfo_to_dict(migrated_db)["dbname"])
    env = {"CLAUDE_API_BASE_URL": upstream_url, "DATABASE_URL": migrated_db, "NEXUS_HOME": str(tmp_path), **FAST}
    set_database_reachable(database_admin_url, name, False)
    try:
        with run_proxy(env, ready=False) as url:
            assert probe(url + "/health/live")[0] == 200
            status, body = probe(url + "/health/ready")
            assert status == 503 and "database" in body["failed"], body
            assert body["checks"]["database"]["ok"] is False
            status, health = probe(url + "/health")
            assert status == 503 and health["status"] == "unavailable" and health["ready"] is False
            assert health["storage"]["database_ok"] is False  # the detail is kept

            set_database_reachable(database_admin_url, name, True)
            wait_for(lambda: probe(url + "/health/ready")[0] == 200, 30, "ready once the database answers")
            status, body = probe(url + "/health/ready")
            assert body["status"] == "ready" and body["failed"] == []
            assert body["checks"]["migrations"] == {"ok": True, "detail": "current"}
            assert probe(url + "/health")[0] == 200

            set_database_reachable(database_admin_url, name, False)
            wait_for(lambda: probe(url + "/health/ready")[0] == 503, 30, "not ready while the database is away")
            assert probe(url + "/health/live")[0] == 200
            assert probe(url + "/health")[0] == 503
            set_database_reachable(database_admin_url, name, True)
            wait_for(lambda: probe(url + "/health/ready")[0] == 200, 30, "ready again")
    finally:
        set_database_reachable(database_admin_url, name, True)


def test_ready_reports_missing_migrations(upstream_url: str, database_admin_url: str, tmp_path: Path) -> None:
    """A database the proxy could not migrate (here: migrations removed after start) is not ready."""
    from tests.conftest import with_database

    dbname = f"nexus_unmigrated_{os.getpid()}"
    with psycopg.connect(database_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    dsn = with_database(database_admin_url, dbname)
    try:
        env = {"CLAUDE_API_BASE_URL": upstream_url, "DATABASE_URL": dsn, "NEXUS_HOME": str(tmp_path), **FAST}
        with run_proxy(env) as url:  # `nexus proxy` migrated it at start: ready
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("DELETE FROM nexus_migrations WHERE version >= 7")
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            # the writer notices at its next connection (the one it had was cut)
            wait_for(lambda: probe(url + "/health/ready")[1]["failed"] == ["migrations"], 30, "migration missing")
            status, body = probe(url + "/health/ready")
            assert status == 503 and "0007" in body["checks"]["migrations"]["detail"]
    finally:
        with psycopg.connect(database_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def _nexus(args: list[str], env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nexus.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_a_second_proxy_on_a_busy_port_says_so_in_one_line(upstream_url: str) -> None:
    with run_proxy({"CLAUDE_API_BASE_URL": upstream_url, "STORAGE_ENABLED": "false"}) as url:
        port = url.rsplit(":", 1)[1]
        second = _nexus(["proxy"], {"HOST": "127.0.0.1", "PORT": port, "STORAGE_ENABLED": "false"})
        assert second.returncode != 0
        lines = [line for line in (second.stdout + second.stderr).splitlines() if line.strip()]
        assert len(lines) == 1, lines
        assert f"port {port}" in lines[0] and "PORT" in lines[0] and "Traceback" not in lines[0]
        assert probe(url + "/health/live")[0] == 200  # the first one is untouched


def test_other_start_up_failures_are_one_clear_line(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    port = str(free_port())
    cases: list[tuple[dict[str, str], str]] = [
        ({"CREDENTIALS_DIR": str(not_a_dir)}, "CREDENTIALS_DIR"),
        ({"DATABASE_URL": "postgresql://u@127.0.0.1:notaport/db"}, "DATABASE_URL"),
        ({"DATABASE_URL": "mysql://u@db/x"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://u@127.0.0.1:1/db", "NEXUS_HOME": str(not_a_dir / "home")}, "NEXUS_HOME"),
        ({"SHUTDOWN_TIMEOUT_MS": "soon"}, "SHUTDOWN_TIMEOUT_MS"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
    ]
    for env, setting in cases:
        result = _nexus(["proxy"], {"HOST": "127.0.0.1", "PORT": port, **env})
        lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        assert result.returncode != 0, (env, lines)
        assert len(lines) == 1 and setting in lines[0] and "Traceback" not in lines[0], (env, lines)


def test_dashboard_probes(migrated_db: str, database_admin_url: str) -> None:
    from tests.harness.servers import run_dashboard

    with run_dashboard({"DATABASE_URL": migrated_db}) as url:
        assert probe(url + "/health/live")[0] == 200
        status, body = probe(url + "/health/ready")
        assert status == 200 and body["checks"]["migrations"]["detail"] == "current", body
        name = str(psycopg.conninfo.conninfo_to_dict(migrated_db)["dbname"])
        set_database_reachable(database_admin_url, name, False)
        try:
            wait_for(lambda: probe(url + "/health/ready")[0] == 503, 20, "dashboard not ready")
            assert probe(url + "/health/ready")[1]["failed"] == ["database", "migrations"]
            assert probe(url + "/health/live")[0] == 200
        finally:
            set_database_reachable(database_admin_url, name, True)
        wait_for(lambda: probe(url + "/health/ready")[0] == 200, 20, "dashboard ready again")


def test_credentials_readiness_names_bad_files_without_failing(tmp_path: Path) -> None:
    from nexus.auth.credentials import CredentialStore
    from nexus.proxy.probes import credentials_check

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "good.credentials.json").write_text('{"type": "api_key", "api_key": "sk-ant-api03-x"}')
    (creds / "bad.credentials.json").write_text('{"type": "apikey"}')
    check = credentials_check(CredentialStore(creds))
    assert check.ok and "1 loaded" in check.detail and "bad.credentials.json" in check.detail
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    assert not credentials_check(CredentialStore(not_a_dir)).ok
