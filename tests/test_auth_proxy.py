"""Projects, named accounts, credential types and passthrough, through a real proxy and the fake upstream.

The fake records the headers it received, so each test checks what actually went upstream: which
credential (each project's file holds a distinct key), the merged `anthropic-beta`, and that the
selector headers and the caller's replaced credentials stayed behind.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nexus.auth.files import write_atomically
from tests.auth_helpers import (
    assert_anthropic_error,
    cred_path,
    now_ms,
    post,
    proxy_env,
    wait_for,
    write_api_key,
    write_oauth,
)
from tests.harness.control import FakeControl
from tests.harness.servers import run_proxy

SELECTORS = ("train-id", "msl-project-id", "x-train-account", "msl-account")


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("auth-proxy") / "credentials"


@pytest.fixture(scope="module")
def auth_proxy(upstream_url: str, creds: Path) -> Iterator[str]:
    write_api_key(creds, "default", "sk-ant-api03-default-project")
    with run_proxy(proxy_env(upstream_url, creds)) as url:
        yield url


def upstream_headers(fake: FakeControl) -> dict[str, Any]:
    received = fake.requests()
    assert received, "the request did not reach the upstream"
    return received[-1]["headers"]


def used_key(auth_proxy: str, fake: FakeControl, headers: dict[str, str]) -> str | None:
    status, _, body = post(auth_proxy, headers)
    assert status == 200, body
    return upstream_headers(fake).get("x-api-key")


def key_when_ok(auth_proxy: str, fake: FakeControl, headers: dict[str, str]) -> str | None:
    """Like `used_key`, for polling while a file changes: None while the proxy answers an error."""
    status, _, _ = post(auth_proxy, headers)
    return upstream_headers(fake).get("x-api-key") if status == 200 else None


# --- projects ------------------------------------------------------------------------------------


def test_project_from_train_id_and_its_alias(auth_proxy: str, creds: Path, fake: FakeControl) -> None:
    write_api_key(creds, "proj-a", "sk-ant-api03-proj-a")
    write_api_key(creds, "proj-b", "sk-ant-api03-proj-b")
    assert used_key(auth_proxy, fake, {"train-id": "proj-a"}) == "sk-ant-api03-proj-a"
    assert used_key(auth_proxy, fake, {"MSL-Project-Id": " proj-b "}) == "sk-ant-api03-proj-b"
    assert used_key(auth_proxy, fake, {"train-id": "proj-a", "msl-project-id": "proj-b"}) == "sk-ant-api03-proj-a"


def test_project_from_host_keeps_the_port_only_for_local_hosts(auth_proxy: str, creds: Path, fake: FakeControl) -> None:
    write_api_key(creds, "api.example.test", "sk-ant-api03-domain")
    write_api_key(creds, "localhost:4321", "sk-ant-api03-localhost-4321")
    write_api_key(creds, "127.0.0.1:4321", "sk-ant-api03-ipv4-4321")
    assert used_key(auth_proxy, fake, {"host": "api.example.test:8443"}) == "sk-ant-api03-domain"
    assert used_key(auth_proxy, fake, {"host": "API.Example.Test"}) == "sk-ant-api03-domain"
    assert used_key(auth_proxy, fake, {"host": "localhost:4321"}) == "sk-ant-api03-localhost-4321"
    assert used_key(auth_proxy, fake, {"host": "127.0.0.1:4321"}) == "sk-ant-api03-ipv4-4321"
    # a header beats the Host
    write_api_key(creds, "proj-over-host", "sk-ant-api03-over-host")
    headers = {"host": "api.example.test", "train-id": "proj-over-host"}
    assert used_key(auth_proxy, fake, headers) == "sk-ant-api03-over-host"


def test_default_project_when_nothing_names_one(auth_proxy: str, fake: FakeControl) -> None:
    for host in ("[::1]:4321", "bad_host!"):
        assert used_key(auth_proxy, fake, {"host": host}) == "sk-ant-api03-default-project"


# --- named accounts ------------------------------------------------------------------------------


def test_named_account_beats_the_project_credential(auth_proxy: str, creds: Path, fake: FakeControl) -> None:
    write_api_key(creds, "proj-acct", "sk-ant-api03-project-own")
    write_api_key(creds, "team-a", "sk-ant-api03-team-a", account=True)
    write_api_key(creds, "team-b", "sk-ant-api03-team-b", account=True)
    assert used_key(auth_proxy, fake, {"train-id": "proj-acct", "x-train-account": "team-a"}) == "sk-ant-api03-team-a"
    assert used_key(auth_proxy, fake, {"train-id": "proj-acct", "MSL-Account": "team-b"}) == "sk-ant-api03-team-b"
    assert used_key(auth_proxy, fake, {"train-id": "proj-acct"}) == "sk-ant-api03-project-own"


def test_unknown_account_is_a_clear_400_and_nothing_goes_upstream(auth_proxy: str, fake: FakeControl) -> None:
    status, headers, body = post(auth_proxy, {"x-train-account": "nobody", "x-api-key": "sk-ant-api03-caller"})
    message = assert_anthropic_error(status, body, 400, "invalid_request_error")
    assert "nobody" in message and "accounts/nobody.credentials.json" in message
    assert headers["x-request-id"] == body["request_id"]
    assert fake.requests() == []


# --- credential types, beta merge, passthrough ---------------------------------------------------


def test_api_key_credential_replaces_whatever_the_caller_sent(auth_proxy: str, creds: Path, fake: FakeControl) -> None:
    write_api_key(creds, "proj-replace", "sk-ant-api03-proxy-held")
    caller = {"x-api-key": "sk-ant-api03-caller-own", "authorization": "Bearer sk-ant-api03-caller-bearer"}
    status, _, body = post(auth_proxy, {"train-id": "proj-replace", "anthropic-beta": "a-2025-01-01", **caller})
    assert status == 200, body
    got = upstream_headers(fake)
    assert got["x-api-key"] == "sk-ant-api03-proxy-held"
    assert "authorization" not in got
    assert got["anthropic-beta"] == "a-2025-01-01"  # untouched for API keys


@pytest.mark.parametrize(
    ("client_beta", "expected"),
    [
        (None, "oauth-2025-04-20"),
        ("x-2025-01-01,y-2025-02-02", "x-2025-01-01,y-2025-02-02,oauth-2025-04-20"),
        ("b-2025-01-01, oauth-2025-04-20 ,a-2025-01-01,b-2025-01-01", "b-2025-01-01,oauth-2025-04-20,a-2025-01-01"),
    ],
)
def test_oauth_credential_sends_bearer_and_merges_the_beta(
    auth_proxy: str, creds: Path, fake: FakeControl, client_beta: str | None, expected: str
) -> None:
    write_oauth(creds, "proj-oauth", "sk-ant-oat01-held-access", "sk-ant-ort01-held-refresh", now_ms(3600))
    headers = {"train-id": "proj-oauth", "x-api-key": "sk-ant-api03-caller-own"}
    if client_beta is not None:
        headers["anthropic-beta"] = client_beta
    status, _, body = post(auth_proxy, headers)
    assert status == 200, body
    got = upstream_headers(fake)
    assert got["authorization"] == "Bearer sk-ant-oat01-held-access"
    assert "x-api-key" not in got
    assert got["anthropic-beta"] == expected
    assert fake.oauth()["calls"] == 0  # far from expiry: no refresh


def test_callers_own_key_or_bearer_passes_through_without_a_proxy_credential(
    auth_proxy: str, fake: FakeControl
) -> None:
    status, _, body = post(auth_proxy, {"train-id": "proj-none", "x-api-key": "sk-ant-api03-caller-own"})
    assert status == 200, body
    got = upstream_headers(fake)
    assert got["x-api-key"] == "sk-ant-api03-caller-own" and "authorization" not in got
    own = {"train-id": "proj-none", "authorization": "Bearer sk-ant-oat01-caller-sub"}
    own["anthropic-beta"] = "oauth-2025-04-20"
    status, _, body = post(auth_proxy, own)
    assert status == 200, body
    got = upstream_headers(fake)
    assert got["authorization"] == "Bearer sk-ant-oat01-caller-sub" and "x-api-key" not in got
    assert got["anthropic-beta"] == "oauth-2025-04-20"


def test_our_client_keys_never_pass_through_even_with_client_auth_off(auth_proxy: str, fake: FakeControl) -> None:
    client_key = "cnp_live_" + "k" * 43
    headers = {"train-id": "proj-none", "x-api-key": client_key, "authorization": "Bearer sk-ant-api03-caller-own"}
    status, _, body = post(auth_proxy, headers)
    assert status == 200, body
    got = upstream_headers(fake)
    assert "x-api-key" not in got and got["authorization"] == "Bearer sk-ant-api03-caller-own"
    assert client_key not in repr(got)


def test_selector_headers_are_never_forwarded(auth_proxy: str, creds: Path, fake: FakeControl) -> None:
    write_api_key(creds, "proj-sel", "sk-ant-api03-sel")
    write_api_key(creds, "acct-sel", "sk-ant-api03-acct-sel", account=True)
    headers = {"train-id": "proj-sel", "msl-project-id": "proj-sel", "x-train-account": "acct-sel"}
    headers["msl-account"] = "acct-sel"
    status, _, body = post(auth_proxy, headers)
    assert status == 200, body
    got = upstream_headers(fake)
    assert not set(got) & set(SELECTORS)
    assert got["x-api-key"] == "sk-ant-api03-acct-sel"


# --- bad files, traversal, reload ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"{not json", "not valid JSON"),
        (b'["a list"]', "must be a JSON object"),
        (b'{"type": "api_key"}', "field 'api_key' is required"),
        (b'{"type": "api_key", "api_key": 42}', "field 'api_key' must be a string"),
        (b'{"type": "apikey", "api_key": "sk-ant-api03-misfiled-secret"}', "field 'type' must be"),
        (b'{"type": "oauth"}', "field 'oauth' is required"),
        (b'{"type": "oauth", "oauth": {"refreshToken": "sk-ant-ort01-orphan"}}', "field 'oauth.accessToken'"),
        (b'{"type": "oauth", "oauth": {"accessToken": "sk-ant-oat01-a", "expiresAt": "soon"}}', "oauth.expiresAt"),
    ],
)
def test_an_invalid_credential_file_is_a_clear_error_naming_file_and_field(
    auth_proxy: str, creds: Path, fake: FakeControl, content: bytes, expected: str
) -> None:
    project = f"proj-bad-{hashlib.sha256(content).hexdigest()[:8]}"
    cred_path(creds, project).write_bytes(content)
    status, _, body = post(auth_proxy, {"train-id": project, "x-api-key": "sk-ant-api03-caller"})
    message = assert_anthropic_error(status, body, 500, "api_error")
    assert f"{project}.credentials.json" in message and expected in message
    assert "secret" not in message and "orphan" not in message  # a value never appears, only names
    assert fake.requests() == []


def test_path_traversal_is_impossible(auth_proxy: str, creds: Path, fake: FakeControl) -> None:
    outside = creds.parent / "evil.credentials.json"
    write_atomically(outside, {"type": "api_key", "api_key": "sk-ant-api03-outside"})
    write_api_key(creds.parent, "evil", "sk-ant-api03-outside", account=True)  # creds/../accounts/evil...
    attempts: list[dict[str, str]] = [
        {"train-id": "../evil"},
        {"train-id": ".."},
        {"train-id": "a/b"},
        {"msl-project-id": "..\\evil"},
        {"train-id": "/etc/passwd"},
        {"x-train-account": "../../evil"},
        {"msl-account": "../accounts/evil"},
    ]
    for headers in attempts:
        status, _, body = post(auth_proxy, {**headers, "x-api-key": "sk-ant-api03-caller"})
        message = assert_anthropic_error(status, body, 400, "invalid_request_error")
        assert "header" in message
    for host in ("..", "../evil", "evil/..", "%2e%2e"):
        assert used_key(auth_proxy, fake, {"host": host}) == "sk-ant-api03-default-project"
    assert all(r["headers"].get("x-api-key") != "sk-ant-api03-outside" for r in fake.requests())
    # URL paths too: a dot segment, raw or percent-encoded, never takes a held credential elsewhere
    # (more forms and a base-path prefix in tests/security/test_forwarding.py)
    seen = len(fake.requests())
    for path in ("/v1/../_fake/reset", "/v1/%2e%2e/_fake/reset", "/v1/..%2f_fake/reset", "/v1/./messages"):
        status, _, body = post(auth_proxy, {"x-api-key": "sk-ant-api03-caller"}, path=path)
        assert_anthropic_error(status, body, 400, "invalid_request_error")
    assert len(fake.requests()) == seen


def test_credential_files_are_reloaded_when_they_change(auth_proxy: str, creds: Path, fake: FakeControl) -> None:
    headers = {"train-id": "proj-reload", "x-api-key": "sk-ant-api03-caller"}
    path = write_api_key(creds, "proj-reload", "sk-ant-api03-first")
    assert used_key(auth_proxy, fake, headers) == "sk-ant-api03-first"
    write_api_key(creds, "proj-reload", "sk-ant-api03-second")
    wait_for(lambda: used_key(auth_proxy, fake, headers) == "sk-ant-api03-second", what="the new key")
    os.unlink(path)  # gone: back to the caller's own key
    wait_for(lambda: used_key(auth_proxy, fake, headers) == "sk-ant-api03-caller", what="passthrough")
    path.write_bytes(b"{broken")
    wait_for(lambda: post(auth_proxy, headers)[0] == 500, what="the broken file to be noticed")
    write_api_key(creds, "proj-reload", "sk-ant-api03-third")
    wait_for(lambda: key_when_ok(auth_proxy, fake, headers) == "sk-ant-api03-third", what="the repaired file")
