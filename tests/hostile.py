"""Hypothesis strategies for what one bad record can hold: NUL, lone surrogates, invalid UTF-8, numbers no
reader can hold, nesting past any limit, ints past 64 bits, text that is not JSON at all."""

from __future__ import annotations

import orjson
from hypothesis import strategies as st

#: Characters that have broken storage before, mixed into ordinary text.
TRICKY = [
    "\x00",
    "\x01",
    "\x1f",
    "\x7f",
    '"',
    "\\",
    "\ud800",
    "\udbff",
    "\udc00",
    "\udfff",
    "é",
    "\U0001f600",
    "\u2028",
]
text_with_surrogates = st.text(
    st.characters() | st.characters(categories=["Cs"]) | st.sampled_from(TRICKY), max_size=12
)
#: Text as a str (perhaps with lone surrogates) or as raw bytes (perhaps not UTF-8).
hostile_text = (
    text_with_surrogates
    | st.binary(max_size=12)
    | text_with_surrogates.map(lambda s: s.encode("utf-8", "surrogatepass"))
)

_PLAIN_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")

#: Ordinary JSON values (what Claude Code and the API send): they must cross unchanged.
plain_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    # below 1e308: the number rule's bound (the f64 range ends at 1.8e308, and 1e308..1.8e308 goes to text)
    | st.floats(-1e308, 1e308, exclude_min=True, exclude_max=True)
    | st.text(_PLAIN_CHARS),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(_PLAIN_CHARS, max_size=8), inner, max_size=4),
    max_leaves=20,
)

_hostile_leaves = st.sampled_from(
    [
        b'"\\u0000"',
        b'"x\\u0000y"',
        b'"\\ud800"',
        b'"\\uDFFF\\ud83d\\ude00\\ud83d"',
        b'"\\ud800\\u0041"',
        b'"a\x00b\x01\x1f\n"',
        b'"\xff\xed\xa0\x80\xc3"',
        b'"\xed\xa0\xbd\xed\xb8\x80"',
        b"1e999999",
        b"-1E+400",
        b"1e-400",
        b"1e308",
        b"9.99e307",
        b"1e-340",
        b"0.1e-340",
        b"123.456e7",
        b"1e" + b"9" * 30,
        b"1" * 1001,
        b"-" + b"9" * 300,
        b"0",
        b"-0.0",
        b"true",
        b"null",
        b"nul",
        b"01",
        b"[1,]",
        b"",
    ]
)


def _array(items: list[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


def _object(items: list[tuple[bytes, bytes]]) -> bytes:
    return b"{" + b",".join(b'"' + k + b'": ' + v for k, v in items) + b"}"


_keys = st.sampled_from([b"a", b"", b"\\u0000", b"\\ud800", b"\xff", b"k\x01"])

#: JSON-ish text: ordinary JSON, hostile tokens inside valid structure, deep nesting, garbage.
hostile_json = st.recursive(
    _hostile_leaves
    | plain_values.map(orjson.dumps)
    | text_with_surrogates.map(lambda s: b'"' + s.encode("utf-8", "surrogatepass") + b'"')
    | st.binary(max_size=6),
    lambda inner: st.lists(inner, max_size=4).map(_array) | st.lists(st.tuples(_keys, inner), max_size=4).map(_object),
    max_leaves=12,
) | st.tuples(st.integers(1, 300), st.sampled_from([b"", b"1", b'"\\u0000"', b"1e999", b"{}"]), st.booleans()).map(
    lambda t: (b'{"a":' * t[0] + t[1] + b"}" * t[0]) if t[2] else (b"[" * t[0] + t[1] + b"]" * t[0])
)

#: Ints for int2/int4/int8 columns, past 64 bits too.
hostile_ints = st.integers() | st.sampled_from([2**15, -(2**15) - 1, 2**31, 2**63, -(2**63) - 1, 2**200, -(2**200)])

#: What Python puts in a `repairs` column.
given_repairs = st.none() | st.lists(st.sampled_from(["usage_not_integer", "int_clamped", "x"]) | st.text(max_size=6))
