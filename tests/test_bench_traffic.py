"""The benchmarks' traffic generator and report parsing: if these drift, every benchmark measures the
wrong thing (bodies of the wrong size, histories that do not chain into conversations, misread tools)."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest

from bench import traffic
from bench.harness.phases import growth_mib_per_min
from bench.harness.tools import parse_wrk

#: These test the tooling (the fake upstream, the benchmark's generators), not Nexus itself.
pytestmark = pytest.mark.tooling


def _normal(messages: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Messages as a linker compares them: no `cache_control`, a string content as one text block."""
    out = []
    for m in messages:
        content = m["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        out.append((m["role"], [{k: v for k, v in b.items() if k != "cache_control"} for b in blocks]))
    return out


def test_session_histories_chain_and_stay_in_size() -> None:
    requests = traffic.session_requests(11)
    assert len(requests) >= 10
    main = [orjson.loads(r.body) for r in requests if r.thread == "main"]
    sizes = [len(r.body) for r in requests if r.thread == "main"]
    assert 40 * 1024 <= sizes[0] <= 44 * 1024 and max(sizes) <= 60 * 1024 and sizes == sorted(sizes)
    for parent, child in itertools.pairwise(main):
        n = len(parent["messages"])
        # the child re-sends the parent's history, then the reply, then a user turn
        assert _normal(child["messages"][:n]) == _normal(parent["messages"])
        assert [m["role"] for m in child["messages"][n:]] == ["assistant", "user"]
    first = main[0]
    assert [b["text"].split(":")[0] for b in first["system"][:1]] == ["x-anthropic-billing-header"]
    assert first["system"][1]["text"] == traffic.IDENTITY and len(first["tools"]) == 20
    assert first["messages"][0]["content"][0]["text"].startswith("<system-reminder>")
    assert first["messages"][1]["role"] == "system"
    # every tool call is answered by its result in the next user turn
    last = main[-1]["messages"]
    for i, m in enumerate(last[:-1]):
        uses = [b["id"] for b in m["content"] if isinstance(m["content"], list) and b.get("type") == "tool_use"]
        if uses:
            results = [b["tool_use_id"] for b in last[i + 1]["content"] if b.get("type") == "tool_result"]
            assert results == uses


def test_subagent_request_is_the_agent_prompt() -> None:
    requests = traffic.session_requests(5)
    sub = next(orjson.loads(r.body) for r in requests if r.thread == "subagent")
    assert "cc_is_subagent=true;" in sub["system"][0]["text"]
    assert sub["system"][1]["text"] == traffic.SUBAGENT_IDENTITY
    main = [orjson.loads(r.body) for r in requests if r.thread == "main"]
    prompts = [
        b["input"]["prompt"]
        for body in main
        for m in body["messages"]
        if m["role"] == "assistant"
        for b in m["content"]
        if b.get("name") == "Agent"
    ]
    assert [m["content"][0]["text"] for m in sub["messages"]] == [prompts[0]]


def test_corpus_keeps_the_token_for_each_pass() -> None:
    requests = traffic.corpus(3)
    assert all(traffic.TOKEN in r.headers["x-claude-code-session-id"] for r in requests)
    assert all(r.body.count(traffic.TOKEN.encode()) >= 2 for r in requests)
    # interleaved turn by turn: the three sessions' first requests come first
    assert len({r.headers["x-claude-code-session-id"] for r in requests[:3]}) == 3
    assert requests[3].headers["x-claude-code-session-id"] == requests[0].headers["x-claude-code-session-id"]


WRK_OUTPUT = """Running 3s test @ http://127.0.0.1:1/v1/messages
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     7.23ms    2.01ms  40.11ms   90.00%
  Latency Distribution
     50%  405.00us
     75%    7.01ms
     90%    9.50ms
     99%    1.20s
  12418 requests in 3.00s, 10.17MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   4138.74
"""


def test_wrk_report_is_read_in_milliseconds() -> None:
    got = parse_wrk(WRK_OUTPUT)
    assert got["rps"] == pytest.approx(4138.74) and got["requests"] == 12418
    assert (got["p50_ms"], got["p99_ms"]) == (pytest.approx(0.405), pytest.approx(1200.0))
    assert (got["socket_errors"], got["non_2xx"]) == (3, 4)


def test_rss_growth_is_the_slope_of_the_second_half() -> None:
    flat = [(t * 5.0, 100.0, 80.0) for t in range(40)]
    assert growth_mib_per_min(flat) == pytest.approx(0.0)
    leaking = [(t * 6.0, 100.0 + t, 80.0) for t in range(40)]  # 1 MiB every 6 s
    assert growth_mib_per_min(leaking) == pytest.approx(10.0)
