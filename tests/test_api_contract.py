"""The API contract on a real proxy and a real PostgreSQL holding stored rows.

Every path of the reference system's data API answers with its field names and honours its parameters
(`domain`/`projectId`, `accountId`, `limit`/`offset`, dates); Nexus's keyset cursors keep working beside
them; a parameter an operation does not know is a 400. `/openapi.json` describes all of it, and
schemathesis checks every operation against it (answers, statuses, refusals of invalid input).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import anthropic
import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from nexus.api.openapi import document
from tests.api_rows import Seeded, seed
from tests.conftest import with_database
from tests.harness.servers import run_proxy
from tests.helpers import FAST
from tests.security.wire import call, is_anthropic_error

KEY = "contract-test-dashboard-key"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def contract_db(database_admin_url: str, migrated_template: str) -> Iterator[tuple[str, Seeded]]:
    """One migrated database for the module, seeded once."""
    name = f"nexus_contract_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template}"')
    dsn = with_database(database_admin_url, name)
    try:
        yield dsn, seed(dsn)
    finally:
        with psycopg.connect(database_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def contract_proxy(
    upstream_url: str, contract_db: tuple[str, Seeded], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    credentials = tmp_path_factory.mktemp("credentials")
    (credentials / "accounts").mkdir(mode=0o700)
    account_file = credentials / "accounts" / "acc_files.credentials.json"
    account_file.write_text('{"type": "oauth", "accountId": "acc_files", "oauth": {"accessToken": "sk-ant-oat01-x", '
                            '"refreshToken": "sk-ant-ort01-x", "expiresAt": 4102444800000}}')  # fmt: skip
    account_file.chmod(0o600)
    env = {
        "CLAUDE_API_BASE_URL": upstream_url,
        "DATABASE_URL": contract_db[0],
        "CREDENTIALS_DIR": str(credentials),
        "NEXUS_HOME": str(tmp_path_factory.mktemp("contract")),
        "DASHBOARD_API_KEY": KEY,
        # schemathesis tries wrong keys on every operation: no 429 for this client meanwhile
        "AUTH_FAILURE_LIMIT": "100000",
        **FAST,
    }
    with run_proxy(env) as url:
        yield url


@pytest.fixture(scope="module")
def seeded(contract_db: tuple[str, Seeded]) -> Seeded:
    return contract_db[1]


def get(url: str, path: str, headers: dict[str, str] | None = None) -> Any:
    status, _, body = call(url, path, headers=headers or {"X-Dashboard-Key": KEY})
    assert status == 200, (path, status, body)
    return body


def has(obj: dict[str, Any], *names: str) -> None:
    missing = [n for n in names if n not in obj]
    assert not missing, (missing, sorted(obj))


# --- every reference path, its parameters, its field names --------------------------------------------

REQUEST_SUMMARY = ("requestId", "projectId", "accountId", "model", "timestamp", "inputTokens", "outputTokens",
                   "totalTokens", "durationMs", "responseStatus", "error", "requestType")  # fmt: skip
CONVERSATION = ("conversationId", "trainIds", "accountIds", "projectId", "accountId", "firstMessageTime",
                "lastMessageTime", "messageCount", "totalTokens", "branchCount", "subtaskBranchCount",
                "compactBranchCount", "userBranchCount", "modelsUsed", "latestRequestId", "latestModel",
                "latestContextTokens", "isSubtask", "parentTaskRequestId", "parentConversationId",
                "subtaskMessageCount")  # fmt: skip
USAGE_SUMS = ("totalInputTokens", "totalOutputTokens", "totalTokens", "totalRequests")


def test_requests_and_details_with_reference_names_and_pagination(contract_proxy: str, seeded: Seeded) -> None:
    page = get(contract_proxy, "/api/requests?projectId=alpha&limit=4&offset=0")
    assert page["pagination"] == {"total": 6, "limit": 4, "offset": 0, "hasMore": True}
    assert len(page["requests"]) == 4
    for row in page["requests"]:
        has(row, *REQUEST_SUMMARY, "request_id", "project_id")  # Nexus's own names stay
        assert row["projectId"] == row["project_id"] == "alpha" and row["requestId"] == row["request_id"]
    second = get(contract_proxy, "/api/requests?projectId=alpha&limit=4&offset=4")
    assert second["pagination"]["hasMore"] is False
    assert [r["requestId"] for r in second["requests"]] == [seeded.ids["r2"], seeded.ids["r1"]]
    # the keyset cursor still pages the same listing
    by_cursor = get(contract_proxy, f"/api/requests?project_id=alpha&limit=4&before={page['next_cursor']}")
    assert [r["request_id"] for r in by_cursor["requests"]] == [seeded.ids["r2"], seeded.ids["r1"]]
    # the reference's first version said domain
    assert {r["domain"] for r in get(contract_proxy, "/api/requests?domain=beta")["requests"]} == {"beta"}

    detail = get(contract_proxy, f"/api/requests/{seeded.ids['r6']}")
    has(detail, *REQUEST_SUMMARY, "conversationId", "branchId", "parentRequestId", "requestBody", "responseBody",
        "usageData", "streamingChunks", "request_id", "usage", "request_body")  # fmt: skip
    assert detail["branchId"] == "compact_203000" and detail["parentRequestId"] == seeded.ids["r5"]
    assert detail["usageData"]["cache_read_input_tokens"] == 13 and detail["streamingChunks"] == []
    assert detail["totalTokens"] == 12

    subtasks = get(contract_proxy, f"/api/requests/{seeded.ids['r2']}/subtasks")
    assert [r["requestId"] for r in subtasks["subtasks"]] == [seeded.ids["r4"]]


def test_conversations_filter_by_every_reference_parameter(contract_proxy: str, seeded: Seeded) -> None:
    everything = get(contract_proxy, "/api/conversations")
    assert everything["pagination"] == {"total": 3, "limit": 50, "offset": 0, "hasMore": False, "page": 1,
                                        "totalPages": 1}  # fmt: skip
    # the reported bug: ?domain= was ignored and every conversation came back
    only_beta = get(contract_proxy, "/api/conversations?domain=beta")["conversations"]
    assert [c["conversationId"] for c in only_beta] == [seeded.conversations["beta"], seeded.conversations["orphan"]]
    assert only_beta[1]["isSubtask"] is True and only_beta[1]["parentTaskRequestId"] is None
    main_only = get(contract_proxy, "/api/conversations?domain=beta&excludeSubtasks=true")
    assert [c["conversationId"] for c in main_only["conversations"]] == [seeded.conversations["beta"]]
    assert main_only["pagination"]["total"] == 1
    assert get(contract_proxy, "/api/conversations?projectId=alpha")["pagination"]["total"] == 1
    assert get(contract_proxy, "/api/conversations?domain=nobody")["conversations"] == []
    by_account = get(contract_proxy, "/api/conversations?accountId=acc_a")["conversations"]
    assert [c["conversationId"] for c in by_account] == [seeded.conversations["alpha"]]
    recent = (seeded.now.replace(tzinfo=None)).isoformat()
    assert get(contract_proxy, f"/api/conversations?dateFrom={recent}Z")["conversations"] == []
    assert get(contract_proxy, "/api/conversations?dateTo=2000-01-01T00:00:00Z")["conversations"] == []
    paged = get(contract_proxy, "/api/conversations?limit=1&offset=2")
    assert paged["pagination"] == {"total": 3, "limit": 1, "offset": 2, "hasMore": False, "page": 3, "totalPages": 3}
    assert [c["conversationId"] for c in paged["conversations"]] == [seeded.conversations["alpha"]]

    alpha = get(contract_proxy, "/api/conversations?projectId=alpha")["conversations"][0]
    has(alpha, *CONVERSATION, "conversation_id", "branch_count")
    assert alpha["trainIds"] == ["alpha"] and alpha["accountIds"] == ["acc_a"] and alpha["accountId"] == "acc_a"
    assert alpha["messageCount"] == 6 and alpha["totalTokens"] == 5 * 120 + 12
    # main, branch_, subtask_1, compact_: four branches, one of each kind besides main
    assert (alpha["branchCount"], alpha["subtaskBranchCount"], alpha["compactBranchCount"]) == (4, 1, 1)
    assert alpha["userBranchCount"] == 1 and alpha["isSubtask"] is True and alpha["subtaskMessageCount"] == 1
    assert alpha["parentTaskRequestId"] == seeded.ids["r2"]
    assert alpha["parentConversationId"] == seeded.conversations["alpha"]
    assert alpha["latestRequestId"] == seeded.ids["r6"] and alpha["latestContextTokens"] == 5 + 11 + 13
    assert alpha["modelsUsed"] == ["claude-opus-4-6", "claude-sonnet-4-6"]

    tree = get(contract_proxy, f"/api/conversations/{seeded.conversations['alpha']}")
    assert {b["branch_id"] for b in tree["branches"]} == {"main", "branch_20260101", "subtask_1", "compact_203000"}
    assert {e["kind"] for e in tree["edges"]} == {"continuation", "subagent", "compaction"}


def test_token_usage_current_daily_series_and_accounts(contract_proxy: str, seeded: Seeded) -> None:
    current = get(contract_proxy, "/api/token-usage/current?accountId=acc_a&window=300")
    has(current, "accountId", "projectId", "model", "windowStart", "windowEnd", *USAGE_SUMS,
        "cacheCreationInputTokens", "cacheReadInputTokens")  # fmt: skip
    assert current["totalRequests"] == 6 and current["totalOutputTokens"] == 5 * 20 + 7

    daily = get(contract_proxy, "/api/token-usage/daily?accountId=acc_b&days=2")["usage"]
    assert daily and all(d["projectId"] == "beta" for d in daily)
    has(daily[0], "date", "accountId", "projectId", "model", *USAGE_SUMS)
    aggregated = get(contract_proxy, "/api/token-usage/daily?accountId=acc_b&days=2&aggregate=true")["usage"]
    assert sum(d["totalRequests"] for d in aggregated) == 3

    series = get(contract_proxy, "/api/token-usage/time-series?accountId=acc_a&window=5&interval=5")
    has(series, "accountId", "windowHours", "intervalMinutes", "tokenLimit", "timeSeries")
    last = series["timeSeries"][-1]
    has(last, "time", "outputTokens", "cumulativeUsage", "remaining", "percentageUsed")
    assert last["outputTokens"] == 107 and last["remaining"] == 140_000 - 107

    accounts = get(contract_proxy, "/api/token-usage/accounts")
    assert accounts["tokenLimit"] == 140_000
    by_id = {a["accountId"]: a for a in accounts["accounts"]}
    assert set(by_id) == {"acc_a", "acc_b"}
    a = by_id["acc_a"]
    has(a, "outputTokens", "inputTokens", "requestCount", "lastRequestTime", "remainingTokens", "percentageUsed",
        "trainIds", "domains", "miniSeries")  # fmt: skip
    assert a["outputTokens"] == 107 and a["remainingTokens"] == 140_000 - 107 and a["requestCount"] == 6
    assert a["trainIds"] == [{"projectId": "alpha", "domain": "alpha", "outputTokens": 107, "requests": 6}]
    assert len(a["miniSeries"]) == 21 and a["miniSeries"][-1]["remaining"] == 140_000 - 107


def test_statistics_tenants_hourly_and_sliding_window(contract_proxy: str, seeded: Seeded) -> None:
    stats = get(contract_proxy, "/api/stats")
    has(stats, "totalRequests", "totalTokens", "totalInputTokens", "totalOutputTokens", "totalCacheCreationTokens",
        "totalCacheReadTokens", "averageResponseTime", "errorCount", "activeTrains", "activeDomains",
        "requestsByModel", "requestsByType")  # fmt: skip
    assert stats["totalRequests"] == 9 and stats["errorCount"] == 1 and stats["activeTrains"] == 2
    assert stats["requestsByModel"] == {"claude-sonnet-4-6": 8, "claude-opus-4-6": 1}
    assert get(contract_proxy, "/api/stats?domain=beta")["totalRequests"] == 3
    assert get(contract_proxy, "/api/stats?since=2000-01-01T00:00:00Z")["totalRequests"] == 10
    storage = get(contract_proxy, "/api/storage-stats")
    assert storage["totalRequests"] == 10 and storage["conversationCount"] == 3

    dash = get(contract_proxy, "/api/dashboard/stats?projectId=alpha&statsDays=7")
    has(dash, "totalConversations", "activeUsers", "totalRequests", "totalTokens", "totalBranches",
        "subtaskBranches", "compactBranches", "modelsUsed", "modelsUsedCount", "last24Hours",
        "hourlyActivity")  # fmt: skip
    assert (dash["totalConversations"], dash["totalBranches"], dash["subtaskBranches"]) == (1, 4, 1)
    has(dash["last24Hours"], "requests", "conversations", "activeUsers")
    has(dash["hourlyActivity"][0], "hour", "requestCount", "tokenCount")

    weekly = get(contract_proxy, "/api/analytics/conversations/weekly?weeks=4")
    assert len(weekly["weeks"]) == 4 and sum(w["conversationCount"] for w in weekly["weeks"]) == 3
    has(weekly["weeks"][0], "weekStart", "conversationCount")

    assert get(contract_proxy, "/api/domains")["domains"][0] == {"domain": "alpha", "requestCount": 6}
    train_ids = get(contract_proxy, "/api/train-ids")["trainIds"]
    assert [t["projectId"] for t in train_ids] == ["alpha", "beta", "gamma"] and train_ids[1]["requestCount"] == 3
    assert [p["projectId"] for p in get(contract_proxy, "/api/projects?days=1")["projects"]] == ["alpha", "beta"]

    hourly = get(contract_proxy, "/api/usage/requests/hourly?days=7")
    assert sum(h["count"] for h in hourly["data"]["alpha"]) == 6 and set(hourly["data"]) == {"alpha", "beta", "gamma"}
    assert hourly["query"]["days"] == 7
    tokens = get(contract_proxy, "/api/usage/tokens/hourly?projectId=alpha")
    assert set(tokens["data"]) == {"alpha"} and sum(h["count"] for h in tokens["data"]["alpha"]) == 107

    sliding = get(contract_proxy, "/api/analytics/token-usage/sliding-window?accountId=acc_a&days=1&bucketMinutes=10")
    has(sliding, "accountId", "params", "data")
    last = sliding["data"][-1]
    has(last, "time_bucket", "sliding_window_tokens", "rate_limit_warning_in_window")
    assert last["sliding_window_tokens"] == 107 and last["rate_limit_warning_in_window"] is True
    assert sliding["data"][0]["sliding_window_tokens"] == 0


def test_oauth_usage_from_the_latest_stored_reply(contract_proxy: str, seeded: Seeded) -> None:
    usage = get(contract_proxy, "/api/oauth-usage/acc_a?force=true")
    assert usage["success"] is True
    data = usage["data"]
    has(data, "account_id", "provider", "available", "windows", "fetched_at", "is_estimated", "extra_usage")
    assert data["available"] is True and data["account_id"] == "acc_a"
    # the latest reply (r6, 20 minutes ago) said 50 % of the 5-hour window, resetting an hour after it
    five, seven = data["windows"]
    assert (five["name"], five["short_name"], five["utilization"]) == ("five_hour", "5h", 50.0)
    assert five["resets_at"] in ("in 40 min", "in 39 min", "in 38 min")  # 40 minutes from when it was seeded
    assert five["resets_at_iso"] == (seeded.now - timedelta(minutes=20) + timedelta(hours=1)).isoformat()
    assert (seven["name"], seven["utilization"], seven["resets_at"]) == ("seven_day", 12.5, None)  # reset unreadable
    # an API-key account has no unified headers, an account of the credential files no stored reply yet;
    # an account neither stored nor in a file is a 404
    assert get(contract_proxy, "/api/oauth-usage/acc_b")["data"]["available"] is False
    files = get(contract_proxy, "/api/oauth-usage/acc_files")["data"]
    assert (files["available"], files["windows"], files["fetched_at"]) == (False, [], None)
    status, _, body = call(contract_proxy, "/api/oauth-usage/acc_nobody", headers=AUTH)
    assert status == 404 and is_anthropic_error(body, "not_found_error")


def test_token_stats_fields_and_its_project_parameter(contract_proxy: str) -> None:
    """A conversation turn counts as inference, Claude Code's quota probe as a query evaluation (the
    reference's split), under the project the reference's first version called a domain."""
    client = anthropic.Anthropic(base_url=contract_proxy, api_key="sk-ant-api03-test", max_retries=0)
    for text in ("hello", "quota"):
        client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=20,
            messages=[{"role": "user", "content": text}],
            extra_headers={"train-id": "token-stats-project"},
        )
    one = get(contract_proxy, "/token-stats?domain=token-stats-project")
    has(one, "inputTokens", "outputTokens", "requestCount", "queryEvaluationCount", "inferenceCount",
        "toolCallCount", "lastUpdated")  # fmt: skip
    assert (one["requestCount"], one["inferenceCount"], one["queryEvaluationCount"]) == (2, 1, 1)
    assert one["outputTokens"] > 0
    assert get(contract_proxy, "/token-stats")["token-stats-project"] == one
    assert get(contract_proxy, "/token-stats?domain=never-served") is None
    status, _, body = call(contract_proxy, "/token-stats?projectid=x", headers=AUTH)
    assert status == 400 and is_anthropic_error(body)


def test_unknown_repeated_and_conflicting_parameters_are_refused(contract_proxy: str) -> None:
    for path, says in (
        ("/api/conversations?domian=beta", "Unknown query parameter 'domian'"),
        ("/api/requests?projectId=a&domain=b", "name the same parameter with different values"),
        ("/api/requests?limit=1&limit=2", "limit was given more than once"),
        ("/api/conversations?dateFrom=yesterday", "dateFrom must be an ISO 8601 date-time"),
        ("/api/analytics/token-usage/sliding-window", "accountId is required"),
        ("/api/usage/requests/hourly?days=31", "days must be between 1 and 30"),
    ):
        status, _, body = call(contract_proxy, path, headers=AUTH)
        assert status == 400 and is_anthropic_error(body), (path, body)
        assert says in body["error"]["message"], (path, body)
    # the same value under two spellings is one parameter
    assert get(contract_proxy, "/api/requests?projectId=beta&domain=beta")["pagination"]["total"] == 3


def test_the_data_api_rules_apply_to_every_new_path(contract_proxy: str) -> None:
    for path in ("/api/stats", "/api/domains", "/api/token-usage/accounts", "/token-stats"):
        assert call(contract_proxy, path)[0] == 401
        assert call(contract_proxy, path, headers={"X-API-Key": "wrong"})[0] == 401  # Nexus's rule: 401
        assert call(contract_proxy, path, headers={"Authorization": f"Bearer {KEY}"})[0] == 200
    # the contract itself holds no stored data
    status, _, doc = call(contract_proxy, "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")


# --- the OpenAPI document, checked operation by operation ---------------------------------------------


@pytest.fixture(scope="module")
def api_schema(contract_proxy: str) -> Any:
    """The document as the proxy serves it, loaded by schemathesis."""
    return schemathesis.openapi.from_url(f"{contract_proxy}/openapi.json")


#: Cases per operation and mode: 21 operations x 2 modes x 8 cases take about 20 seconds; a deeper run:
#: `NEXUS_CONTRACT_EXAMPLES=200 pytest tests/test_api_contract.py -k every_operation`.
EXAMPLES = int(os.environ.get("NEXUS_CONTRACT_EXAMPLES", "8"))
#: Every operation with valid input, and with invalid input where it has parameters to get wrong.
CASES = [
    (path, mode)
    for path, item in sorted(document()["paths"].items())
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode == GenerationMode.POSITIVE or item["get"]["parameters"]
]
#: Refusals of valid-looking input that the document states in words (a rule across two parameters).
CROSS_PARAMETER_RULES = {
    "/api/token-usage/time-series": ("whole number of intervals", "at most 2000 points"),
}


@pytest.mark.parametrize(("path", "mode"), CASES)
def test_every_operation_matches_the_document(
    api_schema: Any, contract_proxy: str, seeded: Seeded, path: str, mode: GenerationMode
) -> None:
    """Valid input (positive) gets a 2xx or a documented 4xx whose body matches its schema; invalid input
    (negative: wrong types, out of range, unknown shapes) is refused with a 4xx, never a 500. Path ids
    are drawn from the stored rows as well as at random, so the 200 bodies are checked too."""
    operation = api_schema[path]["GET"]
    known = {
        "requestId": [seeded.ids["r2"], seeded.ids["r6"]],
        "conversationId": list(seeded.conversations.values()),
        "accountId": ["acc_a", "acc_b"],
    }
    strategies = [operation.as_strategy(generation_mode=mode)]
    for name, values in known.items():
        if "{" + name + "}" in path and mode == GenerationMode.POSITIVE:
            strategies += [operation.as_strategy(path_parameters={name: v}) for v in values]

    @given(case=st.one_of(strategies))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        rules = CROSS_PARAMETER_RULES.get(path)
        if not rules:
            case.call_and_validate(base_url=contract_proxy, headers=AUTH)
            return
        response = case.call_and_validate(
            base_url=contract_proxy, headers=AUTH, excluded_checks=[positive_data_acceptance]
        )
        if response.status_code == 400 and mode == GenerationMode.POSITIVE:
            message = response.json()["error"]["message"]
            assert any(rule in message for rule in rules), message
            assert all(rule in operation.definition.raw["description"] for rule in rules)

    check()


def test_the_document_covers_every_route(contract_proxy: str) -> None:
    doc = get(contract_proxy, "/openapi.json")
    paths = set(doc["paths"])
    reference = {
        "/api/stats", "/api/dashboard/stats", "/api/analytics/conversations/weekly", "/api/requests",
        "/api/requests/{requestId}", "/api/train-ids", "/api/domains", "/api/conversations",
        "/api/token-usage/current", "/api/token-usage/daily", "/api/token-usage/time-series",
        "/api/token-usage/accounts", "/api/usage/requests/hourly", "/api/usage/tokens/hourly",
        "/api/analytics/token-usage/sliding-window", "/api/storage-stats", "/token-stats",
        "/api/oauth-usage/{accountId}",
    }  # fmt: skip
    assert reference <= paths
    params = {p["name"]: p for p in doc["paths"]["/api/conversations"]["get"]["parameters"]}
    assert {"projectId", "accountId", "limit", "offset", "dateFrom", "dateTo", "before"} <= set(params)
    assert "domain" in params["projectId"]["x-aliases"]
    share = doc["components"]["schemas"]["ConversationSummary"]["properties"]
    assert {"conversationId", "conversation_id", "branchCount", "branch_count"} <= set(share)


def test_the_document_is_served_as_generated(contract_proxy: str) -> None:
    assert get(contract_proxy, "/openapi.json") == document()


def test_request_types_in_the_reference_vocabulary(contract_proxy: str, seeded: Seeded) -> None:
    """The reference stored `inference` rows (and classified housekeeping calls `query_evaluation`):
    its scripts read `requestType == "inference"` and `requestsByType.inference`. Nexus's finer
    classification stays under its own names (`request_type`, `requestTypes`)."""
    rows = {
        r["requestId"]: r
        for project in ("alpha", "gamma")
        for r in get(contract_proxy, f"/api/requests?projectId={project}&limit=500")["requests"]
    }
    for name, nexus_type in (("r1", "main"), ("r4", "subagent"), ("r5", "compaction"), ("g1", "auxiliary")):
        row = rows[seeded.ids[name]]
        assert row["request_type"] == nexus_type
        assert row["requestType"] == ("query_evaluation" if nexus_type == "auxiliary" else "inference"), row
    assert get(contract_proxy, f"/api/requests/{seeded.ids['r4']}")["requestType"] == "inference"
    # other tests of this module store requests too: the seeded rows are a floor, the mapping exact
    for path in ("/api/stats?since=2000-01-01T00:00:00Z", "/api/storage-stats"):
        stats = get(contract_proxy, path)
        nexus_types, by_type = stats["requestTypes"], stats["requestsByType"]
        assert all(nexus_types.get(t, 0) >= n for t, n in {"main": 6, "subagent": 2, "compaction": 1}.items())
        assert by_type["inference"] == sum(nexus_types.get(t, 0) for t in ("main", "subagent", "compaction"))
        assert by_type["query_evaluation"] == nexus_types["auxiliary"] >= 1
        assert sum(by_type.values()) == sum(nexus_types.values()) == stats["totalRequests"]
