"""`/api/*`: a small route table over thin handlers, each domain adding its own.

Who may call it is decided before a route is looked up (`nexus.security.access`, by the proxy). Every
parameter is checked (`params`) before it reaches SQL, so a bad one is a 400 and a database error
is not the caller's: it, and anything unexpected, is a 500 in Anthropic's shape with the cause
logged, never a traceback to the client. Reads use a small async pool of their own, opened on first
use, so a proxy that never serves the API never connects for it. A handler gets the pool, the path
parameter (the part after its prefix, for prefix routes) and the parsed query, and returns a
JSON-serialisable payload.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qs

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from nexus.analysis import api as analyses
from nexus.api import conversations, reference, requests, usage
from nexus.api.params import check_query
from nexus.api.table import PostHandler, RouteTable
from nexus.errors import ProxyError
from nexus.storage.pools import GuardedPool

log = logging.getLogger("nexus.api")
#: The longest an /api/* answer may take (also each statement's server-side limit).
ANSWER_WITHIN_S = 15.0

JSON = [("content-type", "application/json")]


def dump_json(payload: Any) -> bytes:
    """orjson, or the standard library for what orjson refuses to write (an int past 64 bits: a token
    sum over clamped counts, or a number stored before such numbers were kept as text), every digit
    kept: an answer, never a 500."""
    try:
        return orjson.dumps(payload, option=orjson.OPT_NAIVE_UTC)
    except TypeError:
        return json.dumps(payload, default=_plain, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _plain(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


class ApiRoutes(RouteTable):
    """The route table with every domain's handlers registered, served over a pool of its own."""

    def __init__(
        self, database_url: str | None, *, pool_size: int = 4, connect_kwargs: dict[str, Any] | None = None
    ) -> None:
        self.database_url = database_url
        self.pool_size = pool_size  # DB_POOL_SIZE
        self.connect_kwargs = connect_kwargs or {}  # e.g. the cursor that logs slow queries (nexus.storage.querylog)
        self._pool: AsyncConnectionPool | None = None
        super().__init__()
        requests.register(self)
        conversations.register(self)
        usage.register(self)
        analyses.register(self)
        reference.register(self)

    async def pool(self) -> AsyncConnectionPool:
        if self.database_url is None:
            raise ProxyError(503, "Storage is not configured on this proxy.", "api_error")
        if self._pool is None:
            pool = GuardedPool(
                self.database_url,
                min_size=1,
                max_size=self.pool_size,
                open=False,
                timeout=3,  # waiting for a connection: a database that refuses them is a quick 503
                hang_after_s=ANSWER_WITHIN_S,
                kwargs={
                    "connect_timeout": 3,
                    "options": f"-c statement_timeout={int(ANSWER_WITHIN_S * 1000)}",
                    **self.connect_kwargs,
                },
            )
            await pool.open(wait=False)
            self._pool = pool
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def handle(self, scope: Any, proto: Any, request_id: str, body: bytes | None = None) -> None:
        path: str = scope.path
        if scope.method == "POST" and (posted := self._find_post(path)) is not None:
            await self._post(posted, path, proto, request_id, body)
            return
        found = self._find(path)
        if found is None:
            raise ProxyError(404, f"No route for {scope.method} {path[:200]}.", "not_found_error")
        if scope.method != "GET":
            raise ProxyError(405, f"Method {scope.method} not allowed on {path[:200]}.", "invalid_request_error")
        handler, param = found
        query = parse_qs(scope.query_string, keep_blank_values=True)  # `x=` is seen, never dropped
        check_query(query)
        try:
            # no asyncio.timeout here: a cancelled query can freeze the process (nexus/storage/pools.py);
            # a database that hangs is ended by the pool after ANSWER_WITHIN_S
            payload = await handler(await self.pool(), param, query)
            body = dump_json(payload)
        except ProxyError:
            raise
        except (psycopg.OperationalError, PoolTimeout) as exc:
            log.warning("GET %s: storage unavailable (%s)", path, exc.__class__.__name__)
            raise ProxyError(
                503, "Storage is unavailable right now; try again shortly.", "api_error", headers=[("retry-after", "5")]
            ) from None
        except psycopg.DataError:
            # Every parameter is checked before it reaches SQL (`params`), so a data error comes from a
            # stored value a query could not read: the proxy's fault, never the caller's parameter.
            log.exception("GET %s failed on a stored value", path)
            raise ProxyError(500, "A stored value could not be read; the cause is in the proxy's log.") from None
        except Exception:
            log.exception("GET %s failed", path)
            raise ProxyError(500, "The request could not be answered; the cause is in the proxy's log.") from None
        proto.response_bytes(200, [*JSON, ("x-request-id", request_id)], body)

    async def _post(
        self, posted: tuple[PostHandler, str], path: str, proto: Any, request_id: str, body: bytes | None
    ) -> None:
        handler, param = posted
        try:
            payload = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            raise ProxyError(400, "The request body is not valid JSON.") from None
        try:
            status, answer = await handler(await self.pool(), param, payload)
            out = dump_json(answer)
        except ProxyError:
            raise
        except (psycopg.OperationalError, PoolTimeout) as exc:
            log.warning("POST %s: storage unavailable (%s)", path, exc.__class__.__name__)
            raise ProxyError(
                503, "Storage is unavailable right now; try again shortly.", "api_error", headers=[("retry-after", "5")]
            ) from None
        except Exception:
            log.exception("POST %s failed", path)
            raise ProxyError(500, "The request could not be answered; the cause is in the proxy's log.") from None
        proto.response_bytes(status, [*JSON, ("x-request-id", request_id)], out)
