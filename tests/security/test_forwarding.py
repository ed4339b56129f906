"""Findings 4, 6 and 8 of "Safe on a network": what the proxy forwards upstream with a credential it
holds. No path may leave the upstream's base path, no web page of another origin may spend the
credential, and no client key may reach Anthropic in any form."""

from __future__ import annotations

import base64
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from nexus.auth.client_keys import ClientKeyStore
from tests.auth_helpers import BODY, proxy_env, write_api_key
from tests.harness.control import FakeControl
from tests.harness.servers import run_proxy
from tests.helpers import wait_for
from tests.security.wire import call, is_anthropic_error

HELD_KEY = "sk-ant-api03-held-" + "x" * 20
JSON = {"content-type": "application/json", "anthropic-version": "2023-06-01"}


@pytest.fixture
def held_proxy(upstream_url: str, tmp_path: Path) -> Iterator[str]:
    """A proxy holding an API key for project `p1`, its upstream below a path prefix."""
    creds = tmp_path / "credentials"
    write_api_key(creds, "p1", HELD_KEY)
    env = proxy_env(upstream_url + "/anthropic", creds, CORS_ALLOWED_ORIGINS="https://app.example.com")
    with run_proxy(env) as url:
        yield url


TRAVERSALS = [
    "/v1/../x",
    "/v1/%2e%2e/x",
    "/v1/%2E%2E/x",
    "/v1/..%2fx",
    "/v1/..%2Fx",
    "/v1/.%2e/x",
    "/v1/models/../../_fake/requests",
    "/v1/%2e%2e/%2e%2e/_fake/reset",
    "/v1/./messages",
    "/v1/%2e/messages",
    "/v1/..\\x",
    "/v1/..%5cx",
    "/v1/a%00b",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_no_dot_segment_path_reaches_the_upstream(held_proxy: str, fake: FakeControl, path: str) -> None:
    status, _, body = call(held_proxy, path, method="POST", body=BODY, headers={**JSON, "train-id": "p1"})
    assert status == 400 and is_anthropic_error(body, "invalid_request_error"), body
    assert fake.requests() == []


def test_paths_stay_below_the_base_path_and_keep_encoded_characters(held_proxy: str, fake: FakeControl) -> None:
    status, _, _ = call(held_proxy, "/v1/models/claude%3Fx%23y?limit=2", headers={"train-id": "p1"})
    seen = fake.requests()
    assert len(seen) == 1
    # the fake sees the decoded path: still under the prefix, `?` and `#` kept as part of the path
    assert seen[0]["path"] == "/anthropic/v1/models/claude?x#y" and seen[0]["query"] == "limit=2"
    assert status == 404  # the fake has no such model: what matters is where the request went


def test_no_cors_grant_to_another_origin(held_proxy: str, fake: FakeControl) -> None:
    preflight = {"origin": "https://evil.example", "access-control-request-method": "POST"}
    status, headers, _ = call(held_proxy, "/v1/messages", method="OPTIONS", headers=preflight)
    assert status == 204 and not any(h.startswith("access-control-allow") for h in headers)
    # a simple cross-origin POST (no preflight) must not spend the held credential either
    for content_type in ("application/json", "text/plain"):
        status, headers, body = call(
            held_proxy,
            "/v1/messages",
            method="POST",
            body=BODY,
            headers={**JSON, "content-type": content_type, "origin": "https://evil.example", "train-id": "p1"},
        )
        assert status == 403 and is_anthropic_error(body, "permission_error")
        assert "access-control-allow-origin" not in headers
    assert fake.requests() == []


def test_an_allowed_origin_gets_grants_and_can_read_the_answer(held_proxy: str, fake: FakeControl) -> None:
    origin = "https://app.example.com"
    preflight = {"origin": origin, "access-control-request-method": "POST"}
    status, headers, _ = call(held_proxy, "/v1/messages", method="OPTIONS", headers=preflight)
    assert status == 204 and headers["access-control-allow-origin"] == origin and headers["vary"] == "origin"
    status, headers, body = call(
        held_proxy, "/v1/messages", method="POST", body=BODY, headers={**JSON, "origin": origin, "train-id": "p1"}
    )
    assert status == 404 and body["error"]["message"] == "Not found: POST /anthropic/v1/messages"  # the fake's
    assert headers["access-control-allow-origin"] == origin  # an upstream answer the page may read
    assert "x-request-id" in headers["access-control-expose-headers"]
    assert fake.requests()[0]["headers"]["x-api-key"] == HELD_KEY


def test_content_type_must_really_be_json(held_proxy: str, fake: FakeControl) -> None:
    for content_type in ("text/plain; json", "application/jsonx", "text/json-ish"):
        status, _, body = call(
            held_proxy, "/v1/messages", method="POST", body=BODY, headers={**JSON, "content-type": content_type}
        )
        assert status == 415 and is_anthropic_error(body), content_type
    assert fake.requests() == []


def test_no_client_key_goes_upstream_in_any_form(upstream_url: str, tmp_path: Path, fake: FakeControl) -> None:
    creds = tmp_path / "credentials"
    salt = secrets.token_hex(16)
    key = ClientKeyStore(creds, salt).create("p2")[1]
    caller = "sk-ant-api03-caller-" + "y" * 20
    env = proxy_env(upstream_url, creds, ENABLE_CLIENT_AUTH="true", API_KEY_SALT=salt)
    forms = [
        {"authorization": key, "x-api-key": caller},
        {"authorization": f"Basic {key}", "x-api-key": caller},
        {"authorization": f"Bearer\t{key}", "x-api-key": caller},
        {"authorization": f"bearer   {key}", "x-api-key": caller},
        {"authorization": "Basic " + base64.b64encode(f"user:{key}".encode()).decode(), "x-api-key": caller},
        {"x-api-key": f"  {key}  ", "authorization": f"Bearer {caller}"},
        {"x-api-key": key, "authorization": f"Bearer {caller}", "x-custom-token": key},
    ]
    with run_proxy(env) as url:
        for headers in forms:
            status, _, body = call(url, "/v1/messages", method="POST", body=BODY, headers={**JSON, **headers})
            assert status in (200, 401), body
    seen = str(fake.requests())
    assert key not in seen and key[9:] not in seen and base64.b64encode(f"user:{key}".encode()).decode() not in seen
    assert caller in seen  # the caller's own Anthropic key did go through


def test_guessing_client_keys_is_throttled(upstream_url: str, tmp_path: Path, fake: FakeControl) -> None:
    creds = tmp_path / "credentials"
    salt = secrets.token_hex(16)
    key = ClientKeyStore(creds, salt).create("p3")[1]
    env = proxy_env(upstream_url, creds, ENABLE_CLIENT_AUTH="true", API_KEY_SALT=salt, AUTH_FAILURE_LIMIT="10")
    with run_proxy(env) as url:
        codes = [
            call(url, "/v1/messages", method="POST", body=BODY, headers={**JSON, "x-api-key": f"cnp_live_guess{i}"})[0]
            for i in range(60)
        ]
        assert codes[:10] == [401] * 10 and set(codes[10:]) == {429}
        status, headers, body = call(url, "/v1/messages", method="POST", body=BODY, headers={**JSON, "x-api-key": key})
        assert status == 429 and int(headers["retry-after"]) >= 1 and is_anthropic_error(body, "rate_limit_error")
    assert fake.requests() == []


def test_client_keys_in_the_url_or_other_headers_never_go_upstream_nor_into_storage(
    upstream_url: str, migrated_db: str, tmp_path: Path, fake: FakeControl
) -> None:
    """Attack pass findings: a client key in the query string, a header name, another header (uppercased,
    percent-encoded), a cookie, or its secret part alone as a Bearer token reached the upstream or storage."""
    creds = tmp_path / "credentials"
    salt = secrets.token_hex(16)
    key = ClientKeyStore(creds, salt).create("p2")[1]
    env = proxy_env(
        upstream_url,
        creds,
        ENABLE_CLIENT_AUTH="true",
        API_KEY_SALT=salt,
        STORAGE_ENABLED="true",
        DATABASE_URL=migrated_db,
        NEXUS_HOME=str(tmp_path / "home"),
        STORAGE_BATCH_INTERVAL_MS="20",
    )
    own = {**JSON, "x-api-key": key, "authorization": "Bearer sk-ant-api03-caller-own"}
    encoded = "".join(f"%{b:02x}" for b in key.encode())
    with run_proxy(env) as url:
        status, headers, _ = call(url, f"/v1/messages?key={key}", method="POST", body=BODY, headers=own)
        assert status == 400
        refused_id = headers["x-request-id"]
        for path in (f"/v1/models/{key}", f"/v1/models/{encoded}", f"/v1/models?x={key[9:]}", f"/v1/m/{key[9:]}"):
            assert call(url, path, headers=own)[0] == 400, path  # the key, or this request's own secret
        nowhere = call(url, f"/nowhere/{key}", method="POST", body=BODY, headers=own)[1]["x-request-id"]
        assert call(url, f"/v1/messages?k={encoded}", method="POST", body=BODY, headers=own)[0] == 400
        forms = [
            {"x-note": key.upper()},
            {"x-note": key[9:].upper()},  # the presented key's secret alone, in any case
            {key[9:]: "1"},
            {"x-note": encoded},
            {"cookie": f"k={encoded}"},
            {key: "1"},
            {"anthropic-beta": f"x,{key}"},
        ]
        for extra in forms:
            assert call(url, "/v1/messages", method="POST", body=BODY, headers={**own, **extra})[0] == 200
        secret_only = {**JSON, "x-api-key": key, "authorization": f"Bearer {key[9:]}"}
        call(url, "/v1/messages", method="POST", body=BODY, headers=secret_only)
        wait_for(lambda: _stored_count(migrated_db) >= 13, timeout_s=20, what="the rows")
    seen = str(fake.requests())
    assert key[9:] not in seen and key[9:].lower() not in seen.lower() and encoded not in seen
    with psycopg.connect(migrated_db) as conn:
        stored = str(conn.execute("SELECT path, request_headers, error FROM api_requests").fetchall())
        error = conn.execute("SELECT error FROM api_requests WHERE request_id = %s", (nowhere,)).fetchone()
    assert error is not None and "cnp_live_[redacted]" in error[0]
    with psycopg.connect(migrated_db) as conn:
        path = conn.execute("SELECT path FROM api_requests WHERE request_id = %s", (refused_id,)).fetchone()
    assert key[9:] not in stored and path == ("/v1/messages?key=cnp_live_[redacted]",)


def _stored_count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute("SELECT count(*) FROM api_requests").fetchone()[0])  # type: ignore[index]


def test_cross_site_browser_requests_without_an_origin_are_refused(held_proxy: str, fake: FakeControl) -> None:
    """Attack pass findings: an `<img>`-style GET carries no `Origin`, only `Sec-Fetch-Site: cross-site`;
    after DNS rebinding a page's GET is "same-origin" to the browser and carries no `Origin` either."""
    for fetch_site in ("cross-site", "same-site", "same-origin", " Same-Origin "):  # same-origin: DNS rebinding
        status, _, body = call(held_proxy, "/v1/models", headers={"train-id": "p1", "sec-fetch-site": fetch_site})
        assert status == 403 and is_anthropic_error(body, "permission_error")
    assert fake.requests() == []
    assert call(held_proxy, "/v1/models", headers={"train-id": "p1", "sec-fetch-site": "none"})[0] != 403
    host, port = held_proxy.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:  # an Origin no server can read
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\ntrain-id: p1\r\nOrigin: https://\xe9vil\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 403")


def test_only_the_apis_methods_and_no_matrix_dot_segments(held_proxy: str, fake: FakeControl) -> None:
    for method in ("TRACE", "FOO", "CONNECT"):
        assert call(held_proxy, "/v1/models", method=method, headers={"train-id": "p1"})[0] in (400, 405), method
    for path in ("/v1/..;/x", "/v1/.;a=b/messages"):
        assert call(held_proxy, path, method="POST", body=BODY, headers={**JSON, "train-id": "p1"})[0] == 400
    assert fake.requests() == []
