"""`GET /api/oauth-usage/{accountId}`: an OAuth account's subscription utilisation, in the reference's shape.

The reference asked Anthropic's OAuth usage endpoint for it. Nexus reads what Anthropic already told it:
every reply to a subscription (OAuth) account carries `anthropic-ratelimit-unified-<claim>-utilization`
(a fraction) and `-reset` (epoch seconds) headers, and storage keeps each reply's headers. So the
answer is the account's latest stored reply's windows, with `fetched_at` the time of that reply: no
held token is spent on it and no credential leaves the proxy. An account with stored requests but no
such headers (an API key) is `available: false`, and so is an account of the credential files with no
stored reply yet; any other account is a 404. `force` is accepted for the reference's clients and
changes nothing (there is no cache to skip).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from nexus.api import schemas
from nexus.api.contract import Args, Operation, Param, declare, serve
from nexus.auth.credentials import CredentialStore
from nexus.errors import ProxyError
from nexus.settings import get_settings
from nexus.usage.service import now_utc

if TYPE_CHECKING:
    from nexus.api.table import RouteTable

PREFIX = "anthropic-ratelimit-unified-"
_CLAIM = re.compile(r"anthropic-ratelimit-unified-([a-z0-9_]{1,40})-utilization")
#: The usage API's window names for the header claims.
NAMES = {"5h": "five_hour", "7d": "seven_day", "7d_oauth_apps": "seven_day_oauth_apps",
         "7d_opus": "seven_day_opus", "7d_sonnet": "seven_day_sonnet"}  # fmt: skip
KNOWN_FOR = timedelta(days=30)

OAUTH_USAGE = declare(
    Operation(
        "/api/oauth-usage/{accountId}",
        "oauthUsage",
        "An OAuth account's utilisation windows, from the rate-limit headers of its latest stored reply",
        schemas.OAuthUsage,
        (Param("force", "bool", "Accepted for the reference's clients; the answer is always read from storage."),),
        path_params=(Param("accountId", "text", "The account (its credential file's `accountId`)."),),
        reference="GET /api/oauth-usage/:accountId?force (second version; asked Anthropic's OAuth usage API)",
    )
)

LATEST = (
    'SELECT "timestamp", response_headers FROM api_requests WHERE account_id = %(account)s '
    'AND "timestamp" >= %(start)s AND response_headers ? %(marker)s ORDER BY "timestamp" DESC LIMIT 1'
)
SEEN = 'SELECT 1 FROM api_requests WHERE account_id = %(account)s AND "timestamp" >= %(start)s LIMIT 1'


def register(api: RouteTable) -> None:
    serve(api, OAUTH_USAGE, oauth_usage)


async def oauth_usage(pool: AsyncConnectionPool, args: Args) -> schemas.OAuthUsage:
    account = args["accountId"]
    params = {"account": account, "start": now_utc() - KNOWN_FOR, "marker": PREFIX + "status"}
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(LATEST, params)
        row = await cur.fetchone()
        if row is None:
            await cur.execute(SEEN, params)
            if await cur.fetchone() is None and credential_kind(account) is None and not await _stored(cur, account):
                message = f"No credential file and no request in 30 days for account {account[:80]!r}."
                raise ProxyError(404, message, "not_found_error")
    headers = row["response_headers"] if row is not None and isinstance(row["response_headers"], dict) else {}
    windows = windows_of(headers, now_utc())
    return schemas.OAuthUsage(
        success=True,
        data=schemas.OAuthUsageData(
            account_id=account,
            provider="anthropic",
            available=bool(windows),
            windows=windows,
            fetched_at=row["timestamp"].isoformat() if row is not None else None,
            is_estimated=False,
            extra_usage=None,
            source="reply_headers",
        ),
    )


#: Whether this role may read the credentials table (migration 0015; the read-only role may not).
READABLE = "SELECT to_regclass('credentials') IS NOT NULL AND has_table_privilege('credentials', 'SELECT')"
STORED = "SELECT 1 FROM credentials WHERE account_id = %(account)s OR (kind = 'account' AND name = %(account)s) LIMIT 1"


async def _stored(cur: Any, account: str) -> bool:
    """Whether the database holds a credential for this account (imported by any instance): only clear
    columns are read, never the sealed document."""
    await cur.execute(READABLE)
    readable = await cur.fetchone()
    if readable is None or not next(iter(readable.values())):
        return False
    await cur.execute(STORED, {"account": account})
    return await cur.fetchone() is not None


def credential_kind(account: str) -> str | None:
    """`oauth` or `api_key` when a credential file holds this account (by its `accountId`, or as
    `accounts/<account>.credentials.json`); None otherwise. Only the kind is read, never a secret."""
    creds, _ = CredentialStore(get_settings().credentials_dir).all()
    for cred in creds:
        if cred.account_id == account or (cred.is_account and cred.name == account):
            return cred.kind
    return None


def windows_of(headers: dict[str, Any], now: datetime) -> list[schemas.UsageWindow]:
    """Every `<claim>-utilization` header as a window (utilisation in percent, as the usage API gives it);
    a value that is not a finite number is skipped, a reset that is not a time is left out."""
    windows = []
    for name, value in sorted(headers.items()):
        match = _CLAIM.fullmatch(name) if isinstance(name, str) else None
        if match is None or not isinstance(value, str):
            continue
        try:
            fraction = float(value)
        except ValueError:
            continue
        if not math.isfinite(fraction):
            continue
        claim = match.group(1)
        resets = _reset(headers.get(f"{PREFIX}{claim}-reset"))
        windows.append(
            schemas.UsageWindow(
                name=NAMES.get(claim, claim),
                short_name=claim,
                utilization=round(fraction * 100, 2),
                resets_at=_human(resets - now) if resets else None,
                resets_at_iso=resets.isoformat() if resets else None,
            )
        )
    return windows


def _reset(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(value), UTC) if isinstance(value, str) else None
    except (ValueError, OverflowError, OSError):
        return None


def _human(left: timedelta) -> str:
    minutes = max(0, int(left.total_seconds() // 60))
    if minutes < 60:
        return f"in {minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"in {hours} h {minutes} min"
    return f"in {hours // 24} days"
