"""The upstream target of a proxied request, which can never leave the upstream's base path.

Granian hands the application the percent-decoded path, so `/v1/%2e%2e/x` and `/v1/..%2fx` both
arrive as `/v1/../x`. Sent on as it is, the upstream client's URL parser would resolve the dot
segments and reach any path of the upstream (or escape a path prefix in `CLAUDE_API_BASE_URL`) with
the credential the proxy holds. So a path with a `.` or `..` segment, a backslash or a control
character is refused (400), and what is forwarded is the path percent-encoded again, so a decoded
`?`, `#` or `%` stays part of the path.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from nexus.auth.client_keys import carries_client_key
from nexus.errors import ProxyError

#: Characters that need no re-encoding (RFC 3986 unreserved, plus the slash).
_PLAIN = re.compile(r"[A-Za-z0-9/_.~\-]*")  # pragma: no mutate (a fast path: quote() leaves these as they are)
#: Sub-delimiters and `:@` are legal in a path segment as they are.
_SAFE = "/-._~!$&'()*+,;=:@"  # pragma: no mutate (letters added to it are never quoted anyway)


#: Methods the Anthropic API uses; anything else (TRACE, CONNECT, inventions) never goes upstream.
FORWARDED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})


def upstream_target(path: str, query: str) -> str:
    """`path` (decoded, starting with `/v1/`) and the raw query string as the request target to forward."""
    if "/." in path and any(seg.partition(";")[0] in (".", "..") for seg in path.split("/")):
        raise ProxyError(400, "The path may not contain '.' or '..' segments.", "invalid_request_error")
    if carries_client_key(path) or (query and carries_client_key(query)):
        raise ProxyError(400, "Client keys may not be sent in the URL; send them as x-api-key.")
    if not _PLAIN.fullmatch(path):
        if "\\" in path or any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
            raise ProxyError(400, "The path may not contain backslashes or control characters.")
        path = quote(path, safe=_SAFE)
    return path + "?" + query if query else path


def join_upstream(base_url: str, target: str) -> str:
    """The absolute upstream URL: `target` always below `base_url`'s path."""
    if not target.startswith("/") or target.startswith("//"):
        raise ValueError(f"not an origin-form request target: {target[:80]!r}")
    return base_url + target
