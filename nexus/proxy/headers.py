"""Which headers cross the proxy, in each direction.

End-to-end headers (`anthropic-version`, `anthropic-beta`, `x-stainless-*`, the session id, the caller's
credentials) travel unchanged, because Claude Code's features depend on them. Hop-by-hop headers belong to
one connection and must not be forwarded (RFC 9110 §7.6.1). The project and account selectors are
instructions to this proxy, not to Anthropic, so they stop here. `accept-encoding` is dropped upstream so
the proxy sees plain bytes it can observe, and forwards them untouched without decompressing.
"""

from __future__ import annotations

from collections.abc import Iterable

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

#: Headers that select a project or account on this proxy: never forwarded, never authorization.
PROXY_SELECTORS = frozenset({"train-id", "msl-project-id", "msl-train-id", "x-train-account", "msl-account"})

#: The analysis worker's mark (nexus/analysis/marker.py): an instruction to this proxy only.
ANALYSIS_MARK = "x-nexus-analysis"

#: Request headers the upstream client sets itself, or that would make the upstream answer differently.
_REQUEST_DROP = HOP_BY_HOP | PROXY_SELECTORS | {"host", "content-length", "accept-encoding", "expect", ANALYSIS_MARK}
#: Response headers the server recomputes for the client connection.
_RESPONSE_DROP = HOP_BY_HOP | {"content-length", "date", "server"}


#: Added upstream when a client sends no `anthropic-version` (Anthropic refuses requests without one),
#: as the reference system did: a plain `curl` with a body and a key then works.
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"


def upstream_request_headers(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Client request headers to send upstream (names arrive lower-cased from Granian)."""
    out = [(k, v) for k, v in items if k not in _REQUEST_DROP]
    if len(out) != len(items):
        for k, v in items:
            if k == "connection":  # names listed in Connection are hop-by-hop too
                listed = {t.strip().lower() for t in v.split(",")}
                out = [(n, x) for n, x in out if n not in listed]
                break
    for k, v in out:
        if k == "anthropic-version" and v.strip():
            return out
    out = [(k, v) for k, v in out if k != "anthropic-version"]
    out.append(("anthropic-version", DEFAULT_ANTHROPIC_VERSION))
    return out


def client_response_headers(items: Iterable[tuple[str, str]], request_id: str) -> list[tuple[str, str]]:
    """Upstream response headers to send to the client, plus our own request id."""
    out = [(k, v) for k, v in items if k not in _RESPONSE_DROP]
    out.append(("x-request-id", request_id))
    return out
