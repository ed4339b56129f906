"""Who may see the dashboard.

With `DASHBOARD_API_KEY` set: a login form (the key, compared in constant time) issues a session
cookie that is *not* the key but an HMAC-signed, expiring token, so a leaked cookie expires and never
reveals the key; scripts may send the key itself as `X-API-Key` or `Authorization: Bearer`. Every
state-changing request needs a CSRF token bound to the session (the login form, which has no session
yet, uses a double-submit cookie).

Without a key the reference opened everything to everyone. Here the dashboard then serves only
clients on this machine: the TCP peer must be a loopback address, the request must not have been
relayed by a reverse proxy (a proxy on the same host would make every remote client look local), and
the `Host` must be a loopback name (so a DNS-rebinding page cannot read it through a browser).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie

SESSION_COOKIE = "nexus_session"
LOGIN_CSRF_COOKIE = "nexus_login_csrf"
#: Headers a reverse proxy adds: a request carrying one is not treated as coming from this machine.
FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip", "x-forwarded-host")
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parse_cookies(header: str | None) -> dict[str, str]:
    if not header:
        return {}
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


def is_loopback_peer(peer: str | None) -> bool:
    if not peer:
        return False
    try:
        return ipaddress.ip_address(peer.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(host: str | None) -> str:
    """The name part of a `Host` header (`[::1]:3001` -> `[::1]`, `localhost:3001` -> `localhost`)."""
    host = (host or "").strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@dataclass(frozen=True, slots=True)
class Session:
    nonce: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class Access:
    """The decision for one request: allowed or not, why, and the session's CSRF token if any."""

    allowed: bool
    reason: str
    session: Session | None = None
    csrf: str | None = None
    by_header: bool = False


class DashboardAuth:
    def __init__(self, api_key: str | None, session_hours: int = 24) -> None:
        self.api_key = api_key or None
        self.session_seconds = session_hours * 3600
        # Derived from the key: sessions survive restarts, and rotating the key ends every session.
        seed = (self.api_key or secrets.token_hex(32)).encode()
        self._session_key = hmac.new(seed, b"nexus-dashboard-session-v1", hashlib.sha256).digest()
        self._csrf_key = hmac.new(seed, b"nexus-dashboard-csrf-v1", hashlib.sha256).digest()

    @property
    def key_required(self) -> bool:
        return self.api_key is not None

    # --- the key -------------------------------------------------------------------------------
    def key_matches(self, given: str | None) -> bool:
        """Constant time, whatever the lengths: both sides are hashed to equal-size digests first."""
        if self.api_key is None or not given:
            return False
        return hmac.compare_digest(
            hashlib.sha256(given.encode()).digest(), hashlib.sha256(self.api_key.encode()).digest()
        )

    # --- sessions ------------------------------------------------------------------------------
    def issue_session(self, now: float | None = None) -> str:
        expires = int(now if now is not None else time.time()) + self.session_seconds
        payload = f"{expires}.{secrets.token_hex(16)}".encode()
        mac = hmac.new(self._session_key, payload, hashlib.sha256).digest()
        return f"{_b64(payload)}.{_b64(mac)}"

    def verify_session(self, token: str | None, now: float | None = None) -> Session | None:
        if not token or self.api_key is None or token.count(".") != 1:
            return None
        try:
            payload_b64, mac_b64 = token.split(".")
            payload, mac = _unb64(payload_b64), _unb64(mac_b64)
        except ValueError:
            return None
        expected = hmac.new(self._session_key, payload, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expected):
            return None
        try:
            expires_text, nonce = payload.decode().split(".")
            expires = int(expires_text)
        except ValueError:
            return None
        if expires <= (now if now is not None else time.time()):
            return None
        return Session(nonce, expires)

    def csrf_for(self, session: Session) -> str:
        return _b64(hmac.new(self._csrf_key, session.nonce.encode(), hashlib.sha256).digest())

    def csrf_matches(self, session: Session | None, given: str | None) -> bool:
        if session is None or not given:
            return False
        return hmac.compare_digest(self.csrf_for(session).encode(), given.encode())

    @staticmethod
    def new_login_csrf() -> str:
        return secrets.token_urlsafe(32)

    @staticmethod
    def login_csrf_matches(cookie: str | None, given: str | None) -> bool:
        return bool(cookie) and bool(given) and hmac.compare_digest(str(cookie).encode(), str(given).encode())

    # --- one request ---------------------------------------------------------------------------
    def access(self, peer: str | None, headers: dict[str, str], cookies: dict[str, str]) -> Access:
        """May this request see the dashboard? `headers` has lower-case names."""
        if self.api_key is None:
            return self._loopback_access(peer, headers)
        given = headers.get("x-api-key")
        auth = headers.get("authorization", "")
        if not given and auth[:7].lower() == "bearer ":
            given = auth[7:]
        if given:
            if self.key_matches(given):
                return Access(True, "api key header", by_header=True)
            return Access(False, "wrong API key")
        session = self.verify_session(cookies.get(SESSION_COOKIE))
        if session is None:
            return Access(False, "login required")
        return Access(True, "session", session=session, csrf=self.csrf_for(session))

    @staticmethod
    def _loopback_access(peer: str | None, headers: dict[str, str]) -> Access:
        if not is_loopback_peer(peer):
            return Access(False, "DASHBOARD_API_KEY is unset: only clients on this machine are served")
        if any(h in headers for h in FORWARDING_HEADERS):
            return Access(False, "DASHBOARD_API_KEY is unset: requests relayed by a proxy are not served")
        if host_name(headers.get("host")) not in LOOPBACK_HOSTS:
            return Access(False, "DASHBOARD_API_KEY is unset: only a loopback Host is served")
        return Access(True, "loopback")
