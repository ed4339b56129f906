"""Which client session a request says it belongs to.

Claude Code 2.1 sends an `x-claude-code-session-id` header. Older clients only say it in the body's
`metadata.user_id`: Claude Code 1.0 and 2.0 as `user_<hex>_account_<uuid>_session_<uuid>`, 2.1 also as
a JSON object with a `session_id`. The linker prefers a candidate of the request's own session, so two
sessions that open with the same prompt are never crossed; the session is never evidence on its own.
The value comes from the client: it is bounded, and only ever compared, never trusted.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

import orjson

#: Longer `user_id` values are not parsed (a session id is a UUID; anything much longer is not one).
MAX_USER_ID = 512
MAX_SESSION = 128
_LEGACY = re.compile(r"_session_([A-Za-z0-9-]{1,128})\Z")


class Headers(Protocol):
    def get(self, key: str, default: Any = None, /) -> Any: ...


def session_of(headers: Headers, envelope: bytes | None) -> str | None:
    """The session header, else the session named in `metadata.user_id` of the body's envelope (the
    body without messages, system and tools), else None."""
    header = headers.get("x-claude-code-session-id")
    if header:
        return str(header)[:MAX_SESSION]
    if not envelope or b'"user_id"' not in envelope:
        return None
    try:
        body = orjson.loads(envelope)
    except orjson.JSONDecodeError:
        return None
    metadata = body.get("metadata") if isinstance(body, dict) else None
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    return session_in_user_id(user_id) if isinstance(user_id, str) else None


def session_in_user_id(user_id: str) -> str | None:
    """`..._session_<id>` (Claude Code 1.0, 2.0) or `{"session_id": ...}` (2.1)."""
    if len(user_id) > MAX_USER_ID:
        return None
    if user_id.startswith("{"):
        try:
            value = orjson.loads(user_id)
        except orjson.JSONDecodeError:
            return None
        session = value.get("session_id") if isinstance(value, dict) else None
        return session[:MAX_SESSION] if isinstance(session, str) and session else None
    found = _LEGACY.search(user_id)
    return found.group(1) if found else None
