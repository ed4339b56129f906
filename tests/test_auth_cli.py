"""`nexus keys ...` and `nexus oauth ...` as an operator runs them.

`nexus oauth login` runs end to end as a real process: it prints the authorize URL, the test plays the
browser against the fake's `/oauth/authorize` (which checks the PKCE parameters), pastes the
`code#state` on stdin, and the fake's token endpoint verifies the S256 verifier, state, redirect URI
and client id before the credential file is written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from click.testing import CliRunner

from nexus.auth.oauth_status import load_status
from nexus.cli import main
from tests.auth_helpers import cred_path, now_ms, post, proxy_env, run_login, write_api_key, write_oauth
from tests.harness.control import FakeControl
from tests.harness.servers import run_proxy

SALT = "cli-salt-9b1e5c7a3d2f4e6a8c0b"


def invoke(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(main, list(args), env=env)


@pytest.fixture
def creds(tmp_path: Path) -> Path:
    return tmp_path / "credentials"


@pytest.fixture
def env(upstream_url: str, creds: Path) -> dict[str, str]:
    return proxy_env(upstream_url, creds, API_KEY_SALT=SALT)


# --- keys ----------------------------------------------------------------------------------------


def test_keys_create_list_revoke(env: dict[str, str], creds: Path) -> None:
    created = invoke(env, "keys", "create", "--project", "proj-cli", "--name", "ci bot", "--expires-days", "7")
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert key.startswith("cnp_live_") and len(key) == 9 + 43
    assert "shown only this once" in created.stderr
    listed = invoke(env, "keys", "list")
    assert listed.exit_code == 0 and key not in listed.output
    assert "cnp_live_****" + key[-4:] in listed.output and "proj-cli" in listed.output and "ci bot" in listed.output
    [row] = orjson.loads(invoke(env, "keys", "list", "--json").stdout)
    assert row["project"] == "proj-cli" and row["usable"] is True and row["expires_at"] > row["created_at"]
    revoked = invoke(env, "keys", "revoke", row["key_id"])
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    [row] = orjson.loads(invoke(env, "keys", "list", "--json").stdout)
    assert row["usable"] is False and row["revoked_at"] is not None
    assert key not in "".join(p.read_text() for p in (creds / "client-keys").iterdir())


def test_keys_commands_refuse_bad_input(env: dict[str, str]) -> None:
    no_salt = {**env, "API_KEY_SALT": ""}
    result = invoke(no_salt, "keys", "create", "--project", "p")
    assert result.exit_code != 0 and "API_KEY_SALT" in result.output
    for bad in ("../x", "a/b", ""):
        result = invoke(env, "keys", "create", "--project", bad)
        assert result.exit_code != 0 and "invalid project name" in result.output
    result = invoke(env, "keys", "create", "--project", "p", "--expires-days", "0")
    assert result.exit_code != 0
    result = invoke(env, "keys", "revoke", "0123456789abcdef")
    assert result.exit_code != 0 and "no client key" in result.output
    assert invoke(env, "keys", "revoke", "../../etc").exit_code != 0


def test_a_cli_key_admits_requests_until_revoked(env: dict[str, str], creds: Path, fake: FakeControl) -> None:
    write_api_key(creds, "proj-live", "sk-ant-api03-live")
    key = invoke(env, "keys", "create", "--project", "proj-live").stdout.strip()
    with run_proxy({**env, "ENABLE_CLIENT_AUTH": "true"}) as url:
        assert post(url, {"authorization": f"Bearer {key}"})[0] == 200
        [row] = orjson.loads(invoke(env, "keys", "list", "--json").stdout)
        assert invoke(env, "keys", "revoke", row["key_id"]).exit_code == 0
        assert post(url, {"authorization": f"Bearer {key}"})[0] == 401  # on the very next request


# --- oauth login ---------------------------------------------------------------------------------


def test_login_end_to_end_writes_a_private_credential_file(env: dict[str, str], creds: Path, fake: FakeControl) -> None:
    code, url, out, err = run_login(env, ["--account", "alice"])
    assert code == 0, err
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert query["code_challenge_method"] == "S256" and query["response_type"] == "code"
    assert query["client_id"] == "9d1c250a-e61b-44d9-88ed-5944d1962f5e" and query["code"] == "true"
    assert query["redirect_uri"] == "https://console.anthropic.com/oauth/code/callback"
    assert query["scope"] == "org:create_api_key user:profile user:inference"
    assert len(query["state"]) >= 32 and query["state"] != query["code_challenge"]
    assert "each person uses their own subscription" in err
    path = cred_path(creds, "alice", account=True)
    data = orjson.loads(path.read_bytes())
    assert data["type"] == "oauth" and data["accountId"] == "alice" and data["email"] == "owner@example.com"
    assert data["oauth"]["accessToken"].startswith("sk-ant-oat01-fake-")
    assert fake.oauth()["valid_refresh_tokens"] == [data["oauth"]["refreshToken"]]
    assert data["oauth"]["expiresAt"] > now_ms(3000) and data["oauth"]["scopes"] == ["user:inference", "user:profile"]
    assert os.stat(path).st_mode & 0o777 == 0o600 and os.stat(path.parent).st_mode & 0o777 == 0o700
    assert fake.oauth()["grants"] == ["authorization_code"]
    assert data["oauth"]["accessToken"] not in out + err and data["oauth"]["refreshToken"] not in out + err
    assert str(path) in out
    # and the proxy uses it for the account
    with run_proxy(env) as proxy:
        assert post(proxy, {"x-train-account": "alice"})[0] == 200
    assert fake.requests()[-1]["headers"]["authorization"] == f"Bearer {data['oauth']['accessToken']}"


def test_relogin_keeps_unknown_fields_and_drops_a_replaced_api_key(
    env: dict[str, str], creds: Path, fake: FakeControl
) -> None:
    write_api_key(creds, "proj-re", "sk-ant-api03-replaced", slack={"channel": "#x"}, accountId="acc_keep")
    code, _, _, err = run_login(env, ["--project", "proj-re"])
    assert code == 0, err
    data = orjson.loads(cred_path(creds, "proj-re").read_bytes())
    assert data["type"] == "oauth" and "api_key" not in data
    assert data["slack"] == {"channel": "#x"} and data["accountId"] == "acc_keep"


def test_login_refuses_a_code_from_another_attempt(env: dict[str, str], creds: Path, fake: FakeControl) -> None:
    code, _, _, err = run_login(env, ["--account", "mallory"], paste=lambda shown: shown.split("#")[0] + "#not-ours")
    assert code != 0 and "does not belong to this login" in err
    assert not cred_path(creds, "mallory", account=True).exists()
    assert fake.oauth()["calls"] == 0
    # a code the endpoint refuses (already used, or forged) is an error too, and writes nothing
    code, _, _, err = run_login(env, ["--account", "mallory"], paste=lambda shown: "forged-code#" + shown.split("#")[1])
    assert code != 0 and "invalid_grant" in err
    assert not cred_path(creds, "mallory", account=True).exists()
    result = invoke(env, "oauth", "login", "--account", "../up")
    assert result.exit_code != 0 and "invalid account name" in result.output


# --- oauth refresh / status --------------------------------------------------------------------------


def test_refresh_forces_a_refresh_and_status_tells_the_state(
    env: dict[str, str], creds: Path, fake: FakeControl
) -> None:
    fake.oauth(refresh_token="sk-ant-ort01-cli-a")
    write_oauth(creds, "acct-a", "sk-ant-oat01-cli-a", "sk-ant-ort01-cli-a", now_ms(7200), account=True)
    write_oauth(creds, "proj-soon", "sk-ant-oat01-cli-soon", "sk-ant-ort01-cli-soon", now_ms(120))
    write_oauth(creds, "proj-gone", "sk-ant-oat01-cli-gone", "sk-ant-ort01-cli-gone", now_ms(-10))
    write_api_key(creds, "proj-key", "sk-ant-api03-not-oauth")
    cred_path(creds, "proj-broken").write_text('{"type": "oauth", "oauth": {}}')

    rows = {r.get("account"): r for r in orjson.loads(invoke(env, "oauth", "status", "--json").stdout)}
    assert rows["accounts/acct-a"]["state"] == "valid"
    assert rows["proj-soon"]["state"] == "expiring"
    assert rows["proj-gone"]["state"] == "expired"
    assert "proj-key" not in rows
    assert "proj-broken.credentials.json" in rows[None]["last_error"] and rows[None]["state"] == "invalid"

    result = invoke(env, "oauth", "refresh", "acct-a")  # not due, refreshed anyway
    assert result.exit_code == 0, result.output
    assert "accounts/acct-a.credentials.json: refreshed" in result.output
    assert fake.oauth()["calls"] == 1
    saved = orjson.loads(cred_path(creds, "acct-a", account=True).read_bytes())["oauth"]
    assert saved["accessToken"] != "sk-ant-oat01-cli-a"
    assert load_status(cred_path(creds, "acct-a", account=True))["last_refresh_at"] > 0

    # the two others hold refresh tokens the endpoint does not know: both fail, named, exit 1
    everything = invoke(env, "oauth", "refresh")
    assert everything.exit_code == 1
    assert "proj-soon.credentials.json: refresh failed" in everything.stderr
    assert "proj-gone.credentials.json: refresh failed" in everything.stderr
    rows = {r.get("account"): r for r in orjson.loads(invoke(env, "oauth", "status", "--json").stdout)}
    assert rows["proj-gone"]["state"] == "needs login" and rows["proj-soon"]["state"] == "needs login"
    assert rows["accounts/acct-a"]["last_refresh_at"] is not None

    table = invoke(env, "oauth", "status")
    assert table.exit_code == 0 and "needs login" in table.output and "invalid_grant" in table.output
    every_token = [saved["accessToken"], saved["refreshToken"], "sk-ant-oat01-cli-soon", "sk-ant-ort01-cli-gone"]
    for output in (table.output, invoke(env, "oauth", "status", "--json").output, everything.output):
        assert not any(token in output for token in every_token)

    unknown = invoke(env, "oauth", "refresh", "nobody")
    assert unknown.exit_code != 0 and "no credential named 'nobody'" in unknown.output
    not_oauth = invoke(env, "oauth", "refresh", "proj-key")
    assert not_oauth.exit_code == 1 and "not an OAuth credential" in not_oauth.stderr
