"""The Rust COPY BINARY encoder: PostgreSQL reads back what was encoded, cell for cell.

PostgreSQL is the oracle here (a Python transcription of the format was dropped: a round trip through the
real server checks the encoding itself, not one reading of the documentation). What a cell becomes when
it is repaired is checked against the rules' own oracle (`tests.oracles.safe`), and the hostile cells,
the raw and repairs columns in `test_copy_safe.py`, through PostgreSQL as well."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus._core import NexusCoreError, encode_copy_binary
from tests.hostile import hostile_ints
from tests.oracles import safe as oracle

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

# int8[] elements are clamped to the column like a scalar int8.
TYPES_AND_ARRAYS = [*TYPES, "int8[]"]
rows_and_arrays = st.lists(
    st.tuples(*[st.none() | c for c in cells], st.none() | st.lists(st.none() | hostile_ints, max_size=4)).map(list),
    max_size=6,
)
COLUMNS = ", ".join(f"c{i} {t}" for i, t in enumerate(TYPES_AND_ARRAYS))
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def pg(database_admin_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_admin_url, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        conn.execute(f"CREATE TEMP TABLE copy_t (n int4, {COLUMNS})")
        yield conn


def _round_trip(conn: psycopg.Connection, types: list[str], batch: list[list[object]]) -> list[tuple[object, ...]]:
    """COPY the batch (numbered) into the table and read it back in order."""
    payload = encode_copy_binary(["int4", *types], [[n, *row] for n, row in enumerate(batch)])
    conn.execute("TRUNCATE copy_t")
    names = ", ".join(["n", *(f"c{i}" for i in range(len(types)))])
    with conn.cursor().copy(f"COPY copy_t ({names}) FROM STDIN (FORMAT binary)") as cp:
        cp.write(payload)
    got = conn.execute(f"SELECT {names} FROM copy_t ORDER BY n").fetchall()  # noqa: S608
    return [row[1:] for row in got]


def _text(value: str | bytes) -> str:
    data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    return oracle.safe_text(data)[0].decode()


def _clamp(value: int, bits: int) -> int:
    return min(max(value, -(2 ** (bits - 1))), 2 ** (bits - 1) - 1)


def expected(ty: str, value: object) -> object:
    """What PostgreSQL gives back for a cell, worked out without the encoder under test."""
    if value is None:
        return None
    if ty == "uuid":
        return uuid.UUID(bytes=value) if isinstance(value, bytes) else uuid.UUID(str(value))
    if ty == "timestamptz":
        return EPOCH + timedelta(microseconds=int(value))  # type: ignore[call-overload]
    if ty == "text":
        return _text(value)  # type: ignore[arg-type]
    if ty == "jsonb":
        return orjson.loads(oracle.safe_json(value)[0])  # type: ignore[arg-type]
    if ty == "text[]":
        return [None if x is None else _text(x) for x in value]  # type: ignore[attr-defined]
    if ty == "int8[]":
        return [None if x is None else _clamp(x, 64) for x in value]  # type: ignore[attr-defined]
    return value


@settings(max_examples=300, deadline=None)
@given(rows_and_arrays)
def test_postgresql_reads_back_every_cell(pg: psycopg.Connection, batch: list[list[object]]) -> None:
    got = _round_trip(pg, TYPES_AND_ARRAYS, batch)
    assert got == [tuple(expected(t, v) for t, v in zip(TYPES_AND_ARRAYS, row, strict=True)) for row in batch]


def test_huge_jsonb_and_unicode(pg: psycopg.Connection) -> None:
    big = orjson.dumps({"text": "é✓𝄞" * 300_000})
    batch = [[None, 0, "\U0001f600 astral", 1, 2, 3, True, b"\x00\xff", big, [], ["a", None], 1.5, [2**70, None]]]
    (got,) = _round_trip(pg, TYPES_AND_ARRAYS, batch)
    assert got[:-1] == (
        None,
        EPOCH,
        "\U0001f600 astral",
        1,
        2,
        3,
        True,
        b"\x00\xff",
        orjson.loads(big),
        [],
        ["a", None],
        1.5,
    )
    assert got[-1] == [2**63 - 1, None]


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
