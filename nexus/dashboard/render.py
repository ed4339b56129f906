"""Templates and the shaping of stored data for display.

Jinja2 with autoescaping on for every template: message text, tool inputs and headers are untrusted
and are only ever shown as text (no markdown, no HTML passthrough), so nothing a model or a client
wrote can run in the page.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from jinja2 import Environment, FileSystemLoader, Undefined, select_autoescape
from markupsafe import Markup, escape

from nexus.pricing.sql import summed_cost
from nexus.usage.counts import token_count

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

DASH = "\u2013"  # shown for a missing value
#: Response headers never shown, even though only upstream response headers are stored.
HIDDEN_RESPONSE_HEADERS = frozenset({"set-cookie"})


#: How much of an odd stored value the request page shows (a 1.5e300 count is 301 digits).
SHORT_VALUE = 40


def number(value: object) -> str:
    """A count with thousands separators, whatever it is: a sum past 64 bits, a missing template
    value, or something that is not a number at all (shown as text)."""
    if value is None or isinstance(value, Undefined):
        return DASH
    if isinstance(value, float):
        return f"{value:,.1f}"
    try:
        return f"{int(value):,}"  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return short(value)


def usd(value: object) -> str:
    """A cost in US dollars; "unknown" (never $0) when the model had no price."""
    if value is None or isinstance(value, Undefined):
        return "unknown"
    try:
        amount = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return short(value)
    if amount == 0:
        return "$0"
    return f"${amount:,.4f}" if abs(amount) < 1 else f"${amount:,.2f}"


def cost_of(row: object) -> str:
    """The cost of a row of summed usage (`cost_usd`, `unpriced_requests`, `requests`): a total, a
    lower bound when some requests had no price ("$1.20 + 3 unpriced"), or "unknown"."""
    if not isinstance(row, Mapping) or "unpriced_requests" not in row:
        return "unknown"
    total = usd(summed_cost(dict(row)))
    unpriced = int(row["unpriced_requests"] or 0)
    if unpriced and total != "unknown":
        return f"{total} + {unpriced:,} unpriced"
    return total


def daily_rows(rows: object) -> Markup:
    """The rows of /usage's daily table, written in one pass: a month of day x account x project x
    model is ~5,600 rows at 1,000,000 stored requests, and the template's loop of ten filtered cells
    each took ~130 ms of the page; this writes the same cells in about a third of that. Text is
    escaped; numbers go through `number` and the cost through `cost_of`, as in the template."""
    if not isinstance(rows, list):
        return Markup("")
    out = []
    for d in rows:
        account, model = d["account_id"], d["model"]
        out.append(
            f"<tr><td>{escape(d['date'])}</td><td>{escape(account) if account else DASH}</td>"
            f"<td>{escape(d['project_id'])}</td><td>{escape(model) if model else DASH}</td>"
            f'<td class="n">{number(d["requests"])}</td><td class="n">{number(d["input_tokens"])}</td>'
            f'<td class="n">{number(d["output_tokens"])}</td><td class="n">{number(d["cache_read_input_tokens"])}</td>'
            f'<td class="n">{number(d["cache_creation_input_tokens"])}</td>'
            f'<td class="n">{escape(cost_of(d))}</td></tr>\n'
        )
    return Markup("".join(out))  # noqa: S704 (every value above is escaped or digits)


def when(value: object) -> str:
    """A time as `<time datetime="...Z">` with its UTC text: /static/time.js shows it in the browser's
    time zone, with the UTC text on hover (without JavaScript it stays UTC)."""
    if isinstance(value, datetime):
        at = value.astimezone(UTC)
        iso = at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return Markup(f'<time datetime="{iso}">{at.strftime("%Y-%m-%d %H:%M:%S")}</time>')  # noqa: S704 (digits only)
    return DASH if value is None else str(value)


def pretty_json(value: object) -> str:
    """Indented JSON of a stored value. orjson refuses integers past 64 bits, which stored JSON may
    hold (a 30-digit usage count, 1.5e300 read back as 301 digits): the standard library writes those
    with every digit, and what neither can write is shown as text, so a page always renders."""
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NAIVE_UTC, default=str).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        pass
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):
        return f"[not shown as JSON: {type(value).__name__}]"


def short(value: object) -> str:
    """A stored value as compact JSON text (a string keeps its quotes), cut to `SHORT_VALUE` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):
        text = f"[{type(value).__name__}]"
    return text if len(text) <= SHORT_VALUE else text[: SHORT_VALUE - 1] + "\u2026"


def usage_cell(value: object) -> dict[str, Any]:
    """One count from the stored `usage` JSON for display: `text`, and `odd` when it is present but
    not a token count (`nexus.usage.counts.token_count`), which the sums count as 0."""
    if value is None:
        return {"text": DASH, "odd": False}
    count = token_count(value)
    if count is not None:
        return {"text": f"{count:,}", "odd": False}
    return {"text": short(value), "odd": True}


#: The counts that have a column of their own, beside their value in the `usage` JSON.
COLUMN_COUNTS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


def request_usage(usage: Any) -> dict[str, Any]:
    """What the request page shows of a row's stored `usage` JSON, whatever it holds.

    `reported`: per column count, the JSON value when it is not a token count (the column holds what
    storage made of it: clamped, or NULL), so the page can show both. `split`: the 5-minute / 1-hour
    cells of `usage.cache_creation` when it is a non-empty object (a missing key is a dash);
    `split_odd`: the cell for a `cache_creation` that is not an object. `odd`: the cell for a `usage`
    that is not an object at all.
    """
    out: dict[str, Any] = {"reported": {}, "split": None, "split_odd": None, "odd": None}
    if usage is None:
        return out
    if not isinstance(usage, dict):
        out["odd"] = usage_cell(usage) | {"odd": True}
        return out
    for key in COLUMN_COUNTS:
        cell = usage_cell(usage.get(key))
        if cell["odd"]:
            out["reported"][key] = cell
    found = usage.get("cache_creation")
    if isinstance(found, dict):
        if found:
            out["split"] = {
                "m5": usage_cell(found.get("ephemeral_5m_input_tokens")),
                "h1": usage_cell(found.get("ephemeral_1h_input_tokens")),
            }
    elif found is not None:
        out["split_odd"] = usage_cell(found) | {"odd": True}
    return out


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = number
    env.filters["when"] = when
    env.filters["usd"] = usd
    env.filters["cost"] = cost_of
    env.filters["daily_rows"] = daily_rows
    env.filters["json"] = pretty_json
    return env


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
            elif isinstance(block, dict):
                parts.append(f"[{block.get('type', 'block')}]")
        return "\n".join(parts)
    return pretty_json(content)


def blocks(content: Any) -> list[dict[str, Any]]:
    """One message's content as display blocks: `kind` in text, tool_use, tool_result, thinking, image, other."""
    if isinstance(content, str):
        return [{"kind": "text", "text": content}]
    if not isinstance(content, list):
        return [{"kind": "other", "text": pretty_json(content)}]
    out: list[dict[str, Any]] = []
    for block in content:
        if not isinstance(block, dict):
            out.append({"kind": "other", "text": pretty_json(block)})
            continue
        kind = str(block.get("type", ""))
        if kind == "text":
            out.append({"kind": "text", "text": str(block.get("text", ""))})
        elif kind.endswith("tool_use"):
            out.append({"kind": "tool_use", "name": block.get("name", ""), "text": pretty_json(block.get("input"))})
        elif kind.endswith("tool_result"):
            label = "tool error" if block.get("is_error") else "tool result"
            out.append({"kind": "tool_result", "name": label, "text": _text_of(block.get("content", ""))})
        elif kind in ("thinking", "redacted_thinking"):
            out.append({"kind": "thinking", "text": str(block.get("thinking", "[redacted]"))})
        elif kind in ("image", "document"):
            found = block.get("source")
            source: dict[str, Any] = found if isinstance(found, dict) else {}
            size = len(str(source.get("data", ""))) * 3 // 4
            out.append({"kind": "image", "text": f"[{kind} {source.get('media_type', '')} ~{size:,} bytes]"})
        else:
            out.append({"kind": "other", "name": kind, "text": pretty_json(block)})
    return out


def conversation(request_body: Any, response_body: Any) -> dict[str, Any]:
    """The request rebuilt as a conversation: system prompt, messages, then the answer."""
    body = request_body if isinstance(request_body, dict) else {}
    system = body.get("system")
    messages = []
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            messages.append({"role": str(message.get("role", "?")), "blocks": blocks(message.get("content"))})
        else:
            messages.append({"role": "?", "blocks": blocks(message)})
    answer = None
    if isinstance(response_body, dict) and response_body.get("type") == "message":
        answer = {"role": "assistant", "blocks": blocks(response_body.get("content"))}
    offered = body.get("tools")
    tools: list[Any] = offered if isinstance(offered, list) else []
    return {
        "system": blocks(system) if system else [],
        "messages": messages,
        "answer": answer,
        "tool_names": [t.get("name", "?") for t in tools if isinstance(t, dict)],
    }


def shown_response_headers(headers: Any) -> dict[str, Any]:
    if not isinstance(headers, dict):
        return {}
    return {k: v for k, v in headers.items() if k.lower() not in HIDDEN_RESPONSE_HEADERS}


def sparkline(values: list[int], width: int = 720, height: int = 120) -> dict[str, Any]:
    """SVG polyline points for a series (drawn server-side: no chart library, no script)."""
    if not values:
        return {"points": "", "max": 0, "width": width, "height": height}
    top = max(values) or 1
    step = width / max(1, len(values) - 1)
    pts = " ".join(f"{i * step:.1f},{height - v / top * (height - 4) - 2:.1f}" for i, v in enumerate(values))
    return {"points": pts, "max": max(values), "width": width, "height": height}
