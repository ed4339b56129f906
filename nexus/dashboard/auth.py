"""Who may see the dashboard.

With `DASHBOARD_API_KEY` set: a login form (the key, compared in constant time) issues a session
cookie that is *not* the key but an HMAC-signed, expiring token, so a leaked cookie expires and never
reveals the key; scripts may send the key itself as `X-API-Key` or `Authorization: Bearer`. Every
state-changing request needs a CSRF token bound to the session (the login form, which has no session
yet, uses a double-submit cookie).

Without a key the reference opened everything to everyone. Here the dashboard then serves only
clients on this machine, by the same rule as the proxy's data API (`nexus.security.access`); wrong
keys, from a script or the login form, are throttled per client address (`nexus.security.throttle`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie

from nexus.security.access import DataAccess, Networks, key_matches, presented_key
from nexus.security.throttle import FailureThrottle

SESSION_COOKIE = "nexus_session"
LOGIN_CSRF_COOKIE = "nexus_login_csrf"


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
    status: int = 200  # when refused: 401, 403 or 429
    retry_after: int | None = None


class DashboardAuth:
    def __init__(
        self,
        api_key: str | None,
        session_hours: int = 24,
        throttle: FailureThrottle | None = None,
        trusted: Networks = (),
    ) -> None:
        self.api_key = api_key or None
        self.data = DataAccess(self.api_key, throttle or FailureThrottle(), trusted)
        self.session_seconds = session_hours * 3600
        # Derived from the key: sessions survive restarts, and rotating the key ends every session.
        seed = (self.api_key or secrets.token_hex(32)).encode()
        self._session_key = hmac.new(seed, b"nexus-dashboard-session-v1", hashlib.sha256).digest()
        self._csrf_key = hmac.new(seed, b"nexus-dashboard-csrf-v1", hashlib.sha256).digest()

    @property
    def key_required(self) -> bool:
        return self.api_key is not None

    # --- the key ---------------------------------------------------------------------------------
    def key_matches(self, given: str | None) -> bool:
        return key_matches(self.api_key, given)

    def check_login(self, peer: str | None, headers: dict[str, str], given: str | None) -> Access:
        """A login form's key, throttled per client address like every other key check."""
        decision = self.data.decide(peer, headers, key=given or "")
        return Access(decision.allowed, decision.reason, status=decision.status, retry_after=decision.retry_after)

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
    def access(
        self, peer: str | None, headers: dict[str, str], cookies: dict[str, str], authority: str | None = None
    ) -> Access:
        """May this request see the dashboard? `headers` has lower-case names; `authority` is the host
        the request's URL names (an absolute-form target's, which wins over `Host`)."""
        if self.api_key is None or presented_key(headers) is not None:
            d = self.data.decide(peer, headers, authority=authority)
            return Access(d.allowed, d.reason, by_header=d.by_key, status=d.status, retry_after=d.retry_after)
        session = self.verify_session(cookies.get(SESSION_COOKIE))
        if session is None:
            return Access(False, "login required", status=401)
        return Access(True, "session", session=session, csrf=self.csrf_for(session))
