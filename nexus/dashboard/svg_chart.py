"""A line chart drawn by the server as SVG: what the usage page shows before (or without) its script.

The same series as the uPlot charts (nexus/dashboard/usage_charts.py), with a time axis (UTC), a value
axis with round ticks and its unit, one line per series and a hover title on every point, so the page
reads as a chart with no JavaScript; `static/usage.js` replaces it with the interactive uPlot chart.
Output is plain numbers and strings for the template, which escapes every label.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from nexus.dashboard.branch_view import nice_step

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 70, 12, 10, 44
X_TICKS = 6
#: Status classes on the palette (charts.css `.s0`-`.s7`): 2xx green, 4xx amber, 429 pink, 529 / 5xx red.
STATUS_COLOURS = {"2xx": 1, "4xx": 2, "429": 6, "529": 4, "5xx": 4, "none": 7}


def compact(value: float | None) -> str:
    """A count for an axis or a hover title: 1.2k, 3.4M."""
    if value is None:
        return "unknown"
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.1f}{suffix}"
    return f"{value:,.0f}"


def dollars(value: float | None) -> str:
    if value is None:
        return "unknown"
    return f"${value:,.4f}" if abs(value) < 1 else f"${value:,.2f}"


def line_chart(
    x: list[int],
    series: list[dict[str, Any]],
    unit: str,
    fmt: Callable[[float | None], str],
    *,
    daily: bool = False,
    colours: dict[str, int] | None = None,
) -> dict[str, Any]:
    """`x` in epoch seconds; each series `{"label", "values"}` (None: unknown, a gap in its line)."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    known = [float(v) for s in series for v in s["values"] if v is not None]
    top = max(known, default=0.0)
    step = nice_step(top, 4) if top > 0 else 1.0
    if unit != "USD":
        step = max(1.0, step)  # whole tokens and requests
    y_max = max(step, math.ceil(top / step) * step)
    span = max(1, len(x) - 1)

    def px(i: int) -> float:
        return round(LEFT + i * plot_w / span, 1)

    def py(v: float) -> float:
        return round(TOP + plot_h - v / y_max * plot_h, 1)

    when = "%m-%d" if daily else "%m-%d %H:%M"
    lines = []
    for n, s in enumerate(series):
        segments: list[list[str]] = [[]]
        points = []
        for i, v in enumerate(s["values"]):
            if v is None:
                segments.append([])
                continue
            segments[-1].append(f"{px(i)},{py(float(v))}")
            at = datetime.fromtimestamp(x[i], UTC).strftime("%Y-%m-%d %H:%M")
            points.append({"x": px(i), "y": py(float(v)), "title": f"{s['label']} · {at} UTC: {fmt(v)}"})
        lines.append(
            {
                "label": s["label"],
                "index": (colours or {}).get(s["label"], n),
                "segments": [" ".join(p) for p in segments if p],
                "points": points,
            }
        )
    y_ticks = [{"y": py(k * step), "label": fmt(k * step)} for k in range(round(y_max / step) + 1)]
    every = max(1, math.ceil(len(x) / X_TICKS))
    x_ticks = [{"x": px(i), "label": datetime.fromtimestamp(x[i], UTC).strftime(when)} for i in range(0, len(x), every)]
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "left": LEFT,
        "right": WIDTH - RIGHT,
        "top": TOP,
        "bottom": TOP + plot_h,
        "unit": unit,
        "lines": lines,
        "y_ticks": y_ticks,
        "x_ticks": x_ticks,
    }


def usage_svgs(chart_json: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The four usage charts (tokens, cost, status, rolling) as server-drawn SVG charts."""
    daily = chart_json["bucket"] == "day"
    x = chart_json["x"]
    rolling = chart_json["rolling"]
    return {
        "tokens": line_chart(x, chart_json["tokens"], "tokens", compact, daily=daily),
        "cost": line_chart(x, chart_json["cost"], "USD", dollars, daily=daily),
        "status": line_chart(x, chart_json["status"], "requests", compact, daily=daily, colours=STATUS_COLOURS),
        "rolling": line_chart(
            rolling["x"], [{"label": "output tokens, 5 h", "values": rolling["values"]}], "tokens", compact
        ),
    }
