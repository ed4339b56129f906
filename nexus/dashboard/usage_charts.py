"""The usage page's charts: series for uPlot (nexus/dashboard/static/usage.js), from the usage sums.

Tokens (input + output, the API's `total_tokens`) and cost per hour (last 48 hours) or per UTC day
(last 30 days, the same days as `GET /api/token-usage/daily`), one series per project or account (the
`MAX_SERIES - 1` largest, the rest summed as "other"), and requests per status class. Every figure is
a sum of `nexus.usage.repo.SUMS`, so a chart adds up to what the usage API answers. The page embeds
the result as JSON in a `<script type="application/json">` (Jinja's `tojson` escapes `<`, `>`, `&`
and `'`, so no stored name can close the element).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import AsyncConnection

from nexus.dashboard import svg_chart
from nexus.pricing.sql import summed_cost
from nexus.usage import ratelimits, repo
from nexus.usage.repo import Filters
from nexus.usage.service import EPOCH

#: bucket name -> (bucket, how many buckets back, today's included)
SPANS = {"hour": (timedelta(hours=1), 48), "day": (timedelta(days=1), 30)}
#: `by` -> the grouped column
GROUPS = {"project": "project_id", "account": "account_id"}
MAX_SERIES = 8
STATUSES = ("2xx", "4xx", "429", "529", "5xx", "none")
NONE_LABEL = "(none)"


@dataclass(slots=True)
class _Cell:
    requests: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    unpriced: int = 0

    def add(self, row: dict[str, Any]) -> None:
        self.requests += int(row["requests"])
        self.tokens += int(row["input_tokens"]) + int(row["output_tokens"])
        self.cost_usd += float(row["cost_usd"] or 0)
        self.unpriced += int(row["unpriced_requests"] or 0)

    def cost(self) -> float | None:
        """Unknown (None) when every request of the cell had no price, as everywhere else."""
        return summed_cost({"requests": self.requests, "cost_usd": self.cost_usd, "unpriced_requests": self.unpriced})


def buckets(name: str, now: datetime) -> tuple[timedelta, list[datetime]]:
    """The bucket and the start of each bucket, oldest first; the last one holds `now`."""
    bucket, count = SPANS[name]
    current = EPOCH + ((now - EPOCH) // bucket) * bucket
    return bucket, [current - (count - 1 - i) * bucket for i in range(count)]


def choose(raw: str | None, allowed: dict[str, Any], default: str) -> str:
    return raw if raw in allowed else default


async def charts(
    conn: AsyncConnection[Any], filters: Filters, *, bucket_name: str, by: str, now: datetime
) -> dict[str, Any]:
    bucket, starts = buckets(bucket_name, now)
    start, end = starts[0], starts[-1] + bucket
    index = {at: i for i, at in enumerate(starts)}
    rows = await repo.binned(conn, start, end, bucket, GROUPS[by], filters)
    totals: dict[str, _Cell] = {}
    for row in rows:
        totals.setdefault(row["key"] if row["key"] is not None else NONE_LABEL, _Cell()).add(row)
    ranked = sorted(totals, key=lambda k: (-totals[k].tokens, -totals[k].requests, k))
    kept = ranked[: MAX_SERIES - 1] if len(ranked) > MAX_SERIES else ranked
    labels = [*kept, "other"] if len(kept) < len(ranked) else kept
    cells = {label: [_Cell() for _ in starts] for label in labels}
    for row in rows:
        key = row["key"] if row["key"] is not None else NONE_LABEL
        cells[key if key in cells else "other"][index[row["at"]]].add(row)
    status = {s: [0] * len(starts) for s in STATUSES}
    for row in await repo.status_binned(conn, start, end, bucket, filters):
        status[row["status"]][index[row["at"]]] += int(row["requests"])
    return {
        "bucket": bucket_name,
        "by": by,
        "x": [int(at.timestamp()) for at in starts],
        "tokens": [{"label": label, "values": [c.tokens for c in cells[label]]} for label in labels],
        "cost": [{"label": label, "values": [c.cost() for c in cells[label]]} for label in labels],
        "unpriced": sum(c.unpriced for c in totals.values()),
        "status": [{"label": s, "values": status[s]} for s in STATUSES if any(status[s])],
        "totals": {
            label: {
                "requests": sum(c.requests for c in cells[label]),
                "tokens": sum(c.tokens for c in cells[label]),
                "cost_usd": sum(c.cost_usd for c in cells[label]),
                "unpriced_requests": sum(c.unpriced for c in cells[label]),
            }
            for label in labels
        },
    }


async def plan_context(
    conn: AsyncConnection[Any],
    filters: Filters,
    *,
    accounts: list[str],
    by_account: list[dict[str, Any]],
    series: list[dict[str, Any]],
    bucket_name: str | None,
    by: str | None,
    now: datetime,
) -> dict[str, Any]:
    """What the usage page adds for planning: the charts, and per account its current 5-hour sums
    beside what its latest reply headers say is left (nexus/usage/ratelimits.py)."""
    bucket_name = choose(bucket_name, SPANS, "hour")
    by = choose(by, GROUPS, "project")
    wanted = [filters.account_id] if filters.account_id is not None else accounts
    window = {row["account_id"]: row for row in by_account}
    found = await ratelimits.latest(conn, wanted, now)
    limits = [{"limits": a, "window": window.get(a.account_id)} for a in found]
    drawn = await charts(conn, filters, bucket_name=bucket_name, by=by, now=now)
    rolling = {"x": [int(p["at"].timestamp()) for p in series], "values": [int(p["output_tokens"]) for p in series]}
    chart_json = {**drawn, "rolling": rolling}
    return {
        "charts": drawn,
        "chart_json": chart_json,
        "chart_svgs": svg_chart.usage_svgs(chart_json),
        "chart_bucket": bucket_name,
        "chart_by": by,
        "account_limits": limits,
        "near_limit": [a for a in found if a.warning],
        "warn_left": ratelimits.WARN_LEFT,
    }
