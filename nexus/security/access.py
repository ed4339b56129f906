"""Who may read stored data (the proxy's `/api/*` and `/token-stats`, and the dashboard): one rule.

With a key configured (`DASHBOARD_API_KEY`), a request must present it (`X-API-Key`,
`X-Dashboard-Key` or `Authorization: Bearer`); it is compared in constant time. Without a key, only
this machine is served: the TCP peer must be a loopback address, the request must not have been
relayed by a reverse proxy (a proxy on the same host would make every remote client look local), and
the `Host` must be a loopback name or address, so a page on another site that rebinds its DNS name to
127.0.0.1 cannot read the data through a visitor's browser.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from nexus.security.throttle import FailureThrottle

#: Headers relays add (reverse proxies, CDNs, tunnels): a request carrying one is not treated as
#: coming from this machine. A relay that adds none cannot be told from a local client: behind one,
#: set DASHBOARD_API_KEY (docs/security.md).
FORWARDING_HEADERS = (
    "forwarded",
    "x-forwarded-for",
    "x-real-ip",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-original-forwarded-for",
    "x-client-ip",
    "x-cluster-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-forwarded",
    "x-forwarded-prefix",
    "x-original-host",
    "x-host",
    "x-envoy-external-address",
    "cloudfront-viewer-address",
    "via",
)
#: Headers that may carry the data key (the reference system's dashboard used `X-Dashboard-Key`).
KEY_HEADERS = ("x-api-key", "x-dashboard-key")


def peer_ip(peer: str | None) -> str | None:
    """The address part of a peer as servers report it: `127.0.0.1:5000`, `[::1]:5000`, `::1` or `1.2.3.4`."""
    if not peer:
        return None
    peer = peer.strip()
    if peer.startswith("["):
        return peer[1 : peer.find("]")] if "]" in peer else None
    if peer.count(":") == 1:  # IPv4 with a port
        return peer.partition(":")[0]
    return peer


@lru_cache(maxsize=4096)  # pragma: no mutate (a cache's size changes no answer)
def _is_loopback_ip(address: str) -> bool:
    """Loopback, also as an IPv4-mapped IPv6 address (`::ffff:127.0.0.1`, a dual-stack listener's view)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]  # pragma: no mutate (a type alias)


def _in_networks(address: str, networks: Networks) -> bool:
    if not networks:  # no TRUSTED_PROXIES (the default): nothing to parse, on every request
        return False
    # the same peers and hops come again and again: each parsed once (~5 us), long texts never cached
    ip = _cached_ip(address) if len(address) <= 64 else _parsed_ip(address)
    return ip is not None and any(ip in net for net in networks)


def _parsed_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None


_cached_ip = lru_cache(maxsize=4096)(_parsed_ip)  # pragma: no mutate (a cache's size changes no answer)


def client_address(peer: str | None, headers: Mapping[str, str], trusted: Networks = ()) -> str | None:
    """The address limits apply to: the TCP peer, or, when the peer is a trusted reverse proxy
    (`TRUSTED_PROXIES`), the nearest `X-Forwarded-For` hop that is not itself trusted. A client can
    put anything in that header, so it is believed only from a trusted peer, and read from the right."""
    address = peer_ip(peer)
    if address is None or not _in_networks(address, trusted):
        return address
    hops = [h.strip() for h in (headers.get("x-forwarded-for") or "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _in_networks(hop, trusted):
            return hop[:64]
    return hops[0] if hops else address  # every hop trusted: the first is an address of ours


def is_loopback_peer(peer: str | None) -> bool:
    address = peer_ip(peer)
    return address is not None and _is_loopback_ip(address)


def host_name(host: str | None) -> str:
    """The name part of a `Host` header (`[::1]:3001` -> `[::1]`, `localhost:3001` -> `localhost`);
    anything after `]` but a port keeps the whole value (`[::1]evil.com` is not `[::1]`)."""
    host = (host or "").strip().lower()
    if host.startswith("["):
        if "]" not in host:
            return host
        end = host.index("]")
        rest = host[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return host
        return host[: end + 1]
    return host.partition(":")[0] if host.count(":") == 1 else host


def is_loopback_host(host: str | None) -> bool:
    """`localhost` or a loopback address literal: names another site could point at 127.0.0.1 are not."""
    name = host_name(host)
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    return name == "localhost" or _is_loopback_ip(name)


def loopback_refusal(peer: str | None, headers: Mapping[str, str], authority: str | None = None) -> str | None:
    """Why a request without a configured key may not read data, or None when it may. `authority` is
    the host of an absolute-form request target (`GET http://host/path`), which wins over `Host`."""
    if not is_loopback_peer(peer):
        return "only clients on this machine are served"
    if any(h in headers for h in FORWARDING_HEADERS):
        return "requests relayed by a proxy are not served"
    if not is_loopback_host(headers.get("host")) or (authority and not is_loopback_host(authority)):
        return "only a loopback Host is served"
    return None


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a data client presents, or None."""
    for name in KEY_HEADERS:
        value = (headers.get(name) or "").strip()
        if value:
            return value
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def key_matches(expected: str | None, given: str | None) -> bool:
    """Constant time whatever the lengths: both sides are hashed to equal-size digests first."""
    if not expected or not given:
        return False
    return hmac.compare_digest(_digest(given), _digest(expected))


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True, slots=True)  # pragma: no mutate (slots save memory; frozen is tested)
class Decision:
    """May this request read data? If not: the status to answer (401, 403, 429), why, and for 429 how
    long to wait."""

    allowed: bool
    status: int
    reason: str
    retry_after: int | None = None
    by_key: bool = False


ALLOWED_LOOPBACK = Decision(True, 200, "loopback")
ALLOWED_BY_KEY = Decision(True, 200, "key", by_key=True)


class DataAccess:
    """The rule above, with failed keys throttled per client address."""

    def __init__(self, api_key: str | None, throttle: FailureThrottle, trusted: Networks = ()) -> None:
        self.api_key = api_key or None
        self.throttle = throttle
        self.trusted = trusted

    @property
    def key_required(self) -> bool:
        return self.api_key is not None

    def address(self, peer: str | None, headers: Mapping[str, str]) -> str | None:
        return client_address(peer, headers, self.trusted)

    def decide(
        self, peer: str | None, headers: Mapping[str, str], *, key: str | None = None, authority: str | None = None
    ) -> Decision:
        """`key`: a key presented some other way than the headers (a login form)."""
        if self.api_key is None:
            reason = loopback_refusal(peer, headers, authority)
            if reason is None:
                return ALLOWED_LOOPBACK
            return Decision(False, 403, f"DASHBOARD_API_KEY is unset: {reason}.")
        given = key if key is not None else presented_key(headers)
        if not given:
            return Decision(False, 401, "A valid DASHBOARD_API_KEY is required (X-API-Key or Authorization: Bearer).")
        return self.check_key(self.address(peer, headers), given)

    def check_key(self, address: str | None, given: str) -> Decision:
        wait = self.throttle.retry_after(address)
        if wait is not None:
            return Decision(False, 429, f"Too many failed key checks from this address; retry in {wait} s.", wait)
        if key_matches(self.api_key, given):  # failures are not forgiven: they leave the window
            return ALLOWED_BY_KEY
        self.throttle.failed(address, "wrong DASHBOARD_API_KEY")  # pragma: no mutate (the text is logged)
        return Decision(False, 401, "Wrong API key: a valid DASHBOARD_API_KEY is required.")
