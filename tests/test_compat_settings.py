"""Issue 14, settings: the reference system's environment works, and what does not is said.

Before, 18 of its variables worked and about 65 were ignored without a word, as was a misspelt Nexus
setting. The table is `nexus.compat.reference_env`; these tests hold the settings, the warnings and
docs/settings.md to it.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import click
import psycopg
import psycopg.conninfo
import pytest
from click.testing import CliRunner

from nexus.auth.projects import resolve_project
from nexus.cli import main
from nexus.compat.environment import CHECKED_MARKER, environment_warnings
from nexus.compat.reference_env import (
    HANDLED_ELSEWHERE,
    REFERENCE_VARS,
    database_url_from_parts,
    handled_elsewhere,
    reference_markdown,
)
from nexus.settings import Settings, SettingsError, load_settings
from tests.harness.servers import run_dashboard
from tests.test_dashboard import call
from tests.usage_rows import insert_row

DOCS = Path(__file__).parent.parent / "docs"
#: Section 10 of the reference's description (and its README's CLAUDE_API_KEY): every name must be in the table.
REFERENCE_SECTION_10 = """
PORT HOST NODE_ENV PROXY_SERVER_TIMEOUT SERVICE_MODE CLAUDE_API_BASE_URL CLAUDE_API_TIMEOUT CLAUDE_OAUTH_CLIENT_ID
ENABLE_CLIENT_AUTH CREDENTIALS_DIR ACCOUNTS_DIR TRAIN_CLIENT_KEYS_DIR DEFAULT_PROJECT_ID INTERNAL_API_KEY
DASHBOARD_API_KEY API_KEY_SALT DATABASE_URL DB_HOST DB_PORT DB_NAME DB_USER DB_PASSWORD DB_SSL DB_POOL_SIZE
STORAGE_ENABLED STORAGE_BATCH_SIZE STORAGE_BATCH_INTERVAL STORAGE_ADAPTER_CLEANUP_MS STORAGE_ADAPTER_RETENTION_MS
DEBUG_SQL SLOW_QUERY_THRESHOLD_MS MAX_REQUEST_SIZE MAX_MESSAGE_COUNT MAX_SYSTEM_LENGTH MAX_MESSAGE_LENGTH
MAX_TOTAL_LENGTH RATE_LIMIT_WINDOW_MS RATE_LIMIT_MAX_REQUESTS RATE_LIMIT_MAX_TOKENS DOMAIN_RATE_LIMIT_WINDOW_MS
DOMAIN_RATE_LIMIT_MAX_REQUESTS DOMAIN_RATE_LIMIT_MAX_TOKENS LOG_LEVEL LOG_JSON DEBUG ENABLE_HEALTH_CHECKS
ENABLE_METRICS ENABLE_NOTIFICATIONS ENABLE_DASHBOARD COLLECT_TEST_SAMPLES TEST_SAMPLES_DIR MESSAGE_CACHE_SIZE
CREDENTIAL_CACHE_TTL CREDENTIAL_CACHE_SIZE SLACK_WEBHOOK_URL SLACK_CHANNEL SLACK_USERNAME SLACK_ICON_EMOJI
SLACK_ENABLED TELEMETRY_ENDPOINT TELEMETRY_ENABLED SPARK_API_URL SPARK_API_KEY SPARK_ENABLED AI_WORKER_ENABLED
AI_ANALYSIS_PROJECT_ID ANTHROPIC_ANALYSIS_MODEL GEMINI_API_KEY MCP_ENABLED MCP_GITHUB_TOKEN CNP_WILDCARD_CREDENTIALS
CNP_RESOLUTION_CACHE_TTL CNP_DEBUG_RESOLUTION PROXY_API_URL DASHBOARD_CACHE_TTL ANTHROPIC_INPUT_COST_PER_MTOK
ANTHROPIC_OUTPUT_COST_PER_MTOK DASHBOARD_DEV_USER_EMAIL DASHBOARD_SSO_HEADERS DASHBOARD_SSO_ALLOWED_DOMAINS
DASHBOARD_ALB_OIDC_ENABLED GOOGLE_CLIENT_ID GOOGLE_CLIENT_SECRET OAUTH_PROXY_COOKIE_SECRET GMAIL_OAUTH_CLIENT_FILE
GMAIL_OAUTH_TOKEN_FILE GMAIL_AUTH_POLL_TIMEOUT_MS OAUTH_APPROVAL_TIMEOUT_MS OAUTH_BROWSER_CHANNEL CLAUDE_API_KEY
""".split()
FIELDS = {name.upper() for name in Settings.model_fields}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in [*REFERENCE_VARS, *FIELDS]:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_reference_names_are_read_and_the_nexus_name_wins(clean_env: pytest.MonkeyPatch) -> None:
    env = {
        "STORAGE_BATCH_INTERVAL": "250",
        "INTERNAL_API_KEY": "internal-key-0123456789",
        "ENABLE_METRICS": "false",
        "LOG_JSON": "true",
        "LOG_LEVEL": "WARN",
        "DEFAULT_PROJECT_ID": "team-a",
        "DB_POOL_SIZE": "12",
        "DASHBOARD_CACHE_TTL": "30",
        "SLOW_QUERY_THRESHOLD_MS": "750",
        "DB_HOST": "db.internal",
        "DB_NAME": "agent_prompttrain",
        "DB_USER": "proxy",
        "DB_PASSWORD": "p@ss/word",
        "DB_SSL": "true",
    }
    for name, value in env.items():
        clean_env.setenv(name, value)
    s = load_settings()
    assert s.storage_batch_interval_ms == 250
    assert s.dashboard_api_key == "internal-key-0123456789"
    assert s.metrics_enabled is False and s.log_format == "json" and s.log_level == "warning"
    assert (s.default_project_id, s.db_pool_size, s.dashboard_cache_ttl, s.slow_query_threshold_ms) == (
        "team-a",
        12,
        30,
        750,
    )
    assert s.database_url == "postgresql://proxy:p%40ss%2Fword@db.internal:5432/agent_prompttrain?sslmode=require"
    assert "p@ss/word" not in repr(s.masked()) and "p%40ss%2Fword" not in repr(s.masked())
    for name, value in {
        "STORAGE_BATCH_INTERVAL_MS": "40",
        "DASHBOARD_API_KEY": "dash-key-0123456789",
        "METRICS_ENABLED": "true",
        "LOG_FORMAT": "text",
        "DATABASE_URL": "postgresql://x@y/z",
    }.items():
        clean_env.setenv(name, value)
    s = load_settings()
    assert (s.storage_batch_interval_ms, s.dashboard_api_key, s.metrics_enabled, s.log_format, s.database_url) == (
        40,
        "dash-key-0123456789",
        True,
        "text",
        "postgresql://x@y/z",
    )
    assert load_settings(storage_batch_interval_ms=7).storage_batch_interval_ms == 7  # arguments win too


def test_db_parts_defaults_and_bad_values(clean_env: pytest.MonkeyPatch) -> None:
    assert database_url_from_parts({}) is None and database_url_from_parts({"DB_PASSWORD": "x"}) is None
    assert database_url_from_parts({"DB_HOST": "::1"}) == "postgresql://postgres@[::1]:5432/agent_prompttrain"
    clean_env.setenv("STORAGE_BATCH_INTERVAL", "soon")
    with pytest.raises(SettingsError, match="STORAGE_BATCH_INTERVAL_MS"):
        load_settings()
    clean_env.delenv("STORAGE_BATCH_INTERVAL")
    clean_env.setenv("DEFAULT_PROJECT_ID", "../etc")
    with pytest.raises(SettingsError, match="DEFAULT_PROJECT_ID"):
        load_settings()


def test_default_project_replaces_the_host_step_only_when_set() -> None:
    headers = {"host": "gateway.example:3000"}
    assert resolve_project(headers, None) == "gateway.example"
    assert resolve_project(headers, None, "team-a") == "team-a"
    assert resolve_project({**headers, "msl-project-id": "team-b"}, None, "team-a") == "team-b"
    assert resolve_project(headers, "keyed", "team-a") == "keyed"


def test_the_table_matches_the_settings_and_the_reference() -> None:
    from nexus.compat.reference_env import reference_vars

    assert len(reference_vars()) == len(REFERENCE_VARS), "a variable has two rows"
    missing = sorted(set(REFERENCE_SECTION_10) - set(REFERENCE_VARS))
    assert not missing, f"reference variables without a row in nexus/compat/reference_env.py: {missing}"
    for row in REFERENCE_VARS.values():
        if row.status == "same":
            assert row.name in FIELDS, f"{row.name} is marked as a Nexus setting but is not one"
        if row.status == "alias":
            target = row.nexus.strip("`")
            assert target in FIELDS and row.name not in FIELDS, row
        if row.status == "unsupported":
            assert row.name not in FIELDS and row.nexus, row
        # the features once "built elsewhere" (issue 12) have landed: none of their names is left unclassified
        assert row.status != "elsewhere" and not handled_elsewhere(row.name), row
    assert not HANDLED_ELSEWHERE


def test_the_analysis_and_notification_names_of_the_reference_are_read_or_reported(
    clean_env: pytest.MonkeyPatch,
) -> None:
    """They were marked "handled elsewhere", so a migrated environment's `ENABLE_NOTIFICATIONS=false` still
    posted to Slack, the older `AI_ANALYSIS_GEMINI_REQUEST_TIMEOUT_MS` was dropped, and knobs Nexus lacks
    (`AI_HEAD_MESSAGES`, `MCP_CACHE_TTL`...) were ignored without a word."""
    clean_env.setenv("SLACK_WEBHOOK_URL", "https://hooks.example/x")
    clean_env.setenv("ENABLE_NOTIFICATIONS", "false")
    clean_env.setenv("AI_ANALYSIS_GEMINI_REQUEST_TIMEOUT_MS", "120000")
    s = load_settings()
    assert s.slack_active is False and s.ai_analysis_request_timeout_ms == 120_000
    clean_env.setenv("ENABLE_NOTIFICATIONS", "true")  # the reference's default: Slack follows the webhook
    assert load_settings().slack_active is True
    clean_env.setenv("SLACK_ENABLED", "true")  # the Nexus name wins
    clean_env.setenv("ENABLE_NOTIFICATIONS", "false")
    assert load_settings().slack_active is True
    lines = environment_warnings({"AI_HEAD_MESSAGES": "5", "MCP_CACHE_TTL": "300", "SLACK_WEBHOK_URL": "x"})
    assert [line.split(" ", 1)[0] for line in lines] == ["AI_HEAD_MESSAGES", "MCP_CACHE_TTL", "SLACK_WEBHOK_URL"]
    assert "AI_ANALYSIS_TRUNCATE_FIRST_N_TOKENS" in lines[0] and "did you mean SLACK_WEBHOOK_URL" in lines[2]


def test_docs_list_every_reference_variable() -> None:
    text = (DOCS / "settings.md").read_text()
    assert reference_markdown() in text, "docs/settings.md is stale: regenerate with `nexus config --markdown`"
    for name in REFERENCE_SECTION_10:
        assert f"| `{name}` |" in text, name


def test_warnings_name_the_replacement_once_each_and_never_a_value() -> None:
    env = {
        "NODE_ENV": "production",
        "RATE_LIMIT_MAX_REQUESTS": "1000",
        "GOOGLE_CLIENT_SECRET": "very-secret-google-value",
        "CREDENTIAL_CACHE_TTL": "3600000",
        "STORAGE_BATCH_SIZ": "500",
        "DASHBORD_API_KEY": "another-secret-value",
        "NEXUS_PORT": "3000",
        "NEXUS_STORAGE_BATCHSIZE": "1",
        "STORAGE_BATCH_INTERVAL": "5000",
        "STORAGE_BATCH_INTERVAL_MS": "50",
        # none of these warns: Nexus settings, reference names it reads, features built elsewhere, other software
        "PORT": "3000",
        "DB_POOL_SIZE": "20",
        "SLACK_WEBHOOK_URL": "https://hooks.example/x",
        "AI_WORKER_ENABLED": "true",
        "COLLECT_TEST_SAMPLES": "true",
        "OTEL_EXPORTER_OTLP_HEADERS": "x=y",
        "HOSTNAME": "box",
        "PATH": "/usr/bin",
        CHECKED_MARKER: "1",
        "NEXUS_TEST_DATABASE_URL": "postgresql://x",
    }
    lines = environment_warnings(env)
    assert lines == [
        "CREDENTIAL_CACHE_TTL (from the reference system) is not supported; instead: nothing needed: credential "
        "files are re-read when they change on disk",
        "DASHBORD_API_KEY is not a Nexus setting and is ignored: did you mean DASHBOARD_API_KEY?",
        "GOOGLE_CLIENT_SECRET (from the reference system) is not supported; instead: your oauth2-proxy's own "
        "settings; Nexus does not read them",
        "NEXUS_PORT is not a Nexus setting (settings have no NEXUS_ prefix but NEXUS_HOME): did you mean PORT?",
        "NEXUS_STORAGE_BATCHSIZE is not a Nexus setting (settings have no NEXUS_ prefix but NEXUS_HOME): did you "
        "mean STORAGE_BATCH_SIZE?",
        "NODE_ENV (from the reference system) is not supported; instead: DEBUG for verbose logs, LOG_FORMAT=json "
        "for production logs",
        "RATE_LIMIT_MAX_REQUESTS (from the reference system) is not supported; instead: AUTH_FAILURE_LIMIT limits "
        "wrong keys; request and token rates are left to Anthropic's own limits",
        "STORAGE_BATCH_INTERVAL (from the reference system) is ignored: STORAGE_BATCH_INTERVAL_MS is set and wins",
        "STORAGE_BATCH_SIZ is not a Nexus setting and is ignored: did you mean STORAGE_BATCH_SIZE?",
    ]
    assert not any(value in " ".join(lines) for value in ("very-secret-google-value", "another-secret-value"))


def test_start_up_prints_the_warnings_once(tmp_path: Path) -> None:
    """`nexus proxy` as a process, with a reference-style environment."""
    import os

    env = {
        **{k: v for k, v in os.environ.items() if k != CHECKED_MARKER},
        "HOST": "127.0.0.1",
        "STORAGE_ENABLED": "false",
        "CREDENTIALS_DIR": str(tmp_path),
        "NODE_ENV": "production",
        "SERVICE_MODE": "proxy",
        "STORAGE_BATCH_SIZ": "5",
        "PROXY_SERVER_TIMEOUT": "bad",  # stops it right after the warnings: no server needed
    }
    done = subprocess.run([sys.executable, "-m", "nexus.cli", "proxy"], env=env, capture_output=True, timeout=60)
    err = done.stderr.decode()
    assert done.returncode != 0 and "PROXY_SERVER_TIMEOUT" in err  # settings are checked first
    env["PROXY_SERVER_TIMEOUT"] = "660000"
    with socket.socket() as busy:  # a port in use stops it at the start-up checks, after the warnings
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env["PORT"] = str(busy.getsockname()[1])
        done = subprocess.run([sys.executable, "-m", "nexus.cli", "proxy"], env=env, capture_output=True, timeout=60)
    err = done.stderr.decode()
    assert done.returncode != 0 and "PORT" in err, err
    assert err.count("NODE_ENV (from the reference system) is not supported") == 1, err
    assert err.count("SERVICE_MODE (from the reference system) is not supported; instead: the command") == 1, err
    assert err.count("STORAGE_BATCH_SIZ is not a Nexus setting") == 1, err
    runner = CliRunner()
    shown = runner.invoke(main, ["config"], env={"NODE_ENV": "production", CHECKED_MARKER: "1"})
    assert shown.exit_code == 0 and "NODE_ENV (from the reference system)" in shown.output


def test_dashboard_cache_ttl_reuses_figures_and_zero_keeps_them_fresh(migrated_db: str) -> None:
    with run_dashboard({"DATABASE_URL": migrated_db, "DASHBOARD_CACHE_TTL": "60"}) as cached:
        with run_dashboard({"DATABASE_URL": migrated_db}) as fresh:
            for base in (cached, fresh):
                assert call(base, "/").status == 200
            with psycopg.connect(migrated_db, autocommit=True) as conn:
                insert_row(conn, datetime.now(UTC), account="acc_cache_probe")
            assert "acc_cache_probe" in call(fresh, "/").text
            assert "acc_cache_probe" not in call(cached, "/").text  # the figures of the first load, reused
            assert "acc_cache_probe" in call(cached, "/requests").text  # lists of requests are never cached


async def test_slow_queries_are_logged_without_their_parameters(
    migrated_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    from nexus.dashboard.db import read_only_pool
    from nexus.storage import querylog

    slow = Settings(slow_query_threshold_ms=50, debug_sql=False)
    pool = read_only_pool(migrated_db, 2, querylog.pool_kwargs(slow))
    await pool.open(wait=True)
    try:
        with caplog.at_level(logging.INFO, logger="nexus.sql"):
            async with pool.connection() as conn:
                await conn.execute("SELECT pg_sleep(0.1), %s::text", ["secret-parameter-value"])
                await conn.execute("SELECT 1")
    finally:
        await pool.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "nexus.sql"]
    assert len(lines) == 1 and lines[0].startswith("slow query (") and "pg_sleep(0.1)" in lines[0], lines
    assert "secret-parameter-value" not in " ".join(lines)
    assert querylog.pool_kwargs(Settings(slow_query_threshold_ms=0)) == {}
    caplog.clear()
    every = read_only_pool(migrated_db, 1, querylog.pool_kwargs(Settings(slow_query_threshold_ms=0, debug_sql=True)))
    await every.open(wait=True)
    try:
        async with every.connection() as conn:
            await conn.execute("SELECT   1,\n  %s::text", ["another-secret-parameter"])
    finally:
        await every.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "nexus.sql"]
    assert len(lines) == 1 and lines[0].startswith("query (") and lines[0].endswith("): SELECT 1, %s::text"), lines


def test_log_level_sets_the_lowest_level_and_debug_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    from nexus.observability import logs

    monkeypatch.setenv("NEXUS_SERVICE", "nexus-test")  # configure() sets it: restored afterwards

    root = logging.getLogger()
    before = root.level
    try:
        logs.configure("text", "nexus-test", level="info")
        assert root.level == logging.INFO
        logs.configure("text", "nexus-test", debug=True, level="error")
        assert root.level == logging.DEBUG
        logs.configure("text", "nexus-test")
        assert root.level == logging.WARNING
    finally:
        root.setLevel(before)
        for handler in [h for h in root.handlers if getattr(h, "_nexus", False)]:
            root.removeHandler(handler)


def test_warnings_are_printed_by_the_first_process_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """`nexus serve` prints them and marks the environment its children inherit."""
    from nexus.compat.environment import warn_once

    monkeypatch.delenv(CHECKED_MARKER, raising=False)
    monkeypatch.setenv("NODE_ENV", "production")
    first = warn_once()
    assert any(line.startswith("NODE_ENV (from the reference system)") for line in first) and warn_once() == []


def test_db_host_may_be_a_unix_socket_directory(migrated_db: str) -> None:
    """node-postgres (the reference) takes a directory as `DB_HOST` for a unix socket
    (`/var/run/postgresql`); the composed URL must reach that socket, not name a database
    `tmp/.../pgdata:5432/...` as it did."""
    url = database_url_from_parts({"DB_HOST": "/var/run/postgresql", "DB_PORT": "5433", "DB_PASSWORD": "p w"})
    assert url == "postgresql://postgres:p%20w@/agent_prompttrain?host=%2Fvar%2Frun%2Fpostgresql&port=5433"
    assert (
        database_url_from_parts({"DB_HOST": "/s", "DB_SSL": "true"})
        == "postgresql://postgres@/agent_prompttrain?host=%2Fs&port=5432&sslmode=require"
    )
    # and it connects: the suite's embedded server listens on a socket only
    info = psycopg.conninfo.conninfo_to_dict(migrated_db)
    if not str(info.get("host", "")).startswith("/"):
        pytest.skip("the test database is not on a unix socket")
    composed = database_url_from_parts(
        {
            "DB_HOST": str(info["host"]),
            "DB_PORT": str(info.get("port") or 5432),
            "DB_NAME": str(info["dbname"]),
            "DB_USER": str(info.get("user") or "postgres"),
        }
    )
    assert composed is not None
    with psycopg.connect(composed) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_nexus_dashboard_says_that_port_is_not_its_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference dashboard listened on `PORT`; `nexus dashboard` started with that service's
    environment (`PORT=4001`) listened on DASHBOARD_PORT's 3001 without a word."""
    from nexus import cli
    from nexus.compat.environment import dashboard_port_warning

    assert dashboard_port_warning({"PORT": "4001"}) == (
        "PORT is the proxy's port in Nexus: `nexus dashboard` listens on DASHBOARD_PORT (3001); "
        "set DASHBOARD_PORT=4001 to keep the reference dashboard's port"
    )
    assert dashboard_port_warning({"PORT": "3001"}) is None  # the reference dashboard's default: same port
    assert dashboard_port_warning({"PORT": "4001", "DASHBOARD_PORT": "4002"}) is None
    assert dashboard_port_warning({}) is None

    def stop(*_: object) -> None:  # no port is bound: stop right after the warnings
        raise click.ClickException("stopped by the test")

    monkeypatch.setattr(cli, "_check_port", stop)
    # `--port` writes DASHBOARD_PORT into os.environ (as the command does for its children): set it
    # through monkeypatch first, so that its absence is what is restored after the test
    monkeypatch.setenv("DASHBOARD_PORT", "3001")
    monkeypatch.delenv("DASHBOARD_PORT")
    monkeypatch.delenv(CHECKED_MARKER, raising=False)
    shown = CliRunner().invoke(main, ["dashboard"], env={"PORT": "4001", "STORAGE_ENABLED": "false"})
    assert shown.exit_code != 0 and "stopped by the test" in shown.output, shown.output
    assert shown.output.count("set DASHBOARD_PORT=4001") == 1, shown.output
    shown = CliRunner().invoke(main, ["dashboard", "--port", "4001"], env={"PORT": "4001"})
    assert "set DASHBOARD_PORT" not in shown.output, shown.output
