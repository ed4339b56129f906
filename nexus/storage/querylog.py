"""Logging the reading pools' statements: every one with `DEBUG_SQL`, the slow ones always.

The reference system logged queries slower than `SLOW_QUERY_THRESHOLD_MS`; so does Nexus, for the
pools that answer people (the data API of each proxy worker, the dashboard). A line holds the
duration and the statement with its whitespace collapsed, cut at 500 characters, never the
parameters: values a client sent (project names, ids) and anything stored stay out of the logs.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from psycopg import AsyncCursor

log = logging.getLogger("nexus.sql")
MAX_SHOWN = 500


def statement_text(query: Any, conn: Any = None) -> str:
    """A statement as one short line, whatever form it was given in."""
    if isinstance(query, bytes):
        text = query.decode("utf-8", "replace")
    elif isinstance(query, str):
        text = query
    else:
        try:
            text = query.as_string(conn)
        except Exception:
            text = repr(query)
    text = " ".join(text.split())
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "…"


def timed_cursor(slow_ms: int, log_all: bool) -> type[AsyncCursor[Any]] | None:
    """A cursor class that logs as configured, or None when nothing is to be logged (the plain one)."""
    if not slow_ms and not log_all:
        return None
    if log_all:
        log.setLevel(logging.INFO)  # shown even while the rest of the process logs warnings only

    class TimedCursor(AsyncCursor[Any]):
        async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await super().execute(query, params, **kwargs)
            finally:
                ms = (time.perf_counter() - started) * 1000
                if slow_ms and ms >= slow_ms:
                    text = statement_text(query, self.connection)
                    log.warning("slow query (%.0f ms, SLOW_QUERY_THRESHOLD_MS=%d): %s", ms, slow_ms, text)
                elif log_all:
                    log.info("query (%.1f ms): %s", ms, statement_text(query, self.connection))

    return TimedCursor


def pool_kwargs(settings: Any) -> dict[str, Any]:
    """Connection arguments for a reading pool: the cursor class above when something is logged."""
    cursor = timed_cursor(settings.slow_query_threshold_ms, settings.debug_sql)
    return {"cursor_factory": cursor} if cursor is not None else {}
