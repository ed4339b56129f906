"""Reference implementation for tests only, not used in production.

``ReferenceSseObserver`` is a slow, plain-Python twin of ``nexus._core.SseObserver`` (the Rust
observer in ``nexus_core/src/sse.rs``). It has the same interface and the same semantics, so tests
can check the Rust code against it on any stream split at any byte boundary:

- SSE framing per the WHATWG spec: LF, CRLF and CR line endings (a CR at the end of one chunk and
  an LF at the start of the next are one line ending); ``field: value`` with one optional space
  after the colon; ``:`` comments; ``data:`` lines joined with ``\\n``; a blank line dispatches; an
  event with no ``data:`` line is not dispatched; a leading UTF-8 BOM is ignored.
- At most one incomplete line is buffered. A line, or an event's joined data, longer than
  ``max_line_bytes`` is dropped together with its event and ``overflowed`` becomes true.
- An event's type is its JSON ``type`` string, else the SSE ``event:`` name. ``event_count``
  counts dispatched events; data that is not a JSON object counts in ``malformed_events``.
- ``message_delta.usage`` is cumulative: each non-null key replaces the previous value (never
  added). Every ``message_delta.delta`` key is applied to the rebuilt message.
- Hostile data is repaired, not dropped: data the parser refuses goes through ``safe_json``
  (``tests.oracles.safe``) and is parsed again; ``repairs`` names what was done. The Rust parser
  (serde_json) refuses what orjson refuses, plus nesting of 128 levels or more, which is checked
  here after orjson. A usage object holding a float is re-read the same way (exact digits for an
  integer past 64 bits); token counts are ints ``>= 0`` or whole floats, saturated at 2**64 - 1
  (``int_clamped``). Tool inputs are parsed the same way.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from tests.oracles.safe import names, safe_json

__all__ = ["DEFAULT_MAX_LINE_BYTES", "ReferenceSseObserver"]

DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024

_EOL = re.compile(rb"[\r\n]")
_BOM = b"\xef\xbb\xbf"
_U64_LIMIT = 2**64


# serde_json refuses data nested this deep (its default recursion limit); orjson allows 1024.
_SERDE_DEPTH = 128
_REFUSED = object()
_TOKEN_KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")


def _u64(v: object) -> int | None:
    return v if type(v) is int and 0 <= v < _U64_LIMIT else None


def _token_count(v: object) -> tuple[int, bool] | None:
    """A token count and whether it saturated: an int >= 0, or a whole float >= 0 (past 64 bits: 2**64 - 1)."""
    if type(v) is int:
        return (v, False) if 0 <= v < _U64_LIMIT else None
    if type(v) is float and v >= 0 and v.is_integer():
        return (_U64_LIMIT - 1, True) if v >= _U64_LIMIT else (int(v), False)
    return None


def _too_deep(value: object) -> bool:
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict | list):
            if depth >= _SERDE_DEPTH:
                return True
            stack.extend((item, depth + 1) for item in (v.values() if isinstance(v, dict) else v))
    return False


def _loads(data: bytes) -> Any:
    """The value, or ``_REFUSED`` for data the Rust observer's parser refuses."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return _REFUSED
    return _REFUSED if _too_deep(value) else value


def _repaired(data: bytes) -> tuple[Any, set[str]]:
    """The failure path: ``data`` as ``safe_json`` rewrites it, parsed (``_REFUSED`` if it cannot be)."""
    out, flags = safe_json(data)
    try:
        return orjson.loads(out), set(flags)
    except orjson.JSONDecodeError:
        return _REFUSED, set(flags)


def _holds_float(value: object) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if type(v) is float:
            return True
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def _usage_of(ev_type: str, ev: dict[str, Any]) -> dict[str, Any] | None:
    if ev_type == "message_start":
        msg = ev.get("message")
        usage = msg.get("usage") if isinstance(msg, dict) else None
    elif ev_type == "message_delta":
        usage = ev.get("usage")
    else:
        return None
    return usage if isinstance(usage, dict) else None


def _str(v: object) -> str | None:
    return v if isinstance(v, str) else None


def _parse_tool_input(raw: str) -> tuple[Any, set[str]]:
    value = _loads(raw.encode())
    if value is not _REFUSED:
        return value, set()
    value, flags = _repaired(raw.encode())
    return (raw if value is _REFUSED else value), flags


def _kind(block_type: object) -> str:
    if block_type == "text":
        return "text"
    if block_type == "thinking":
        return "thinking"
    if isinstance(block_type, str) and block_type.endswith("tool_use"):
        return "tool"
    return "other"


class _Block:
    __slots__ = ("citations", "index", "kind", "partial_json", "signature", "start", "text", "thinking")

    def __init__(self, index: int | None, start: dict[str, Any]) -> None:
        self.index = index
        self.start = start
        self.kind = _kind(start.get("type"))
        self.text = ""
        self.citations: list[Any] = []
        self.partial_json = ""
        self.thinking = ""
        self.signature = ""

    def render(self) -> dict[str, Any]:
        out = dict(self.start)
        if self.kind == "text":
            out["text"] = (_str(out.get("text")) or "") + self.text
            if self.citations:
                existing = out.get("citations")
                out["citations"] = (existing if isinstance(existing, list) else []) + self.citations
        elif self.kind == "tool":
            if self.partial_json:
                out["input"] = _parse_tool_input(self.partial_json)[0]
            else:
                out["input"] = self.start["input"] if "input" in self.start else {}
        elif self.kind == "thinking":
            out["thinking"] = (_str(out.get("thinking")) or "") + self.thinking
            out["signature"] = (_str(out.get("signature")) or "") + self.signature
        return out


class ReferenceSseObserver:
    """Pure-Python twin of ``nexus._core.SseObserver`` (reference for tests only)."""

    def __init__(self, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_line_bytes < 1:
            raise ValueError("invalid argument: max_line_bytes must be at least 1")
        self.max_line_bytes = max_line_bytes
        # framing
        self._line = bytearray()
        self._pending_cr = False
        self._discarding = False
        self._first_line = True
        self._event_name = b""
        self._data = bytearray()
        self._has_data = False
        self._event_poisoned = False
        # summary
        self.message_id: str | None = None
        self.model: str | None = None
        self.role: str | None = None
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.input_tokens = 0
        self.output_tokens = 0
        self.cache_creation_input_tokens = 0
        self.cache_read_input_tokens = 0
        self.event_count = 0
        self.malformed_events = 0
        self.content_blocks = 0
        self.saw_message_stop = False
        self.overflowed = False
        self.tool_uses: list[tuple[str, str]] = []
        self.error: tuple[str, str] | None = None
        self._repairs: set[str] = set()
        # message reconstruction
        self._message: dict[str, Any] | None = None
        self._usage: dict[str, Any] = {}
        self._usage_seen = False
        self._delta_fields: dict[str, Any] = {}
        self._blocks: list[_Block] = []

    # ----------------------------------------------------------------- framing
    def feed(self, chunk: bytes | bytearray | memoryview) -> int:
        data = bytes(chunk)
        before = self.event_count
        i = 0
        n = len(data)
        if self._pending_cr and n:
            self._pending_cr = False
            if data[0] == 0x0A:
                i = 1
        while i < n:
            m = _EOL.search(data, i)
            if m is None:
                self._buffer_partial(data[i:])
                break
            end = m.start()
            self._complete_line(data[i:end])
            if data[end] == 0x0D:
                if end + 1 < n:
                    i = end + 2 if data[end + 1] == 0x0A else end + 1
                else:
                    self._pending_cr = True
                    i = end + 1
            else:
                i = end + 1
        return self.event_count - before

    def _mark_overflow(self) -> None:
        self.overflowed = True
        self._event_poisoned = True

    def _buffer_partial(self, part: bytes) -> None:
        if self._discarding:
            return
        if len(self._line) + len(part) > self.max_line_bytes:
            self._line = bytearray()
            self._discarding = True
            self._mark_overflow()
            return
        self._line += part

    def _complete_line(self, tail: bytes) -> None:
        if self._discarding:
            self._discarding = False
            self._first_line = False
            return
        if len(self._line) + len(tail) > self.max_line_bytes:
            self._line = bytearray()
            self._first_line = False
            self._mark_overflow()
            return
        line = bytes(self._line) + tail
        self._line = bytearray()
        self._process_line(line)

    def _process_line(self, line: bytes) -> None:
        if self._first_line:
            self._first_line = False
            line = line.removeprefix(_BOM)
        if not line:
            self._dispatch()
            return
        if line[0] == 0x3A:  # ':' comment
            return
        field, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if field == b"event":
            self._event_name = value
        elif field == b"data":
            extra = len(value) + (1 if self._has_data else 0)
            if len(self._data) + extra > self.max_line_bytes:
                self._mark_overflow()
                return
            if self._has_data:
                self._data += b"\n"
            self._data += value
            self._has_data = True

    def _dispatch(self) -> None:
        if self._has_data and not self._event_poisoned:
            self.event_count += 1
            data = bytes(self._data)
            ev = _loads(data)
            if ev is _REFUSED:
                ev, flags = _repaired(data)
                self._repairs |= flags
                if isinstance(ev, dict):
                    self._handle_event(ev, self._event_name)
                else:
                    self.malformed_events += 1
            elif isinstance(ev, dict):
                usage = _usage_of(self._event_type(ev, self._event_name), ev)
                if usage is not None and _holds_float(usage):
                    self._handle_inexact(ev, usage, data)
                else:
                    self._handle_event(ev, self._event_name)
            else:
                self.malformed_events += 1
        self._event_name = b""
        self._data = bytearray()
        self._has_data = False
        self._event_poisoned = False

    # ------------------------------------------------------------------ events
    def _find_block(self, index: int | None) -> _Block | None:
        if index is None:
            return None
        for block in reversed(self._blocks):
            if block.index == index:
                return block
        return None

    def _handle_inexact(self, ev: dict[str, Any], usage: dict[str, Any], data: bytes) -> None:
        """A usage holding a float: handled as ``safe_json`` rewrites it, counts from the floats."""
        floats = [(k, v) for k, v in usage.items() if type(v) is float]
        out, flags = safe_json(data)
        exact = orjson.loads(out) if flags else None
        if isinstance(exact, dict):
            self._repairs |= set(flags)
            self._handle_event(exact, self._event_name)
        else:
            self._handle_event(ev, self._event_name)
        for k, v in floats:
            self._set_token_field(k, v)

    def _set_token_field(self, key: str, value: object) -> None:
        counted = _token_count(value)
        if counted is not None and key in _TOKEN_KEYS:
            setattr(self, key, counted[0])
            if counted[1]:
                self._repairs.add("int_clamped")

    @staticmethod
    def _event_type(ev: dict[str, Any], sse_name: bytes) -> str:
        ev_type = _str(ev.get("type"))
        return sse_name.decode("utf-8", "replace") if ev_type is None else ev_type

    def _handle_event(self, ev: dict[str, Any], sse_name: bytes) -> None:
        ev_type = self._event_type(ev, sse_name)
        if ev_type == "message_start":
            msg = ev.get("message")
            if isinstance(msg, dict):
                self.message_id = _str(msg.get("id"))
                self.model = _str(msg.get("model"))
                self.role = _str(msg.get("role"))
                usage = msg.get("usage")
                if isinstance(usage, dict):
                    self._usage_seen = True
                    self._usage = dict(usage)
                    for k, v in usage.items():
                        self._set_token_field(k, v)
                self._message = msg
        elif ev_type == "content_block_start":
            start = ev.get("content_block")
            if isinstance(start, dict):
                block = _Block(_u64(ev.get("index")), start)
                self.content_blocks += 1
                if block.kind == "tool":
                    self.tool_uses.append((_str(start.get("id")) or "", _str(start.get("name")) or ""))
                self._blocks.append(block)
        elif ev_type == "content_block_delta":
            found = self._find_block(_u64(ev.get("index")))
            delta = ev.get("delta")
            if found is None or not isinstance(delta, dict):
                return
            block = found
            dtype = delta.get("type")
            if dtype == "text_delta" and block.kind == "text":
                block.text += _str(delta.get("text")) or ""
            elif dtype == "citations_delta" and block.kind == "text":
                if "citation" in delta:
                    block.citations.append(delta["citation"])
            elif dtype == "input_json_delta" and block.kind == "tool":
                block.partial_json += _str(delta.get("partial_json")) or ""
            elif dtype == "thinking_delta" and block.kind == "thinking":
                block.thinking += _str(delta.get("thinking")) or ""
            elif dtype == "signature_delta" and block.kind == "thinking":
                block.signature += _str(delta.get("signature")) or ""
        elif ev_type == "content_block_stop":
            pass  # tool input is parsed when rendered; same result as parsing here
        elif ev_type == "message_delta":
            delta = ev.get("delta")
            if isinstance(delta, dict):
                for k, v in delta.items():
                    if k == "stop_reason":
                        self.stop_reason = _str(v)
                    elif k == "stop_sequence":
                        self.stop_sequence = _str(v)
                    self._delta_fields[k] = v
            usage = ev.get("usage")
            if isinstance(usage, dict):
                self._usage_seen = True
                for k, v in usage.items():
                    if v is None:
                        continue  # null means "not reported", it never erases a count
                    self._set_token_field(k, v)
                    self._usage[k] = v
        elif ev_type == "message_stop":
            self.saw_message_stop = True
        elif ev_type == "error":
            err = ev.get("error")
            if isinstance(err, dict):
                self.error = (_str(err.get("type")) or "", _str(err.get("message")) or "")
            else:
                self.error = ("", "")
        # ping and unknown event types are tolerated

    # ------------------------------------------------------------------ output
    @property
    def repairs(self) -> list[str]:
        flags = set(self._repairs)
        for block in self._blocks:
            if block.kind == "tool" and block.partial_json:
                flags |= _parse_tool_input(block.partial_json)[1]
        return names(flags)

    def usage_json(self) -> bytes | None:
        return orjson.dumps(self._usage) if self._usage_seen else None

    def message_json(self) -> bytes | None:
        if self._message is None:
            return None
        msg = dict(self._message)
        msg["content"] = [b.render() for b in self._blocks]
        msg.update(self._delta_fields)
        if self._usage_seen:
            msg["usage"] = self._usage
        return orjson.dumps(msg)
