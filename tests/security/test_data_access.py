"""Finding 2 and 5 of "Safe on a network": the data API was open to anyone who could reach the proxy, and
keys could be guessed thousands of times a second. Every stored prompt is behind the same rule as the
dashboard: the key when one is set, else this machine only; wrong keys are throttled per address."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexus.security.access import client_address, loopback_refusal
from nexus.security.throttle import FailureThrottle
from tests.harness.servers import run_proxy
from tests.helpers import FAST
from tests.security.wire import call, is_anthropic_error

DATA_PATHS = ("/api/requests", "/api/conversations", "/api/token-usage/current", "/token-stats")
KEY = "data-key-0123456789abcdef"


@pytest.fixture
def open_proxy(upstream_url: str, migrated_db: str, tmp_path: Path) -> Iterator[str]:
    env = {"CLAUDE_API_BASE_URL": upstream_url, "DATABASE_URL": migrated_db, "NEXUS_HOME": str(tmp_path), **FAST}
    with run_proxy(env) as url:
        yield url


@pytest.fixture
def keyed_proxy(upstream_url: str, migrated_db: str, tmp_path: Path) -> Iterator[str]:
    env = {
        "CLAUDE_API_BASE_URL": upstream_url,
        "DATABASE_URL": migrated_db,
        "NEXUS_HOME": str(tmp_path),
        "DASHBOARD_API_KEY": KEY,
        "AUTH_FAILURE_LIMIT": "10",
        "AUTH_FAILURE_WINDOW_MS": "2000",
        **FAST,
    }
    with run_proxy(env) as url:
        yield url


@pytest.mark.parametrize("path", DATA_PATHS)
def test_without_key_only_direct_loopback_clients_read_data(open_proxy: str, path: str) -> None:
    status, _, _ = call(open_proxy, path)
    assert status == 200
    refused = [
        {"x-forwarded-for": "203.0.113.9"},
        {"forwarded": "for=203.0.113.9"},
        {"x-real-ip": "203.0.113.9"},
        {"host": "evil.example"},  # DNS rebinding: a foreign name pointed at 127.0.0.1
        {"host": "evil.example:3000"},
        {"host": "127.0.0.1.evil.example"},
    ]
    for headers in refused:
        status, _, body = call(open_proxy, path, headers=headers)
        assert status == 403, headers
        assert is_anthropic_error(body, "permission_error"), body
    for host in ("localhost", "127.0.0.1", "[::1]:3000", "127.0.0.2"):
        assert call(open_proxy, path, headers={"host": host})[0] == 200, host


def test_claude_code_probes_stay_open(open_proxy: str) -> None:
    """`/api/hello` and telemetry carry no stored data: they answer whatever the Host."""
    assert call(open_proxy, "/api/hello", method="HEAD", headers={"host": "gateway.example"})[0] == 200
    assert call(open_proxy, "/api/event_logging/batch", method="POST", body=b"{}")[0] == 200


@pytest.mark.parametrize("path", DATA_PATHS)
def test_with_key_401_without_it_and_200_with_it(keyed_proxy: str, path: str) -> None:
    status, headers, body = call(keyed_proxy, path)
    assert status == 401 and is_anthropic_error(body, "authentication_error")
    assert headers.get("www-authenticate", "").startswith("Bearer")
    assert call(keyed_proxy, path, headers={"x-api-key": KEY})[0] == 200
    assert call(keyed_proxy, path, headers={"authorization": f"Bearer {KEY}"})[0] == 200
    assert call(keyed_proxy, path, headers={"x-dashboard-key": KEY})[0] == 200
    # with the key, a remote client behind a proxy is fine: the key is the rule
    assert call(keyed_proxy, path, headers={"x-api-key": KEY, "x-forwarded-for": "203.0.113.9"})[0] == 200


def test_guessing_keys_is_throttled_per_address(keyed_proxy: str) -> None:
    statuses = [call(keyed_proxy, "/api/requests", headers={"x-api-key": f"guess-{i}"}) for i in range(60)]
    codes = [s for s, _, _ in statuses]
    assert codes[:10] == [401] * 10
    assert 429 in codes and set(codes[10:]) == {429}
    _, headers, body = statuses[-1]
    assert int(headers["retry-after"]) >= 1 and is_anthropic_error(body, "rate_limit_error")
    # locked out: even the right key waits, so a lucky guess is never checked
    assert call(keyed_proxy, "/api/requests", headers={"x-api-key": KEY})[0] == 429
    time.sleep(2.2)  # AUTH_FAILURE_WINDOW_MS
    assert call(keyed_proxy, "/api/requests", headers={"x-api-key": KEY})[0] == 200


def test_rules_in_process() -> None:
    assert loopback_refusal("10.0.0.5:1234", {"host": "localhost"}) is not None
    assert loopback_refusal("127.0.0.1:1234", {"host": "localhost:3000"}) is None
    assert loopback_refusal("[::1]:1234", {"host": "[::1]:3000"}) is None
    assert loopback_refusal("127.0.0.1:1", {"host": "localhost", "x-real-ip": "1.2.3.4"}) is not None
    trusted = (ipaddress.ip_network("10.0.0.0/8"),)
    # X-Forwarded-For is believed only from a trusted proxy, and read from the right
    assert client_address("10.1.2.3:80", {"x-forwarded-for": "6.6.6.6, 198.51.100.7, 10.0.0.2"}, trusted) == (
        "198.51.100.7"
    )
    assert client_address("198.51.100.7:80", {"x-forwarded-for": "6.6.6.6"}, trusted) == "198.51.100.7"
    # a dual-stack listener sees IPv4 clients as IPv4-mapped IPv6: still loopback, still one bucket each
    assert loopback_refusal("[::ffff:127.0.0.1]:5000", {"host": "localhost"}) is None
    mapped = FailureThrottle(1, 60)
    mapped.failed("::ffff:127.0.0.2", "test")
    assert mapped.retry_after("::ffff:127.0.0.2") and mapped.retry_after("::ffff:127.0.0.3") is None
    assert mapped.retry_after("127.0.0.2")  # the same client either way
    mapped.failed("2001:db8::1", "test")
    assert mapped.retry_after("2001:db8::ffff")  # one IPv6 host may hold its whole /64
    now = [0.0]
    throttle = FailureThrottle(3, 10, max_addresses=2, clock=lambda: now[0])
    for _ in range(3):
        throttle.failed("a", "test")
    assert throttle.retry_after("a") == 10 and throttle.retry_after("b") is None
    now[0] = 10.5
    assert throttle.retry_after("a") is None
    throttle.failed("b", "test")
    throttle.failed("c", "test")
    assert len(throttle._failures) == 2  # bounded: the least recent address is forgotten


@pytest.mark.parametrize(
    "raw_header",
    [
        b"X-Forwarded-For: \xe9, 203.0.113.9",  # a value the server cannot read as ASCII is still a relay
        b"Via: 1.1 nginx",
        b"CF-Connecting-IP: 203.0.113.9",
        b"True-Client-IP: 203.0.113.9",
        b"X-Forwarded-Proto: https",
        b"Host2: x\r\nHost: [::1]evil.example",  # a loopback-looking name with more after it
    ],
)
def test_more_relays_and_hosts_are_refused_without_a_key(open_proxy: str, raw_header: bytes) -> None:
    """Attack pass findings: relays seen by other headers (or by a header Granian cannot decode), and
    `[::1]evil.example`, were served."""
    host, port = open_proxy.removeprefix("http://").split(":")
    has_host = b"Host: " in raw_header
    request = b"GET /api/requests HTTP/1.1\r\n" + (b"" if has_host else b"Host: localhost\r\n")
    request += raw_header + b"\r\nConnection: close\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]


def test_an_absolute_form_target_names_the_host_that_counts(open_proxy: str) -> None:
    host, port = open_proxy.removeprefix("http://").split(":")
    for target, status in ((b"http://evil.example/api/requests", b"403"), (b"http://localhost/api/requests", b"200")):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 " + status), target


def test_a_valid_key_does_not_forgive_earlier_guesses(upstream_url: str, migrated_db: str, tmp_path: Path) -> None:
    """Attack pass finding: any successful request cleared the address's failures, so guesses
    interleaved with a valid key (a client key of one's own) were never throttled."""
    from nexus.auth.client_keys import ClientKeyStore

    creds = tmp_path / "credentials"
    salt = "s" * 32
    client_key = ClientKeyStore(creds, salt).create("p")[1]
    env = {
        "CLAUDE_API_BASE_URL": upstream_url,
        "DATABASE_URL": migrated_db,
        "NEXUS_HOME": str(tmp_path),
        "DASHBOARD_API_KEY": KEY,
        "ENABLE_CLIENT_AUTH": "true",
        "API_KEY_SALT": salt,
        "CREDENTIALS_DIR": str(creds),
        **FAST,
    }
    body = b'{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}'
    post_headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    with run_proxy(env) as url:
        codes = []
        for _ in range(3):
            codes += [call(url, "/api/requests", headers={"x-api-key": f"guess-{i}"})[0] for i in range(5)]
            call(url, "/v1/messages", method="POST", body=body, headers={**post_headers, "x-api-key": client_key})
            call(url, "/api/requests", headers={"x-api-key": KEY})  # successes in between forgive nothing
    assert codes[:10] == [401] * 10 and set(codes[10:]) == {429}
