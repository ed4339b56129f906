"""Reference implementation for tests only, not used in production: JSON and text made safe for PostgreSQL.

The pure-Python twin of ``nexus_core/src/safe.rs`` (``nexus._core.safe_json``, ``safe_text``,
``json_as_text``), written from the same rules but in another way (regular expressions for the tokens,
the text escapes composed from ``safe_text``), so that the property tests comparing the two byte for byte
check the rules rather than one transcription of them. No recursion: an explicit stack, any depth.
"""

from __future__ import annotations

import math
import re

REPAIR_NAMES = (
    "nul_escaped",
    "surrogate_escaped",
    "invalid_utf8",
    "control_escaped",
    "number_as_text",
    "depth_limited",
    "not_json",
    "int_clamped",
    "stored_as_text",
)
MAX_JSON_DEPTH = 128

_WS = re.compile(rb"[ \t\n\r]*")
_NUMBER = re.compile(rb"-?(0|[1-9][0-9]*)(?:\.([0-9]+))?(?:[eE]([+-]?)([0-9]+))?")
_STRING = re.compile(rb'"((?:[^"\\]++|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*+)"')
_LITERAL = re.compile(rb"true|false|null")
# Inside a string body: a \u escape, another escape, a raw control byte, a run of non-ASCII bytes.
_STRING_PART = re.compile(rb"\\u([0-9a-fA-F]{4})|\\.|([\x00-\x1f])|([\x80-\xff]+)", re.DOTALL)
_LOW_ESCAPE = re.compile(rb"\\u[dD][c-fC-F][0-9a-fA-F]{2}")
# Bytes that are not UTF-8, as `surrogateescape` decodes them: surrogatepass surrogates, or one byte.
_UNDECODABLE = re.compile(r"\udced[\udca0-\udcbf][\udc80-\udcbf]|[\udc80-\udcff]")
_JSON_SPECIAL = re.compile(r'["\\\x00-\x1f]')


def names(flags: set[str]) -> list[str]:
    """The flags in their fixed order."""
    return [n for n in REPAIR_NAMES if n in flags]


def _visible(data: bytes, flags: set[str]) -> str:
    """Decode ``data``, each undecodable spot as visible text: ``\\udXXX`` for a surrogate as
    ``surrogatepass`` encodes it, ``\\xNN`` for any other byte."""

    def one(m: re.Match[str]) -> str:
        s = m.group()
        if len(s) == 3:
            flags.add("surrogate_escaped")
            unit = 0xD000 | ((ord(s[1]) & 0x3F) << 6) | (ord(s[2]) & 0x3F)
            return f"\\u{unit:04x}"
        flags.add("invalid_utf8")
        return f"\\x{ord(s) - 0xDC00:02X}"

    return _UNDECODABLE.sub(one, data.decode("utf-8", "surrogateescape"))


def _text(data: bytes, flags: set[str]) -> str:
    text = _visible(data, flags)
    if "\x00" in text:
        flags.add("nul_escaped")
        text = text.replace("\x00", "\\u0000")
    return text


def safe_text(data: bytes) -> tuple[bytes, list[str]]:
    """``data`` as PostgreSQL text: NUL as ``\\u0000``, undecodable bytes as ``\\udXXX``/``\\xNN``."""
    flags: set[str] = set()
    return _text(data, flags).encode(), names(flags)


def _json_string(data: bytes, flags: set[str]) -> bytes:
    """``data`` as one JSON string that decodes to its safe text."""

    def escape(m: re.Match[str]) -> str:
        c = m.group()
        return {'"': '\\"', "\\": "\\\\"}.get(c) or f"\\u{ord(c):04x}"

    return b'"' + _JSON_SPECIAL.sub(escape, _text(data, flags)).encode() + b'"'


def json_as_text(data: bytes) -> tuple[bytes, list[str]]:
    """The last resort: ``data`` as one JSON string, flagged ``stored_as_text``."""
    flags = {"stored_as_text"}
    return _json_string(data, flags), names(flags)


def _repair_string(body: bytes, flags: set[str]) -> bytes:
    """A string token's body (escapes well formed) rewritten with visible escapes, quotes added."""
    out = bytearray(b'"')
    pos = 0
    while m := _STRING_PART.search(body, pos):
        out += body[pos : m.start()]
        pos = m.end()
        hex4, control, high = m.group(1), m.group(2), m.group(3)
        if hex4 is not None:
            unit = int(hex4, 16)
            if 0xD800 <= unit < 0xDC00 and _LOW_ESCAPE.match(body, pos):
                out += m.group() + body[pos : pos + 6]
                pos += 6
            elif unit == 0:
                flags.add("nul_escaped")
                out += b"\\\\u0000"
            elif 0xD800 <= unit < 0xE000:
                flags.add("surrogate_escaped")
                out += b"\\\\u%04x" % unit
            else:
                out += m.group()
        elif control is not None:
            if control == b"\x00":
                flags.add("nul_escaped")
                out += b"\\\\u0000"
            else:
                flags.add("control_escaped")
                out += b"\\u%04x" % control[0]
        elif high is not None:
            out += _visible(high, flags).replace("\\", "\\\\").encode()
        else:
            out += m.group()
    out += body[pos:] + b'"'
    return bytes(out)


def _number_fits(token: re.Match[bytes]) -> bool:
    int_digits = len(token.group(1))
    frac_digits = len(token.group(2) or b"")
    exp_digits = (token.group(4) or b"").lstrip(b"0")
    exponent = int(exp_digits or b"0") if len(exp_digits) <= 20 else 10**20  # past any limit: saturate
    if token.group(3) == b"-":
        exponent = -exponent
    text = token.group(0)
    if token.group(2) is None and token.group(4) is None and b"e" not in text.lower():
        value = int(text) if len(text) <= 22 else 1 << 70
        return -(1 << 63) <= value <= (1 << 64) - 1

    def fits(exp: int) -> bool:
        return int_digits + frac_digits <= 1000 and int_digits + exp <= 308 and frac_digits - exp <= 340

    return fits(exponent) or (int_digits + exponent == 309 and fits(exponent - 1) and math.isfinite(float(text)))


class _NotJson(Exception):
    pass


class _Rewriter:
    """Walks the input token by token, copying it through and replacing only what needs it."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.out = bytearray()
        self.flushed = 0
        self.flags: set[str] = set()
        self.stack: list[bool] = []  # True for an object
        self.capture: tuple[int, int] | None = None  # the too-deep container: start, depth

    def replace(self, start: int, end: int, text: bytes) -> None:
        self.out += self.data[self.flushed : start] + text
        self.flushed = end

    def ws(self, i: int) -> int:
        m = _WS.match(self.data, i)
        return m.end() if m else i

    def string(self, i: int) -> int:
        m = _STRING.match(self.data, i)
        if not m:
            raise _NotJson
        if self.capture is None:
            flags: set[str] = set()
            repaired = _repair_string(m.group(1), flags)
            if flags:
                self.flags |= flags
                self.replace(i, m.end(), repaired)
        return m.end()

    def key(self, i: int) -> int:
        i = self.ws(self.string(i))
        if self.data[i : i + 1] != b":":
            raise _NotJson
        return self.ws(i + 1)

    def close(self, end: int) -> None:
        if self.capture is not None and self.capture[1] == len(self.stack):
            self.replace(self.capture[0], end, _json_string(self.data[self.capture[0] : end], self.flags))
            self.flags.add("depth_limited")
            self.capture = None
        self.stack.pop()

    def value(self, i: int) -> tuple[int, bool]:
        """The value at ``i``: where it ends, and whether it opened a non-empty container (the
        next value is then its first element, at the returned position)."""
        data = self.data
        c = data[i : i + 1]
        if c in (b"{", b"["):
            self.stack.append(c == b"{")
            if self.capture is None and len(self.stack) > MAX_JSON_DEPTH:
                self.capture = (i, len(self.stack))
            j = self.ws(i + 1)
            if data[j : j + 1] == (b"}" if c == b"{" else b"]"):
                self.close(j + 1)
                return j + 1, False
            return (self.key(j) if c == b"{" else j), True
        if c == b'"':
            return self.string(i), False
        if m := _NUMBER.match(data, i):
            if not _number_fits(m) and self.capture is None:
                self.flags.add("number_as_text")
                self.replace(i, m.end(), b'"' + m.group() + b'"')
            return m.end(), False
        if m := _LITERAL.match(data, i):
            return m.end(), False
        raise _NotJson

    def run(self) -> bytes:
        data = self.data
        i = self.ws(0)
        while True:
            i, opened = self.value(i)
            if opened:
                continue
            while True:  # after a value
                i = self.ws(i)
                if not self.stack:
                    if i != len(data):
                        raise _NotJson
                    return bytes(self.out + data[self.flushed :])
                c = data[i : i + 1]
                if c == b",":
                    i = self.ws(i + 1)
                    if self.stack[-1]:
                        i = self.key(i)
                    break
                if c != (b"}" if self.stack[-1] else b"]"):
                    raise _NotJson
                self.close(i + 1)
                i += 1


def safe_json(data: bytes) -> tuple[bytes, list[str]]:
    """``data`` made storable as jsonb, and the names of the repairs (see ``nexus._core.safe_json``)."""
    rewriter = _Rewriter(data)
    try:
        out = rewriter.run()
    except _NotJson:
        flags = {"not_json"}
        return _json_string(data, flags), names(flags)
    return out, names(rewriter.flags)
