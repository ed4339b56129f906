"""Which web pages may call the proxy from a browser.

A browser attaches `Origin` to cross-origin requests. A page on any site could otherwise make a
visitor's browser send requests to a gateway it can reach (on the visitor's machine or network) and
spend the credential the gateway holds for a project, even without reading the answer. So: no
cross-origin grants by default; `CORS_ALLOWED_ORIGINS` lists the origins that get them; a request
that carries any other `Origin` is refused before anything else happens. Clients that are not
browsers (the SDKs, Claude Code) send no `Origin` and are not affected.
"""

from __future__ import annotations

ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = (
    "content-type, authorization, x-api-key, anthropic-version, anthropic-beta, "
    "anthropic-dangerous-direct-browser-access, train-id, msl-project-id, x-train-account, msl-account"
)
EXPOSED_HEADERS = "x-request-id, request-id, retry-after, anthropic-ratelimit-requests-remaining"


class CorsPolicy:
    def __init__(self, allowed_origins: frozenset[str]) -> None:
        self.allowed_origins = allowed_origins

    def allows(self, origin: str) -> bool:
        return origin.strip().lower().removesuffix("/") in self.allowed_origins

    def preflight_headers(self, origin: str) -> list[tuple[str, str]]:
        """Grants for an allowed origin's preflight (`OPTIONS`)."""
        return [
            ("access-control-allow-origin", origin),
            ("access-control-allow-methods", ALLOWED_METHODS),
            ("access-control-allow-headers", ALLOWED_HEADERS),
            ("access-control-max-age", "600"),
            ("vary", "origin"),
        ]

    @staticmethod
    def response_headers(origin: str) -> list[tuple[str, str]]:
        """What an allowed origin's actual response carries so its page may read it."""
        return [
            ("access-control-allow-origin", origin),
            ("access-control-expose-headers", EXPOSED_HEADERS),
            ("vary", "origin"),
        ]
