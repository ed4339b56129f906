"""The search box and filters of the conversation and request lists: read from the page's query string,
checked (a bad value is a 400 page, never ignored), and written back into the pager's links.

Dates come from `<input type="date">` (`YYYY-MM-DD`, a whole day: `date_to` includes that day) or
as full ISO 8601 date-times.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from nexus.api.contract import parse_datetime
from nexus.api.params import int_param
from nexus.conversations.search import Find, status_param

#: The query parameters the lists read, in the order the pager writes them.
NAMES = ("q", "project_id", "account_id", "model", "date_from", "date_to", "errors", "status", "min_ms")
_DAY = 10  # len("YYYY-MM-DD")


def read(query: dict[str, str], *, requests: bool) -> tuple[Find, dict[str, str]]:
    """The filters of a list page, and the parameters to carry into its links (empty ones dropped).
    `requests`: the requests list, which also filters by status and latency."""
    given = {name: query[name].strip() for name in NAMES if query.get(name, "").strip()}
    date_from = parse_datetime("date_from", given["date_from"]) if "date_from" in given else None
    date_to = None
    if "date_to" in given:
        date_to = parse_datetime("date_to", given["date_to"])
        if len(given["date_to"]) == _DAY:  # a day: up to its last microsecond
            date_to += timedelta(days=1, microseconds=-1)
    errors = given.get("errors") in ("1", "on", "true")
    status, min_ms = None, None
    if requests:
        status, errors_by_status = status_param(given.get("status"))
        errors = errors or errors_by_status
        if "min_ms" in given:
            min_ms = int_param({"min_ms": [given["min_ms"]]}, "min_ms", 0, 0, 86_400_000)
    else:
        given.pop("status", None)
        given.pop("min_ms", None)
    find = Find(
        q=given.get("q"),
        project_id=given.get("project_id"),
        account_id=given.get("account_id"),
        model=given.get("model"),
        date_from=date_from,
        date_to=date_to,
        errors_only=errors,
        status=status,
        min_duration_ms=min_ms,
    )
    if not errors:
        given.pop("errors", None)
    return find, given


def link(params: dict[str, Any], **more: str | None) -> dict[str, str]:
    """The parameters of a link: the page's filters plus `more`, without empty values."""
    return {k: str(v) for k, v in {**params, **more}.items() if v not in (None, "")}
