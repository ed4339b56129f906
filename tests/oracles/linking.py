"""Reference implementation for tests only, not used in production: the linking facts of a request body.

A slow, plain transcription of `nexus_core/src/conversation/` (normalisation, the canonical stream,
prefix hashing, system hash, first/last user text) so a property test can check that both give the
same facts for any body. The stream grammar is documented in `nexus_core/src/conversation/digest.rs`.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson
import xxhash

WS = " \t\n\x0c\r"
OPEN, CLOSE = "<system-reminder>", "</system-reminder>"
HEAD_BYTES = 512
CONTINUATION_MARKER = "This session is being continued from a previous conversation"
BILLING_LINE = "x-anthropic-billing-header:"


def _find_ci(text: str, needle: str, start: int) -> int:
    """Like the Rust search: ASCII case-insensitive, so only ASCII letters fold."""
    n = len(needle)
    i = text.find("<", start)
    while i != -1:
        chunk = text[i : i + n]
        if len(chunk) == n and all(
            a == b or (a.isascii() and a.lower() == b) for a, b in zip(chunk, needle, strict=True)
        ):
            return i
        i = text.find("<", i + 1)
    return -1


def strip_reminders(text: str) -> str:
    out, copied = [], 0
    open_at = _find_ci(text, OPEN, 0)
    while open_at != -1:
        close = _find_ci(text, CLOSE, open_at + len(OPEN))
        if close == -1:
            break
        start = open_at
        while start > copied and text[start - 1] in WS:
            start -= 1
        out.append(text[copied:start])
        copied = close + len(CLOSE)
        open_at = _find_ci(text, OPEN, copied)
    out.append(text[copied:])
    return "".join(out)


def normalize_text(text: str) -> str:
    return strip_reminders(text).replace("\r\n", "\n").strip(WS)


def prompt_key(text: str) -> bytes:
    return xxhash.xxh3_128_digest(normalize_text(text).encode())


def head(text: str, limit: int = HEAD_BYTES) -> str:
    return text.encode()[:limit].decode("utf-8", "ignore")


class Stream:
    """The canonical byte stream, fed to a running xxh3-128."""

    def __init__(self) -> None:
        self.h = xxhash.xxh3_128()

    def put(self, data: bytes) -> None:
        self.h.update(data)

    def lp(self, data: bytes) -> None:
        self.put(struct.pack(">I", len(data)) + data)

    def json(self, value: Any) -> None:
        if value is None:
            self.put(b"n")
        elif value is True:
            self.put(b"t")
        elif value is False:
            self.put(b"f")
        elif isinstance(value, int):
            self.put(b"i")
            self.lp(str(value).encode())
        elif isinstance(value, float):
            self.put(b"d" + struct.pack(">d", value))
        elif isinstance(value, str):
            self.put(b"s")
            self.lp(value.encode())
        elif isinstance(value, list):
            self.put(b"[")
            for item in value:
                self.json(item)
            self.put(b"]")
        else:
            self.put(b"{")
            for key in sorted(value, key=lambda k: k.encode()):
                self.lp(key.encode())
                self.json(value[key])
            self.put(b"}")

    def block(self, block: tuple[Any, ...]) -> None:
        kind = block[0]
        if kind == "T":
            self.put(b"T")
            self.lp(block[1].encode())
        elif kind == "U":
            self.put(b"U")
            self.lp(block[1].encode())
            self.lp(block[2].encode())
            if not block[1]:
                self.json(block[3])
        elif kind == "R":
            self.put(b"R")
            self.lp(block[1].encode())
            self.put(b"E" if block[2] else b"-")
            for item in block[3]:
                self.block(item)
            self.put(b"r")
        elif kind == "I":
            self.put(b"I")
            self.lp(block[1].encode())
            self.lp(block[2].encode())
            self.lp(block[3])
        else:
            self.put(b"O")
            self.lp(block[1].encode())


def _str(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _text_block(text: str) -> list[tuple[Any, ...]]:
    normalized = normalize_text(text)
    return [("T", normalized)] if normalized else []


def _block(raw: Any, top: bool) -> list[tuple[Any, ...]]:
    if not isinstance(raw, dict):
        return [("O", "invalid")]
    kind = _str(raw.get("type"))
    if kind == "text":
        return _text_block(_str(raw.get("text")))
    if kind in ("thinking", "redacted_thinking"):
        return []
    if top and kind in ("tool_use", "server_tool_use", "mcp_tool_use"):
        return [("U", _str(raw.get("id")), _str(raw.get("name")), raw.get("input"))]
    if top and kind == "tool_result":
        content = raw.get("content")
        if content is None:
            items: list[tuple[Any, ...]] = []
        elif isinstance(content, str):
            items = _text_block(content)
        elif isinstance(content, list):
            items = [b for item in content for b in _block(item, False)]
        else:
            items = [("O", "invalid")]
        is_error = raw.get("is_error")
        return [("R", _str(raw.get("tool_use_id")), is_error is True, items)]
    if kind in ("image", "document"):
        source = raw.get("source")
        media_type, data = "", ""
        if isinstance(source, dict):
            media_type = _str(source.get("media_type"))
            for field in ("data", "url", "file_id"):
                if isinstance(source.get(field), str):
                    data = source[field]
                    break
        return [("I", kind, media_type, xxhash.xxh3_128_digest(data.encode()))]
    return [("O", kind)]


def _content_blocks(content: Any) -> list[tuple[Any, ...]]:
    if content is None:
        return []
    if isinstance(content, str):
        return _text_block(content)
    if isinstance(content, list):
        return [b for item in content for b in _block(item, True)]
    return [("O", "invalid")]


def _lines(text: str) -> list[str]:
    """Lines with their `\n` kept, split on `\n` only (as Rust's `split_inclusive('\n')`)."""
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _system(system: Any, facts: dict[str, Any]) -> None:
    if isinstance(system, str):
        texts = [system]
    elif isinstance(system, list):
        texts = [b["text"] for b in system if isinstance(b, dict) and isinstance(b.get("text"), str)]
    else:
        return
    facts["system_block_count"] = len(texts)
    kept = []
    for text in texts:
        lines = []
        for line in _lines(text):
            start = line.lstrip(" \t")
            if start[: len(BILLING_LINE)].lower() == BILLING_LINE and start[: len(BILLING_LINE)].isascii():
                facts["is_subagent"] |= "cc_is_subagent=true" in line
                if line.endswith("\n"):
                    lines.append("\n")
            else:
                lines.append(line)
        normalized = normalize_text("".join(lines))
        if normalized:
            kept.append(normalized)
    joined = "\n".join(kept)
    if joined:
        facts["system_hash"] = xxhash.xxh3_128_digest(joined.encode())
        facts["system_head"] = head(joined)


def analyze_request(body: bytes) -> dict[str, Any]:
    """The facts `nexus._core.analyze_request` computes (non-strict), as a dict of the same names."""
    parsed = orjson.loads(body)
    if not isinstance(parsed, dict):
        raise ValueError("request body must be a JSON object")
    facts: dict[str, Any] = {
        "model": parsed.get("model") if isinstance(parsed.get("model"), str) else None,
        "stream": parsed.get("stream") if isinstance(parsed.get("stream"), bool) else None,
        "message_count": 0,
        "system_message_count": 0,
        "prefix_hashes": b"",
        "kept_roles": b"",
        "system_hash": None,
        "system_block_count": 0,
        "system_head": "",
        "is_subagent": False,
        "has_tools": isinstance(parsed.get("tools"), list) and len(parsed["tools"]) > 0,
        "first_user_key": None,
        "first_user_head": "",
        "last_user_head": "",
        "continuation_text": None,
        "trimmed_hash": None,
    }
    if "system" in parsed:
        _system(parsed["system"], facts)
    messages = parsed.get("messages")
    if not isinstance(messages, list):
        return facts
    facts["message_count"] = len(messages)
    stream = Stream()
    hashes, roles = [], []
    seen_uses: set[str] = set()
    seen_results: set[str] = set()
    first_user = last_user = None
    trimmed = None  # the hash with the last message's last block left out, when it is a user message of 2+
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role", ""), str):
            continue
        role = message.get("role")
        if role == "system":
            facts["system_message_count"] += 1
            continue
        if role not in ("user", "assistant"):
            continue
        blocks = _content_blocks(message.get("content"))
        uses = [b[1] for b in blocks if b[0] == "U" and b[1]]
        results = [b[1] for b in blocks if b[0] == "R" and b[1]]
        repeats = any(i in seen_uses for i in uses) or any(i in seen_results for i in results)
        seen_uses.update(uses)
        seen_results.update(results)
        if repeats or not blocks:
            continue
        trimmed = None
        if role == "user" and len(blocks) > 1:
            before = Stream()
            before.h = stream.h.copy()
            before.put(b"Mu")
            for block in blocks[:-1]:
                before.block(block)
            trimmed = before.h.digest()
        stream.put(b"M" + (b"u" if role == "user" else b"a"))
        for block in blocks:
            stream.block(block)
        hashes.append(stream.h.digest())
        roles.append(role[0])
        if role == "user":
            text = "\n".join(b[1] for b in blocks if b[0] == "T")
            first_user = text if first_user is None else first_user
            last_user = text
    facts["prefix_hashes"] = b"".join(hashes)
    facts["kept_roles"] = "".join(roles).encode()
    if first_user is not None:
        facts["first_user_key"] = xxhash.xxh3_128_digest(first_user.encode())
        facts["first_user_head"] = head(first_user)
        if CONTINUATION_MARKER in first_user:
            facts["continuation_text"] = first_user
    if last_user is not None:
        facts["last_user_head"] = head(last_user)
    facts["trimmed_hash"] = trimmed
    return facts
