"""`GET /metrics` after real traffic through the proxy (fake upstream, real PostgreSQL): every family
counts what happened, with one worker and with two (whichever worker is scraped reports both)."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FAST_RETRIES
from tests.harness.servers import run_proxy
from tests.helpers import FAST, count_rows, wait_for

SONNET, HAIKU = "claude-sonnet-4-6", "claude-haiku-4-5-20251001"


def post(url: str, body: bytes, headers: dict[str, str], path: str = "/v1/messages") -> tuple[int, bytes]:
    """One request on a connection of its own (so with two workers both serve)."""
    port = int(url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    base = {"content-type": "application/json", "x-api-key": "sk-ant-x", "anthropic-version": "2023-06-01"}
    conn.request("POST", path, body=body, headers={**base, **headers})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def message(model: str, text: str, stream: bool = False) -> bytes:
    return orjson.dumps(
        {"model": model, "max_tokens": 20, "stream": stream, "messages": [{"role": "user", "content": text}]}
    )


def sse_usage(body: bytes) -> tuple[int, int]:
    """Input and output tokens of a stream, as the API reports them (message_start, last message_delta)."""
    inp = out = 0
    for line in body.split(b"\n"):
        if not line.startswith(b"data: "):
            continue
        event = orjson.loads(line[6:])
        if event.get("type") == "message_start":
            inp = event["message"]["usage"]["input_tokens"]
        elif event.get("type") == "message_delta":
            out = event["usage"]["output_tokens"]
    return inp, out


def scrape(url: str, headers: dict[str, str] | None = None) -> dict[str, list[Any]]:
    req = urllib.request.Request(url + "/metrics", headers=headers or {})  # noqa: S310 (loopback)
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
        assert resp.headers["content-type"].startswith("text/plain")
        text = resp.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(metrics: dict[str, list[Any]], family: str, sample: str | None = None, **labels: str) -> float:
    """The sum of the samples of `family` (sample name `sample`) whose labels include `labels`."""
    name = sample or family
    return sum(
        s.value
        for s in metrics.get(family, [])
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_count_the_traffic(upstream_url: str, migrated_db: str, tmp_path: Path, workers: int) -> None:
    env = {
        "CLAUDE_API_BASE_URL": upstream_url,
        "DATABASE_URL": migrated_db,
        "NEXUS_HOME": str(tmp_path),
        **FAST,
        **FAST_RETRIES,
    }
    tokens = {"p-json": [0, 0], "p-stream": [0, 0]}
    with run_proxy(env, workers=workers) as url:
        for i in range(6):
            status, body = post(url, message(SONNET, f"json {i}"), {"train-id": "p-json"})
            assert status == 200
            usage = orjson.loads(body)["usage"]
            tokens["p-json"][0] += usage["input_tokens"]
            tokens["p-json"][1] += usage["output_tokens"]
        for i in range(4):
            status, body = post(url, message(HAIKU, f"stream {i}", stream=True), {"train-id": "p-stream"})
            assert status == 200
            inp, out = sse_usage(body)
            tokens["p-stream"][0] += inp
            tokens["p-stream"][1] += out
        assert post(url, message(SONNET, "limited"), {"train-id": "p-json", "x-fake-scenario": "error:429"})[0] == 429
        # 529 on every attempt: retried twice (UPSTREAM_MAX_ATTEMPTS=3), then answered
        assert post(url, message(SONNET, "busy"), {"train-id": "p-json", "x-fake-scenario": "error:529"})[0] == 529
        assert post(url, b"{not json", {"train-id": "p-json"})[0] == 400  # refused by the proxy itself
        assert post(url, b"{}", {}, path="/nope")[0] == 404
        stored = 6 + 4 + 2 + 2
        wait_for(lambda: count_rows(migrated_db) == stored, what="every request stored")

        def counted() -> bool:  # another worker folds its sums in within a second
            m = scrape(url)
            return (
                value(m, "nexus_requests", "nexus_requests_total") == 14
                and value(m, "nexus_storage_rows", "nexus_storage_rows_total", result="written") == stored
            )

        wait_for(counted, timeout_s=10, what="the metrics of every worker")
        m = scrape(url)

    def requests(**labels: str) -> float:
        return value(m, "nexus_requests", "nexus_requests_total", **labels)

    assert requests(route="/v1/messages", status="200", model=SONNET, project="p-json") == 6
    assert requests(route="/v1/messages", status="200", model=HAIKU, project="p-stream") == 4
    assert requests(route="/v1/messages", status="429", model=SONNET) == 1
    assert requests(route="/v1/messages", status="529", model=SONNET) == 1
    assert requests(route="/v1/messages", status="400", model="none", project="none") == 1
    assert requests(route="unmatched", status="404") == 1

    duration = "nexus_request_duration_seconds"
    assert value(m, duration, duration + "_count", route="/v1/messages", streaming="false") == 6 + 2 + 1
    assert value(m, duration, duration + "_count", route="/v1/messages", streaming="true") == 4
    assert value(m, duration, duration + "_bucket", route="/v1/messages", streaming="true", le="+Inf") == 4
    assert value(m, duration, duration + "_sum", route="/v1/messages", streaming="true") > 0
    ttft = "nexus_time_to_first_token_seconds"
    assert value(m, ttft, ttft + "_count", model=HAIKU) == 4 and value(m, ttft, ttft + "_count", model=SONNET) == 0
    overhead = "nexus_proxy_overhead_seconds"
    assert value(m, overhead, overhead + "_count", route="/v1/messages") == 6 + 4 + 2  # each that went upstream
    assert 0 < value(m, overhead, overhead + "_sum") < value(m, duration, duration + "_sum")

    for project, (inp, out) in tokens.items():
        assert inp > 0 and out > 0
        assert value(m, "nexus_tokens", "nexus_tokens_total", project=project, type="input") == inp
        assert value(m, "nexus_tokens", "nexus_tokens_total", project=project, type="output") == out

    assert value(m, "nexus_upstream_retries", "nexus_upstream_retries_total", reason="overloaded") == 2
    errors = "nexus_upstream_errors_total"
    assert value(m, "nexus_upstream_errors", errors, kind="overloaded") == 1
    assert value(m, "nexus_upstream_errors", errors, kind="rate_limited") == 1
    assert value(m, "nexus_upstream_errors", errors) == 2
    assert value(m, "nexus_link_decisions", "nexus_link_decisions_total") == 6 + 4 + 2
    assert value(m, "nexus_link_decisions", "nexus_link_decisions_total", evidence="new") > 0
    assert value(m, "nexus_storage_batch_duration_seconds", "nexus_storage_batch_duration_seconds_count") > 0
    assert value(m, "nexus_storage_rows", "nexus_storage_rows_total", result="spooled") == 0
    assert value(m, "nexus_database_up") == 1 and value(m, "nexus_ready") == 1
    assert "nexus_storage_queue_depth" in m and "nexus_storage_quarantine_rows" in m
    assert "nexus_oauth_refreshes" in m


def _status(url: str, headers: dict[str, str]) -> int:
    req = urllib.request.Request(url + "/metrics", headers=headers)  # noqa: S310 (loopback)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_metrics_follow_the_data_access_rule(upstream_url: str) -> None:
    env = {"CLAUDE_API_BASE_URL": upstream_url, "STORAGE_ENABLED": "false"}
    with run_proxy(env) as url:
        assert _status(url, {}) == 200  # this machine, no key configured
        assert _status(url, {"x-forwarded-for": "203.0.113.7"}) == 403  # relayed: not this machine
    with run_proxy({**env, "DASHBOARD_API_KEY": "metrics-key-0123456789"}) as url:
        assert _status(url, {}) == 401
        assert _status(url, {"authorization": "Bearer metrics-key-0123456789"}) == 200


def test_client_chosen_label_values_are_capped(upstream_url: str) -> None:
    env = {"CLAUDE_API_BASE_URL": upstream_url, "STORAGE_ENABLED": "false", "METRICS_LABEL_LIMIT": "2"}
    with run_proxy(env) as url:
        for project in ("a", "b", "c", "d", "a"):
            assert post(url, message(SONNET, project), {"train-id": f"cap-{project}"})[0] == 200
        m = scrape(url)
    projects = {s.labels["project"] for s in m["nexus_requests"] if s.name == "nexus_requests_total"}
    assert projects == {"cap-a", "cap-b", "other"}
    assert value(m, "nexus_requests", "nexus_requests_total", project="other") == 2
    assert value(m, "nexus_requests", "nexus_requests_total", project="cap-a") == 2


def test_oauth_refreshes_are_counted_by_result(upstream_url: str, tmp_path: Path, fake: Any) -> None:
    from tests.auth_helpers import now_ms, proxy_env, write_oauth
    from tests.auth_helpers import post as auth_post

    creds = tmp_path / "credentials"
    write_oauth(creds, "m-ok", "sk-ant-oat01-old-access", "sk-ant-ort01-metrics-ok", now_ms(10))  # due: refreshed
    write_oauth(creds, "m-dead", "sk-ant-oat01-dead-access", "sk-ant-ort01-metrics-dead", now_ms(-10))  # refused
    fake.oauth(refresh_token="sk-ant-ort01-metrics-ok")
    with run_proxy(proxy_env(upstream_url, creds)) as url:
        assert auth_post(url, {"train-id": "m-ok"})[0] == 200
        assert auth_post(url, {"train-id": "m-dead"})[0] == 401
        m = scrape(url)
    assert value(m, "nexus_oauth_refreshes", "nexus_oauth_refreshes_total", result="success") == 1
    assert value(m, "nexus_oauth_refreshes", "nexus_oauth_refreshes_total", result="failure") == 1


def test_routes_and_error_kinds_are_bounded() -> None:
    from nexus.observability.recorder import LabelCap, route_label, upstream_error_kind

    assert route_label("/v1/messages") == "/v1/messages"
    assert route_label("/v1/models/claude-x") == "/v1/models/{id}"
    assert route_label("/v1/anything/else") == "/v1/other" and route_label("/etc") == "unmatched"
    cap = LabelCap(1)
    assert [cap("a"), cap("b"), cap("a"), cap(None), cap("x" * 500)] == ["a", "other", "a", "none", "other"]
    assert upstream_error_kind(502, "proxy_error", None, False) == "connection"
    assert upstream_error_kind(504, "timeout", None, False) == "timeout"
    assert upstream_error_kind(400, "proxy_error", None, False) is None  # the proxy refused it: not upstream
    assert upstream_error_kind(200, None, "stream_idle_timeout", False) == "stream_idle_timeout"
    assert upstream_error_kind(200, None, "upstream_disconnected: ReadError", False) == "disconnected"
    assert upstream_error_kind(200, None, "client_disconnected", False) is None
    assert upstream_error_kind(200, None, None, True) == "stream_error_event"
    assert [upstream_error_kind(s, None, None, False) for s in (200, 404, 429, 500, 529)] == [
        None,
        "client_error",
        "rate_limited",
        "server_error",
        "overloaded",
    ]


def test_the_grafana_dashboard_uses_only_exported_metrics() -> None:
    """docker/grafana/nexus-dashboard.json cannot drift from the families the proxy exports."""
    import json
    import re

    from nexus.observability.metrics import Families

    registry = Families().registry
    assert registry is not None  # this test process is not in multiprocess mode
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    exported = {f.name + s for f in registry.collect() for s in suffixes[f.type]}
    dashboard = (Path(__file__).parent.parent / "docker" / "grafana" / "nexus-dashboard.json").read_text()
    json.loads(dashboard)
    used = set(re.findall(r"\bnexus_[a-z_]+", dashboard))
    assert used and used <= exported, used - exported
    families_used = {name for name in exported if name in used}
    assert len({n.rsplit("_", 1)[0] if n.endswith(("_bucket", "_sum", "_count")) else n for n in families_used}) >= 15
