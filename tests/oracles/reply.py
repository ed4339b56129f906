"""Reference implementation for tests only, not used in production.

How the Python code read an upstream JSON reply before ``nexus._core.read_reply`` replaced it (one
Rust call per reply, its result carried on the record as ``ExchangeRecord.reply``). Each part is the
code it replaces, kept as it was:

- ``parse``: ``nexus.storage.records._parse`` (orjson, else the value ``safe_json`` repairs it into);
- the usage part: ``records._cells`` (``usage_json`` as ``records._dumps`` writes it, the four counts
  as ``records._count`` / ``nexus.usage.counts.stored_count`` give them, the ``usage_not_integer``
  flag, the tool calls counted only with a usage);
- ``message_id`` / ``model`` / ``stop_reason``: ``nexus.proxy.app._reply_facts``;
- ``launches``: ``nexus.conversations.linker.spawned_prompts`` + ``prompt_key``, with two inputs that
  used to raise now read as no launch (a ``content`` that is a number, a ``name`` that is a list or an
  object: ``TypeError`` out of the request's completion);
- ``text``: ``nexus.conversations.compaction.reply_text``.

Known differences, by design: a ``usage`` nested past 254 levels (orjson cannot write it; ``_dumps``
fell back to ``json.dumps``'s spaced, ASCII-escaped form) is written compact by the reader; a tool
call id that is a list or an object holding non-printable non-ASCII text is not quoted exactly as
Python's ``repr`` (the generated ids keep such containers ASCII).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from nexus._core import prompt_key, safe_json

SUBAGENT_TOOLS = frozenset({"Agent", "Task"})
_WS = re.compile(r"\s+")
_COUNTS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def parse(data: bytes | None) -> Any:
    """``records._parse``."""
    if not data:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    repaired, _ = safe_json(data)
    try:
        return orjson.loads(repaired)
    except orjson.JSONDecodeError:
        return None


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value, ensure_ascii=True, default=str).encode()


def stored_count(value: object) -> int | None:
    """``nexus.usage.counts.stored_count``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    else:
        return None
    return number if number >= 0 else None


def canonical(text: str) -> str:
    return _WS.sub(" ", text).strip().lower()


def reply_text(message: Any) -> str:
    """``compaction.reply_text``."""
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        return ""
    parts = [b["text"] for b in message["content"] if isinstance(b, dict) and isinstance(b.get("text"), str)]
    return canonical("\n".join(parts))


def spawned_prompts(message: dict[str, Any]) -> list[tuple[str, str]]:
    """``linker.spawned_prompts`` (a content that is no list holds no block; a name must be a str)."""
    out = []
    content = message.get("content") or []
    for block in content if isinstance(content, list | str | dict) else []:
        if (
            isinstance(block, dict)
            and block.get("type") == "tool_use"
            and isinstance(block.get("name"), str)
            and block.get("name") in SUBAGENT_TOOLS
        ):
            tool_input = block.get("input")
            if isinstance(tool_input, dict) and isinstance(tool_input.get("prompt"), str):
                out.append((str(block.get("id") or ""), tool_input["prompt"]))
    return out


def facts_of(message: Any) -> dict[str, Any]:
    """Every fact of a parsed reply, named as ``nexus._core.Reply``'s getters."""
    facts: dict[str, Any] = {
        "message_id": None,
        "model": None,
        "stop_reason": None,
        "usage_json": None,
        "usage_not_integer": False,
        "tool_call_count": None,
        "launches": [],
        "text": "",
        **dict.fromkeys(_COUNTS),
    }
    if not isinstance(message, dict):
        return facts
    for name, key in (("message_id", "id"), ("model", "model"), ("stop_reason", "stop_reason")):
        value = message.get(key)
        facts[name] = value if isinstance(value, str) else None
    usage = message.get("usage")
    if isinstance(usage, dict):
        facts["usage_json"] = _dumps(usage)
        for key in _COUNTS:
            value = usage.get(key)
            if value is None:
                continue
            count = stored_count(value)
            facts[key] = count
            if count is None:
                facts["usage_not_integer"] = True
        content = message.get("content")
        tools = 0
        if isinstance(content, list):
            tools = sum(1 for b in content if isinstance(b, dict) and str(b.get("type", "")).endswith("tool_use"))
        facts["tool_call_count"] = tools
    facts["launches"] = [(tool_use_id, prompt_key(prompt)) for tool_use_id, prompt in spawned_prompts(message)]
    facts["text"] = reply_text(message)
    return facts


def read_reply(body: bytes | None) -> dict[str, Any]:
    """What the Python paths read of one JSON reply body."""
    return facts_of(parse(body))
