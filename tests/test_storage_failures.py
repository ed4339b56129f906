"""Which errors of PostgreSQL are outages (wait and replay) and which are content (isolate the rows).

A content error taken for an outage stops every later row behind one bad record (finding 1 of "Safe
on a network"); an outage taken for content would send good rows to the quarantine. Each SQLSTATE
class the writer knows is pinned here.
"""

from __future__ import annotations

import psycopg
import pytest

from nexus.storage.failures import DATA, OUTAGE, UNKNOWN, classify, describe


def error(sqlstate: str, message: str = "boom") -> psycopg.Error:
    return psycopg.errors.lookup(sqlstate)(message)


@pytest.mark.parametrize(
    "sqlstate",
    ["22021", "22P05", "22003", "22P02", "2200N", "54000", "54001", "23505", "23502"],
)
def test_content_errors(sqlstate: str) -> None:
    assert classify(error(sqlstate)) == DATA


@pytest.mark.parametrize(
    "sqlstate",
    ["08006", "08001", "53100", "53200", "58030", "40001", "40P01", "42P01", "42703", "0A000", "57P01", "57014",
     "55P03", "25006"],
)  # fmt: skip
def test_outages(sqlstate: str) -> None:
    assert classify(error(sqlstate)) == OUTAGE


@pytest.mark.parametrize("sqlstate", ["XX000", "P0001", "55000", "25001", "72000", "44000"])
def test_anything_else_is_unknown_until_it_repeats(sqlstate: str) -> None:
    assert classify(error(sqlstate)) == UNKNOWN


def test_errors_without_a_state_are_outages() -> None:
    assert classify(psycopg.OperationalError("connection refused")) == OUTAGE
    assert classify(ConnectionResetError()) == OUTAGE
    assert classify(TimeoutError()) == OUTAGE

    class Stateful(Exception):
        sqlstate = "22021"

    assert classify(Stateful()) == OUTAGE  # only psycopg's errors are believed


def test_describe() -> None:
    assert describe(error("22021", "invalid byte\x00 sequence\nDETAIL: more")) == (
        "[22021] CharacterNotInRepertoire: invalid byte\\u0000 sequence"
    )
    assert describe(ConnectionResetError()) == "ConnectionResetError: "
    assert describe(ValueError("x" * 600)) == ("ValueError: " + "x" * 600)[:500]
    assert describe(ValueError("\n")) == "ValueError: "
    assert (UNKNOWN, DATA, OUTAGE) == ("unknown", "data", "outage")
