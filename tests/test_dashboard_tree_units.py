"""The pure parts of the tree layout, the time line and the rate-limit reading."""

from __future__ import annotations

import html
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from nexus.dashboard import branch_view, render, svg_chart, tree, usage_charts
from nexus.usage import ratelimits


def request(branch: str, at: int, status: int | None = 200) -> dict[str, Any]:
    return {
        "request_id": str(uuid.uuid4()),
        "branch_id": branch,
        "timestamp": datetime(2026, 12, 1, tzinfo=UTC) + timedelta(seconds=at),
        "response_status": status,
        "duration_ms": 1000 + at,
    }


def test_a_lane_is_reused_once_its_branch_ended() -> None:
    main = [request("main", i) for i in range(3)]
    sub1 = [request("subtask_1", 10), request("subtask_1", 11)]
    sub2 = [request("subtask_2", 20)]
    rows = [main[0], sub1[0], sub1[1], main[1], sub2[0], main[2]]
    edges = {
        main[1]["request_id"]: {"from": main[0]["request_id"], "kind": "continuation"},
        sub1[0]["request_id"]: {"from": main[0]["request_id"], "kind": "subagent"},
        sub1[1]["request_id"]: {"from": sub1[0]["request_id"], "kind": "continuation"},
        sub2[0]["request_id"]: {"from": main[1]["request_id"], "kind": "subagent"},
        main[2]["request_id"]: {"from": main[1]["request_id"], "kind": "continuation"},
    }
    out = tree.layout(rows, edges)
    lanes = {n["id"]: n["x"] for n in out.nodes}
    assert lanes[sub1[0]["request_id"]] == lanes[sub2[0]["request_id"]] != lanes[main[0]["request_id"]]
    assert out.lanes == 2 and out.kinds == {"continuation": 3, "branch": 0, "subagent": 2, "compaction": 0}
    assert [n["y"] for n in out.nodes] == sorted(n["y"] for n in out.nodes)  # time order, top down


def test_lanes_and_rows_are_bounded() -> None:
    root = request("main", 0)
    rows = [root] + [request(f"subtask_{i}", i) for i in range(1, 1000)]  # 999 sub-agents alive at once
    edges = {r["request_id"]: {"from": root["request_id"], "kind": "subagent"} for r in rows[1:]}
    out = tree.layout(rows, edges)
    assert out.lanes == tree.MAX_LANES and len(out.nodes) == tree.PAGE_NODES and out.next == tree.PAGE_NODES
    later = tree.layout(rows, edges, offset=tree.PAGE_NODES)
    assert later.previous == 0 and later.nodes[0]["number"] == f"#{tree.PAGE_NODES + 1}"
    stub = next(e for e in later.edges if e["to"] == later.nodes[0]["id"])
    assert stub["d"].startswith(f"M{later.nodes[0]['x']},")  # the parent is on page 1: a stub from above


def test_a_continuation_into_another_branch_is_a_branch_edge() -> None:
    a, b, c = request("main", 0), request("main", 1), request("branch_x", 2)
    stored = [{"from": a["request_id"], "to": b["request_id"], "kind": "continuation"},
              {"from": a["request_id"], "to": c["request_id"], "kind": "continuation"}]  # fmt: skip
    kinds = tree.edge_kinds([a, b, c], stored)
    assert kinds[b["request_id"]]["kind"] == "continuation" and kinds[c["request_id"]]["kind"] == "branch"
    assert [tree.status_class(s) for s in (200, 404, 429, 529, 500, None, True)] == [
        "ok", "client", "limited", "limited", "error", "none", "none"
    ]  # fmt: skip


def test_time_line_bars_and_ticks() -> None:
    rows = [request("main", 0), request("main", 60)]
    rows[1]["duration_ms"] = 12_345
    first = {rows[0]["request_id"]: 400, rows[1]["request_id"]: 99_999}  # a first byte after the end: clamped
    out = branch_view.timeline(rows, first, {})
    assert [r["since"] for r in out["rows"]] == ["+0:00", "+1:00"]
    assert out["rows"][1]["ttfb_ms"] == 12_345 and out["rows"][1]["width"] <= branch_view.TL_PLOT_W
    assert [t["label"] for t in out["ticks"]][:3] == ["0 ms", "5.0 s", "10.0 s"]
    assert branch_view.timeline([], {}, {})["rows"] == []


def test_time_line_leaves_room_for_the_longest_bars_label() -> None:
    """The longest bar reaches the axis' end and its label ("14 ms · TTFB 7 ms") goes on past it: the
    drawing was 40 px wider than the axis, and the label was cut off at its right edge."""
    rows = [request("main", 0), request("main", 60)]
    rows[0]["duration_ms"], rows[1]["duration_ms"] = 14, 65_432
    out = branch_view.timeline(rows, {rows[0]["request_id"]: 7, rows[1]["request_id"]: 61_000}, {})
    assert [r["value_text"] for r in out["rows"]] == ["14 ms · TTFB 7 ms", "1 min 5 s · TTFB 1 min 1 s"]
    for r in out["rows"]:
        label_end = out["plot_x"] + r["width"] + 4 + len(r["value_text"]) * 7.2  # 12px monospace
        assert label_end <= out["width"], r


def test_the_tree_is_as_wide_as_its_longest_label_within_a_bound() -> None:
    """A compaction on a dated branch ("#3 branch_20261206115034_abc0 · compaction · claude-opus-4-8 ·
    200 · 4 ms · 40 out · $0.1158") ran past the fixed 620 px and its cost was cut to "$0"; a branch name
    from a client cannot make the drawing arbitrarily wide."""
    main, compaction = request("main", 0), request("branch_20261206115034_abc0", 1)
    compaction.update(request_type="compaction", model="claude-haiku-4-5-20251001", output_tokens=40, cost_usd=0.1158)
    hostile = request("b" * 5000, 2)
    edges = {compaction["request_id"]: {"from": main["request_id"], "kind": "compaction"}}
    out = tree.layout([main, compaction], edges)
    page = render.environment().get_template("_tree.html").render(svg=out)
    labels = [html.unescape(re.sub(r"<[^>]+>", "", t)) for t in re.findall(r"<text [^>]*>(.*?)</text>", page)]
    assert labels[1].endswith("compaction · claude-haiku-4-5-20251001 · 200 · 1,001 ms · 40 out · $0.1158")
    assert [tree.label_chars(n) for n in out.nodes] == [len(label) for label in labels]  # the template's text
    label_x = out.nodes[0]["label_x"]
    assert all(label_x + len(label) * 7.2 <= out.width for label in labels)
    wide = tree.layout([main, hostile], {})
    assert wide.width <= label_x + tree.LABEL_MAX_CHARS * tree.LABEL_CHAR_W + tree.LEFT + 1


def test_rate_limit_headers_read_as_stored_and_odd_values_left_out() -> None:
    got = ratelimits.parse(
        "acc",
        {
            "anthropic-ratelimit-tokens-limit": "1000",
            "anthropic-ratelimit-tokens-remaining": "150",
            "anthropic-ratelimit-tokens-reset": "2026-12-06T05:00:00Z",
            "anthropic-ratelimit-requests-limit": "not a number",
            "anthropic-ratelimit-requests-remaining": "1e3",
            "anthropic-ratelimit-unified-status": "allowed",
            "anthropic-ratelimit-unified-5h-utilization": "0.5",
            "anthropic-ratelimit-unified-5h-reset": "1765000000",
            "anthropic-ratelimit-unified-7d-utilization": "nan",
            "anthropic-ratelimit-unified-7d_opus-utilization": ["0.9"],
        },
    )
    assert [(lim.name, lim.left, lim.remaining) for lim in got.limits] == [
        ("tokens", 0.15, 150),
        ("unified 5h", 0.5, None),
    ]
    assert got.limits[0].resets_at == datetime(2026, 12, 6, 5, tzinfo=UTC)
    assert got.warning and got.reasons == ["tokens: 15% left"]
    warned = ratelimits.parse("acc", {"anthropic-ratelimit-unified-status": "allowed_warning"})
    assert warned.warning and warned.reasons == ["unified status allowed_warning"]
    assert not ratelimits.parse("acc", None).warning and not ratelimits.parse("acc", "text").limits


def test_chart_buckets_end_with_the_current_one() -> None:
    now = datetime(2026, 12, 6, 3, 25, tzinfo=UTC)
    bucket, starts = usage_charts.buckets("hour", now)
    assert bucket == timedelta(hours=1) and len(starts) == 48 and starts[-1] == datetime(2026, 12, 6, 3, tzinfo=UTC)
    _, days = usage_charts.buckets("day", now)
    assert days[0] == datetime(2026, 11, 7, tzinfo=UTC) and days[-1] == datetime(2026, 12, 6, tzinfo=UTC)
    assert usage_charts.choose("week", usage_charts.SPANS, "hour") == "hour"


def test_server_drawn_chart_axes_and_gaps() -> None:
    x = [1_765_000_000 + i * 3600 for i in range(4)]
    chart = svg_chart.line_chart(x, [{"label": "a", "values": [0, 3, None, 7]}], "requests", svg_chart.compact)
    assert [t["label"] for t in chart["y_ticks"]] == ["0", "2", "4", "6", "8"]  # whole steps for counts
    assert len(chart["lines"][0]["segments"]) == 2 and len(chart["lines"][0]["points"]) == 3  # unknown: a gap
    assert chart["lines"][0]["points"][-1]["title"].endswith("UTC: 7")
    money = svg_chart.line_chart(x, [{"label": "a", "values": [0.001, 0.002, 0, 0]}], "USD", svg_chart.dollars)
    assert money["y_ticks"][1]["label"] == "$0.0005"
    empty = svg_chart.line_chart(x, [], "tokens", svg_chart.compact)
    assert empty["lines"] == [] and [t["label"] for t in empty["y_ticks"]] == ["0", "1"]
