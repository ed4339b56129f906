"""What the conversation page adds to its tree: the SVG layout, the selected branch's transcript and
time line (nexus/dashboard/tree.py, nexus/dashboard/branch_view.py)."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from nexus.dashboard import branch_view, tree


def offset_param(raw: str | None) -> int:
    """`tree_from`: the first row of the tree page, a non-negative integer (anything else is 0)."""
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        return 0
    return int(raw)


async def tree_context(
    conn: AsyncConnection[Any],
    c: dict[str, Any],
    number: dict[str, str],
    *,
    branch: str | None = None,
    tree_from: int = 0,
) -> dict[str, Any]:
    edges = tree.edge_kinds(c["requests"], c["edges"])
    svg = tree.layout(c["requests"], edges, offset=tree_from, number=number)
    selected = branch_view.pick_branch(c["branches"], branch)
    requests = branch_view.branch_requests(c, selected) if selected is not None else []
    first_byte = await branch_view.first_bytes(conn, requests[-branch_view.TIMELINE_ROWS :])
    shown = {n["id"] for n in svg.nodes}
    return {
        "edges": edges,
        "svg": svg,
        "table_rows": [r for r in c["requests"] if str(r["request_id"]) in shown],
        "branch": selected,
        "transcript": await branch_view.transcript(conn, requests),
        "timeline": branch_view.timeline(requests, first_byte, number),
    }
