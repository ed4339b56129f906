"""Query and path parameters of `/api/*`: every value checked once, every bad one a 400.

A parameter reaches SQL only after it is known to be what it claims: ids are UUIDs, numbers are in
range, cursors are the ones listings return, and text has no NUL or control characters (PostgreSQL
refuses NUL in text, which used to surface as a 500). Absent means "no filter"; malformed is never
silently ignored.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from nexus.errors import ProxyError

Query = dict[str, list[str]]  # pragma: no mutate (a type alias)
#: Longest value accepted for any parameter.
MAX_VALUE = 512


def check_query(query: Query) -> None:
    """Refuse control characters and oversized values anywhere in the query string."""
    for name, values in query.items():
        for value in (name, *values):
            if len(value) > MAX_VALUE or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
                raise ProxyError(400, f"Query parameter {name[:40]!r} has a control character or is too long.")


def first(query: Query, *names: str) -> str | None:
    for name in names:
        values = query.get(name)
        if values:
            return values[0]
    return None


def int_param(query: Query, name: str, default: int, low: int, high: int) -> int:
    raw = first(query, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ProxyError(400, f"{name} must be an integer, got {raw[:40]!r}.") from None
    if not low <= value <= high:
        raise ProxyError(400, f"{name} must be between {low} and {high}, got {raw[:40]}.")
    return value


def bool_param(query: Query, name: str) -> bool:
    raw = first(query, name)
    if raw is None:
        return False
    lowered = raw.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ProxyError(400, f"{name} must be true or false, got {raw[:40]!r}.")


def limit_param(query: Query, default: int = 50, most: int = 500) -> int:
    return int_param(query, "limit", default, 1, most)


def uuid_param(query: Query, *names: str) -> str | None:
    raw = first(query, *names)
    if raw is None:
        return None
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise ProxyError(400, f"{names[0]} must be a UUID, got {raw[:40]!r}.") from None


def path_uuid(wanted: str, what: str) -> str:
    """The id in the path; one that is not a UUID is a 400 (it cannot name anything)."""
    try:
        return str(uuid.UUID(wanted))
    except ValueError:
        raise ProxyError(400, f"{what} id must be a UUID, got {wanted[:40]!r}.") from None


def cursor_param(query: Query) -> tuple[datetime, str] | None:
    """`before=<epoch µs>_<uuid>`: the keyset cursor a listing returned as `next_cursor`."""
    raw = first(query, "before")
    if raw is None:
        return None
    try:
        us, _, rid = raw.partition("_")
        return datetime.fromtimestamp(int(us) / 1_000_000, UTC), str(uuid.UUID(rid))
    except (ValueError, OverflowError, OSError):
        raise ProxyError(400, "before must be a cursor returned as next_cursor.") from None


def next_cursor(rows: list[dict[str, Any]], limit: int, at: str = "timestamp", key: str = "request_id") -> str | None:
    if len(rows) < limit:
        return None
    last = rows[-1]  # URL-safe: epoch microseconds and the id of the last row
    return f"{int(last[at].timestamp() * 1_000_000)}_{last[key]}"


def found(row: dict[str, Any] | None, what: str, wanted: str) -> dict[str, Any]:
    if row is None:
        raise ProxyError(404, f"No {what} {wanted!r}.", "not_found_error")
    return row


#: The most matches a list's `pagination.total` counts (docs/api.md): counting every match of a
#: search over a million requests takes seconds, and a total past this is only a "there are many".
TOTAL_CAP = 10_000


#: The same for conversations matching a search: their count walks the matching requests in
#: conversation order (~140 ms per 1,000 conversations at 1,000,000 stored requests).
CONVERSATION_TOTAL_CAP = 1_000


def total_cap(offset: int, limit: int, cap: int = TOTAL_CAP) -> int:
    """How far a total is counted: `cap`, or one past the page when the page lies beyond it, so
    `hasMore` stays right. A total that reaches this is reported with `totalCapped`."""
    return max(cap, offset + limit + 1)
