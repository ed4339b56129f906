"""SQL of the conversations domain: the linker's lookups, the conversation views, and relinking.

Every linker lookup is bounded in time (the request's own start and a look-back window), so it prunes
to a few daily partitions and gives the same answer when history is replayed later.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from nexus._core import prompt_key as prompt_key_of
from nexus.conversations.compaction import reply_text
from nexus.conversations.index import FAILED, OK, PER_KEY, Compaction, Entry, Invocation
from nexus.conversations.linker import spawned_prompts
from nexus.conversations.search import HITS_CTE, MATCHES, Find, conversation_clauses, few_matches
from nexus.pricing.sql import COST_SUMS, REQUEST_COST_USD, summed_cost

ENTRY_COLUMNS = (
    "request_id::text, project_id, timestamp, request_type, current_message_hash, conversation_id::text, branch_id, "
    "parent_request_id::text, is_subtask, parent_task_request_id::text, session_id, agent_id, response_status"
)


def _entry(row: tuple[Any, ...]) -> Entry:
    """A stored row (`api_requests`, its HTTP status last) as the linker's index holds it."""
    return entry(row, OK if row[12] == 200 else FAILED)


def entry(row: tuple[Any, ...], status: int) -> Entry:
    """The linker's entry from the twelve columns every linking query selects first, with its status."""
    return Entry(
        row[0],
        row[1],
        row[2].timestamp(),
        row[3] or "",
        bytes(row[4]) if row[4] is not None else None,
        row[5],
        row[6],
        row[7],
        bool(row[8]),
        row[9],
        row[10],
        row[11],
        status,
    )


def _window(before: float, days: int) -> tuple[datetime, datetime]:
    end = datetime.fromtimestamp(before, UTC)
    return end - timedelta(days=days), end


#: Rows read per history hash, newest first (an index range scan, however often the hash was stored).
HASH_ROWS = 32
#: Of those, the newest few overall and of each group that shares the request's session or agent (the
#: groups the linker's pick prefers), as in the in-memory index (`PER_KEY`).
HASH_GROUP_ROWS = PER_KEY
#: Candidates returned, nearest history first, and children read per candidate (for branching).
HASH_CANDIDATES = 64
CHILD_ROWS = 32
_LOOKUP_COLUMNS = (
    'request_id, project_id, "timestamp", request_type, current_message_hash, conversation_id, branch_id, '
    "parent_request_id, is_subtask, parent_task_request_id, session_id, agent_id, response_status"
)
_WINDOW = '"timestamp" >= %(start)s AND "timestamp" < %(end)s'
_SAME_SESSION = "session_id IS NOT DISTINCT FROM %(session)s"
_SAME_AGENT = "agent_id IS NOT DISTINCT FROM %(agent)s"
REQUESTS_WITH_HASHES = f"""
SELECT {ENTRY_COLUMNS} FROM (
    SELECT r.*, h.depth,
        row_number() OVER (PARTITION BY h.depth ORDER BY r."timestamp" DESC) AS newest,
        row_number() OVER (PARTITION BY h.depth, {_SAME_SESSION}, {_SAME_AGENT} ORDER BY r."timestamp" DESC) AS in_group
    FROM unnest(%(hashes)s::bytea[]) WITH ORDINALITY AS h(hash, depth)
    CROSS JOIN LATERAL (
        SELECT {_LOOKUP_COLUMNS} FROM api_requests
        WHERE current_message_hash = h.hash AND project_id = %(project)s AND {_WINDOW}
        ORDER BY "timestamp" DESC LIMIT {HASH_ROWS}
    ) r
) c
WHERE newest <= {HASH_GROUP_ROWS} OR (in_group <= {HASH_GROUP_ROWS} AND ({_SAME_SESSION} OR {_SAME_AGENT}))
ORDER BY depth DESC, "timestamp" DESC LIMIT {HASH_CANDIDATES}
"""  # noqa: S608 (constants only)
CHILDREN_OF = f"""
SELECT {ENTRY_COLUMNS} FROM unnest(%(parents)s::uuid[]) AS p(parent)
CROSS JOIN LATERAL (
    SELECT {_LOOKUP_COLUMNS} FROM api_requests WHERE parent_request_id = p.parent AND {_WINDOW} LIMIT {CHILD_ROWS}
) c
"""  # noqa: S608 (constants only)


async def requests_with_hashes(
    conn: AsyncConnection[Any],
    project: str,
    hashes: list[bytes],
    before: float,
    days: int,
    session: str | None = None,
    agent: str | None = None,
) -> list[Entry]:
    """Requests whose whole history is one of `hashes` that could be a retry or parent of a request from
    `session` and `agent`, and some children of those (for branching).

    Bounded whatever the traffic: per hash only the newest `HASH_ROWS` rows are read (an index range
    scan on (hash, timestamp)), and of those the newest few overall and of the request's session, agent
    or both are returned, so a body stored ten thousand times costs what a body stored once does.
    """
    start, end = _window(before, days)
    params = {"hashes": hashes, "project": project, "start": start, "end": end, "session": session, "agent": agent}
    # The planner cannot know that a hash is one stored ten thousand times: estimating a row or two, it
    # would read all of its rows from each daily partition and sort them. With sorts ruled out for this
    # statement alone it merges the partitions' (hash, timestamp) index scans and stops at HASH_ROWS.
    cur = await conn.execute("SELECT current_setting('enable_sort'), set_config('enable_sort', 'off', true)")
    row = await cur.fetchone()
    try:
        found = await conn.execute(REQUESTS_WITH_HASHES, params)
        entries = [_entry(r) for r in await found.fetchall()]
    finally:
        await conn.execute("SELECT set_config('enable_sort', %s, true)", (row[0] if row else "on",))
    if entries:
        children = await conn.execute(
            CHILDREN_OF, {"parents": [e.request_id for e in entries], "start": start, "end": end}
        )
        entries += [_entry(r) for r in await children.fetchall()]
    return entries


async def spawning_requests(
    conn: AsyncConnection[Any], project: str, prompt_key: bytes, before: float, days: int
) -> tuple[list[Entry], list[Invocation], dict[str, int]]:
    """Recent replies that launched a sub-agent with this prompt, their requests, and subtask counts."""
    start, end = _window(before, min(days, 1))
    cur = await conn.execute(
        f"SELECT {ENTRY_COLUMNS}, response_body FROM api_requests "  # noqa: S608
        "WHERE project_id = %s AND task_prompt_keys @> ARRAY[%s::bytea] AND timestamp >= %s AND timestamp < %s "
        "ORDER BY timestamp DESC LIMIT 10",
        (project, prompt_key, start, end),
    )
    entries, invocations = [], []
    for row in await cur.fetchall():
        entry = _entry(row)
        entries.append(entry)
        for tool_use_id, prompt in spawned_prompts(row[13] if isinstance(row[13], dict) else {}):
            k = prompt_key_of(prompt)
            invocations.append(
                Invocation(
                    entry.request_id, tool_use_id, project, entry.conversation_id, entry.session, entry.timestamp, k
                )
            )
    counts: dict[str, int] = {}
    conversations = sorted({e.conversation_id for e in entries if e.conversation_id})
    if conversations:
        cur = await conn.execute(
            "SELECT conversation_id::text, max(substring(branch_id from 9)::int) FROM api_requests "
            "WHERE conversation_id = ANY(%s::uuid[]) AND branch_id ~ '^subtask_[0-9]+$' GROUP BY 1",
            (conversations,),
        )
        counts = {c: int(n) for c, n in await cur.fetchall()}
    return entries, invocations, counts


async def recent_compactions(
    conn: AsyncConnection[Any], project: str, before: float, days: int
) -> tuple[list[Entry], list[Compaction]]:
    start, end = _window(before, min(days, 7))
    cur = await conn.execute(
        f"SELECT {ENTRY_COLUMNS}, response_body FROM api_requests "  # noqa: S608
        "WHERE project_id = %s AND request_type = 'compaction' AND response_status = 200 "
        "AND timestamp >= %s AND timestamp < %s ORDER BY timestamp DESC LIMIT 20",
        (project, start, end),
    )
    entries, compactions = [], []
    for row in reversed(await cur.fetchall()):
        entry = _entry(row)
        entries.append(entry)
        text = reply_text(row[13])
        if text:
            compactions.append(
                Compaction(
                    entry.request_id,
                    project,
                    entry.conversation_id,
                    entry.branch_id,
                    entry.timestamp,
                    text,
                    entry.session,
                )
            )
    return entries, compactions


# --- views --------------------------------------------------------------------------------------------
CONVERSATION_COLUMNS = (
    "conversation_id, project_id, first_at, last_at, request_count, input_tokens, output_tokens, "
    "cache_creation_input_tokens, cache_read_input_tokens, latest_request_id, title"
)


async def list_conversations(
    conn: AsyncConnection[Any],
    *,
    limit: int,
    before: tuple[datetime, str] | None = None,
    project_id: str | None = None,
    account_id: str | None = None,
    date_from: datetime | None = None,
    date_to: datetime | None = None,
    offset: int = 0,
    exclude_subtasks: bool = False,
    q: str | None = None,
    model: str | None = None,
    errors_only: bool = False,
) -> list[dict[str, Any]]:
    """Conversations by latest activity, newest first (keyset on last_at, conversation_id, then
    `offset`), with their branch, sub-agent and compaction counts and models, and the reference's
    per-conversation fields (`reference`). `q` is a full-text search over prompts and replies, `model`
    and `errors_only` keep conversations with a request of that model, or a failed one
    (nexus/conversations/search.py)."""
    found = Find(q=q, model=model, errors_only=errors_only)
    hits = q is not None and await few_matches(conn, q)
    clause, params = _conversation_filters(
        project_id, account_id, date_from, date_to, before, exclude_subtasks, found, hits
    )
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(list_sql(clause, hits), ([q] if hits else []) + [*params, limit, offset])  # type: ignore[arg-type]
        rows = await cur.fetchall()
        if not rows:
            return rows
        await cur.execute(
            CONVERSATION_DETAILS,
            ([r["conversation_id"] for r in rows], min(r["first_at"] for r in rows), max(r["last_at"] for r in rows)),
        )
        counts = {r["conversation_id"]: r for r in await cur.fetchall()}
        parents = [c["parent_task_request_id"] for c in counts.values() if c["parent_task_request_id"] is not None]
        parent_conversations: dict[Any, Any] = {}
        if parents:
            await cur.execute(
                "SELECT request_id, conversation_id FROM api_requests WHERE request_id = ANY(%s) "
                "AND timestamp >= %s AND timestamp <= %s",
                (parents, min(r["first_at"] for r in rows) - timedelta(days=1), max(r["last_at"] for r in rows)),
            )
            parent_conversations = {r["request_id"]: r["conversation_id"] for r in await cur.fetchall()}
    for row in rows:
        extra = counts.get(row["conversation_id"], {})
        row["branch_count"] = extra.get("branch_count", 0)
        row["subagent_count"] = extra.get("subagent_count", 0)
        row["compaction_count"] = extra.get("compaction_count", 0)
        row["models"] = sorted(extra.get("models") or [])
        row["cost_usd"] = summed_cost(extra) if extra else 0.0
        row["unpriced_requests"] = int(extra.get("unpriced_requests", 0))
        reference = {k: extra.get(k) for k in REFERENCE_DETAILS}
        reference["parent_conversation_id"] = parent_conversations.get(reference["parent_task_request_id"])
        row["reference"] = reference
    return rows


def list_sql(clause: str, hits: bool) -> str:
    """The page query of `list_conversations` for a WHERE `clause`; with `hits`, after `HITS_CTE`."""
    cte = HITS_CTE if hits else ""
    order = "ORDER BY last_at DESC, conversation_id DESC LIMIT %s OFFSET %s"
    return f"{cte}SELECT {CONVERSATION_COLUMNS} FROM conversations c {clause} {order}"  # noqa: S608 (constants)


async def count_conversations(
    conn: AsyncConnection[Any],
    *,
    project_id: str | None = None,
    account_id: str | None = None,
    date_from: datetime | None = None,
    date_to: datetime | None = None,
    exclude_subtasks: bool = False,
    q: str | None = None,
    model: str | None = None,
    errors_only: bool = False,
    limit: int | None = None,
) -> int:
    """How many conversations match (the reference's `pagination.total`), counting at most `limit`
    when given: a search matching most of a million requests is otherwise counted in full."""
    if q is not None and limit is not None:
        # the matching requests' distinct conversations, walked in conversation order until `limit`
        # are found (the conversation index): counting every conversation of a common word read all
        # its matches, ~3.5 s at 1,000,000 stored requests
        found = Find(model=model, errors_only=errors_only)
        clause, params = _conversation_filters(
            project_id, account_id, date_from, date_to, None, exclude_subtasks, found
        )
        sql = (
            "SELECT count(*) FROM (SELECT DISTINCT r.conversation_id FROM api_requests r "  # noqa: S608
            f"JOIN (SELECT c.conversation_id FROM conversations c {clause}) AS f "
            f"ON f.conversation_id = r.conversation_id WHERE r.{MATCHES} LIMIT %s) AS m"
        )
        params = [*params, q, limit]
    else:
        found = Find(q=q, model=model, errors_only=errors_only)
        clause, params = _conversation_filters(
            project_id, account_id, date_from, date_to, None, exclude_subtasks, found
        )
        sql = f"SELECT count(*) FROM conversations c {clause}"  # noqa: S608 (constant SQL)
        if limit is not None:
            sql = f"SELECT count(*) FROM (SELECT 1 FROM conversations c {clause} LIMIT %s) AS m"  # noqa: S608
            params = [*params, limit]
    cur = await conn.execute(sql, params)  # type: ignore[arg-type]
    row = await cur.fetchone()
    return int(row[0]) if row else 0


def _conversation_filters(
    project_id: str | None,
    account_id: str | None,
    date_from: datetime | None,
    date_to: datetime | None,
    before: tuple[datetime, str] | None,
    exclude_subtasks: bool = False,
    found: Find | None = None,
    hits: bool = False,
) -> tuple[str, list[Any]]:
    """A conversation matches a date range when its activity overlaps it, and an account when one of
    its requests was served by that account. Without sub-tasks: only conversations with a request
    that is not a sub-agent's (a sub-agent's requests normally join the conversation that launched it;
    one whose launcher was not found is a conversation of sub-agent requests only)."""
    where: list[str] = []
    params: list[Any] = []
    if before is not None:
        where.append("(last_at, conversation_id) < (%s, %s)")
        params += [before[0], before[1]]
    if project_id is not None:
        where.append("project_id = %s")
        params.append(project_id)
    if date_from is not None:
        where.append("last_at >= %s")
        params.append(date_from)
    if date_to is not None:
        where.append("first_at <= %s")
        params.append(date_to)
    if account_id is not None:
        # the conversations with a request served by the account: `usage_keys` (migration 0016) holds
        # every (conversation, account) pair stored, exactly, where a look at the requests read all
        # of the account's (~530 ms to count them at 1,000,000 stored requests)
        where.append("c.conversation_id IN (SELECT k.conversation_id FROM usage_keys k WHERE k.account_id = %s)")
        params.append(account_id)
    if exclude_subtasks:
        where.append(
            "EXISTS (SELECT 1 FROM api_requests r WHERE r.conversation_id = c.conversation_id "
            "AND NOT r.is_subtask AND r.timestamp >= c.first_at AND r.timestamp <= c.last_at)"
        )
    if found is not None:
        more, more_params = conversation_clauses(found, hits)
        where += more
        params += more_params
    return ("WHERE " + " AND ".join(where)) if where else "", params


#: The reference's per-conversation fields, computed with Nexus's own counts in one pass over the page.
REFERENCE_DETAILS = (
    "all_branch_count",
    "compact_branch_count",
    "user_branch_count",
    "project_ids",
    "account_ids",
    "first_account_id",
    "is_subtask",
    "parent_task_request_id",
    "subtask_message_count",
    "latest_model",
    "latest_context_tokens",
)
_NEWEST = "ORDER BY timestamp DESC, request_id DESC"
#: A sub-agent's thread: its branch id (nexus/conversations/linker.py). Branches and sub-agents are
#: counted by this one rule in the list (SQL below) and on the conversation page (`branch_counts`).
SUBAGENT_BRANCH = "^subtask_"


def branch_counts(branch_ids: list[str | None]) -> dict[str, int]:
    """A conversation's branches (main line, forks, compacted histories) and sub-agents, from its
    requests' branch ids, counted as the conversation list counts them (`CONVERSATION_DETAILS`)."""
    distinct = {b for b in branch_ids if b is not None}
    subagents = sum(1 for b in distinct if re.match(SUBAGENT_BRANCH, b))
    return {"branches": len(distinct) - subagents, "subagents": subagents}


CONVERSATION_DETAILS = (
    "SELECT conversation_id, "  # noqa: S608 (constant SQL)
    f"count(DISTINCT branch_id) FILTER (WHERE branch_id !~ '{SUBAGENT_BRANCH}') AS branch_count, "
    f"count(DISTINCT branch_id) FILTER (WHERE branch_id ~ '{SUBAGENT_BRANCH}') AS subagent_count, "
    "count(*) FILTER (WHERE request_type = 'compaction') AS compaction_count, "
    "array_agg(DISTINCT model) FILTER (WHERE model IS NOT NULL) AS models, "
    "count(DISTINCT branch_id) AS all_branch_count, "
    "count(DISTINCT branch_id) FILTER (WHERE branch_id ~ '^compact_') AS compact_branch_count, "
    "count(DISTINCT branch_id) FILTER (WHERE branch_id <> 'main' AND branch_id !~ '^(subtask|compact)_') "
    "AS user_branch_count, "
    "array_agg(DISTINCT project_id) AS project_ids, "
    "array_agg(DISTINCT account_id) FILTER (WHERE account_id IS NOT NULL) AS account_ids, "
    "(array_agg(account_id ORDER BY timestamp, request_id) FILTER (WHERE account_id IS NOT NULL))[1] "
    "AS first_account_id, "
    "bool_or(is_subtask) AS is_subtask, "
    "(array_agg(parent_task_request_id ORDER BY timestamp, request_id) FILTER (WHERE is_subtask))[1] "
    "AS parent_task_request_id, "
    "count(*) FILTER (WHERE is_subtask) AS subtask_message_count, "
    f"(array_agg(model {_NEWEST}))[1] AS latest_model, "
    # numeric: three counts each up to bigint's maximum (a clamped hostile value) cannot overflow
    "(array_agg(coalesce(input_tokens, 0)::numeric + coalesce(cache_read_input_tokens, 0) "
    f"+ coalesce(cache_creation_input_tokens, 0) {_NEWEST}))[1] AS latest_context_tokens, "
    f"count(*) AS requests, {COST_SUMS} "
    "FROM api_requests WHERE conversation_id = ANY(%s) AND timestamp >= %s AND timestamp <= %s "
    "GROUP BY conversation_id"
)


TREE_COLUMNS = (
    "request_id, timestamp, parent_request_id, branch_id, is_subtask, parent_task_request_id, request_type, "
    "model, response_status, input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens, "
    "duration_ms, message_count, tool_call_count, session_id, agent_id, " + REQUEST_COST_USD
)


async def get_conversation(conn: AsyncConnection[Any], conversation_id: str) -> dict[str, Any] | None:
    """One conversation as a tree: its requests in time order with parent and sub-agent edges."""
    async with conn.cursor(row_factory=dict_row) as cur:
        sql = f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE conversation_id = %s"  # noqa: S608
        await cur.execute(sql, (conversation_id,))  # type: ignore[arg-type]
        summary = await cur.fetchone()
        if summary is None:
            return None
        await cur.execute(
            f"SELECT {TREE_COLUMNS} FROM api_requests WHERE conversation_id = %s "  # noqa: S608
            "AND timestamp >= %s AND timestamp <= %s ORDER BY timestamp, request_id",
            (conversation_id, summary["first_at"], summary["last_at"]),
        )
        requests = await cur.fetchall()
    branches: dict[str, dict[str, Any]] = {}
    edges = []
    for r in requests:
        b = branches.setdefault(
            r["branch_id"] or "main",
            {"branch_id": r["branch_id"] or "main", "first_request_id": r["request_id"], "request_count": 0,
             "parent_request_id": r["parent_request_id"], "is_subtask": r["is_subtask"]},
        )  # fmt: skip
        b["request_count"] += 1
        b["last_request_id"] = r["request_id"]
    types = {r["request_id"]: r["request_type"] for r in requests}
    for r in requests:
        parent = r["parent_request_id"]
        if parent is None:
            continue
        if r["is_subtask"] and r["parent_task_request_id"] == parent:
            kind = "subagent"  # the first request of a sub-agent, under the reply that launched it
        elif types.get(parent) == "compaction":
            kind = "compaction"  # the history restarted from the summary
        else:
            kind = "continuation"
        edges.append({"from": parent, "to": r["request_id"], "kind": kind})
    return {**summary, "requests": requests, "branches": list(branches.values()), "edges": edges}
