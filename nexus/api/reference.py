"""The reference system's other data endpoints, at its paths with its parameters and field names.

Statistics (`/api/stats`, `/api/storage-stats`, `/api/dashboard/stats`), weekly conversations, the
tenant lists (`/api/domains` as its first version named them, `/api/train-ids` as its second, and
`/api/projects`), per-account 5-hour usage (`/api/token-usage/accounts`), hourly counts and the sliding
window. Where the reference had a number it hard-coded (the 140,000-token 5-hour limit) it is kept and
named in the answer (`tokenLimit`).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from psycopg_pool import AsyncConnectionPool

from nexus.api import oauth_usage, schemas
from nexus.api.contract import ACCOUNT, PROJECT, Args, Operation, Param, declare, serve
from nexus.api.usage import iso
from nexus.compat.request_types import reference_type_counts
from nexus.usage import rollups
from nexus.usage.service import align_up, now_utc

if TYPE_CHECKING:
    from nexus.api.table import RouteTable

SINCE = Param("since", "datetime", "Only requests at or after this time.")
HOURLY_DAYS = Param("days", "int", "Days back.", default=7, low=1, high=30)
FIVE_HOURS = timedelta(hours=5)
MINI_BUCKET = timedelta(minutes=15)


def _op(path: str, operation_id: str, summary: str, response: Any, params: tuple[Param, ...], ref: str) -> Operation:
    return declare(Operation(path, operation_id, summary, response, params, reference=ref))


STATS = _op(
    "/api/stats",
    "stats",
    "Request and token totals since `since` (default: the last 24 hours)",
    schemas.Stats,
    (PROJECT, SINCE),
    "GET /api/stats?projectId&since (OLD: domain)",
)
STORAGE = _op(
    "/api/storage-stats",
    "storageStats",
    "What storage holds: totals since `since` (default: everything), first and last request",
    schemas.StorageStats,
    (PROJECT, SINCE),
    "GET /api/storage-stats?projectId&since (dashboard service)",
)
DASHBOARD = _op(
    "/api/dashboard/stats",
    "dashboardStats",
    "Conversation-scoped totals over `statsDays`, the last 24 hours and their hours",
    schemas.DashboardStats,
    (PROJECT, ACCOUNT, Param("statsDays", "int", "Days back.", default=30, low=1, high=365)),
    "GET /api/dashboard/stats?projectId&accountId&statsDays",
)
WEEKLY = _op(
    "/api/analytics/conversations/weekly",
    "weeklyConversations",
    "New conversations per ISO week (the week of each one's first request)",
    schemas.WeeklyConversations,
    (
        Param("weeks", "int", "Weeks back, this one included.", default=12, low=1, high=52),
        Param("days", "int", "Days back instead of weeks.", low=0, high=365),
        PROJECT,
    ),
    "GET /api/analytics/conversations/weekly?weeks|days&projectId",
)
DOMAINS = _op(
    "/api/domains",
    "domains",
    "Projects with requests in the last 7 days (the reference's first version: domains)",
    schemas.Domains,
    (),
    "GET /api/domains (OLD)",
)
TRAIN_IDS = _op(
    "/api/train-ids",
    "trainIds",
    "Projects with requests in the last 7 days (the reference's second version)",
    schemas.TrainIds,
    (),
    "GET /api/train-ids (NEW)",
)
PROJECTS = _op(
    "/api/projects",
    "projects",
    "Projects with requests in the last `days` days, busiest first",
    schemas.Projects,
    (Param("days", "int", "Days back.", default=7, low=1, high=365),),
    "the dashboard's GET /api/projects lists its projects table; Nexus's projects are those in traffic",
)
ACCOUNTS = _op(
    "/api/token-usage/accounts",
    "tokenUsageAccounts",
    "Every account seen in the last 5 hours: output tokens against the limit, projects, mini series",
    schemas.AccountUsageList,
    (),
    "GET /api/token-usage/accounts",
)
REQUESTS_HOURLY = _op(
    "/api/usage/requests/hourly",
    "hourlyRequests",
    "Requests per project and UTC hour",
    schemas.Hourly,
    (PROJECT, HOURLY_DAYS),
    "GET /api/usage/requests/hourly?projectId&days",
)
TOKENS_HOURLY = _op(
    "/api/usage/tokens/hourly",
    "hourlyTokens",
    "Output tokens per project and UTC hour",
    schemas.Hourly,
    (PROJECT, HOURLY_DAYS),
    "GET /api/usage/tokens/hourly?projectId&days",
)
SLIDING = _op(
    "/api/analytics/token-usage/sliding-window",
    "slidingWindow",
    "An account's output tokens in a sliding window, bucket by bucket, with rate-limit warnings",
    schemas.SlidingWindow,
    (
        Param("accountId", "text", "The account.", aliases=("account_id",), required=True),
        Param("days", "int", "Days back.", default=7, low=1, high=30),
        Param("bucketMinutes", "int", "Bucket length, minutes.", default=10, low=1, high=60),
        Param("windowHours", "int", "Window length, hours.", default=5, low=1, high=24),
    ),
    "GET /api/analytics/token-usage/sliding-window?accountId&days&bucketMinutes&windowHours",
)


def register(api: RouteTable) -> None:
    for op, handler in (
        (STATS, stats),
        (STORAGE, storage_stats),
        (DASHBOARD, dashboard_stats),
        (WEEKLY, weekly),
        (DOMAINS, domains),
        (TRAIN_IDS, train_ids),
        (PROJECTS, projects),
        (ACCOUNTS, accounts),
        (REQUESTS_HOURLY, requests_hourly),
        (TOKENS_HOURLY, tokens_hourly),
        (SLIDING, sliding),
    ):
        serve(api, op, handler)
    oauth_usage.register(api)


def _stats_fields(row: dict[str, Any]) -> dict[str, Any]:
    projects = int(row["projects"])
    return {
        "total_requests": int(row["requests"]),
        "total_tokens": int(row["input_tokens"]) + int(row["output_tokens"]),
        "total_input_tokens": int(row["input_tokens"]),
        "total_output_tokens": int(row["output_tokens"]),
        "total_cache_creation_tokens": int(row["cache_creation"]),
        "total_cache_read_tokens": int(row["cache_read"]),
        "average_response_time": float(row["mean_duration_ms"]),
        "error_count": int(row["errors"]),
        "active_trains": projects,
        "active_domains": projects,
        "active_projects": projects,
        "requests_by_model": row["by_model"],
        "requests_by_type": reference_type_counts(row["by_type"]),
        "request_types": row["by_type"],
    }


async def stats(pool: AsyncConnectionPool, args: Args) -> schemas.Stats:
    since = args["since"] or now_utc() - timedelta(hours=24)
    async with pool.connection() as conn:
        row = await rollups.stats(conn, since, args["projectId"])
    return schemas.Stats(**_stats_fields(row))


async def storage_stats(pool: AsyncConnectionPool, args: Args) -> schemas.StorageStats:
    async with pool.connection() as conn:
        row = await rollups.stats(conn, args["since"], args["projectId"], storage=True)
    return schemas.StorageStats(
        **_stats_fields(row),
        first_request_at=row["first_request_at"],
        last_request_at=row["last_request_at"],
        conversation_count=int(row["conversation_count"]),
    )


async def dashboard_stats(pool: AsyncConnectionPool, args: Args) -> schemas.DashboardStats:
    async with pool.connection() as conn:
        row = await rollups.dashboard_stats(conn, now_utc(), args["statsDays"], args["projectId"], args["accountId"])
    last = row["last"]
    models = sorted(row["models"])
    return schemas.DashboardStats(
        total_conversations=int(row["conversations"]),
        active_users=int(row["users"]),
        total_requests=int(row["requests"]),
        total_tokens=int(row["tokens"]),
        total_branches=int(row["branches"]),
        subtask_branches=int(row["subtask_branches"]),
        compact_branches=int(row["compact_branches"]),
        models_used=models,
        models_used_count=len(models),
        last24_hours=schemas.Last24Hours(
            requests=int(last["requests"]), conversations=int(last["conversations"]), active_users=int(last["users"])
        ),
        hourly_activity=[
            schemas.HourActivity(hour=h["hour"], request_count=int(h["requests"]), token_count=int(h["tokens"]))
            for h in row["hours"]
        ],
    )


async def weekly(pool: AsyncConnectionPool, args: Args) -> schemas.WeeklyConversations:
    today = now_utc().date()
    this_week = today - timedelta(days=today.weekday())
    days = args["days"]  # None unless given: then it replaces `weeks`
    first = today - timedelta(days=days) if days is not None else this_week - timedelta(weeks=args["weeks"] - 1)
    start = datetime.combine(first, datetime.min.time(), UTC)
    async with pool.connection() as conn:
        rows = await rollups.weekly_conversations(conn, start, args["projectId"])
    counts: dict[date, int] = {r["week"]: int(r["n"]) for r in rows}
    week = first - timedelta(days=first.weekday())
    weeks = []
    while week <= this_week:  # every week of the range, the empty ones too
        weeks.append(schemas.WeekCount(week_start=week, conversation_count=counts.get(week, 0)))
        week += timedelta(weeks=1)
    return schemas.WeeklyConversations(
        weeks=weeks, query=schemas.WeeklyQuery(weeks=len(weeks), days=days, project_id=args["projectId"])
    )


async def _projects(pool: AsyncConnectionPool, days: int) -> list[dict[str, Any]]:
    async with pool.connection() as conn:
        return await rollups.projects(conn, now_utc() - timedelta(days=days))


async def domains(pool: AsyncConnectionPool, args: Args) -> schemas.Domains:
    rows = await _projects(pool, 7)
    return schemas.Domains(domains=[schemas.DomainCount(domain=r["project_id"], request_count=r["n"]) for r in rows])


async def train_ids(pool: AsyncConnectionPool, args: Args) -> schemas.TrainIds:
    rows = await _projects(pool, 7)
    return schemas.TrainIds(
        train_ids=[
            schemas.TrainIdCount(project_id=r["project_id"], train_id=r["project_id"], request_count=r["n"])
            for r in rows
        ]
    )


async def projects(pool: AsyncConnectionPool, args: Args) -> schemas.Projects:
    rows = await _projects(pool, args["days"])
    return schemas.Projects(
        projects=[
            schemas.ProjectCount(project_id=r["project_id"], request_count=r["n"], last_request_at=r["last_at"])
            for r in rows
        ]
    )


async def accounts(pool: AsyncConnectionPool, args: Args) -> schemas.AccountUsageList:
    """Accounts seen in the last 5 hours; each one's `miniSeries` is what remained of the limit at every
    quarter hour of those 5 hours (the rolling 5-hour output sum at that point)."""
    now = now_utc()
    limit = schemas.TOKEN_LIMIT
    last_point = align_up(now, MINI_BUCKET)
    points = [last_point - i * MINI_BUCKET for i in range(FIVE_HOURS // MINI_BUCKET, -1, -1)]
    async with pool.connection() as conn:
        rows = await rollups.accounts(conn, now - FIVE_HOURS)
        ids = sorted({r["account_id"] for r in rows})
        buckets = await rollups.output_by_bucket(conn, points[0] - FIVE_HOURS, MINI_BUCKET, ids) if ids else []
    per_account: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        per_account[r["account_id"]].append(r)
    spent: dict[str, dict[datetime, int]] = defaultdict(dict)
    for b in buckets:
        spent[b["account_id"]][b["b"]] = int(b["n"])
    answer = []
    for account_id, parts in per_account.items():
        output = sum(int(p["output_tokens"]) for p in parts)
        shares = sorted(parts, key=lambda p: (-int(p["output_tokens"]), p["project_id"]))
        share = [
            schemas.ProjectShare(
                project_id=p["project_id"],
                domain=p["project_id"],
                output_tokens=int(p["output_tokens"]),
                requests=int(p["requests"]),
            )
            for p in shares
        ]
        mini = []
        for at in points:  # the buckets starting in [at - 5 h, at)
            used = sum(n for b, n in spent[account_id].items() if at - FIVE_HOURS <= b < at)
            mini.append(schemas.MiniPoint(time=iso(at), remaining=max(0, limit - used)))
        answer.append(
            schemas.AccountUsage(
                account_id=account_id,
                output_tokens=output,
                input_tokens=sum(int(p["input_tokens"]) for p in parts),
                request_count=sum(int(p["requests"]) for p in parts),
                last_request_time=max(p["last_at"] for p in parts),
                remaining_tokens=max(0, limit - output),
                percentage_used=output / limit * 100,
                projects=share,
                train_ids=share,
                domains=share,
                mini_series=mini,
            )
        )
    answer.sort(key=lambda a: (-a.output_tokens, a.account_id))
    return schemas.AccountUsageList(accounts=answer, token_limit=limit)


async def _hourly(pool: AsyncConnectionPool, args: Args, *, tokens: bool) -> schemas.Hourly:
    project = args["projectId"]
    async with pool.connection() as conn:
        rows = await rollups.hourly(conn, now_utc() - timedelta(days=args["days"]), project, tokens=tokens)
    data: dict[str, list[schemas.HourCount]] = defaultdict(list)
    for r in rows:
        data[r["project_id"]].append(schemas.HourCount(hour=r["hour"], count=int(r["n"])))
    query = schemas.HourlyQuery(project_id=project, train_id=project, domain=project, days=args["days"])
    return schemas.Hourly(data=dict(data), query=query)


async def requests_hourly(pool: AsyncConnectionPool, args: Args) -> schemas.Hourly:
    return await _hourly(pool, args, tokens=False)


async def tokens_hourly(pool: AsyncConnectionPool, args: Args) -> schemas.Hourly:
    return await _hourly(pool, args, tokens=True)


async def sliding(pool: AsyncConnectionPool, args: Args) -> schemas.SlidingWindow:
    bucket = timedelta(minutes=args["bucketMinutes"])
    window = timedelta(hours=args["windowHours"])
    last = align_up(now_utc(), bucket) - bucket  # the bucket now is in
    first = last - (timedelta(days=args["days"]) // bucket) * bucket
    async with pool.connection() as conn:
        rows = await rollups.sliding_window(conn, args["accountId"], first, last, bucket, window)
    return schemas.SlidingWindow(
        account_id=args["accountId"],
        params=schemas.SlidingParams(
            days=args["days"], bucket_minutes=args["bucketMinutes"], window_hours=args["windowHours"]
        ),
        data=[
            schemas.SlidingPoint(
                time_bucket=r["time_bucket"],
                sliding_window_tokens=int(r["tokens"]),
                rate_limit_warning_in_window=bool(r["warned"]),
            )
            for r in rows
        ],
    )
