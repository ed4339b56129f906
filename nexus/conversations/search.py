"""Finding conversations and requests: full-text search and the filters the lists share.

The search vector of each request is written by the batch writer (migration 0012,
`nexus_search_vector`: the newest user prompt and the reply's text, client injections stripped), so a
search is one GIN index lookup (`api_requests_search_idx`), never a scan of bodies. The query side must
use the configuration the writer used: `CONFIG`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from nexus.errors import ProxyError

#: The text search configuration of `nexus_search_vector` (migration 0012): the same on both sides.
CONFIG = "english"
#: A request matches a search (`websearch_to_tsquery`: words, "quoted phrases", `or`, `-excluded`; never
#: a syntax error, whatever the text).
MATCHES = f"search_vector @@ websearch_to_tsquery('{CONFIG}', %s)"
#: Titles of the conversations that have none, from their first main-thread request (the migration's
#: backfill, 0012, and `nexus relink` after it rebuilds the summaries).
TITLE_BACKFILL = """
UPDATE conversations c SET title = (
    SELECT nexus_title(r.message_keys) FROM api_requests r
    WHERE r.conversation_id = c.conversation_id AND r."timestamp" >= c.first_at AND r."timestamp" <= c.last_at
    ORDER BY r.is_subtask, r.request_type IS DISTINCT FROM 'main', r."timestamp", r.request_id
    LIMIT 1
) WHERE c.title IS NULL
"""
#: A search matching fewer requests than this goes through the GIN index first (`few_matches`).
FEW_MATCHES = 5000
_COUNT_MATCHES = f"SELECT count(*) FROM (SELECT 1 FROM api_requests WHERE {MATCHES} LIMIT {FEW_MATCHES}) m"  # noqa: S608
#: The requests of a search, found through the GIN index alone, for a query that then orders them.
HITS_CTE = f"WITH hits AS MATERIALIZED (SELECT request_id, conversation_id FROM api_requests WHERE {MATCHES}) "  # noqa: S608
#: A request that failed: an error status from upstream, or an error of the proxy's own.
FAILED = "(response_status >= 400 OR error IS NOT NULL)"


@dataclass(frozen=True, slots=True)
class Find:
    """What a list is narrowed to. Absent (None/False) is no filter. `status`, and the duration bounds
    apply to requests only (a conversation has no single status; `errors_only` finds those with a
    failed request)."""

    q: str | None = None
    project_id: str | None = None
    account_id: str | None = None
    model: str | None = None
    date_from: datetime | None = None
    date_to: datetime | None = None
    errors_only: bool = False
    status: int | None = None
    min_duration_ms: int | None = None
    max_duration_ms: int | None = None

    def any(self) -> bool:
        """True when something narrows the list (the empty state then says "nothing matches")."""
        return any(getattr(self, name) not in (None, False) for name in self.__slots__)  # type: ignore[attr-defined]


async def few_matches(conn: AsyncConnection[Any], q: str) -> bool:
    """Whether a search matches few requests (fewer than `FEW_MATCHES`; one GIN lookup, bounded).

    The planner cannot know how many rows a word matches (a word not among its statistics' most
    common ones is guessed at 0.5%), so for "newest 50 matches" it walks the time index and checks
    each row: instant for a common word, a scan of every request for a rare one (88 ms on 200,000
    rows, linear beyond). A rare word is therefore looked up in the GIN index first (`HITS_CTE`) and
    only its matches are ordered; a common word keeps the walk, which finds 50 matches at once."""
    cur = await conn.execute(_COUNT_MATCHES, (q,))  # type: ignore[arg-type]
    row = await cur.fetchone()
    return row is not None and int(row[0]) < FEW_MATCHES


def status_param(raw: str | None) -> tuple[int | None, bool]:
    """`status`: an HTTP status (100-599), or `error` / `errors` for every failed request. Returns
    (status, errors_only); anything else is a 400."""
    if raw is None or raw == "":
        return None, False
    if raw.lower() in ("error", "errors"):
        return None, True
    if raw.isascii() and raw.isdigit() and 100 <= int(raw) <= 599:
        return int(raw), False
    raise ProxyError(400, f"status must be an HTTP status (100-599) or 'error', got {raw[:40]!r}.")


def request_clauses(find: Find) -> tuple[list[str], list[Any]]:
    """WHERE conditions (joined with AND) and their parameters on `api_requests` for `find`."""
    where: list[str] = []
    params: list[Any] = []
    conditions: tuple[tuple[str, object], ...] = (
        ("project_id = %s", find.project_id),
        ("account_id = %s", find.account_id),
        ("model = %s", find.model),
        ('"timestamp" >= %s', find.date_from),
        ('"timestamp" <= %s', find.date_to),
        ("response_status = %s", find.status),
        ("duration_ms >= %s", find.min_duration_ms),
        ("duration_ms <= %s", find.max_duration_ms),
        (MATCHES, find.q),
    )
    for condition, value in conditions:
        if value is not None:
            where.append(condition)
            params.append(value)
    if find.errors_only:
        where.append(FAILED)
    return where, params


def conversation_clauses(find: Find, hits: bool = False) -> tuple[list[str], list[Any]]:
    """WHERE conditions on `conversations c` for the filters a conversation list reads (q, model,
    errors only); project, account and dates are the repository's own. `hits`: the statement begins
    with `HITS_CTE`, the search's matches found through the GIN index (`few_matches`). Each looks at the
    conversation's requests within its time span (partitions pruned, the conversation index used);
    the search goes through the GIN index first and keeps the conversations it found."""
    where: list[str] = []
    params: list[Any] = []
    within = "r.conversation_id = c.conversation_id AND r.timestamp >= c.first_at AND r.timestamp <= c.last_at"
    if find.q is not None and hits:  # the statement starts with HITS_CTE (its parameter comes first)
        where.append("c.conversation_id IN (SELECT conversation_id FROM hits WHERE conversation_id IS NOT NULL)")
    elif find.q is not None:
        where.append(
            "c.conversation_id IN (SELECT r.conversation_id FROM api_requests r "  # noqa: S608 (constants)
            f"WHERE r.{MATCHES} AND r.conversation_id IS NOT NULL)"
        )
        params.append(find.q)
    if find.model is not None:
        where.append(f"EXISTS (SELECT 1 FROM api_requests r WHERE {within} AND r.model = %s)")  # noqa: S608
        params.append(find.model)
    if find.errors_only:
        where.append(
            f"EXISTS (SELECT 1 FROM api_requests r WHERE {within} "  # noqa: S608 (constants)
            "AND (r.response_status >= 400 OR r.error IS NOT NULL))"
        )
    return where, params
