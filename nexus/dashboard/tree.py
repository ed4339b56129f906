"""The conversation tree as an SVG: a server-side layout, no script, no library.

One row per request in time order, one lane (column) per branch, like a version-control graph: a
request is a circle on its branch's lane, coloured by status and linked to its page; an edge joins it
to its parent, drawn by kind (continuation, branch, sub-agent, compaction). A lane is held from the
row of its branch's fork point to the branch's last request and then given back, so a conversation
with hundreds of sub-agents stays a few lanes wide.

Bounded whatever the conversation: one pass over the requests (lanes from two heaps: O(n log lanes)),
at most `PAGE_NODES` rows per page (`offset` pages through the rest; an edge from an earlier page is a
stub from the top), at most `MAX_LANES` lanes (later branches share the last one). The output is plain
data; the template writes it and escapes every text (branch names and models come from clients).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nexus.dashboard.render import DASH, usd
from nexus.dashboard.render import number as shown_number

#: Requests drawn per page of the tree.
PAGE_NODES = 400
#: Lanes drawn; branches past these share the last lane.
MAX_LANES = 16
ROW_H = 22
LANE_W = 18
TOP = 14
LEFT = 14
RADIUS = 6
#: Room for each row's label, px: at least this, more when a label needs it (up to `LABEL_MAX_CHARS`).
LABEL_W = 620
#: Width of a label character: 12px monospace (tree.css) is ~7.2px wide.
LABEL_CHAR_W = 7.5
#: Labels longer than this (branch names and models come from clients) do not widen the drawing further.
LABEL_MAX_CHARS = 200

EDGE_KINDS = ("continuation", "branch", "subagent", "compaction")


def status_class(status: object) -> str:
    """A CSS class for a response status: ok, client (4xx), limited (429 / 529), error (5xx), none."""
    if not isinstance(status, int) or isinstance(status, bool):
        return "none"
    if 200 <= status < 300:
        return "ok"
    if status in (429, 529):
        return "limited"
    if 400 <= status < 500:
        return "client"
    return "error"


def edge_kinds(requests: Sequence[dict[str, Any]], edges: Sequence[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Each child's edge as `{"from": parent, "kind": kind}`: the stored kinds (continuation, subagent,
    compaction), with a continuation into a branch other than its parent's called a `branch`."""
    branch_of = {str(r["request_id"]): r.get("branch_id") or "main" for r in requests}
    out: dict[str, dict[str, str]] = {}
    for e in edges:
        child, parent = str(e["to"]), str(e["from"])
        kind = str(e["kind"])
        if kind == "continuation" and parent in branch_of and branch_of[parent] != branch_of.get(child):
            kind = "branch"
        out[child] = {"from": parent, "kind": kind}
    return out


@dataclass(slots=True)
class Layout:
    width: int
    height: int
    nodes: list[dict[str, Any]] = field(default_factory=list)
    edges: list[dict[str, Any]] = field(default_factory=list)
    lanes: int = 0
    offset: int = 0
    total: int = 0
    previous: int | None = None
    next: int | None = None
    kinds: dict[str, int] = field(default_factory=dict)


def _lanes(order: list[str], start: dict[str, int], end: dict[str, int]) -> dict[str, int]:
    """A lane per branch: branches by start row (main first), each on the lowest lane free from its
    start row, a lane freed after its branch's last row."""
    lane_of: dict[str, int] = {}
    busy: list[tuple[int, int]] = []  # (last row, lane)
    free: list[int] = []
    used = 0
    for branch in sorted(order, key=lambda b: (start[b], b != "main")):
        while busy and busy[0][0] < start[branch]:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            lane = heapq.heappop(free)
        elif used < MAX_LANES:
            lane, used = used, used + 1
        else:
            lane_of[branch] = MAX_LANES - 1  # shared: bounded width beats one lane each
            continue
        lane_of[branch] = lane
        heapq.heappush(busy, (end[branch], lane))
    return lane_of


def layout(
    requests: Sequence[dict[str, Any]],
    edges: dict[str, dict[str, str]],
    *,
    offset: int = 0,
    page: int = PAGE_NODES,
    number: dict[str, str] | None = None,
) -> Layout:
    """The rows `[offset, offset + page)` of `requests` (time order) laid out for the SVG."""
    total = len(requests)
    offset = max(0, min(offset, max(0, total - 1)))
    shown = requests[offset : offset + page]
    row_of = {str(r["request_id"]): i for i, r in enumerate(shown)}
    start: dict[str, int] = {}
    end: dict[str, int] = {}
    order: list[str] = []
    for i, r in enumerate(shown):
        branch = r.get("branch_id") or "main"
        if branch not in start:
            order.append(branch)
            parent = edges.get(str(r["request_id"]), {}).get("from")
            start[branch] = row_of.get(parent, 0) if parent is not None else i
        end[branch] = i
    lane_of = _lanes(order, start, end)
    lanes = max(lane_of.values(), default=0) + 1
    out = Layout(
        width=LEFT * 2 + lanes * LANE_W + LABEL_W,
        height=TOP * 2 + max(1, len(shown)) * ROW_H,
        lanes=lanes,
        offset=offset,
        total=total,
        previous=max(0, offset - page) if offset > 0 else None,
        next=offset + page if offset + page < total else None,
        kinds=dict.fromkeys(EDGE_KINDS, 0),
    )
    label_x = LEFT + lanes * LANE_W + 6
    for i, r in enumerate(shown):
        rid = str(r["request_id"])
        branch = r.get("branch_id") or "main"
        x, y = LEFT + lane_of[branch] * LANE_W, TOP + i * ROW_H
        edge = edges.get(rid)
        if edge is not None:
            kind = edge["kind"]
            out.kinds[kind] = out.kinds.get(kind, 0) + 1
            p = row_of.get(edge["from"])
            if p is None:  # the parent is on an earlier page (or outside the conversation)
                path = f"M{x},{max(0, y - ROW_H)} L{x},{y}"
            else:
                px = LEFT + lane_of[(shown[p].get("branch_id") or "main")] * LANE_W
                py = TOP + p * ROW_H
                if px == x:
                    path = f"M{px},{py} L{x},{y}"
                else:  # over to the child's lane just below the parent, then down that lane
                    bend = min(py + ROW_H, y)
                    path = f"M{px},{py} Q{x},{py} {x},{bend} L{x},{y}"
            out.edges.append({"d": path, "kind": kind, "from": edge["from"], "to": rid})
        out.nodes.append(
            {
                "id": rid,
                "x": x,
                "y": y,
                "label_x": label_x,
                "number": (number or {}).get(rid, f"#{offset + i + 1}"),
                "status": r.get("response_status"),
                "status_class": status_class(r.get("response_status")),
                "branch": branch,
                "request_type": r.get("request_type") or "",
                "model": r.get("model") or "",
                "duration_ms": r.get("duration_ms"),
                "cost_usd": r.get("cost_usd"),
                "output_tokens": r.get("output_tokens"),
                "kind": edge["kind"] if edge is not None else "root",
            }
        )
    # a compaction on a dated branch with a long model name runs past LABEL_W: it was cut off at the edge
    widest = max((min(label_chars(n), LABEL_MAX_CHARS) for n in out.nodes), default=0)
    out.width = max(out.width, round(label_x + widest * LABEL_CHAR_W + LEFT))
    return out


def label_chars(node: dict[str, Any]) -> int:
    """The length of a node's label as `_tree.html` writes it."""
    parts = [f"{node['number']} {node['branch']}"]
    if node["request_type"] and node["request_type"] != "main":
        parts.append(node["request_type"])
    parts += [
        node["model"] or DASH,
        str(node["status"] or DASH),
        f"{shown_number(node['duration_ms'])} ms",
        f"{shown_number(node['output_tokens'])} out",
        usd(node["cost_usd"]),
    ]
    return len(" · ".join(parts))
