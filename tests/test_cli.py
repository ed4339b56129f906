"""The `nexus` command line: the commands the contract names exist and behave."""

from __future__ import annotations

import time

from click.testing import CliRunner

from nexus import __version__
from nexus.cli import main
from nexus.compat.reference_env import reference_markdown
from nexus.settings import settings_markdown


def test_commands_are_listed() -> None:
    out = CliRunner().invoke(main, ["--help"]).output
    for command in ("serve", "proxy", "config", "fake-upstream", "migrate", "keys", "oauth"):
        assert command in out


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_config_json_and_markdown(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PORT", "4242")
    result = CliRunner().invoke(main, ["config", "--json"])
    assert result.exit_code == 0
    assert '"PORT": 4242' in result.output
    md = CliRunner().invoke(main, ["config", "--markdown"])
    assert md.output == settings_markdown() + "\n" + reference_markdown()  # the whole of docs/settings.md


def test_proxy_refuses_bad_settings(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CLAUDE_API_TIMEOUT", "-5")
    result = CliRunner().invoke(main, ["proxy"])
    assert result.exit_code != 0
    assert "CLAUDE_API_TIMEOUT" in result.output


def test_migrate_command(migrated_db: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DATABASE_URL", migrated_db)
    result = CliRunner().invoke(main, ["migrate"])
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output
    monkeypatch.delenv("DATABASE_URL")
    bad = CliRunner().invoke(main, ["migrate"])
    assert bad.exit_code != 0 and "DATABASE_URL" in bad.output


def test_migrate_waits_for_the_database(migrated_db: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DATABASE_URL", migrated_db)
    result = CliRunner().invoke(main, ["migrate", "--wait-seconds", "5"])
    assert result.exit_code == 0, result.output
    # Nothing listens on port 1: it keeps trying for the time given, then fails with one line.
    monkeypatch.setenv("DATABASE_URL", "postgresql://nexus@127.0.0.1:1/nexus")
    started = time.monotonic()
    bad = CliRunner().invoke(main, ["migrate", "--wait-seconds", "1.5"])
    assert bad.exit_code != 0
    assert 1.0 <= time.monotonic() - started < 10
    assert "database not reachable after 1.5 s" in bad.output
    assert "Traceback" not in bad.output
