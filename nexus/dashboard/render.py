"""Templates and the shaping of stored data for display.

Jinja2 with autoescaping on for every template: message text, tool inputs and headers are untrusted
and are only ever shown as text (no markdown, no HTML passthrough), so nothing a model or a client
wrote can run in the page.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

DASH = "\u2013"  # shown for a missing value
#: Response headers never shown, even though only upstream response headers are stored.
HIDDEN_RESPONSE_HEADERS = frozenset({"set-cookie"})


def number(value: object) -> str:
    if value is None:
        return DASH
    if isinstance(value, float):
        return f"{value:,.1f}"
    try:
        return f"{int(value):,}"  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return str(value)


def when(value: object) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return DASH if value is None else str(value)


def pretty_json(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NAIVE_UTC, default=str).decode()


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = number
    env.filters["when"] = when
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
