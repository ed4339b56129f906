"""`/api/token-usage/*` and `/token-stats` on a real proxy process, with traffic through the fake upstream."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import orjson
import pytest

from tests.harness.control import FakeControl
from tests.harness.servers import run_proxy

FAST = {"STORAGE_BATCH_INTERVAL_MS": "20", "STORAGE_BATCH_SIZE": "50"}


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
    req = urllib.request.Request(url, headers=headers or {})  # noqa: S310 (loopback)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return resp.status, orjson.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read()), dict(exc.headers)


@pytest.fixture
def usage_proxy(upstream_url: str, migrated_db: str, tmp_path: Path) -> Iterator[str]:
    env = {"CLAUDE_API_BASE_URL": upstream_url, "DATABASE_URL": migrated_db, "NEXUS_HOME": str(tmp_path), **FAST}
    with run_proxy(env) as url:
        yield url


def _send(proxy: str, project: str, *, stream: bool, cached: bool = False) -> Any:
    client = anthropic.Anthropic(base_url=proxy, api_key="sk-ant-api03-test", max_retries=0)
    content: Any = "hello"
    if cached:
        content = [{"type": "text", "text": "a long prefix", "cache_control": {"type": "ephemeral"}}]
    kwargs: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": content}],
        "extra_headers": {"train-id": project},
    }
    if stream:
        with client.messages.stream(**kwargs) as s:
            return s.get_final_message().usage
    return client.messages.create(**kwargs).usage


def _sonnet_cost(u: Any) -> float:
    split = u.cache_creation
    w1 = (split.ephemeral_1h_input_tokens or 0) if split else 0
    w5 = (u.cache_creation_input_tokens or 0) - w1
    return (
        u.input_tokens * 3 + u.output_tokens * 15 + (u.cache_read_input_tokens or 0) * 0.3 + w5 * 3.75 + w1 * 6
    ) / 1e6


def _wait_rows(proxy: str, project: str, n: int) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        status, body, _ = get(f"{proxy}/api/token-usage/current?projectId={project}")
        assert status == 200, body
        if body["totalRequests"] >= n or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def test_current_and_daily_usage_sum_what_went_through(usage_proxy: str, fake: FakeControl) -> None:
    usages = [
        _send(usage_proxy, "team-a", stream=False),
        _send(usage_proxy, "team-a", stream=True, cached=True),
        _send(usage_proxy, "team-a", stream=False, cached=True),
    ]
    _send(usage_proxy, "team-b", stream=True)
    current = _wait_rows(usage_proxy, "team-a", 3)
    assert current["totalRequests"] == 3
    assert current["projectId"] == "team-a" and current["accountId"] == "all" and current["model"] == "all"
    assert current["totalInputTokens"] == sum(u.input_tokens for u in usages)
    assert current["totalOutputTokens"] == sum(u.output_tokens for u in usages)
    assert current["totalTokens"] == current["totalInputTokens"] + current["totalOutputTokens"]
    cache_read = sum(u.cache_read_input_tokens or 0 for u in usages)
    assert cache_read > 0 and current["cacheReadInputTokens"] == cache_read
    assert current["windowMinutes"] == 300
    # each row was priced by the writer as it was stored (Sonnet 4.6: 3 / 15 / 0.30 / 3.75 / 6 USD per MTok)
    assert current["unpricedRequests"] == 0
    assert current["costUsd"] == pytest.approx(sum(_sonnet_cost(u) for u in usages), abs=1e-6)
    assert current["costUsd"] > 0

    _, snake, _ = get(f"{usage_proxy}/api/token-usage/current?project_id=team-a&window=10")
    assert snake["totalRequests"] == 3 and snake["windowMinutes"] == 10
    _, other_model, _ = get(f"{usage_proxy}/api/token-usage/current?projectId=team-a&model=claude-haiku-4-5")
    assert other_model["totalRequests"] == 0
    _wait_rows(usage_proxy, "team-b", 1)
    _, everything, _ = get(f"{usage_proxy}/api/token-usage/current")
    assert everything["totalRequests"] == 4

    status, daily, _ = get(f"{usage_proxy}/api/token-usage/daily?projectId=team-a&days=2")
    assert status == 200
    assert [(d["projectId"], d["model"], d["totalRequests"]) for d in daily["usage"]] == [
        ("team-a", "claude-sonnet-4-6", 3)
    ]
    assert daily["usage"][0]["totalInputTokens"] == current["totalInputTokens"]
    _, agg, _ = get(f"{usage_proxy}/api/token-usage/daily?aggregate=true")
    assert {d["projectId"] for d in agg["usage"]} == {"team-a", "team-b"} and "model" not in agg["usage"][0]

    status, series, _ = get(f"{usage_proxy}/api/token-usage/time-series?projectId=team-a&hours=1&interval=15")
    assert status == 200 and len(series["points"]) == 5
    assert series["points"][-1]["totalRequests"] == 3  # the last point's 5-hour window holds every request

    status, stats, headers = get(f"{usage_proxy}/token-stats")
    assert status == 200 and headers["x-nexus-worker-pid"].isdigit()
    assert stats["team-a"]["requestCount"] == 3 and stats["team-b"]["requestCount"] == 1
    assert stats["team-a"]["inputTokens"] == current["totalInputTokens"]
    assert stats["team-a"]["outputTokens"] == current["totalOutputTokens"]
    assert stats["team-a"]["cacheReadInputTokens"] == cache_read
    _, one, _ = get(f"{usage_proxy}/token-stats?projectId=team-b")
    assert one["requestCount"] == 1 and one["errorCount"] == 0
    _, none, _ = get(f"{usage_proxy}/token-stats?projectId=nobody")
    assert none is None


def test_token_stats_count_errors_and_tool_calls(usage_proxy: str, fake: FakeControl) -> None:
    client = anthropic.Anthropic(base_url=usage_proxy, api_key="sk-ant-api03-test", max_retries=0)
    with pytest.raises(anthropic.APIStatusError):
        client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=50,
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"train-id": "errs", "x-fake-scenario": "error:400"},
        )
    _, stats, _ = get(f"{usage_proxy}/token-stats?projectId=errs")
    assert stats["requestCount"] == 1 and stats["errorCount"] == 1 and stats["inputTokens"] == 0
    tools = [{"name": "get_weather", "description": "w", "input_schema": {"type": "object"}}]
    ask = [{"role": "user", "content": 'weather? [[use_tool:get_weather {"city": "Paris"}]]'}]
    reply = client.messages.create(
        model="claude-sonnet-4-6", max_tokens=50, messages=ask, tools=tools, extra_headers={"train-id": "tools"}
    )
    assert [b.type for b in reply.content].count("tool_use") == 1
    with client.messages.stream(
        model="claude-sonnet-4-6", max_tokens=50, messages=ask, tools=tools, extra_headers={"train-id": "tools"}
    ) as s:
        s.get_final_message()
    _, stats, _ = get(f"{usage_proxy}/token-stats?projectId=tools")
    assert stats["requestCount"] == 2 and stats["toolCallCount"] == 2 and stats["errorCount"] == 0


@pytest.mark.parametrize(
    "query",
    [
        "current?window=abc",
        "current?window=0",
        "current?window=99999999",
        "daily?days=0",
        "daily?days=x",
        "daily?aggregate=maybe",
        "time-series?interval=7",
        "time-series?hours=168&interval=1",
    ],
)
def test_bad_parameters_are_400_in_anthropic_shape(usage_proxy: str, query: str) -> None:
    status, body, headers = get(f"{usage_proxy}/api/token-usage/{query}")
    assert status == 400, body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert body["request_id"] == headers["x-request-id"]


def test_usage_api_and_token_stats_need_the_dashboard_key_when_set(
    upstream_url: str, migrated_db: str, tmp_path: Path
) -> None:
    env = {"CLAUDE_API_BASE_URL": upstream_url, "DATABASE_URL": migrated_db, "NEXUS_HOME": str(tmp_path)}
    with run_proxy({**env, "DASHBOARD_API_KEY": "dash-key-123456"}) as url:
        for path in ("/api/token-usage/current", "/token-stats"):
            status, body, _ = get(url + path)
            assert status == 401 and body["error"]["type"] == "authentication_error"
            assert get(url + path, {"x-api-key": "wrong"})[0] == 401
            assert get(url + path, {"x-api-key": "dash-key-123456"})[0] == 200
            assert get(url + path, {"authorization": "Bearer dash-key-123456"})[0] == 200
