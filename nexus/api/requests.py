"""`GET /api/requests`, `/api/requests/{id}` and `/api/requests/{id}/subtasks`: stored requests, newest
first, bodies rebuilt.

Two paginations on one listing: Nexus's keyset cursor (`before` = the previous page's `next_cursor`,
cheap at any depth) and the reference's `limit`/`offset` with `pagination.total`/`hasMore`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg_pool import AsyncConnectionPool

from nexus.api import schemas
from nexus.api.contract import ACCOUNT, BEFORE, OFFSET, PROJECT, Args, Operation, Param, declare, limit, serve
from nexus.api.params import found, next_cursor
from nexus.compat.request_types import reference_request_type
from nexus.conversations.search import Find
from nexus.storage import requests_repo

if TYPE_CHECKING:
    from nexus.api.table import RouteTable

CONVERSATION = Param("conversationId", "uuid", "Only this conversation's requests.", aliases=("conversation_id",))
SEARCH = Param("q", "text", "Full-text search over the request's prompt and its reply.")
MODEL = Param("model", "text", "Only this model.")
STATUS = Param("status", "int", "Only requests answered with this HTTP status.", low=100, high=599)
ERRORS_ONLY = Param(
    "errorsOnly", "bool", "Only failed requests (status 400 or above, or a proxy error).", aliases=("errors_only",)
)
DATE_FROM = Param("dateFrom", "datetime", "Only requests started at or after this time.", aliases=("date_from",))
DATE_TO = Param("dateTo", "datetime", "Only requests started at or before this time.", aliases=("date_to",))
MIN_MS = Param("minDurationMs", "int", "Only requests that took at least this long (ms).", low=0, high=86_400_000,
               aliases=("min_duration_ms",))  # fmt: skip
MAX_MS = Param("maxDurationMs", "int", "Only requests that took at most this long (ms).", low=0, high=86_400_000,
               aliases=("max_duration_ms",))  # fmt: skip
#: The search and filters of the requests list (nexus/conversations/search.py).
FIND_PARAMS = (SEARCH, MODEL, STATUS, ERRORS_ONLY, DATE_FROM, DATE_TO, MIN_MS, MAX_MS)
REQUEST_ID = Param("requestId", "uuid", "The request's id (its `X-Request-ID`).")

LIST = declare(
    Operation(
        "/api/requests",
        "listRequests",
        "Stored requests, newest first",
        schemas.RequestList,
        (limit(), BEFORE, OFFSET, PROJECT, ACCOUNT, CONVERSATION, *FIND_PARAMS),
        reference="GET /api/requests?projectId&limit&offset (OLD: domain)",
    )
)
DETAIL = declare(
    Operation(
        "/api/requests/{requestId}",
        "getRequest",
        "One stored request with its bodies",
        schemas.RequestDetail,
        path_params=(REQUEST_ID,),
        reference="GET /api/requests/:id",
    )
)
SUBTASKS = declare(
    Operation(
        "/api/requests/{requestId}/subtasks",
        "listSubtasks",
        "The sub-agent requests a request's reply launched",
        schemas.SubtaskList,
        (limit(100, 500),),
        path_params=(REQUEST_ID,),
        reference="GET /api/requests/:requestId/subtasks (dashboard service)",
    )
)


def register(api: RouteTable) -> None:
    serve(api, LIST, list_requests)
    serve(api, DETAIL, get_request)
    serve(api, SUBTASKS, list_subtasks)


def _zero(value: int | None) -> int:
    return value if value is not None else 0


def reference_fields(row: dict[str, Any]) -> dict[str, Any]:
    """The reference's summary fields of a stored row (absent counts as 0, as it wrote them)."""
    return {
        "requestId": row["request_id"],
        "projectId": row["project_id"],
        "domain": row["project_id"],
        "accountId": row["account_id"],
        "inputTokens": _zero(row["input_tokens"]),
        "outputTokens": _zero(row["output_tokens"]),
        "totalTokens": _zero(row["input_tokens"]) + _zero(row["output_tokens"]),
        "durationMs": _zero(row["duration_ms"]),
        "responseStatus": _zero(row["response_status"]),
        "requestType": reference_request_type(row["request_type"]),
    }


def summary(row: dict[str, Any]) -> schemas.RequestSummary:
    return schemas.RequestSummary(**row, **reference_fields(row))


async def get_request(pool: AsyncConnectionPool, args: Args) -> schemas.RequestDetail:
    wanted = args["requestId"]
    async with pool.connection() as conn:
        row = found(await requests_repo.get_request(conn, wanted), "stored request", wanted)
    return schemas.RequestDetail(
        **row,
        **reference_fields(row),
        conversationId=row["conversation_id"],
        branchId=row["branch_id"],
        parentRequestId=row["parent_request_id"],
        requestBody=row["request_body"],
        responseBody=row["response_body"],
        usageData=row["usage"],
        streamingChunks=[],
    )


async def list_requests(pool: AsyncConnectionPool, args: Args) -> schemas.RequestList:
    filters = {
        "project_id": args["projectId"],
        "account_id": args["accountId"],
        "conversation_id": args["conversationId"],
    }
    find = Find(
        q=args["q"],
        model=args["model"],
        date_from=args["dateFrom"],
        date_to=args["dateTo"],
        status=args["status"],
        errors_only=args["errorsOnly"],
        min_duration_ms=args["minDurationMs"],
        max_duration_ms=args["maxDurationMs"],
    )
    count, offset = args["limit"], args["offset"]
    async with pool.connection() as conn:
        rows = await requests_repo.list_requests(
            conn, limit=count, before=args["before"], offset=offset, find=find, **filters
        )
        total = await requests_repo.count_requests(conn, find=find, **filters)
    return schemas.RequestList(
        requests=[summary(r) for r in rows],
        next_cursor=next_cursor(rows, count),
        pagination=schemas.Pagination(total=total, limit=count, offset=offset, has_more=offset + count < total),
    )


async def list_subtasks(pool: AsyncConnectionPool, args: Args) -> schemas.SubtaskList:
    async with pool.connection() as conn:
        rows = await requests_repo.list_requests(conn, limit=args["limit"], parent_task_request_id=args["requestId"])
    return schemas.SubtaskList(request_id=args["requestId"], subtasks=[summary(r) for r in rows[::-1]])
