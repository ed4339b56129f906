"""The auth layer's pure pieces: names, Host rules, beta merge, file validation, rotation, PKCE, status,
atomic writes and the file lock, and the token endpoint's error messages (against the real fake)."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from nexus.auth import oauth_status
from nexus.auth.credentials import (
    MAX_CACHED,
    Credential,
    CredentialError,
    CredentialStore,
    merge_beta,
    parse_credential,
)
from nexus.auth.files import credential_lock, write_atomically
from nexus.auth.login import LoginError, parse_pasted, start_login
from nexus.auth.names import safe_name
from nexus.auth.projects import host_project, requested_account, resolve_project
from nexus.auth.refresh import rotated
from nexus.auth.token_endpoint import OAuthError, TokenAnswer, TokenEndpoint
from nexus.errors import ProxyError
from nexus.settings import SettingsError, load_settings
from nexus.startup import StartupError, check_client_auth
from tests.harness.control import FakeControl


@pytest.mark.parametrize("name", ["default", "proj-1", "a.b.c", "localhost:3000", "127.0.0.1:8080", "A_b"])
def test_safe_names(name: str) -> None:
    assert safe_name(name) == name


@pytest.mark.parametrize("name", ["", "..", "../x", "a/b", "a\\b", ".hidden", "a..b", "x" * 129, "a b", "é", "-x"])
def test_unsafe_names(name: str) -> None:
    assert safe_name(name) is None


@pytest.mark.parametrize(
    ("host", "project"),
    [
        ("api.example.com", "api.example.com"),
        ("API.example.com:443", "api.example.com"),
        ("localhost:3000", "localhost:3000"),
        ("localhost", "localhost"),
        ("127.0.0.1:3000", "127.0.0.1:3000"),
        ("10.1.2.3", "10.1.2.3"),
        ("[::1]:3000", None),
        ("::1", None),
        ("bad host", None),
        ("", None),
        (None, None),
    ],
)
def test_host_rules(host: str | None, project: str | None) -> None:
    assert host_project(host) == project


def test_resolution_order() -> None:
    headers = {"train-id": "t", "msl-project-id": "m", "host": "h.example"}
    assert resolve_project(headers, "key-project") == "key-project"
    assert resolve_project(headers, None) == "t"
    assert resolve_project({"msl-project-id": " m ", "host": "h.example"}, None) == "m"
    assert resolve_project({"train-id": "  ", "host": "h.example"}, None) == "h.example"
    assert resolve_project({}, None) == "default"
    # DEFAULT_PROJECT_ID replaces the Host step (the reference's project era), never a header or a key
    assert resolve_project({"train-id": "  ", "host": "h.example"}, None, "dflt") == "dflt"
    assert resolve_project({}, None, "dflt") == "dflt"
    assert resolve_project(headers, None, "dflt") == "t" and resolve_project(headers, "k", "dflt") == "k"
    assert resolve_project({"host": "h.example"}, None, "") == "h.example"
    assert resolve_project({"train-id": "../x"}, "key-project") == "key-project"  # ignored, not even checked
    with pytest.raises(ProxyError) as info:
        resolve_project({"train-id": "../x"}, None)
    assert info.value.status == 400
    assert info.value.message == (
        "Invalid train-id header: not a valid project name (letters, digits and . _ : -, 128 at most)"
    )
    assert requested_account({}) is None
    assert requested_account({"x-train-account": " acct "}) == "acct"
    with pytest.raises(ProxyError) as info:
        requested_account({"msl-account": "a/b"})
    assert info.value.message == (
        "Invalid msl-account header: not a valid account name (letters, digits and . _ : -, 128 at most)"
    )


def test_merge_beta() -> None:
    assert merge_beta(None, ["oauth-2025-04-20"]) == "oauth-2025-04-20"
    assert merge_beta("", ["o"]) == "o"
    assert merge_beta("b, a ,b,,o", ["o", "z"]) == "b,a,o,z"


def test_credential_validation(tmp_path: Path) -> None:
    path = tmp_path / "p.credentials.json"
    ok = parse_credential(path, {"type": "oauth", "oauth": {"accessToken": "t", "expiresAt": 1.5e12}})
    assert ok.account_id == "p" and ok.expires_at_ms == 1_500_000_000_000 and ok.refresh_token is None
    bad = [
        ({"type": "oauth", "oauth": {"accessToken": "t", "expiresAt": True}}, "oauth.expiresAt"),
        ({"type": "oauth", "oauth": {"accessToken": "t", "scopes": "a b"}}, "oauth.scopes"),
        ({"type": "oauth", "oauth": {"accessToken": "t", "isMax": "yes"}}, "oauth.isMax"),
        ({"type": "oauth", "oauth": {"accessToken": "t", "refreshToken": 5}}, "oauth.refreshToken"),
        ({"type": "api_key", "api_key": "k", "accountId": 3}, "accountId"),
        ({"api_key": "k"}, "'type' is required"),
    ]
    for data, field in bad:
        with pytest.raises(CredentialError, match=field) as info:
            parse_credential(path, data)
        assert str(info.value).startswith("p.credentials.json: ")


def test_rotation_keeps_every_other_field() -> None:
    raw = {"type": "oauth", "accountId": "a", "slack": {"x": 1}, "oauth": {"accessToken": "old", "isMax": True, "z": 2}}
    answer = TokenAnswer("new-access", None, 123, ["s1"], {})
    out = rotated(raw, answer, "kept-refresh")
    assert out["slack"] == {"x": 1} and out["accountId"] == "a"
    assert out["oauth"] == {
        "accessToken": "new-access",
        "refreshToken": "kept-refresh",  # the endpoint gave none: the old one stays
        "expiresAt": 123,
        "scopes": ["s1"],
        "isMax": True,
        "z": 2,
    }
    assert raw["oauth"]["accessToken"] == "old"  # the input is not modified


def test_pkce_and_pasted_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAUDE_OAUTH_AUTHORIZE_URL", "https://auth.example/authorize")
    settings = load_settings()
    request = start_login(settings)
    query = {k: v[0] for k, v in parse_qs(urlsplit(request.url).query).items()}
    expected = base64.urlsafe_b64encode(hashlib.sha256(request.verifier.encode()).digest()).rstrip(b"=").decode()
    assert request.url.startswith("https://auth.example/authorize?")
    assert query["code_challenge"] == expected and query["code_challenge_method"] == "S256"
    assert query["state"] == request.state and request.verifier not in request.url  # unlike the reference
    assert start_login(settings).state != request.state
    state = request.state
    assert parse_pasted(f"  abc123#{state}\n", state) == "abc123"
    assert parse_pasted("abc123", state) == "abc123"
    assert parse_pasted(f"https://console.anthropic.com/oauth/code/callback?code=xyz&state={state}", state) == "xyz"
    for bad in ("", f"abc#{state}x", "#" + state, "has space#" + state, f"https://cb.example/?code=q&state={state}2"):
        with pytest.raises(LoginError):
            parse_pasted(bad, state)


def test_status_states_follow_the_refresh_token(tmp_path: Path) -> None:
    path = tmp_path / "acct.credentials.json"
    now = time.time()

    def cred(refresh: str | None, expires_in_s: float) -> Credential:
        oauth = {"accessToken": "a", "refreshToken": refresh, "expiresAt": int((now + expires_in_s) * 1000)}
        return parse_credential(path, {"type": "oauth", "oauth": oauth})

    assert oauth_status.health(cred("r1", 3600), now).state == "valid"
    assert oauth_status.health(cred("r1", 100), now).state == "expiring"
    assert oauth_status.health(cred("r1", -1), now).state == "expired"
    assert oauth_status.health(cred(None, -1), now).state == "needs login"
    assert oauth_status.health(cred(None, 3600), now).state == "valid"
    oauth_status.record_failure(path, "r1", "token endpoint answered 400 (invalid_grant)", invalid_grant=True)
    health = oauth_status.health(cred("r1", 3600), now)
    assert health.state == "needs login" and "invalid_grant" in str(health.last_error)
    after_login = oauth_status.health(cred("r2", 3600), now)
    assert after_login.state == "valid" and after_login.last_error is None  # a new refresh token clears it
    assert "r1" not in oauth_status.status_path(path).read_text().replace('"refresh_fingerprint"', "")
    assert oauth_status.recent_failure(oauth_status.load_status(path), "r1", now) is not None
    assert oauth_status.recent_failure(oauth_status.load_status(path), "r1", now + 11) is None


def test_atomic_write_is_private_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "new-dir" / "x.credentials.json"
    write_atomically(target, {"a": 1})
    write_atomically(target, {"a": 2})
    assert orjson.loads(target.read_bytes()) == {"a": 2}
    assert os.stat(target).st_mode & 0o777 == 0o600 and os.stat(target.parent).st_mode & 0o777 == 0o700
    assert [p.name for p in target.parent.iterdir()] == ["x.credentials.json"]


def test_the_credential_lock_excludes_other_holders(tmp_path: Path) -> None:
    path = tmp_path / "x.credentials.json"
    order: list[str] = []
    held = threading.Event()

    def second() -> None:
        held.wait(5)
        with credential_lock(path):
            order.append("second acquired")

    thread = threading.Thread(target=second)
    thread.start()
    with credential_lock(path):
        held.set()
        time.sleep(0.3)  # the other thread is blocked on the lock meanwhile
        order.append("first released")
    thread.join(5)
    assert order == ["first released", "second acquired"]


def test_token_endpoint_errors_name_the_code_never_the_token(upstream_url: str, fake: FakeControl) -> None:
    endpoint = TokenEndpoint(upstream_url + "/v1/oauth/token", "client")
    with pytest.raises(OAuthError) as info:
        endpoint.refresh("sk-ant-ort01-not-known-here")
    assert info.value.invalid_grant and str(info.value) == "token endpoint answered 400 (invalid_grant)"
    fake.oauth(refresh_token="sk-ant-ort01-good")
    answer = endpoint.refresh("sk-ant-ort01-good")
    assert answer.access_token.startswith("sk-ant-oat01-") and answer.refresh_token != "sk-ant-ort01-good"
    assert answer.expires_at_ms > time.time() * 1000 + 3000_000
    with pytest.raises(OAuthError) as unreachable:
        TokenEndpoint("http://127.0.0.1:9/v1/oauth/token", "client", timeout_s=2).refresh("sk-ant-ort01-x")
    assert not unreachable.value.invalid_grant and "sk-ant-ort01-x" not in str(unreachable.value)


def test_client_auth_needs_a_salt_or_reference_keys_and_the_error_never_shows_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without API_KEY_SALT nobody could get in unless the reference system's keys are in the files:
    start-up says so; with such a key the salt is not needed (issue 14)."""
    monkeypatch.setenv("ENABLE_CLIENT_AUTH", "true")
    monkeypatch.setenv("CREDENTIALS_DIR", str(tmp_path))
    monkeypatch.delenv("API_KEY_SALT", raising=False)
    with pytest.raises(StartupError, match="API_KEY_SALT"):
        check_client_auth(load_settings())
    write_atomically(
        tmp_path / "team.credentials.json",
        {"type": "api_key", "api_key": "sk-ant-api03-x", "client_api_key": "cnp_live_old-key-0123456789"},
    )
    check_client_auth(load_settings())
    monkeypatch.setenv("API_KEY_SALT", "a-long-enough-salt-value")
    assert load_settings().api_key_salt == "a-long-enough-salt-value"
    monkeypatch.setenv("ENABLE_CLIENT_AUTH", "not-a-bool")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "a-long-enough-salt-value" not in str(info.value)


def test_name_caches_stay_bounded_whatever_names_clients_send(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path)
    write_atomically(tmp_path / "real.credentials.json", {"type": "api_key", "api_key": "sk-ant-api03-real"})
    for i in range(MAX_CACHED + 10):
        assert store.for_project(f"made-up-{i}") is None
    assert len(store._cache) <= MAX_CACHED and len(store._paths) <= MAX_CACHED
    cred = store.for_project("real")
    assert cred is not None and cred.api_key == "sk-ant-api03-real"
