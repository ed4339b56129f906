"""The typed shape of every `/api/*` answer: the handlers build these, `/openapi.json` is generated from them.

One set of types serves both readers so neither can drift from the code: Nexus's own fields keep their
snake_case names (`request_id`, `next_cursor`), and the reference system's fields sit beside them with
the camelCase names its clients read (`requestId`, `pagination.hasMore`). Objects only the reference
had are declared with `rename="camel"`; objects both read name the reference's fields in camelCase
directly (they are the wire names, so they are the attribute names). Big sums stay exact `int`s:
`nexus.api.routes.dump_json` writes every digit.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from uuid import UUID

import msgspec

#: The 5-hour output-token budget the reference compared usage with (hard-coded there too).
TOKEN_LIMIT = 140_000


class Struct(msgspec.Struct, kw_only=True, omit_defaults=False):
    """Base of every answer type: keyword construction, every field always written."""


class CamelStruct(Struct, rename="camel"):
    """An object only the reference had: snake_case attributes, camelCase on the wire."""


# --- shared pieces ----------------------------------------------------------------------------------


class Pagination(CamelStruct, kw_only=True, omit_defaults=True):
    """The reference's offset pagination (`limit`/`offset`), given beside Nexus's keyset cursor."""

    total: int
    limit: int
    offset: int
    has_more: bool
    #: Present (true) only when `total` stopped at `nexus.api.params.TOTAL_CAP` matches (or the page's
    #: end, when further): there may be more. Only a search or a status / duration filter over requests,
    #: and a search, model or error filter over conversations, is counted this way; every other total
    #: is exact, and then the reference's four fields are all there is (docs/api.md).
    total_capped: bool = False


class PagePagination(Pagination):
    page: int
    total_pages: int


# --- requests ---------------------------------------------------------------------------------------


class RequestSummary(Struct):
    """One stored request as listed; Nexus's columns, then the reference's summary fields."""

    request_id: UUID
    timestamp: datetime
    project_id: str
    account_id: str | None
    model: str | None
    request_type: str | None
    conversation_id: UUID | None
    branch_id: str | None
    parent_request_id: UUID | None
    is_subtask: bool
    parent_task_request_id: UUID | None
    response_status: int | None
    usage: Any
    duration_ms: int | None
    first_byte_ms: int | None
    method: str
    path: str
    input_tokens: int | None
    output_tokens: int | None
    cache_creation_input_tokens: int | None
    cache_read_input_tokens: int | None
    tool_call_count: int | None
    response_streaming: bool
    outcome: str | None
    error: str | None
    attempts: int | None
    cost_usd: float | None  # USD; None: the model has no price (docs/pricing.md)
    # the reference's names (OLD called the tenant `domain`)
    requestId: UUID
    projectId: str
    domain: str
    accountId: str | None
    inputTokens: int
    outputTokens: int
    totalTokens: int
    durationMs: int
    responseStatus: int
    requestType: str | None


class StreamingChunk(CamelStruct):
    """The reference's chunk record; never filled there either (the feature was removed)."""

    chunk_index: int
    timestamp: datetime
    data: str
    token_count: int


class RequestDetail(RequestSummary):
    """One stored request with its bodies rebuilt from the content store."""

    request_headers: Any
    response_headers: Any
    response_body: Any
    storage_repairs: list[str] | None
    request_body: Any
    conversationId: UUID | None
    branchId: str | None
    parentRequestId: UUID | None
    requestBody: Any
    responseBody: Any
    usageData: Any
    streamingChunks: list[StreamingChunk]


class RequestList(Struct):
    requests: list[RequestSummary]
    next_cursor: str | None
    pagination: Pagination


class SubtaskList(CamelStruct):
    """The sub-agent requests a request's reply launched (rows whose parent task is that request)."""

    request_id: UUID
    subtasks: list[RequestSummary]


# --- conversations ----------------------------------------------------------------------------------


class ConversationColumns(Struct):
    """A conversation's summary row (`conversations`, in CONVERSATION_COLUMNS order)."""

    conversation_id: UUID
    project_id: str
    first_at: datetime
    last_at: datetime
    request_count: int
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    latest_request_id: UUID | None
    title: str | None  # the first real user prompt, reminders stripped, cut to 120 characters


class ConversationSummary(ConversationColumns):
    """One conversation by latest activity; Nexus's summary, then the reference's fields."""

    branch_count: int
    subagent_count: int
    compaction_count: int
    models: list[str]
    cost_usd: float | None  # the priced requests' total; None: none was priced
    unpriced_requests: int
    conversationId: UUID
    projectId: str
    domain: str
    trainIds: list[str]
    accountIds: list[str]
    accountId: str | None
    firstMessageTime: datetime
    lastMessageTime: datetime
    messageCount: int
    totalTokens: int
    branchCount: int
    subtaskBranchCount: int
    compactBranchCount: int
    userBranchCount: int
    modelsUsed: list[str]
    latestRequestId: UUID | None
    latestModel: str | None
    latestContextTokens: int
    isSubtask: bool
    parentTaskRequestId: UUID | None
    parentConversationId: UUID | None
    subtaskMessageCount: int


class ConversationList(Struct):
    conversations: list[ConversationSummary]
    next_cursor: str | None
    pagination: PagePagination


class TreeRequest(Struct):
    request_id: UUID
    timestamp: datetime
    parent_request_id: UUID | None
    branch_id: str | None
    is_subtask: bool
    parent_task_request_id: UUID | None
    request_type: str | None
    model: str | None
    response_status: int | None
    input_tokens: int | None
    output_tokens: int | None
    cache_creation_input_tokens: int | None
    cache_read_input_tokens: int | None
    duration_ms: int | None
    message_count: int | None
    tool_call_count: int | None
    session_id: str | None
    agent_id: str | None
    cost_usd: float | None


class Branch(Struct):
    branch_id: str
    first_request_id: UUID
    last_request_id: UUID
    request_count: int
    parent_request_id: UUID | None
    is_subtask: bool


class Edge(Struct, rename={"from_": "from"}):
    from_: UUID
    to: UUID
    kind: str


class ConversationTree(ConversationColumns):
    """One conversation: its requests in time order, its branches and the edges between requests."""

    requests: list[TreeRequest]
    branches: list[Branch]
    edges: list[Edge]


# --- token usage ------------------------------------------------------------------------------------


class UsageSums(CamelStruct):
    total_input_tokens: int
    total_output_tokens: int
    total_tokens: int
    total_requests: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    cache_creation5m_input_tokens: int = msgspec.field(name="cacheCreation5mInputTokens")
    cache_creation1h_input_tokens: int = msgspec.field(name="cacheCreation1hInputTokens")
    cost_usd: float | None  # the priced requests' total (a lower bound with unpriced ones); None: none priced
    unpriced_requests: int


class CurrentUsage(UsageSums):
    account_id: str
    project_id: str
    model: str
    window_minutes: int
    window_start: str
    window_end: str


class DailyUsage(UsageSums):
    date: date
    account_id: str | None
    project_id: str
    #: Absent when the days are summed over models (`aggregate=true`).
    model: str | msgspec.UnsetType | None = msgspec.UNSET


class DailyUsageList(CamelStruct):
    usage: list[DailyUsage]
    days: int
    aggregate: bool


class UsagePoint(UsageSums):
    time: str


class SeriesPoint(CamelStruct):
    """The reference's point: output tokens in the window ending at `time`, against `tokenLimit`."""

    time: str
    output_tokens: int
    cumulative_usage: int
    remaining: int
    percentage_used: float


class TimeSeries(CamelStruct):
    account_id: str
    project_id: str
    model: str
    window_hours: int
    interval_minutes: int
    token_limit: int
    points: list[UsagePoint]
    time_series: list[SeriesPoint]


class ProjectShare(CamelStruct):
    project_id: str
    domain: str
    output_tokens: int
    requests: int


class MiniPoint(CamelStruct):
    time: str
    remaining: int


class AccountUsage(CamelStruct):
    account_id: str
    output_tokens: int
    input_tokens: int
    request_count: int
    last_request_time: datetime
    remaining_tokens: int
    percentage_used: float
    projects: list[ProjectShare]
    train_ids: list[ProjectShare]
    domains: list[ProjectShare]
    mini_series: list[MiniPoint]


class AccountUsageList(CamelStruct):
    accounts: list[AccountUsage]
    token_limit: int


class SlidingParams(CamelStruct):
    days: int
    bucket_minutes: int
    window_hours: int


class SlidingPoint(Struct):
    """Named as the reference's rows were (snake_case columns straight from its SQL)."""

    time_bucket: datetime
    sliding_window_tokens: int
    rate_limit_warning_in_window: bool


class SlidingWindow(CamelStruct):
    account_id: str
    params: SlidingParams
    data: list[SlidingPoint]


class UsageWindow(Struct):
    """One utilisation window, named as the reference's `/api/oauth-usage` answer named it."""

    name: str
    short_name: str
    utilization: float
    resets_at: str | None
    resets_at_iso: str | None


class OAuthUsageData(Struct):
    account_id: str
    provider: str
    available: bool
    windows: list[UsageWindow]
    fetched_at: str | None
    is_estimated: bool
    extra_usage: Any
    #: Where the numbers come from: `reply_headers` (the latest stored reply's rate-limit headers).
    source: str


class OAuthUsage(Struct):
    success: bool
    data: OAuthUsageData


# --- statistics -------------------------------------------------------------------------------------


class Stats(CamelStruct):
    total_requests: int
    total_tokens: int
    total_input_tokens: int
    total_output_tokens: int
    total_cache_creation_tokens: int
    total_cache_read_tokens: int
    average_response_time: float
    error_count: int
    active_trains: int
    active_domains: int
    active_projects: int
    requests_by_model: dict[str, int]
    #: by the reference's request types (`inference`, `query_evaluation`: nexus/compat/request_types.py)
    requests_by_type: dict[str, int]
    #: by Nexus's own request types (`main`, `subagent`, `compaction`, `auxiliary`, ...)
    request_types: dict[str, int]


class StorageStats(Stats):
    """`/api/stats`'s sums plus what storage holds for the same filter."""

    first_request_at: datetime | None
    last_request_at: datetime | None
    conversation_count: int


class Last24Hours(CamelStruct):
    requests: int
    conversations: int
    active_users: int


class HourActivity(CamelStruct):
    hour: datetime
    request_count: int
    token_count: int


class DashboardStats(CamelStruct):
    total_conversations: int
    active_users: int
    total_requests: int
    total_tokens: int
    total_branches: int
    subtask_branches: int
    compact_branches: int
    models_used: list[str]
    models_used_count: int
    last24_hours: Last24Hours = msgspec.field(name="last24Hours")
    hourly_activity: list[HourActivity]


class WeekCount(CamelStruct):
    week_start: date
    conversation_count: int


class WeeklyQuery(CamelStruct):
    weeks: int
    days: int | None
    project_id: str | None


class WeeklyConversations(CamelStruct):
    weeks: list[WeekCount]
    query: WeeklyQuery


class HourCount(CamelStruct):
    hour: datetime
    count: int


class HourlyQuery(CamelStruct):
    project_id: str | None
    train_id: str | None
    domain: str | None
    days: int


class Hourly(CamelStruct):
    data: dict[str, list[HourCount]]
    query: HourlyQuery


# --- tenants ----------------------------------------------------------------------------------------


class DomainCount(CamelStruct):
    domain: str
    request_count: int


class Domains(CamelStruct):
    domains: list[DomainCount]


class TrainIdCount(CamelStruct):
    project_id: str
    train_id: str
    request_count: int


class TrainIds(CamelStruct):
    train_ids: list[TrainIdCount]


class ProjectCount(CamelStruct):
    project_id: str
    request_count: int
    last_request_at: datetime


class Projects(CamelStruct):
    projects: list[ProjectCount]


# --- token-stats (in memory, per worker) -------------------------------------------------------------


class TokenStats(CamelStruct):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    request_count: int
    error_count: int
    query_evaluation_count: int
    inference_count: int
    tool_call_count: int
    last_updated: str


class ErrorDetail(Struct):
    type: str
    message: str


class Error(Struct):
    """Anthropic's error envelope: every refusal of `/api/*` has this shape."""

    type: str
    error: ErrorDetail
    request_id: str | None
