"""The analysis a model must return, checked before anything is stored.

The model's reply is hostile input like any other byte from outside: it may be prose, a JSON array, a
JSON object with the wrong types, megabytes of text, NUL characters PostgreSQL refuses, or nesting deep
enough to hurt a reader. A reply is accepted only as one JSON object (bare, or in one markdown code
block) whose six known keys are strings or lists of strings within size limits, validated by a msgspec
Struct; unknown extra keys are kept (a newer prompt may ask for more), bounded in number, size and depth.
Everything else raises `InvalidReply`, which the worker retries and finally stores as `failed` with the
raw text.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import orjson

#: The keys every analysis has, in the order they are shown.
KEYS = ("summary", "goals", "outcome", "keyDecisions", "problems", "suggestions")
TITLES = {
    "summary": "Summary",
    "goals": "Goals",
    "outcome": "Outcome",
    "keyDecisions": "Key decisions",
    "problems": "Problems",
    "suggestions": "Suggestions",
}
#: Longest reply text looked at (a longer one is refused, not cut: a cut JSON object is no object).
MAX_REPLY_CHARS = 256 * 1024
#: Longest raw reply kept with a failed job.
MAX_RAW_CHARS = 64 * 1024
MAX_TEXT = 20_000
MAX_ITEMS = 100
MAX_ITEM = 5_000
MAX_EXTRA_KEYS = 20
MAX_EXTRA_BYTES = 16 * 1024
MAX_DEPTH = 8

_FENCE = re.compile(r"```(?:json|JSON)?[ \t]*\r?\n(.*?)\r?\n?```", re.S)

Text = str | list[str]


class Analysis(msgspec.Struct, forbid_unknown_fields=False):
    """The six keys, each a string or a list of strings (unknown keys are checked apart)."""

    summary: Text
    goals: Text
    outcome: Text
    keyDecisions: Text
    problems: Text
    suggestions: Text


class InvalidReply(ValueError):
    """The reply is not an analysis; the message says why (shown with the failed job)."""


def clean_text(text: str) -> str:
    """Text PostgreSQL can store: no NUL, no lone surrogate."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    return text.encode("utf-8", "replace").decode("utf-8") if _has_surrogate(text) else text


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def raw_excerpt(text: str) -> str:
    """What is kept of a reply that was refused: bounded and storable."""
    if len(text) > MAX_RAW_CHARS:
        text = text[:MAX_RAW_CHARS] + f"\n…[{len(text) - MAX_RAW_CHARS} more characters not kept]"
    return clean_text(text)


def _json_text(reply: str) -> str:
    """The JSON in the reply: the reply itself, or the one fenced code block it holds."""
    stripped = reply.strip()
    if stripped.startswith("{"):
        return stripped
    blocks = _FENCE.findall(stripped)
    if len(blocks) == 1:
        return str(blocks[0]).strip()
    if len(blocks) > 1:
        raise InvalidReply("the reply holds several code blocks; one JSON object was asked for")
    raise InvalidReply("the reply is not a JSON object")


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _check_text(key: str, value: Text) -> Text:
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise InvalidReply(f"{key} is longer than {MAX_TEXT} characters")
        return clean_text(value)
    if len(value) > MAX_ITEMS:
        raise InvalidReply(f"{key} has more than {MAX_ITEMS} items")
    if any(len(item) > MAX_ITEM for item in value):
        raise InvalidReply(f"an item of {key} is longer than {MAX_ITEM} characters")
    return [clean_text(item) for item in value]


def parse_reply(reply: str) -> dict[str, Any]:
    """The validated analysis (known keys first, then the extra ones), or `InvalidReply`."""
    if len(reply) > MAX_REPLY_CHARS:
        raise InvalidReply(f"the reply is longer than {MAX_REPLY_CHARS} characters")
    text = _json_text(reply)
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidReply(f"the reply is not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(value, dict):
        raise InvalidReply(f"the reply is a JSON {type(value).__name__}, not an object")
    try:
        known = msgspec.convert(value, Analysis)
    except msgspec.ValidationError as exc:
        raise InvalidReply(f"the reply's JSON is not an analysis: {str(exc)[:200]}") from None
    result: dict[str, Any] = {key: _check_text(key, getattr(known, key)) for key in KEYS}
    extras = {k: v for k, v in value.items() if k not in KEYS}
    if len(extras) > MAX_EXTRA_KEYS:
        raise InvalidReply(f"the reply has more than {MAX_EXTRA_KEYS} extra keys")
    for key, extra in extras.items():
        if len(key) > 100 or _depth(extra) > MAX_DEPTH or len(orjson.dumps(extra)) > MAX_EXTRA_BYTES:
            raise InvalidReply(f"the extra key {key[:40]!r} is too long, too large or nested too deep")
        result[clean_text(key)] = _clean(extra)
    return result


def items(value: Any) -> list[str]:
    """A known key's value as a list of lines (a string is one line)."""
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [orjson.dumps(value).decode()]


def to_markdown(data: dict[str, Any]) -> str:
    """The analysis as markdown (`analysis_content`, the reference system's `content`)."""
    parts: list[str] = []
    for key in [*KEYS, *(k for k in data if k not in KEYS)]:
        lines = items(data.get(key))
        if not lines:
            continue
        title = TITLES.get(key, key)
        if isinstance(data.get(key), str):
            parts.append(f"## {title}\n\n{lines[0]}")
        else:
            parts.append(f"## {title}\n\n" + "\n".join(f"- {line}" for line in lines))
    return "\n\n".join(parts) + "\n"
