"""The usage page for planning: charts whose data adds up to the usage API, and each account's rate limits
as its latest stored reply headers state them, with a warning near the limit (real PostgreSQL, a real
dashboard and proxy)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from nexus.dashboard import svg_chart
from tests.harness.servers import run_dashboard, run_proxy
from tests.helpers import FAST, get_json, wait_for
from tests.test_dashboard import call
from tests.test_linking_fixtures import send
from tests.usage_rows import insert_row

HOSTILE_PROJECT = "</script><script>alert(1)</script>"


def with_headers(conn: psycopg.Connection[Any], rid: str, headers: dict[str, str]) -> None:
    conn.execute(
        "UPDATE api_requests SET response_headers = %s WHERE request_id = %s", (orjson.dumps(headers).decode(), rid)
    )


def standard(tokens_left: int, requests_left: int) -> dict[str, str]:
    return {
        "anthropic-ratelimit-tokens-limit": "2000000",
        "anthropic-ratelimit-tokens-remaining": str(tokens_left),
        "anthropic-ratelimit-tokens-reset": "2026-12-06T05:00:00Z",
        "anthropic-ratelimit-requests-limit": "4000",
        "anthropic-ratelimit-requests-remaining": str(requests_left),
    }


@pytest.fixture
def seeded(migrated_db: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    at = [now - timedelta(minutes=m) for m in (90, 60, 30, 20, 10, 5, 3)]
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        old = insert_row(conn, at[0], project="alpha", account="acc-1", input_tokens=1000, output_tokens=200)
        with_headers(conn, old, standard(1_500_000, 3999))
        new = insert_row(conn, at[2], project="alpha", account="acc-1", input_tokens=300, output_tokens=40)
        with_headers(conn, new, standard(300_000, 3990))  # 15 % of the tokens left: a warning
        insert_row(conn, at[3], project="alpha", account="acc-1", input_tokens=5, output_tokens=5)  # no headers
        warned = insert_row(conn, at[1], project="beta", account="acc-2", input_tokens=70, output_tokens=7)
        unified = {
            "anthropic-ratelimit-unified-status": "allowed_warning",
            "anthropic-ratelimit-unified-5h-utilization": "0.85",
            "anthropic-ratelimit-unified-5h-reset": str(int(now.timestamp()) + 3600),
        }
        with_headers(conn, warned, unified)
        insert_row(conn, at[4], project="beta", account="acc-2", input_tokens=9, output_tokens=0, status=529)
        calm = insert_row(conn, at[5], project=HOSTILE_PROJECT, account="acc-3", input_tokens=11, output_tokens=22,
                          model="claude-nova-9")  # fmt: skip
        with_headers(conn, calm, {"anthropic-ratelimit-unified-status": "allowed",
                                  "anthropic-ratelimit-unified-5h-utilization": "0.12"})  # fmt: skip
        insert_row(conn, now - timedelta(days=3), project="alpha", account="acc-1", input_tokens=4000, output_tokens=1)
    return {"now": now}


def chart_data(page: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="usage-charts">(.*?)</script>', page, re.S)
    assert found is not None
    return json.loads(found.group(1))  # type: ignore[no-any-return]


def test_charts_add_up_to_the_usage_api(
    seeded: dict[str, Any], migrated_db: str, upstream_url: str, tmp_path: Path
) -> None:
    env = {"CLAUDE_API_BASE_URL": upstream_url, "DATABASE_URL": migrated_db, "NEXUS_HOME": str(tmp_path), **FAST}
    with run_dashboard({"DATABASE_URL": migrated_db}) as dashboard, run_proxy(env) as proxy:
        page = call(dashboard, "/usage?bucket=day&by=project")
        assert page.status == 200
        assert "<script>alert(1)" not in page.text  # a project named like a script stays text
        data = chart_data(page.text)
        assert data["bucket"] == "day" and len(data["x"]) == 30
        daily = get_json(f"{proxy}/api/token-usage/daily?days=30&aggregate=true")["usage"]
        for series in data["tokens"]:
            want = sum(d["totalTokens"] for d in daily if d["projectId"] == series["label"])
            assert sum(series["values"]) == want, series["label"]
        assert {s["label"] for s in data["tokens"]} == {"alpha", "beta", HOSTILE_PROJECT}
        assert sum(sum(s["values"]) for s in data["tokens"]) == sum(d["totalTokens"] for d in daily) == 5670
        for series in data["cost"]:
            want = sum(d["costUsd"] or 0 for d in daily if d["projectId"] == series["label"])
            assert sum(v or 0 for v in series["values"]) == pytest.approx(want), series["label"]
        hostile = next(s for s in data["cost"] if s["label"] == HOSTILE_PROJECT)
        assert sum(v is None for v in hostile["values"]) == 1  # an unpriced model: unknown, not $0
        assert data["unpriced"] == 1

        hourly = chart_data(call(dashboard, "/usage?bucket=hour&by=account").text)
        assert hourly["by"] == "account" and len(hourly["x"]) == 48
        for series in hourly["tokens"]:
            current = get_json(f"{proxy}/api/token-usage/current?accountId={series['label']}&window=2880")
            assert sum(series["values"]) == current["totalTokens"], series["label"]
        statuses = {s["label"]: sum(s["values"]) for s in hourly["status"]}
        assert statuses == {"2xx": 5, "529": 1}

        assert call(dashboard, "/usage?bucket=week&by=nope").status == 200  # unknown choices: the defaults

        # drawn by the server too (no script needed): axes with units, a hover title on each point
        svgs = re.findall(r'<div class="uchart" data-chart="(\w+)">\s*<svg class="chart-svg".*?</svg>', page.text, re.S)
        assert svgs == ["tokens", "cost", "status", "rolling"]
        for unit in ("tokens", "USD", "requests", "time (UTC)"):
            assert '<text class="unit"' in page.text and f">{unit}</text>" in page.text
        alpha = re.search(r'<g class="series s\d" data-series="alpha">(.*?)</g>', page.text, re.S)
        assert alpha is not None
        titles = re.findall(r"<title>alpha · (\S+) 00:00 UTC: ([^<]+)</title>", alpha.group(1))
        today = datetime.now(UTC).date().isoformat()
        want = sum(d["totalTokens"] for d in daily if d["projectId"] == "alpha" and d["date"] == today)
        assert len(titles) == 30 and titles[-1] == (today, svg_chart.compact(want))  # today, alpha
        assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt; · " in page.text  # a hostile label: text


def test_rate_limits_left_per_account_and_the_warning(seeded: dict[str, Any], migrated_db: str) -> None:
    with run_dashboard({"DATABASE_URL": migrated_db}) as dashboard:
        page = call(dashboard, "/usage").text
        row = re.search(r'<tr data-account="acc-1".*?</tr>', page, re.S)
        assert row is not None
        # the newest reply with rate-limit headers, not an older one nor the newest request (it had none)
        assert 'data-limit="tokens" data-left="0.1500" data-remaining="300000" data-limit-value="2000000"' in row.group(
            0
        )
        assert 'data-limit="requests" data-left="0.9975" data-remaining="3990"' in row.group(0)
        assert "near limit" in row.group(0)
        beta = re.search(r'<tr data-account="acc-2".*?</tr>', page, re.S)
        assert beta is not None and 'data-limit="unified 5h" data-left="0.1500"' in beta.group(0)
        assert "allowed_warning" in beta.group(0)
        warning = re.search(r'<div class="limit-warning" role="alert" data-near-limit="([^"]*)"', page)
        assert warning is not None and warning.group(1).split() == ["acc-1", "acc-2"]
        calm = re.search(r'<tr data-account="acc-3".*?</tr>', page, re.S)
        assert calm is not None and "near limit" not in calm.group(0) and 'data-left="0.8800"' in calm.group(0)

        only = call(dashboard, "/usage?account_id=acc-3").text
        assert 'class="limit-warning"' not in only and 'data-account="acc-1"' not in only

        script = call(dashboard, "/static/vendor/uplot/uPlot.iife.min.js")
        assert script.status == 200 and "uPlot" in script.text
        assert call(dashboard, "/static/vendor/uplot/uPlot.min.css").status == 200
        assert call(dashboard, "/static/usage.js").status == 200
        usage = call(dashboard, "/usage")
        assert "script-src 'self'" in (usage.header("content-security-policy") or "")
        assert '<script src="/static/vendor/uplot/uPlot.iife.min.js" defer></script>' in usage.text


def test_the_upstream_rate_limit_headers_are_stored(migrated_db: str, upstream_url: str, tmp_path: Path) -> None:
    """What the limits read is what storage keeps of a real reply through the proxy."""
    env = {"CLAUDE_API_BASE_URL": upstream_url, "DATABASE_URL": migrated_db, "NEXUS_HOME": str(tmp_path), **FAST}
    with run_proxy(env) as proxy:
        body = orjson.dumps(
            {"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
        )
        status, headers = send(
            proxy, "POST", "/v1/messages", {"content-type": "application/json", "x-api-key": "sk-ant-api03-x"}, body
        )
        assert status == 200

        def stored() -> dict[str, Any] | None:
            with psycopg.connect(migrated_db) as conn:
                row = conn.execute("SELECT response_headers FROM api_requests").fetchone()
            return row[0] if row else None

        wait_for(lambda: stored() is not None, 15, "row stored")
    kept = stored()
    assert kept is not None
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        for part in ("limit", "remaining", "reset"):
            name = f"anthropic-ratelimit-{kind}-{part}"
            assert kept[name] == headers[name]
