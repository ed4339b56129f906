"""What the upstream says is left of each account's rate limits: its latest stored reply headers.

Anthropic answers every request with `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-
{limit,remaining,reset}` (API keys), and subscription (OAuth) traffic with the unified ones:
`anthropic-ratelimit-unified-status` (`allowed`, `allowed_warning`, `rejected`) and per claim (`5h`,
`7d`, `7d_opus`, ...) `-<claim>-utilization` (a fraction used), `-<claim>-reset` (epoch seconds) and
`-<claim>-status`. Storage keeps every upstream response header but hop-by-hop ones
(`api_requests.response_headers`), so the newest reply that carried any of them is what the
account has left, as of that reply. Values come from the upstream (or whatever answered as it): any
that is not a number or a time is left out, never guessed.

An account is near its limit (`warning`) when a limit has less than `WARN_LEFT` left, or a unified
status says `allowed_warning` or `rejected`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

PREFIX = "anthropic-ratelimit-"
UNIFIED = PREFIX + "unified-"
#: The standard limits, in the order shown.
KINDS = ("requests", "tokens", "input-tokens", "output-tokens")
#: Below this fraction left, a limit is a warning.
WARN_LEFT = 0.20
#: How far back the newest reply with rate-limit headers is looked for.
LOOK_BACK = timedelta(days=7)
#: Headers of which one marks a reply that carried rate-limit figures (`?|`: any of them).
MARKERS = [UNIFIED + "status", *(f"{PREFIX}{k}-remaining" for k in KINDS), UNIFIED + "5h-utilization"]
_CLAIM = re.compile(r"anthropic-ratelimit-unified-([a-z0-9_]{1,40})-utilization")
WARNING_STATUSES = frozenset({"allowed_warning", "rejected"})

#: Of each account's newest replies, how many are searched for one with rate-limit headers: an account
#: whose replies carry none (another upstream) costs this many rows, not its whole week.
SCAN_ROWS = 500
LATEST = (
    'SELECT a.account_id, r.request_id::text AS request_id, r."timestamp", r.response_headers '  # noqa: S608 (constants only)
    "FROM unnest(%(accounts)s::text[]) AS a(account_id) CROSS JOIN LATERAL (SELECT * FROM ("
    'SELECT request_id, "timestamp", response_headers FROM api_requests '
    'WHERE account_id = a.account_id AND "timestamp" >= %(start)s AND "timestamp" <= %(end)s '
    f'ORDER BY "timestamp" DESC LIMIT {SCAN_ROWS}) newest '
    'WHERE response_headers ?| %(markers)s ORDER BY "timestamp" DESC LIMIT 1) r'
)


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit: a standard one (`tokens`: `limit`, `remaining`) or a unified claim (`5h`: `used`)."""

    name: str
    left: float | None  # fraction left, 0..1
    limit: int | None = None
    remaining: int | None = None
    resets_at: datetime | None = None
    status: str | None = None

    @property
    def warning(self) -> bool:
        return (self.left is not None and self.left < WARN_LEFT) or self.status in WARNING_STATUSES


@dataclass(slots=True)
class AccountLimits:
    account_id: str
    as_of: datetime | None = None
    request_id: str | None = None
    status: str | None = None  # the unified status
    limits: list[Limit] = field(default_factory=list)

    @property
    def warning(self) -> bool:
        return self.status in WARNING_STATUSES or any(limit.warning for limit in self.limits)

    @property
    def reasons(self) -> list[str]:
        out = [f"unified status {self.status}"] if self.status in WARNING_STATUSES else []
        for limit in self.limits:
            if limit.warning:
                left = f"{limit.left:.0%} left" if limit.left is not None else str(limit.status)
                out.append(f"{limit.name}: {left}")
        return out


def _text(headers: dict[str, Any], name: str) -> str | None:
    value = headers.get(name)
    return value.strip() if isinstance(value, str) and len(value) <= 200 else None


def _int(value: str | None) -> int | None:
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 18:
        return None
    return int(value)


def _fraction(value: str | None) -> float | None:
    if value is None or len(value) > 40:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _time(value: str | None) -> datetime | None:
    """An RFC 3339 time (standard headers) or epoch seconds (unified ones)."""
    if value is None:
        return None
    seconds = _int(value)
    try:
        if seconds is not None:
            return datetime.fromtimestamp(seconds, UTC)
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def parse(account_id: str, headers: Any) -> AccountLimits:
    """The limits one reply's stored headers state (none when it stated none)."""
    out = AccountLimits(account_id)
    if not isinstance(headers, dict):
        return out
    for kind in KINDS:
        limit = _int(_text(headers, f"{PREFIX}{kind}-limit"))
        remaining = _int(_text(headers, f"{PREFIX}{kind}-remaining"))
        if limit is None and remaining is None:
            continue
        left = min(1.0, remaining / limit) if limit and remaining is not None else None
        resets = _time(_text(headers, f"{PREFIX}{kind}-reset"))
        out.limits.append(Limit(kind, left, limit, remaining, resets))
    out.status = _text(headers, UNIFIED + "status")
    for name in sorted(k for k in headers if isinstance(k, str)):
        match = _CLAIM.fullmatch(name)
        if match is None:
            continue
        used = _fraction(_text(headers, name))
        if used is None:
            continue
        claim = match.group(1)
        out.limits.append(
            Limit(
                f"unified {claim}",
                max(0.0, min(1.0, 1.0 - used)),
                resets_at=_time(_text(headers, f"{UNIFIED}{claim}-reset")),
                status=_text(headers, f"{UNIFIED}{claim}-status"),
            )
        )
    return out


async def latest(conn: AsyncConnection[Any], accounts: list[str], now: datetime) -> list[AccountLimits]:
    """Per account (in the order given), the limits of its newest reply with rate-limit headers among
    its newest `SCAN_ROWS` in the last `LOOK_BACK`; an account without one has no limits. One index
    range scan per account (`(account_id, timestamp)`), newest first, bounded."""
    if not accounts:
        return []
    params = {"accounts": accounts, "start": now - LOOK_BACK, "end": now, "markers": MARKERS}
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(LATEST, params)
        found = {r["account_id"]: r for r in await cur.fetchall()}
    out = []
    for account in accounts:
        row = found.get(account)
        limits = parse(account, row["response_headers"] if row else None)
        if row is not None:
            limits.as_of, limits.request_id = row["timestamp"], row["request_id"]
        out.append(limits)
    return out
