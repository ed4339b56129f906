"""The data-access rule, the CORS policy and the failure throttle as pure functions, case by case.

The end-to-end tests (test_data_access, test_forwarding) prove the proxy applies them; these pin each
branch of the rule so a one-line change to it fails in a second (they are `make mutation`'s first
guard for nexus/security).
"""

from __future__ import annotations

import ipaddress

import pytest

from nexus.security.access import (
    ALLOWED_BY_KEY,
    ALLOWED_LOOPBACK,
    FORWARDING_HEADERS,
    DataAccess,
    Decision,
    client_address,
    host_name,
    is_loopback_host,
    is_loopback_peer,
    key_matches,
    loopback_refusal,
    peer_ip,
    presented_key,
)
from nexus.security.cors import ALLOWED_HEADERS, ALLOWED_METHODS, EXPOSED_HEADERS, CorsPolicy
from nexus.security.throttle import FailureThrottle, _bucket
from nexus.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        (None, None),
        ("", None),
        ("127.0.0.1:5000", "127.0.0.1"),
        (" 10.0.0.1:80 ", "10.0.0.1"),
        ("[::1]:5000", "::1"),
        ("[::1", None),
        ("::1", "::1"),
        ("1.2.3.4", "1.2.3.4"),
        ("::ffff:127.0.0.1", "::ffff:127.0.0.1"),
    ],
)
def test_peer_ip(peer: str | None, expected: str | None) -> None:
    assert peer_ip(peer) == expected


@pytest.mark.parametrize(
    ("peer", "loopback"),
    [
        ("127.0.0.1:1", True),
        ("127.8.9.10:1", True),
        ("[::1]:1", True),
        ("::ffff:127.0.0.1", True),
        ("[::ffff:127.0.0.1]:9", True),
        ("10.0.0.1:1", False),
        ("[::ffff:10.0.0.1]:1", False),
        ("[2001:db8::1]:1", False),
        ("localhost:1", False),  # a name is not an address
        (None, False),
        ("", False),
    ],
)
def test_loopback_peer(peer: str | None, loopback: bool) -> None:
    assert is_loopback_peer(peer) is loopback


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("localhost:3001", "localhost"),
        ("LOCALHOST", "localhost"),
        ("[::1]:3001", "[::1]"),
        ("[::1]", "[::1]"),
        ("[::1]evil.com", "[::1]evil.com"),
        ("[::1]:80x", "[::1]:80x"),
        ("[::1", "[::1"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("::1", "::1"),
        (None, ""),
        (" example.com ", "example.com"),
    ],
)
def test_host_name(host: str | None, name: str) -> None:
    assert host_name(host) == name


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:3000", True),
        ("127.0.0.1:3000", True),
        ("[::1]:3000", True),
        ("[::1]", True),
        ("localhost.evil.com", False),
        ("evil.com", False),
        ("[::1]evil.com", False),
        ("10.0.0.1", False),
        ("x127.0.0.1]", False),
        ("[127.0.0.1", False),
        ("", False),
        (None, False),
    ],
)
def test_loopback_host(host: str | None, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_loopback_refusal_reasons() -> None:
    local = {"host": "localhost:3000"}
    assert loopback_refusal("127.0.0.1:5", local) is None
    assert loopback_refusal("127.0.0.1:5", local, authority="127.0.0.1:3000") is None
    assert loopback_refusal("10.0.0.2:5", local) == "only clients on this machine are served"
    for header in FORWARDING_HEADERS:
        assert loopback_refusal("127.0.0.1:5", {**local, header: "x"}) == "requests relayed by a proxy are not served"
    assert loopback_refusal("127.0.0.1:5", {"host": "evil.com"}) == "only a loopback Host is served"
    assert loopback_refusal("127.0.0.1:5", {}) == "only a loopback Host is served"
    assert loopback_refusal("127.0.0.1:5", local, authority="evil.com") == "only a loopback Host is served"


def test_forwarding_headers_cover_the_common_relays() -> None:
    assert set(FORWARDING_HEADERS) == {
        "forwarded", "x-forwarded-for", "x-real-ip", "x-forwarded-host", "x-forwarded-proto",
        "x-forwarded-port", "x-forwarded-server", "x-original-forwarded-for", "x-client-ip",
        "x-cluster-client-ip", "true-client-ip", "cf-connecting-ip", "fastly-client-ip", "x-forwarded",
        "x-forwarded-prefix", "x-original-host", "x-host", "x-envoy-external-address",
        "cloudfront-viewer-address", "via",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ({}, None),
        ({"x-api-key": "k1"}, "k1"),
        ({"x-api-key": "  k1  "}, "k1"),
        ({"x-dashboard-key": "k2"}, "k2"),
        ({"x-api-key": " ", "x-dashboard-key": "k2"}, "k2"),
        ({"x-api-key": "k1", "x-dashboard-key": "k2"}, "k1"),
        ({"authorization": "Bearer k3"}, "k3"),
        ({"authorization": "bearer   k3 "}, "k3"),
        ({"authorization": "Basic k3"}, None),
        ({"authorization": "Bearer "}, None),
        ({"authorization": "Bearer"}, None),
        ({"x-api-key": "k1", "authorization": "Bearer k3"}, "k1"),
    ],
)
def test_presented_key(headers: dict[str, str], key: str | None) -> None:
    assert presented_key(headers) == key


def test_key_matches() -> None:
    assert key_matches("secret", "secret")
    assert not key_matches("secret", "secreT")
    assert not key_matches("secret", "secret ")
    assert not key_matches("secret", "")
    assert not key_matches("secret", None)
    assert not key_matches(None, "secret")
    assert not key_matches("", "")
    assert key_matches("s\udc80", "s\udc80")  # unpaired surrogates in a header value do not crash
    assert not key_matches("s\udc80", "s\udc81")


def test_client_address_believes_forwarded_for_only_from_trusted_peers() -> None:
    trusted = (ipaddress.ip_network("10.0.0.0/8"),)
    xff = {"x-forwarded-for": "6.6.6.6, 1.2.3.4, 10.0.0.7"}
    assert client_address("8.8.8.8:1", xff) == "8.8.8.8"
    assert client_address("8.8.8.8:1", xff, trusted) == "8.8.8.8"
    assert client_address("10.0.0.5:1", xff, trusted) == "1.2.3.4"
    assert client_address("10.0.0.5:1", {"x-forwarded-for": "10.0.0.1, 10.0.0.2"}, trusted) == "10.0.0.1"
    assert client_address("10.0.0.5:1", {}, trusted) == "10.0.0.5"
    assert client_address("10.0.0.5:1", {"x-forwarded-for": " , "}, trusted) == "10.0.0.5"
    assert client_address("10.0.0.5:1", {"x-forwarded-for": "x" * 100}, trusted) == "x" * 64
    assert client_address(None, xff, trusted) is None
    # what is not an address is never a trusted hop (nor a trusted peer)
    assert client_address("10.0.0.5:1", {"x-forwarded-for": "1.2.3.4, junk"}, trusted) == "junk"
    assert client_address("junk", xff, trusted) == "junk"


def test_client_address_answers_the_same_when_asked_again() -> None:
    """Parsed addresses are cached per text (`_cached_ip`); a long scoped IPv6 hop is parsed, not cached."""
    trusted = (ipaddress.ip_network("fe80::/10"), ipaddress.ip_network("10.0.0.0/8"))
    scoped = "fe80::1%" + "e" * 70  # an address (with its zone) longer than the cache takes
    xff = {"x-forwarded-for": f"1.2.3.4, {scoped}, 10.0.0.7"}
    for _ in range(3):
        assert client_address("10.0.0.5:1", xff, trusted) == "1.2.3.4"
        assert client_address("8.8.8.8:1", xff, trusted) == "8.8.8.8"


def test_decide_without_a_key_serves_loopback_only() -> None:
    access = DataAccess(None, FailureThrottle())
    assert not access.key_required
    assert access.decide("127.0.0.1:1", {"host": "localhost"}) is ALLOWED_LOOPBACK
    refused = access.decide("10.1.1.1:1", {"host": "localhost"})
    assert refused == Decision(False, 403, "DASHBOARD_API_KEY is unset: only clients on this machine are served.")
    assert (refused.retry_after, refused.by_key) == (None, False)
    relayed = access.decide("127.0.0.1:1", {"host": "localhost", "x-forwarded-for": "1.2.3.4"})
    assert (relayed.allowed, relayed.status) == (False, 403)
    absolute = access.decide("127.0.0.1:1", {"host": "localhost"}, authority="evil.com")
    assert (absolute.allowed, absolute.status) == (False, 403)
    # a key presented while none is configured changes nothing
    assert access.decide("10.1.1.1:1", {"x-api-key": "anything"}).status == 403
    assert DataAccess("", FailureThrottle()).api_key is None


def test_decide_with_a_key() -> None:
    access = DataAccess("right", FailureThrottle(limit=3))
    assert access.key_required
    missing = access.decide("127.0.0.1:1", {"host": "localhost"})
    assert missing == Decision(
        False, 401, "A valid DASHBOARD_API_KEY is required (X-API-Key or Authorization: Bearer).", None, False
    )
    assert access.decide("8.8.8.8:1", {"x-api-key": "right"}) is ALLOWED_BY_KEY
    assert ALLOWED_BY_KEY == Decision(True, 200, "key", None, True)
    assert ALLOWED_LOOPBACK == Decision(True, 200, "loopback", None, False)
    with pytest.raises(AttributeError):
        ALLOWED_LOOPBACK.allowed = False  # type: ignore[misc]  # shared by every request: frozen
    assert access.decide("8.8.8.8:1", {"authorization": "Bearer right"}).allowed
    assert access.decide("8.8.8.8:1", {}, key="right").allowed
    assert not access.decide("8.8.8.8:1", {"x-api-key": "right"}, key="wrong").allowed
    wrong = access.decide("8.8.8.8:1", {"x-api-key": "wrong"})
    assert wrong == Decision(False, 401, "Wrong API key: a valid DASHBOARD_API_KEY is required.", None, False)


def test_failed_keys_are_throttled_per_address_and_never_forgiven() -> None:
    clock = Clock()
    access = DataAccess("right", FailureThrottle(limit=3, window_s=60, clock=clock))
    for _ in range(2):
        assert access.decide("8.8.8.8:1", {"x-api-key": "bad"}).status == 401
    assert access.decide("8.8.8.8:1", {"x-api-key": "right"}).allowed  # a success forgives nothing
    assert access.decide("8.8.8.8:1", {"x-api-key": "bad"}).status == 401
    locked = access.decide("8.8.8.8:1", {"x-api-key": "right"})  # even the right key waits
    assert (locked.allowed, locked.status, locked.retry_after) == (False, 429, 60)
    assert locked.reason == "Too many failed key checks from this address; retry in 60 s."
    assert access.decide("9.9.9.9:1", {"x-api-key": "right"}).allowed  # another address is unaffected
    clock.now += 30.5
    assert access.decide("8.8.8.8:1", {"x-api-key": "right"}).retry_after == 30
    clock.now += 29.5
    assert access.decide("8.8.8.8:1", {"x-api-key": "right"}).allowed


def test_throttle_counts_by_the_forwarded_client_behind_a_trusted_proxy() -> None:
    trusted = (ipaddress.ip_network("10.0.0.0/8"),)
    access = DataAccess("right", FailureThrottle(limit=1), trusted)
    assert access.address("10.0.0.1:1", {"x-forwarded-for": "5.5.5.5"}) == "5.5.5.5"
    access.decide("10.0.0.1:1", {"x-api-key": "bad", "x-forwarded-for": "5.5.5.5"})
    assert access.decide("10.0.0.1:1", {"x-api-key": "right", "x-forwarded-for": "5.5.5.5"}).status == 429
    assert access.decide("10.0.0.1:1", {"x-api-key": "right", "x-forwarded-for": "6.6.6.6"}).allowed


def test_throttle_window_and_limit() -> None:
    clock = Clock()
    throttle = FailureThrottle(limit=2, window_s=10, clock=clock)
    assert throttle.retry_after("1.1.1.1") is None
    throttle.failed("1.1.1.1", "test")
    assert throttle.retry_after("1.1.1.1") is None
    clock.now += 1
    throttle.failed("1.1.1.1", "test")
    assert throttle.retry_after("1.1.1.1") == 9
    clock.now += 8.2
    assert throttle.retry_after("1.1.1.1") == 1  # rounded up, never 0
    clock.now += 0.8
    assert throttle.retry_after("1.1.1.1") is None  # the oldest failure left the window
    throttle.failed("1.1.1.1", "test")  # the expired one is dropped: two in the window again
    assert throttle.retry_after("1.1.1.1") == 1
    clock.now += 1
    assert throttle.retry_after("1.1.1.1") is None
    assert throttle.retry_after(None) is None
    throttle.failed(None, "test")
    throttle.failed(None, "test")
    assert throttle.retry_after(None) == 10


def test_throttle_defaults_are_the_settings_defaults() -> None:
    throttle = FailureThrottle()
    settings = Settings()
    assert throttle.limit == settings.auth_failure_limit == 10
    assert throttle.window_s == settings.auth_failure_window_ms / 1000 == 60.0
    assert throttle.max_addresses == 10_000


def test_throttle_forgets_the_least_recently_failed_address_first() -> None:
    throttle = FailureThrottle(limit=1, window_s=60, max_addresses=2)
    throttle.failed("1.1.1.1", "t")
    throttle.failed("2.2.2.2", "t")
    throttle.failed("1.1.1.1", "t")  # 1.1.1.1 is now the most recent
    throttle.failed("3.3.3.3", "t")
    assert throttle.retry_after("2.2.2.2") is None
    assert throttle.retry_after("1.1.1.1") is not None
    assert throttle.retry_after("3.3.3.3") is not None


@pytest.mark.parametrize(
    ("address", "bucket"),
    [
        (None, ""),
        ("", ""),
        ("1.2.3.4", "1.2.3.4"),
        ("2001:db8::1", "2001:db8::/64"),
        ("2001:db8::ffff:1", "2001:db8::/64"),
        ("2001:db8:0:1::1", "2001:db8:0:1::/64"),
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("not:an:address", "not:an:address"),
    ],
)
def test_bucket(address: str | None, bucket: str) -> None:
    assert _bucket(address) == bucket


def test_cors_policy() -> None:
    policy = CorsPolicy(frozenset({"https://app.example.com"}))
    assert policy.allows("https://app.example.com")
    assert policy.allows(" HTTPS://App.Example.com/ ")
    assert not policy.allows("https://evil.example.com")
    assert not policy.allows("null")
    assert not CorsPolicy(frozenset()).allows("https://app.example.com")
    assert dict(policy.preflight_headers("https://app.example.com")) == {
        "access-control-allow-origin": "https://app.example.com",
        "access-control-allow-methods": ALLOWED_METHODS,
        "access-control-allow-headers": ALLOWED_HEADERS,
        "access-control-max-age": "600",
        "vary": "origin",
    }
    assert dict(policy.response_headers("https://app.example.com")) == {
        "access-control-allow-origin": "https://app.example.com",
        "access-control-expose-headers": EXPOSED_HEADERS,
        "vary": "origin",
    }
    assert ALLOWED_METHODS == "GET, POST, OPTIONS"
    assert ALLOWED_HEADERS == (
        "content-type, authorization, x-api-key, anthropic-version, anthropic-beta, "
        "anthropic-dangerous-direct-browser-access, train-id, msl-project-id, x-train-account, msl-account"
    )
    assert EXPOSED_HEADERS == "x-request-id, request-id, retry-after, anthropic-ratelimit-requests-remaining"
    for header in ("content-type", "x-api-key", "anthropic-version", "anthropic-beta", "authorization"):
        assert header in ALLOWED_HEADERS.split(", ")
    assert "x-request-id" in EXPOSED_HEADERS.split(", ")
