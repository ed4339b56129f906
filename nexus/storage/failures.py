"""Telling a database that is away from a batch that it will never accept.

The writer treats the two very differently: an outage is waited out (the batch goes to the spool and
is replayed in order once the database answers), while a batch PostgreSQL refuses for its content
would be refused for ever, so waiting would stop every row behind it. Content errors are the data
exception and limit classes (22, 54) and integrity violations (23). Connection errors, shutdowns and
crashes (08, 57P0x), exhausted resources (53), system errors (58), conflicts that pass (40, 55P03;
the writer first sends a batch ended by a deadlock or a serialization failure again at once),
cancelled statements (57014), a read-only server (25006) and a schema the writer does not match yet
(42, 0A: a migration is missing) are outages. Anything else is an outage the first time and content
once it repeats on the same rows.
"""

from __future__ import annotations

import psycopg

OUTAGE, DATA, UNKNOWN = "outage", "data", "unknown"

_DATA_CLASSES = ("22", "54", "23")
_OUTAGE_CLASSES = ("08", "53", "58", "40", "42", "0A", "57")
_OUTAGE_STATES = frozenset({"55P03", "25006"})


def classify(exc: BaseException) -> str:
    state = getattr(exc, "sqlstate", None)
    if isinstance(exc, psycopg.Error) and state:
        if state.startswith(_DATA_CLASSES):
            return DATA
        if state.startswith(_OUTAGE_CLASSES) or state in _OUTAGE_STATES:
            return OUTAGE
        return UNKNOWN
    return OUTAGE  # no SQLSTATE: the connection itself failed (or never opened)


def describe(exc: BaseException) -> str:
    """One line for logs, /health and the quarantine: SQLSTATE, class and message, NUL-free."""
    state = getattr(exc, "sqlstate", None)
    text = f"{exc.__class__.__name__}: {exc}".replace("\x00", "\\u0000").splitlines()
    first = text[0] if text else exc.__class__.__name__
    return (f"[{state}] " if state else "") + first[:500]
