"""Safe by construction: whatever one record holds, the COPY payload lands in PostgreSQL and reads back.

Hostile JSON and text go through the Rust core and its Python oracle (`tests.oracles.safe`, same bytes),
through the Python readers the stored data meets (psycopg's ``json.loads``, ``orjson.loads`` and ``orjson.dumps`` of the
result), and through a real PostgreSQL by COPY: every row lands, and normal rows come back as they went in.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Iterator
from decimal import Decimal

import orjson
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus import _core
from nexus._core import (
    MAX_JSON_DEPTH,
    REPAIR_NAMES,
    NexusCoreError,
    copy_payload,
    copy_row_field,
    copy_row_last_resort,
    copy_rows,
    encode_copy_binary,
    json_as_text,
    safe_json,
    safe_text,
)
from tests.hostile import given_repairs, hostile_ints, hostile_json, hostile_text, plain_values
from tests.oracles import safe as ref


def _exact(data: bytes | str) -> object:
    """A JSON value with exact numbers, so that `1E+2` and PostgreSQL's `100` compare equal."""
    return json.loads(data, parse_float=Decimal, parse_int=Decimal)


def _readable(out: bytes) -> object:
    """What the stored JSON meets: Python's json.loads, orjson.loads, and orjson.dumps of that."""
    json.loads(out)
    value = orjson.loads(out)
    orjson.dumps(value)
    return value


# --- the rules ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected", "repairs"),
    [
        (b'{"a":"x\\u0000y"}', {"a": "x\\u0000y"}, ["nul_escaped"]),
        (b'["a\x00b"]', ["a\\u0000b"], ["nul_escaped"]),
        (b'"\\ud800 \\ud83d\\ude00"', "\\ud800 \U0001f600", ["surrogate_escaped"]),
        (b'"\\uDC00"', "\\udc00", ["surrogate_escaped"]),
        (b'"\xed\xa0\x80"', "\\ud800", ["surrogate_escaped"]),
        (b'"a\xffb"', "a\\xFFb", ["invalid_utf8"]),
        (b'"tab\there"', "tab\there", ["control_escaped"]),
        (b"[1e999999, 1e-400, 5]", ["1e999999", "1e-400", 5], ["number_as_text"]),
        (b"1" * 1001, "1" * 1001, ["number_as_text"]),
        (b"{} x", "{} x", ["not_json"]),
        (b"", "", ["not_json"]),
        (b"NaN", "NaN", ["not_json"]),
        (b"\xff\x00", "\\xFF\\u0000", ["nul_escaped", "invalid_utf8", "not_json"]),
    ],
)
def test_each_rule(data: bytes, expected: object, repairs: list[str]) -> None:
    out, got = safe_json(data)
    assert got == repairs
    assert _readable(out) == expected
    assert (out, got) == ref.safe_json(data)


def test_depth_is_cut_at_the_limit() -> None:
    ok = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert safe_json(ok) == (ok, [])
    deep = b"[" * (MAX_JSON_DEPTH + 1) + b"1" + b"]" * (MAX_JSON_DEPTH + 1)
    out, repairs = safe_json(deep)
    assert repairs == ["depth_limited"]
    value = _readable(out)
    for _ in range(MAX_JSON_DEPTH - 1):
        (value,) = value  # type: ignore[misc]
    assert value == ["[1]"]
    assert (out, repairs) == ref.safe_json(deep)


@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_a_million_levels(opener: bytes) -> None:
    closer = b"]" if opener == b"[" else b"}"
    n = 1_000_000
    out, repairs = safe_json(opener * n + b"1" + closer * n)
    assert repairs == ["depth_limited"]
    _readable(out)
    out, repairs = safe_json(opener * n)
    assert repairs == ["not_json"]
    _readable(out)


def test_text_rules() -> None:
    assert safe_text("héllo ✓".encode()) == ("héllo ✓".encode(), [])
    assert safe_text(b"a\x00b\xff\xed\xb0\x80") == (
        b"a\\u0000b\\xFF\\udc00",
        ["nul_escaped", "surrogate_escaped", "invalid_utf8"],
    )
    assert json_as_text(b'{"a": 1}') == (b'"{\\"a\\": 1}"', ["stored_as_text"])


def test_names_are_the_stable_list() -> None:
    assert REPAIR_NAMES == ref.REPAIR_NAMES
    assert MAX_JSON_DEPTH == ref.MAX_JSON_DEPTH == 128


# --- properties -----------------------------------------------------------------------------------


@settings(max_examples=1000, deadline=None)
@given(hostile_json)
def test_any_json_comes_out_readable_and_the_same_as_the_reference(data: bytes) -> None:
    out, repairs = safe_json(data)
    assert (out, repairs) == ref.safe_json(data)
    _readable(out)
    if not repairs:
        assert out == data
    assert safe_json(out) == (out, [])


@settings(max_examples=500, deadline=None)
@given(plain_values, st.sampled_from([0, orjson.OPT_INDENT_2]))
def test_plain_json_crosses_unchanged(value: object, option: int) -> None:
    data = orjson.dumps(value, option=option)
    assert safe_json(data) == (data, [])


@settings(max_examples=1000, deadline=None)
@given(hostile_text)
def test_any_text_comes_out_valid_and_the_same_as_the_reference(value: str | bytes) -> None:
    data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    out, repairs = safe_text(data)
    assert (out, repairs) == ref.safe_text(data)
    assert b"\x00" not in out
    out.decode()
    if not repairs:
        assert out == data
    as_json, flags = json_as_text(data)
    assert (as_json, flags) == ref.json_as_text(data)
    assert orjson.loads(as_json) == out.decode()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | st.lists(st.binary(max_size=12), max_size=4).map(copy_payload))
def test_malformed_payloads_raise_and_never_crash(payload: bytes) -> None:
    try:
        rows = copy_rows(payload)
    except NexusCoreError:
        return
    assert copy_payload(rows) == payload


# --- a real PostgreSQL ----------------------------------------------------------------------------

COLUMNS = "id int4, j jsonb, j_raw bytea, js json, js_raw bytea, t text, t_raw bytea, n2 int2, n4 int4, n8 int8, "
COLUMNS += "tags text[], repairs text[]"
SAFE_TYPES = ["int4", "jsonb", "raw", "json", "raw", "text", "raw", "int2", "int4", "int8", "text[]", "repairs"]
SELECT = (
    "SELECT id, j::text, j_raw, js::text, js_raw, t, t_raw, n2, n4, n8, tags, repairs, j, js FROM safe_t ORDER BY id"
)


@pytest.fixture(scope="module")
def pg(database_admin_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE TEMP TABLE safe_t ({COLUMNS})")
        yield conn


def _copy(conn: psycopg.Connection, payload: bytes) -> list[tuple[object, ...]]:
    conn.execute("TRUNCATE safe_t")
    with conn.cursor().copy("COPY safe_t FROM STDIN (FORMAT binary)") as cp:
        cp.write(payload)
    return conn.execute(SELECT).fetchall()  # type: ignore[return-value]


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value


def _clamp(value: int, bits: int) -> int:
    return min(max(value, -(2 ** (bits - 1))), 2 ** (bits - 1) - 1)


cell = st.tuples(
    hostile_json,
    hostile_json,
    hostile_text,
    hostile_ints,
    hostile_ints,
    hostile_ints,
    st.lists(st.none() | hostile_text, max_size=3),
    given_repairs,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(cell, min_size=1, max_size=8))
def test_every_row_lands_in_postgresql_and_reads_back(pg: psycopg.Connection, batch: list[tuple]) -> None:  # type: ignore[type-arg]
    rows = [
        [i, j, None, js, None, t, None, n2, n4, n8, tags, given]
        for i, (j, js, t, n2, n4, n8, tags, given) in enumerate(batch)
    ]
    payload = encode_copy_binary(SAFE_TYPES, rows)
    got = _copy(pg, payload)
    assert len(got) == len(rows)
    for row, back in zip(rows, got, strict=True):
        _, j, _, js, _, t, _, n2, n4, n8, tags, given = row
        _, j_text, j_raw, js_text, js_raw, t_back, t_raw, n2b, n4b, n8b, tags_back, repairs, j_loaded, js_loaded = back
        j_safe, j_repairs = safe_json(j)
        js_safe, js_repairs = safe_json(js)
        t_safe, t_repairs = safe_text(_as_bytes(t))
        _readable(j_text.encode())
        _readable(js_text.encode())
        # Normal cells come back as they went in; repaired ones keep their original in the raw column.
        assert _exact(j_text) == _exact(j_safe)
        assert j_raw == (j if j_repairs else None)
        assert js_text.encode() == js_safe and js_raw == (js if js_repairs else None)
        if not js_repairs:
            assert js_text.encode() == js
        assert t_back.encode() == t_safe and t_raw == (_as_bytes(t) if t_repairs else None)
        if not t_repairs:
            assert t_back.encode() == _as_bytes(t)
        assert (n2b, n4b, n8b) == (_clamp(n2, 16), _clamp(n4, 32), _clamp(n8, 64))
        assert tags_back == [None if x is None else safe_text(_as_bytes(x))[0].decode() for x in tags]
        assert j_loaded == json.loads(j_text) and js_loaded == json.loads(js_text)
        # The repairs column: Python's names first, then the row's, each once.
        flags = set(j_repairs + js_repairs + t_repairs)
        flags |= {"int_clamped"} if (n2b, n4b, n8b) != (n2, n4, n8) else set()
        for x in tags:
            flags |= set(safe_text(_as_bytes(x))[1]) if x is not None else set()
        given_safe = [safe_text(_as_bytes(x))[0].decode() for x in given or []]
        expected = list(dict.fromkeys([*given_safe, *(n for n in REPAIR_NAMES if n in flags)]))
        assert repairs == (expected or None)


def test_last_resort_rows_land_as_json_strings(pg: psycopg.Connection) -> None:
    rows = [
        [1, b'{"a": [1, 2]}', None, b"[1e999]", None, "plain", None, 1, 2, 3, ["x"], None],
        [2, None, None, None, None, None, None, None, None, None, None, ["usage_not_integer"]],
    ]
    payload = encode_copy_binary(SAFE_TYPES, rows)
    tuples = copy_rows(payload)
    assert copy_payload(tuples) == payload
    assert copy_row_field(tuples[0], 0) == struct.pack(">i", 1)
    assert copy_row_field(tuples[1], 1) is None
    with pytest.raises(NexusCoreError, match="field 12 of a row of 12 fields"):
        copy_row_field(tuples[0], 12)
    last = [copy_row_last_resort(SAFE_TYPES, t) for t in tuples]
    got = _copy(pg, copy_payload(last))
    first = got[0]
    assert first[12] == '{"a": [1, 2]}' and first[2] == b'{"a": [1, 2]}'
    assert first[13] == '["1e999"]' and first[4] == b"[1e999]"
    assert first[5] == "plain" and first[6] is None
    assert first[11] == ["number_as_text", "stored_as_text"]
    assert got[1][11] == ["usage_not_integer", "stored_as_text"] and got[1][1] is None
    with pytest.raises(NexusCoreError):
        copy_row_last_resort(["jsonb"], tuples[0])
    with pytest.raises(NexusCoreError):
        copy_row_last_resort(SAFE_TYPES, tuples[0][:-1])


def test_raw_bytes_given_by_python_land_as_they_are(pg: psycopg.Connection) -> None:
    """Bytes passed for a raw cell are written unchanged, whatever the cell before it became: the
    writer keeps the exact bytes of a request body this way that is not JSON, stored as text beside them."""
    body = b'\xff\x00{"model": "\xed\xa0\x80'  # not JSON, not UTF-8, a NUL, a surrogatepass
    envelope = orjson.dumps({"unparsed_body": body.decode("utf-8", "replace")})
    rows = [
        # An unrepaired cell with explicit raw bytes, a repaired one (explicit bytes win), an empty one.
        [1, envelope, body, b"[1e999]", b"\x00\x01given", "a\x00", b"", 1, 2, 3, None, None],
        # None still means "the original when repaired", next to explicit bytes.
        [2, b"[1e999]", None, b"{}", b"\xfe", "plain", None, 1, 2, 3, None, ["from_python"]],
    ]
    payload = encode_copy_binary(SAFE_TYPES, rows)
    got = _copy(pg, payload)
    assert json.loads(got[0][1]) == json.loads(safe_json(envelope)[0])  # its NUL as visible text
    assert got[0][2:7] == (body, '["1e999"]', b"\x00\x01given", "a\\u0000", b"")
    assert got[0][11] == ["nul_escaped", "number_as_text"]
    assert got[1][1:7] == ('["1e999"]', b"[1e999]", "{}", b"\xfe", "plain", None)
    assert got[1][11] == ["from_python", "number_as_text"]
    # The last resort keeps them too.
    last = copy_payload([copy_row_last_resort(SAFE_TYPES, t) for t in copy_rows(payload)])
    got = _copy(pg, last)
    assert (got[0][2], got[0][4], got[0][6]) == (body, b"\x00\x01given", b"")
    assert (got[1][2], got[1][4]) == (b"[1e999]", b"\xfe")
    # A str is not raw bytes.
    with pytest.raises(NexusCoreError, match="raw column takes bytes or None"):
        encode_copy_binary(["text", "raw"], [["x", "y"]])


def test_request_id_is_read_back_from_a_tuple() -> None:
    rid = uuid.uuid4()
    (row,) = copy_rows(encode_copy_binary(["uuid", "jsonb"], [[str(rid), b"{}"]]))
    assert copy_row_field(row, 0) == rid.bytes


def test_module_exports_are_typed() -> None:
    for name in ("safe_json", "safe_text", "json_as_text", "copy_rows", "copy_payload", "copy_row_last_resort"):
        assert callable(getattr(_core, name))
