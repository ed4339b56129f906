"""Settings: environment names, defaults, validation messages, masking, generated docs."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from nexus.cli import main
from nexus.settings import Settings, SettingsError, load_settings, mask_secret, settings_markdown


def test_defaults_match_the_interface_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PORT", "HOST", "DASHBOARD_PORT", "CLAUDE_API_BASE_URL", "CLAUDE_API_TIMEOUT", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert (s.host, s.port, s.dashboard_port) == ("0.0.0.0", 3000, 3001)
    assert s.claude_api_base_url == "https://api.anthropic.com"
    assert s.claude_api_timeout == 600_000
    assert s.proxy_server_timeout == 660_000
    assert s.database_url is None
    assert s.storage_enabled is True
    assert s.enable_client_auth is False
    assert s.max_request_size == 32 * 1024 * 1024
    assert s.nexus_home == Path("~/.local/share/nexus").expanduser()


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "4100")
    monkeypatch.setenv("CLAUDE_API_BASE_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("STORAGE_ENABLED", "false")
    s = load_settings()
    assert s.port == 4100
    assert s.claude_api_base_url == "http://127.0.0.1:9"  # trailing slash removed once, here
    assert s.storage_enabled is False


def test_each_bad_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "seventy")
    monkeypatch.setenv("CLAUDE_API_BASE_URL", "ftp://x")
    monkeypatch.setenv("DATABASE_URL", "mysql://u:hunter2@db/x")
    with pytest.raises(SettingsError) as info:
        load_settings()
    text = str(info.value)
    assert "PORT:" in text and "'seventy'" in text
    assert "CLAUDE_API_BASE_URL:" in text
    assert "DATABASE_URL:" in text
    assert "hunter2" not in text  # a URL that may hold a password is never echoed


def test_masked_output_hides_secrets() -> None:
    s = Settings(
        dashboard_api_key="dash-secret-value-123",
        api_key_salt="salt-secret-value-456",
        database_url="postgresql://nexus:pa55word@db:5432/nexus",
    )
    shown = s.masked()
    flat = repr(shown)
    for secret in ("dash-secret-value-123", "salt-secret-value-456", "pa55word"):
        assert secret not in flat
    assert shown["DATABASE_URL"] == "postgresql://nexus:****@db:5432/nexus"
    assert shown["DASHBOARD_API_KEY"] == mask_secret("dash-secret-value-123")


def test_config_command_masks_and_reports_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASHBOARD_API_KEY", "very-secret-dashboard-key")
    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == 0, result.output
    assert "very-secret-dashboard-key" not in result.output
    assert "DASHBOARD_API_KEY" in result.output
    monkeypatch.setenv("STORAGE_BATCH_SIZE", "0")
    bad = CliRunner().invoke(main, ["config"])
    assert bad.exit_code != 0
    assert "STORAGE_BATCH_SIZE" in bad.output


def test_docs_table_is_generated_from_the_settings() -> None:
    table = settings_markdown()
    for name in Settings.model_fields:
        assert f"`{name.upper()}`" in table
    doc = Path(__file__).parent.parent / "docs" / "settings.md"
    assert table in doc.read_text(), "docs/settings.md is stale: regenerate with `nexus config --markdown`"


def test_masked_secrets_show_at_most_a_four_and_two_character_hint() -> None:
    """No more of a secret than its first four and last two characters is ever shown, whatever its length."""
    for length in (1, 4, 8, 9, 12, 20, 64):
        secret = "".join(chr(ord("a") + i % 26) for i in range(length - 1)) + "Z"
        shown = mask_secret(secret)
        revealed = [
            secret[i:j] for i in range(len(secret)) for j in range(i + 1, len(secret) + 1) if secret[i:j] in shown
        ]
        longest = max((len(part) for part in revealed), default=0)
        assert longest <= 4, (secret, shown)
        assert sum(c.isalpha() for c in shown) <= 6, (secret, shown)
        assert not (length > 2 and secret[-3:] in shown), (secret, shown)


@pytest.mark.parametrize(
    "url",
    [
        "host=/tmp/pg dbname=nexus user=nexus",
        "dbname=nexus host=/tmp/pg",  # libpq takes its keywords in any order
        "port=5433 host=db dbname=nexus",
        "dbname=nexus options='-c search_path=a://b' host=db",  # a "://" inside a value: still keywords
    ],
)
def test_database_url_takes_a_connection_string_in_any_order(url: str) -> None:
    assert Settings(database_url=url).database_url == url


@pytest.mark.parametrize("url", ["dbname", "mysql://u@db/x", "sqlite:///x.db", "host='unclosed"])
def test_database_url_refuses_what_is_no_postgresql_address(url: str) -> None:
    with pytest.raises(ValueError, match="postgresql:// URL or a libpq connection string"):
        Settings(database_url=url)


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("dbname=nexus host=db password=hunter2", "hunter2"),
        ("host=db password='pa ss' dbname=nexus", "pa ss"),
        ("password=hunter2 options='-c x=a://b' host=db", "hunter2"),
        ("postgresql://nexus@db/nexus?password=hunter2&sslmode=require", "hunter2"),
        ("postgresql://nexus:pa55word@db/nexus?password=other", "other"),
    ],
)
def test_masked_hides_the_password_of_any_database_address(url: str, secret: str) -> None:
    shown = Settings(database_url=url).masked()["DATABASE_URL"]
    assert secret not in shown and "pa55word" not in shown
    assert "****" in shown
