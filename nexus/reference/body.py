"""Reference implementation for tests only, not used in production: the content-addressed body split.

A small JSON span scanner finds each top-level field's exact bytes (nothing is re-serialised), the
same way the Rust splitter (`nexus._core.split_body`) must, so the two can be compared key for key.
"""

from __future__ import annotations

import orjson
import xxhash

WS = b" \t\r\n"


def _skip_ws(data: bytes, i: int) -> int:
    while i < len(data) and data[i] in WS:
        i += 1
    return i


def _string_end(data: bytes, i: int) -> int:
    i += 1
    while data[i] != 0x22:  # "
        i += 2 if data[i] == 0x5C else 1  # backslash escapes the next byte
    return i + 1


def _value_end(data: bytes, i: int) -> int:
    c = data[i]
    if c == 0x22:
        return _string_end(data, i)
    if c in b"[{":
        depth = 0
        while True:
            c = data[i]
            if c == 0x22:
                i = _string_end(data, i)
                continue
            if c in b"[{":
                depth += 1
            elif c in b"]}":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
    while i < len(data) and data[i] not in b",]}" and data[i] not in WS:
        i += 1
    return i


def top_level_fields(body: bytes) -> list[tuple[str, bytes]]:
    """The body's fields with the exact bytes of each value, in order."""
    parsed = orjson.loads(body)  # validates; also rejects non-UTF-8
    if not isinstance(parsed, dict):
        raise ValueError("request body is not a JSON object")
    out: list[tuple[str, bytes]] = []
    i = _skip_ws(body, 0) + 1
    while True:
        i = _skip_ws(body, i)
        if body[i] == 0x7D:  # }
            return out
        end = _string_end(body, i)
        name = orjson.loads(body[i:end])
        i = _skip_ws(body, end) + 1  # past ':'
        i = _skip_ws(body, i)
        end = _value_end(body, i)
        out.append((name, body[i:end]))
        i = _skip_ws(body, end)
        if body[i] == 0x2C:  # ,
            i += 1


def _array_items(raw: bytes) -> list[bytes]:
    items, i = [], _skip_ws(raw, 1)
    while raw[i] != 0x5D:  # ]
        end = _value_end(raw, i)
        items.append(raw[i:end])
        i = _skip_ws(raw, end)
        if raw[i] == 0x2C:
            i = _skip_ws(raw, i + 1)
    return items


def content_key(json: bytes) -> bytes:
    return xxhash.xxh3_128_digest(json)


def split_body(body: bytes) -> dict[str, object]:
    envelope: list[bytes] = []
    parts: dict[bytes, tuple[int, bytes]] = {}
    out: dict[str, object] = {"system_key": None, "tools_key": None, "message_keys": None}

    def add(kind: int, raw: bytes) -> bytes:
        key = content_key(raw)
        parts.setdefault(key, (kind, raw))
        return key

    for name, raw in top_level_fields(body):
        if name == "system":
            out["system_key"] = add(1, raw)
        elif name == "tools":
            out["tools_key"] = add(2, raw)
        elif name == "messages" and raw[:1] == b"[":
            out["message_keys"] = [add(0, item) for item in _array_items(raw)]
        else:
            envelope.append(orjson.dumps(name) + b":" + raw)
    out["envelope"] = b"{" + b",".join(envelope) + b"}"
    out["parts"] = [(k, kind, raw) for k, (kind, raw) in parts.items()]
    return out
