"""`GET /api/conversations` (latest activity first) and `GET /api/conversations/{id}` (the tree).

The listing filters by project (`projectId`, or the reference's older `domain`), account (`accountId`)
and dates (`dateFrom`/`dateTo`: conversations whose activity overlaps the range), model, failed requests
(`errorsOnly`) and a full-text search (`q`, nexus/conversations/search.py); every filter given is
applied, and one the operation does not know is a 400 (it used to be ignored, so
`?domain=x` returned every project's conversations).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from psycopg_pool import AsyncConnectionPool

from nexus.api import schemas
from nexus.api.contract import ACCOUNT, BEFORE, OFFSET, PROJECT, Args, Operation, Param, declare, limit, serve
from nexus.api.params import found, next_cursor
from nexus.conversations import repository

if TYPE_CHECKING:
    from nexus.api.table import RouteTable

DATE_FROM = Param("dateFrom", "datetime", "Only conversations active at or after this time.", aliases=("date_from",))
DATE_TO = Param("dateTo", "datetime", "Only conversations active at or before this time.", aliases=("date_to",))

SEARCH = Param(
    "q",
    "text",
    'Full-text search over prompts and replies (PostgreSQL `websearch_to_tsquery`: words, "phrases", '
    "`or`, `-word`); conversations with a matching request.",
)
MODEL = Param("model", "text", "Only conversations with a request of this model.")
ERRORS_ONLY = Param("errorsOnly", "bool", "Only conversations with a failed request.", aliases=("errors_only",))
EXCLUDE_SUBTASKS = Param(
    "excludeSubtasks", "bool", "Leave out conversations made only of sub-agent requests (the dashboard's parameter)."
)

LIST = declare(
    Operation(
        "/api/conversations",
        "listConversations",
        "Conversations by latest activity, with branch counts",
        schemas.ConversationList,
        (limit(), BEFORE, OFFSET, PROJECT, ACCOUNT, DATE_FROM, DATE_TO, EXCLUDE_SUBTASKS, SEARCH, MODEL, ERRORS_ONLY),
        reference="GET /api/conversations?projectId&accountId&limit&offset&dateFrom&dateTo (OLD: domain); "
        "the dashboard service's excludeSubtasks",
    )
)
TREE = declare(
    Operation(
        "/api/conversations/{conversationId}",
        "getConversation",
        "One conversation as a tree: requests, branches and edges",
        schemas.ConversationTree,
        path_params=(Param("conversationId", "uuid", "The conversation's id."),),
        reference="documented by the reference (GET /api/conversations/:id) but never implemented there",
    )
)


def register(api: RouteTable) -> None:
    serve(api, LIST, list_conversations)
    serve(api, TREE, get_conversation)


def _summary(row: dict[str, Any]) -> schemas.ConversationSummary:
    ref = row.pop("reference")
    accounts = sorted(ref["account_ids"] or [])
    return schemas.ConversationSummary(
        **row,
        conversationId=row["conversation_id"],
        projectId=row["project_id"],
        domain=row["project_id"],
        trainIds=sorted(ref["project_ids"] or [row["project_id"]]),
        accountIds=accounts,
        accountId=ref["first_account_id"],
        firstMessageTime=row["first_at"],
        lastMessageTime=row["last_at"],
        messageCount=row["request_count"],
        totalTokens=row["input_tokens"] + row["output_tokens"],
        branchCount=ref["all_branch_count"] or 0,
        subtaskBranchCount=row["subagent_count"],
        compactBranchCount=ref["compact_branch_count"] or 0,
        userBranchCount=ref["user_branch_count"] or 0,
        modelsUsed=row["models"],
        latestRequestId=row["latest_request_id"],
        latestModel=ref["latest_model"],
        latestContextTokens=int(ref["latest_context_tokens"] or 0),
        isSubtask=bool(ref["is_subtask"]),
        parentTaskRequestId=ref["parent_task_request_id"],
        parentConversationId=ref["parent_conversation_id"],
        subtaskMessageCount=ref["subtask_message_count"] or 0,
    )


async def list_conversations(pool: AsyncConnectionPool, args: Args) -> schemas.ConversationList:
    filters = {
        "project_id": args["projectId"],
        "account_id": args["accountId"],
        "date_from": args["dateFrom"],
        "date_to": args["dateTo"],
        "exclude_subtasks": args["excludeSubtasks"],
        "q": args["q"],
        "model": args["model"],
        "errors_only": args["errorsOnly"],
    }
    count, offset = args["limit"], args["offset"]
    async with pool.connection() as conn:
        rows = await repository.list_conversations(conn, limit=count, before=args["before"], offset=offset, **filters)
        total = await repository.count_conversations(conn, **filters)
    cursor = next_cursor(rows, count, at="last_at", key="conversation_id")
    return schemas.ConversationList(
        conversations=[_summary(r) for r in rows],
        next_cursor=cursor,
        pagination=schemas.PagePagination(
            total=total,
            limit=count,
            offset=offset,
            has_more=offset + count < total,
            page=offset // count + 1,
            total_pages=math.ceil(total / count),
        ),
    )


async def get_conversation(pool: AsyncConnectionPool, args: Args) -> schemas.ConversationTree:
    wanted = args["conversationId"]
    async with pool.connection() as conn:
        tree = found(await repository.get_conversation(conn, wanted), "conversation", wanted)
    return schemas.ConversationTree(
        **{k: v for k, v in tree.items() if k not in ("requests", "branches", "edges")},
        requests=[schemas.TreeRequest(**r) for r in tree["requests"]],
        branches=[schemas.Branch(**b) for b in tree["branches"]],
        edges=[schemas.Edge(from_=e["from"], to=e["to"], kind=e["kind"]) for e in tree["edges"]],
    )
