"""Finding 2 and 5 of "Safe on a network": the data API was open to anyone who could reach the proxy, and
keys could be guessed thousands of times a second. Every stored prompt is behind the same rule as the
dashboard: the key when one is set, else this machine only; wrong keys are throttled per address."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexus.security.access import client_address, loopback_refusal
from nexus.security.throttle import FailureThrottle
from nexus.testing.servers import run_proxy
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
