"""One branch of a conversation: its transcript and the time line of its requests.

The transcript is the branch's last request read as a chat (its messages, then its reply): every
request carries its whole history, so the last one holds the branch from its first prompt (for a fork,
the shared history too; after a compaction, the summary it restarted from). It is the last request
that got a reply, or the last one when none did. Text is shown by the request page's own code
(`render.conversation`, `_block.html`): escaped, thinking and tool traffic collapsed.

The time line gives each request of the branch a bar as long as its duration, the part before the
first byte (`first_byte_ms`, time to first token when streamed) drawn darker, on one duration axis.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from psycopg import AsyncConnection

from nexus.dashboard import render
from nexus.dashboard.tree import status_class
from nexus.storage import requests_repo

#: Messages shown in a transcript (the newest); the request page shows them all.
TRANSCRIPT_MESSAGES = 200
#: Requests on the time line (the newest of the branch).
TIMELINE_ROWS = 200
TL_ROW_H = 18
TL_LABEL_W = 150
TL_PLOT_W = 520
TL_TOP = 8
TL_AXIS_H = 30
#: Room a value label ("14 ms · TTFB 7 ms") takes per character: 12px monospace (tree.css) is ~7.2px wide.
TL_CHAR_W = 7.5


def pick_branch(branches: list[dict[str, Any]], wanted: str | None) -> str | None:
    """The branch asked for when it exists; else `main`, else the first."""
    names = [str(b["branch_id"]) for b in branches]
    if wanted in names:
        return wanted
    if "main" in names:
        return "main"
    return names[0] if names else None


def branch_requests(tree: dict[str, Any], branch: str) -> list[dict[str, Any]]:
    return [r for r in tree["requests"] if (r.get("branch_id") or "main") == branch]


def last_answered(requests: list[dict[str, Any]]) -> dict[str, Any] | None:
    for r in reversed(requests):
        if r.get("response_status") == 200:
            return r
    return requests[-1] if requests else None


async def transcript(conn: AsyncConnection[Any], requests: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The chat of the branch's last (answered) request, its newest `TRANSCRIPT_MESSAGES` messages."""
    last = last_answered(requests)
    if last is None:
        return None
    row = await requests_repo.get_request(conn, str(last["request_id"]))
    if row is None:
        return None
    chat = render.conversation(row.get("request_body"), row.get("response_body"))
    messages = chat["messages"]
    chat["hidden"] = max(0, len(messages) - TRANSCRIPT_MESSAGES)
    chat["first_index"] = chat["hidden"] + 1
    chat["messages"] = messages[chat["hidden"] :]
    chat["request_id"] = str(last["request_id"])
    chat["model"] = row.get("model")
    chat["status"] = row.get("response_status")
    return chat


async def first_bytes(conn: AsyncConnection[Any], requests: list[dict[str, Any]]) -> dict[str, Any]:
    """`first_byte_ms` of these requests (the tree's columns do not carry it), by request id."""
    if not requests:
        return {}
    stamps: list[datetime] = [r["timestamp"] for r in requests]
    cur = await conn.execute(
        "SELECT request_id::text, first_byte_ms FROM api_requests WHERE request_id = ANY(%s::uuid[]) "
        "AND timestamp >= %s AND timestamp <= %s",
        ([str(r["request_id"]) for r in requests], min(stamps), max(stamps) + timedelta(seconds=1)),
    )
    return {rid: ms for rid, ms in await cur.fetchall()}


def nice_step(span: float, ticks: int = 5) -> float:
    """A round tick step (1, 2 or 5 x 10^k) giving about `ticks` ticks over `span`."""
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * power:
            return float(m * power)
    return float(10 * power)


def seconds(ms: float) -> str:
    """A duration for an axis or a label: ms under a second, seconds with one decimal under a minute."""
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    return f"{int(ms // 60_000)} min {ms % 60_000 / 1000:.0f} s"


def _ms(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def timeline(requests: list[dict[str, Any]], first_byte: dict[str, Any], number: dict[str, str]) -> dict[str, Any]:
    """Bars for the branch's newest `TIMELINE_ROWS` requests on one duration axis."""
    shown = requests[-TIMELINE_ROWS:]
    durations = [_ms(r.get("duration_ms")) or 0 for r in shown]
    top = max(durations, default=0) or 1
    step = max(1.0, nice_step(top))  # whole milliseconds: durations are stored in ms
    axis_max = math.ceil(top / step) * step
    scale = TL_PLOT_W / axis_max
    start = shown[0]["timestamp"] if shown else None
    rows = []
    right = float(TL_LABEL_W + TL_PLOT_W + 40)
    for i, r in enumerate(shown):
        rid = str(r["request_id"])
        duration = _ms(r.get("duration_ms"))
        ttfb = _ms(first_byte.get(rid))
        if ttfb is not None and duration is not None:
            ttfb = min(ttfb, duration)
        since = (r["timestamp"] - start).total_seconds() if start is not None else 0.0
        duration_text = seconds(duration) if duration is not None else "unknown"
        ttfb_text = seconds(ttfb) if ttfb is not None else "unknown"
        value_text = f"{duration_text} · TTFB {ttfb_text}"
        bar_w = round((duration or 0) * scale, 1)
        # the longest bar reaches the axis' end and its label goes on past it: room for the widest label
        right = max(right, TL_LABEL_W + bar_w + 4 + len(value_text) * TL_CHAR_W + 4)
        rows.append(
            {
                "id": rid,
                "number": number.get(rid, "?"),
                "y": TL_TOP + i * TL_ROW_H,
                "since": f"+{int(since // 60)}:{int(since % 60):02d}",
                "duration_ms": duration,
                "ttfb_ms": ttfb,
                "width": bar_w,
                "ttfb_width": round((ttfb or 0) * scale, 1),
                "status_class": status_class(r.get("response_status")),
                "status": r.get("response_status"),
                "duration_text": duration_text,
                "ttfb_text": ttfb_text,
                "value_text": value_text,
            }
        )
    height = TL_TOP + len(rows) * TL_ROW_H
    ticks = [
        {"x": round(TL_LABEL_W + v * scale, 1), "label": seconds(v)}
        for v in (k * step for k in range(int(axis_max / step) + 1))
    ]
    return {
        "rows": rows,
        "hidden": max(0, len(requests) - len(shown)),
        "ticks": ticks,
        "plot_x": TL_LABEL_W,
        "plot_w": TL_PLOT_W,
        "axis_y": height + 4,
        "width": math.ceil(right),
        "height": height + TL_AXIS_H,
    }
