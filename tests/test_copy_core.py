"""The Rust COPY BINARY encoder: identical bytes to the Python reference, and PostgreSQL accepts them."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import orjson
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus._core import NexusCoreError, encode_copy_binary
from nexus.reference.copy import encode_copy_binary as reference
from tests.hostile import given_repairs, hostile_ints, hostile_json, hostile_text

TYPES = ["uuid", "timestamptz", "text", "int2", "int4", "int8", "bool", "bytea", "jsonb", "bytea[]", "text[]", "float8"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
cells = [
    st.uuids().map(str) | st.uuids().map(lambda u: u.bytes),
    st.integers(-62_135_596_800_000_000, 253_402_300_799_000_000),  # years 1 .. 9999, in microseconds
    st.text(),
    st.integers(-(2**15), 2**15 - 1),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.binary(),
    json_values.map(orjson.dumps),
    st.lists(st.none() | st.binary(max_size=16), max_size=5),
    st.lists(st.none() | st.text(max_size=8), max_size=5),
    st.floats(allow_nan=False),
]
rows = st.lists(st.tuples(*[st.none() | c for c in cells]).map(list), max_size=6)

# The same columns with hostile values, plus json, int8[] and the pseudo columns the encoder fills.
HOSTILE_TYPES = ["uuid", "timestamptz", "text", "raw", "int2", "int4", "int8", "bool", "bytea", "jsonb", "raw"]
HOSTILE_TYPES += ["bytea[]", "text[]", "float8", "json", "raw", "int8[]", "repairs"]
# A raw cell is None (the encoder fills it) or bytes Python gives (written as they are).
raw_cells = st.none() | st.binary(max_size=16)
hostile_cells = [
    cells[0],
    cells[1],
    hostile_text,
    raw_cells,
    hostile_ints,
    hostile_ints,
    hostile_ints,
    cells[6],
    cells[7],
    hostile_json | hostile_json.map(lambda b: b.decode("utf-8", "surrogateescape")),
    raw_cells,
    cells[9],
    st.lists(st.none() | hostile_text, max_size=5),
    cells[11],
    hostile_json,
    raw_cells,
    st.lists(st.none() | hostile_ints, max_size=4),
    given_repairs,
]
hostile_rows = st.lists(st.tuples(*[st.none() | c for c in hostile_cells]).map(list), max_size=6)


@settings(max_examples=300, deadline=None)
@given(rows)
def test_rust_and_reference_produce_identical_bytes(batch: list[list[object]]) -> None:
    assert encode_copy_binary(TYPES, batch) == reference(TYPES, batch)


@settings(max_examples=300, deadline=None)
@given(hostile_rows)
def test_rust_and_reference_produce_identical_bytes_for_hostile_rows(batch: list[list[object]]) -> None:
    assert encode_copy_binary(HOSTILE_TYPES, batch) == reference(HOSTILE_TYPES, batch)


def test_huge_jsonb_and_unicode() -> None:
    big = orjson.dumps({"text": "é✓𝄞" * 300_000})
    batch = [[None, 0, "\U0001f600 astral", 1, 2, 3, True, b"\x00\xff", big, [], ["a", None], 1.5]]
    assert encode_copy_binary(TYPES, batch) == reference(TYPES, batch)


@pytest.mark.parametrize(
    ("types", "row", "fragment"),
    [
        (["int2"], ["70000"], "row 0, column 0 (int2)"),
        (["bool"], ["yes"], "does not fit a bool column"),
        (["uuid"], ["not-a-uuid"], "invalid uuid"),
        (["int4", "int4"], [1], "has 1 values for 2 columns"),
        (["money"], [1], "unsupported COPY column type"),
        (["timestamptz"], [2**70], "int8 range"),
        (["jsonb"], [1], "int value does not fit a jsonb column"),
        (["text", "raw"], ["x", "y"], "raw column takes bytes or None"),
        (["repairs", "text"], [None, "x"], "repairs column must be the last"),
        (["int2", "raw"], [1, None], "raw column must follow a jsonb, json or text column"),
        (["text", "repairs"], ["x", [1]], "repair names must be str"),
    ],
)
def test_bad_input_raises_a_clear_error(types: list[str], row: list[object], fragment: str) -> None:
    with pytest.raises(NexusCoreError, match=re.escape(fragment)):
        encode_copy_binary(types, [row])


def test_postgresql_reads_back_what_was_encoded(migrated_db: str) -> None:
    rid = str(uuid.uuid4())
    when = datetime(2026, 11, 25, 1, 2, 3, 456789, tzinfo=UTC)
    when_us = int(when.timestamp()) * 1_000_000 + when.microsecond
    columns = ["a_uuid", "a_ts", "a_text", "a_int2", "a_int4", "a_int8", "a_bool", "a_bytea", "a_json"]
    columns += ["a_keys", "a_texts", "a_float"]
    batch = [
        [
            rid,
            when_us,
            "héllo ✓",
            -5,
            2**31 - 1,
            -(2**63),
            True,
            b"\x00\x01",
            orjson.dumps({"k": [1, "é"]}),
            [b"\x01" * 16, None],
            ["x", None, "z"],
            0.25,
        ],
        [None] * 12,
        [str(uuid.uuid4()), 0, "", 0, 0, 0, False, b"", b"null", [], [], -1.0],
    ]
    payload = encode_copy_binary(TYPES, batch)
    with psycopg.connect(migrated_db) as conn:
        conn.execute(
            "CREATE TEMP TABLE t (a_uuid uuid, a_ts timestamptz, a_text text, a_int2 int2, a_int4 int4, "
            "a_int8 int8, a_bool bool, a_bytea bytea, a_json jsonb, a_keys bytea[], a_texts text[], a_float float8)"
        )
        with conn.cursor().copy("COPY t FROM STDIN (FORMAT binary)") as cp:
            cp.write(payload)
        got = conn.execute(f"SELECT {', '.join(columns)} FROM t").fetchall()  # noqa: S608
    assert got[0] == (
        uuid.UUID(rid),
        when,
        "héllo ✓",
        -5,
        2**31 - 1,
        -(2**63),
        True,
        b"\x00\x01",
        {"k": [1, "é"]},
        [b"\x01" * 16, None],
        ["x", None, "z"],
        0.25,
    )
    assert got[1] == (None,) * 12
    assert got[2][1] == datetime(1970, 1, 1, tzinfo=UTC) and got[2][8] is None and got[2][9] == []
