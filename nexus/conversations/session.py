"""Which client session a request says it belongs to.

Claude Code 2.1 sends an `x-claude-code-session-id` header. Older clients only say it in the body's
`metadata.user_id`: Claude Code 1.0 and 2.0 as `user_<hex>_account_<uuid>_session_<uuid>`, 2.1 also as
a JSON object with a `session_id`. The linker prefers a candidate of the request's own session, so two
sessions that open with the same prompt are never crossed; the session is never evidence on its own.
The value comes from the client: it is bounded, and only ever compared, never trusted.
"""

from __future__ import annotations

from typing import Any, Protocol

from nexus._core import RequestAnalysis, envelope_session, session_in_user_id

__all__ = ["MAX_SESSION", "header_session", "request_session", "session_in_user_id", "session_of"]

#: A session is cut to this many characters (the envelope's rule is the Rust core's:
#: `nexus_core/src/conversation/session.rs`, which reads `user_id` values of up to 512 characters).
MAX_SESSION = 128


class Headers(Protocol):
    def get(self, key: str, default: Any = None, /) -> Any: ...


def session_of(headers: Headers, envelope: bytes | None) -> str | None:
    """The session header, else the session named in `metadata.user_id` of the body's envelope (the
    body without messages, system and tools), else None."""
    return header_session(headers) or (envelope_session(envelope) if envelope else None)


def request_session(headers: Headers, analysis: RequestAnalysis) -> str | None:
    """`session_of` for an analysed request: the envelope's session was read by the analysis."""
    return header_session(headers) or analysis.envelope_session


def header_session(headers: Headers) -> str | None:
    """The `x-claude-code-session-id` header (Claude Code 2.1), cut to `MAX_SESSION` characters."""
    header = headers.get("x-claude-code-session-id")
    return str(header)[:MAX_SESSION] if header else None
