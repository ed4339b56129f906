"""A batch as the writer sends and spools it: the `api_requests` and `content_blobs` COPY payloads.

One frame holds both (`>II` lengths, then the two COPY BINARY payloads), exactly as `send` writes them
to PostgreSQL, so a spooled batch is replayed without being encoded again. `send` runs both COPYs and
the inserts that follow in the caller's transaction: through staging tables, with `ON CONFLICT DO
NOTHING` (a replayed batch never doubles a row) and the conversation summaries updated from the rows
actually inserted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import psycopg

from nexus._core import merge_payloads
from nexus.pricing.sql import COST, price_join
from nexus.storage.records import (
    BLOB_NAMES_BY_COUNT,
    CONVERSATION_TITLE,
    REQUEST_NAMES_BY_COUNT,
    REQUEST_TYPES_BY_COUNT,
    SEARCH_TEXT,
    STAGED_ONLY,
)

FRAME = struct.Struct(">II")
COPY_HEADER = 19  # signature (11) + flags (4) + header extension length (4)


def blob_statements(names: list[str]) -> tuple[str, str]:
    """COPY into staging, then insert the parts not stored yet, in key order. Built once from the
    constant column lists: no user input reaches them.

    The order is what keeps workers from deadlocking (PROXY_WORKERS > 1): an insert that meets a key
    another transaction has inserted but not committed waits for that transaction, so two workers
    storing the same new parts (the turns of the same conversations) in their own batch orders each
    held one key the other waited for (`DeadlockDetected`). In one order, the second one waits for the
    first and then skips what it stored."""
    cols = ", ".join(names)
    copy = f"COPY nexus_stage_blobs ({cols}) FROM STDIN (FORMAT binary)"
    insert = (
        f"INSERT INTO content_blobs ({cols}) SELECT {cols} FROM nexus_stage_blobs "  # noqa: S608
        "ORDER BY key ON CONFLICT (key) DO NOTHING"
    )
    return copy, insert


BLOB_STATEMENTS = {count: blob_statements(names) for count, names in BLOB_NAMES_BY_COUNT.items()}
#: The summary's token columns, by a short name.
TOKEN_SUMS = {
    "input": "input_tokens",
    "output": "output_tokens",
    "creation": "cache_creation_input_tokens",
    "read": "cache_read_input_tokens",
}
BIGINT_MAX = 2**63 - 1


def capped_sum(column: str) -> str:
    """A sum that stays a bigint: an upstream may report (clamped) counts near bigint's maximum, and one
    overflowing sum would make PostgreSQL refuse the whole batch."""
    return f"least(greatest(coalesce(sum({column}), 0), -{BIGINT_MAX}), {BIGINT_MAX})::bigint"


def capped_add(left: str, right: str) -> str:
    return f"least(greatest({left}::numeric + {right}, -{BIGINT_MAX}), {BIGINT_MAX})::bigint"


#: A conversation's title (migration 0012's `nexus_title`), looked for only while it has none: in the
#: batch's first main-thread request of the conversation. The Rust row builder stages it with the row
#: (`conversation_title`: empty for none); PostgreSQL computes it for a row staged without (1 ms a
#: conversation: reading and parsing its first messages' parts).
TITLE = f"""CASE WHEN EXISTS (SELECT 1 FROM conversations t WHERE t.conversation_id = ins.conversation_id
                          AND t.title IS NOT NULL) THEN NULL
         ELSE (SELECT CASE WHEN st.{CONVERSATION_TITLE} IS NULL THEN nexus_title(f.message_keys)
                           ELSE nullif(st.{CONVERSATION_TITLE}, '') END
               FROM ins f LEFT JOIN nexus_stage_requests st ON st.request_id = f.request_id
               WHERE f.conversation_id = ins.conversation_id
               ORDER BY f.is_subtask, f.request_type IS DISTINCT FROM 'main', f."timestamp", f.request_id
               LIMIT 1) END"""  # noqa: S608 (a constant column name)
#: Rows actually inserted (never a replayed duplicate) are folded into their conversation's summary.
_CONVERSATION_UPSERT = """
INSERT INTO conversations AS c (conversation_id, project_id, first_at, last_at, request_count, input_tokens,
    output_tokens, cache_creation_input_tokens, cache_read_input_tokens, latest_request_id, title)
SELECT conversation_id, min(project_id), min("timestamp"), max("timestamp"), count(*),
    {capped_input}, {capped_output}, {capped_creation}, {capped_read},
    (array_agg(request_id ORDER BY "timestamp" DESC))[1],
    {title}
FROM ins WHERE conversation_id IS NOT NULL GROUP BY conversation_id ORDER BY conversation_id
ON CONFLICT (conversation_id) DO UPDATE SET
    first_at = least(c.first_at, excluded.first_at),
    last_at = greatest(c.last_at, excluded.last_at),
    request_count = c.request_count + excluded.request_count,
    input_tokens = {add_input},
    output_tokens = {add_output},
    cache_creation_input_tokens = {add_creation},
    cache_read_input_tokens = {add_read},
    latest_request_id = CASE WHEN excluded.last_at >= c.last_at THEN excluded.latest_request_id
                             ELSE c.latest_request_id END,
    title = coalesce(c.title, excluded.title)
""".format(
    title=TITLE,
    **{f"capped_{k}": capped_sum(c) for k, c in TOKEN_SUMS.items()},
    **{f"add_{k}": capped_add(f"c.{c}", f"excluded.{c}") for k, c in TOKEN_SUMS.items()},
)
#: What a stored request is found by (migration 0012): its newest user prompt and its reply's text,
#: from the staged row and the content parts this batch has just stored.
SEARCH_VECTOR = "nexus_search_vector(s.message_keys, s.response_body, s.request_type)"
#: The writer's session settings, before anything else (each tolerated where the server lacks it):
#: no JIT, whose compilation was 14% of PostgreSQL's CPU for the batch inserts (planned costs pass
#: `jit_above_cost`, run times are milliseconds); lz4 for what is compressed without a method of its
#: own (the staging tables, the search vector, the key arrays), where pglz compressing and
#: decompressing the staged rows was another 11%.
SESSION_SQL = """DO $$ BEGIN
    PERFORM set_config('jit', 'off', false);
    BEGIN
        PERFORM set_config('default_toast_compression', 'lz4', false);
    EXCEPTION WHEN OTHERS THEN NULL;  -- built without lz4, or older than PostgreSQL 14
    END;
END $$"""
STAGE_SQL = (
    SESSION_SQL,
    "CREATE TEMP TABLE IF NOT EXISTS nexus_stage_requests (LIKE api_requests INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
    f"ALTER TABLE nexus_stage_requests ADD COLUMN IF NOT EXISTS {SEARCH_TEXT} text",
    f"ALTER TABLE nexus_stage_requests ADD COLUMN IF NOT EXISTS {CONVERSATION_TITLE} text",
    "CREATE TEMP TABLE IF NOT EXISTS nexus_stage_blobs (LIKE content_blobs INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
)
#: The search vector of a row whose text the Rust builder staged (`nexus_core/src/search.rs`: the same
#: text the SQL function extracts): PostgreSQL only runs `to_tsvector`, about half of a row's insert
#: before. A row staged without it (a batch spooled by an earlier release, a text the builder left to
#: PostgreSQL) is given the function's.
STAGED_SEARCH_VECTOR = (
    f"CASE WHEN s.{SEARCH_TEXT} IS NOT NULL THEN to_tsvector('english'::regconfig, s.{SEARCH_TEXT}) "
    f"ELSE {SEARCH_VECTOR} END"
)


def request_statements(names: list[str], search: bool = True) -> tuple[str, str]:
    """COPY into staging, then insert what is new, each row priced (`cost_usd`, nexus/pricing/sql.py)
    and made searchable (`search_vector`; NULL with `search` off: STORAGE_SEARCH_ENABLED), and update
    the conversation summaries (and titles), for a column list."""
    copy = "COPY nexus_stage_requests ({}) FROM STDIN (FORMAT binary)".format(", ".join(f'"{n}"' for n in names))
    stored = [n for n in names if n not in STAGED_ONLY]  # the staged texts are no columns of api_requests
    vector = (STAGED_SEARCH_VECTOR if SEARCH_TEXT in names else SEARCH_VECTOR) if search else "NULL::tsvector"
    cols = ", ".join(f'"{n}"' for n in stored)
    staged = ", ".join(f's."{n}"' for n in stored)
    insert = (
        f"WITH ins AS (INSERT INTO api_requests ({cols}, cost_usd, search_vector) "  # noqa: S608 (constant column lists)
        f"SELECT {staged}, {COST}, {vector} FROM nexus_stage_requests AS s {price_join('s')} "
        'ON CONFLICT DO NOTHING RETURNING conversation_id, project_id, "timestamp", request_id, input_tokens, '
        "output_tokens, cache_creation_input_tokens, cache_read_input_tokens, message_keys, is_subtask, "
        "request_type)" + _CONVERSATION_UPSERT
    )
    return copy, insert


REQUEST_STATEMENTS = {count: request_statements(names) for count, names in REQUEST_NAMES_BY_COUNT.items()}
#: The same without the search vector: building it is most of a batch's database time (docs/storage.md).
REQUEST_STATEMENTS_UNSEARCHED = {
    count: request_statements(names, search=False) for count, names in REQUEST_NAMES_BY_COUNT.items()
}


@dataclass(frozen=True, slots=True)
class Batch:
    """The two COPY payloads of one batch (either may be empty)."""

    requests: bytes
    blobs: bytes

    def pack(self) -> bytes:
        return b"".join(self.parts())

    def parts(self) -> list[bytes]:
        """`pack()` unjoined, for the spool to write without copying the payloads."""
        return [FRAME.pack(len(self.requests), len(self.blobs)), self.requests, self.blobs]

    @classmethod
    def unpack(cls, payload: bytes) -> Batch:
        req_len, blob_len = FRAME.unpack_from(payload)
        start = FRAME.size
        return cls(payload[start : start + req_len], payload[start + req_len : start + req_len + blob_len])

    def request_types(self) -> list[str]:
        """The column types the request rows were encoded with (a COPY tuple carries its field count)."""
        return REQUEST_TYPES_BY_COUNT[_field_count(self.requests)]


def merge_copy(payloads: list[bytes]) -> bytes:
    """One COPY BINARY payload holding the rows of `payloads` (all of one column layout), in order
    (in Rust, `merge_payloads`: the rows never become objects of their own). So batches encoded
    separately go to the database in one COPY and one transaction: a writer that fell behind catches
    up by sending more rows per round trip (its cost per batch is mostly fixed: the statements, and
    on a busy worker the wait for the GIL after each of them)."""
    if len(payloads) == 1:
        return payloads[0]
    return merge_payloads(payloads)


def _field_count(payload: bytes) -> int:
    """The first tuple's field count, or 0 for a payload without rows."""
    return struct.unpack_from(">h", payload, COPY_HEADER)[0] if len(payload) > COPY_HEADER + 2 else 0


def send(conn: psycopg.Connection, batch: Batch, *, search: bool = True) -> None:
    """Write one batch in the connection's current transaction (the caller commits or rolls back):
    content parts first, since the requests refer to them."""
    requests = REQUEST_STATEMENTS if search else REQUEST_STATEMENTS_UNSEARCHED
    with conn.cursor() as cur:
        for payload, statements in ((batch.blobs, BLOB_STATEMENTS), (batch.requests, requests)):
            count = _field_count(payload)
            if count:
                copy_sql, insert_sql = statements[count]
                with cur.copy(copy_sql) as cp:  # type: ignore[arg-type]
                    cp.write(payload)
                cur.execute(insert_sql)  # type: ignore[arg-type]
