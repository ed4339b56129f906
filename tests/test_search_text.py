"""The search text built in Rust (`nexus_core/src/search.rs`) is the text migration 0012's SQL extracts.

The writer stages it with each row and PostgreSQL only runs `to_tsvector` on it (extracting it in
plpgsql was about half of a row's insert). The SQL function stays, for rows staged without the text
and as the oracle here: hostile contents (injected blocks open, closed, nested, cut; block lists of any
shape; roles and types of the wrong type; characters past the limits) are stored through the writer's
own statements, and every stored vector must equal the one the SQL function computes from the stored
row and parts.
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

import orjson
import psycopg

from nexus._core import analyze_request, copy_row_field, copy_rows
from nexus.storage.payload import STAGE_SQL, Batch, send
from nexus.storage.records import REQUEST_NAMES, ExchangeRecord, build_batch
from tests.oracles.python_rows import SEARCH_TAGS

WORDS = ["find", "the", "zebra", "files", "running", "é", "日本", "🦓", " ", "\n", "\t", "\r\n", "<", ">", "/"]


def _text(rng: random.Random) -> str:
    pieces = []
    for _ in range(rng.randrange(0, 12)):
        roll = rng.random()
        tag = rng.choice([*SEARCH_TAGS, "other-tag"])
        if roll < 0.2:
            pieces.append(f"<{tag}>")
        elif roll < 0.35:
            pieces.append(f"</{tag}>")
        elif roll < 0.36:  # rare: many make a message past what the builder reads (256 KiB)
            pieces.append("x" * rng.choice([19_999, 20_000, 20_001, 50_001]))
        else:
            pieces.append(rng.choice(WORDS))
    return "".join(pieces)


def _content(rng: random.Random) -> object:
    roll = rng.random()
    if roll < 0.35:
        return _text(rng)
    if roll < 0.9:
        blocks: list[object] = []
        for _ in range(rng.choice([0, 1, 2, 3, 5, 101, 102])):
            kind = rng.random()
            if kind < 0.6:
                blocks.append({"type": "text", "text": _text(rng)})
            elif kind < 0.7:
                blocks.append({"type": "tool_result", "tool_use_id": "t", "content": _text(rng)})
            elif kind < 0.8:
                blocks.append({"type": "text", "text": 5})
            elif kind < 0.9:
                blocks.append({"type": ["text"], "text": "wrong type"})
            else:
                blocks.append(rng.choice(["a string", 3, None, ["text"]]))
        return blocks
    return rng.choice([None, 7, {"type": "text", "text": "an object"}])


def _record(rng: random.Random, i: int) -> ExchangeRecord:
    messages = []
    for _ in range(rng.randrange(0, 7)):
        role = rng.choice(["user", "user", "assistant", "system", ["user"]])
        messages.append({"role": role, "content": _content(rng)})
    body = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": messages})
    reply = None
    if rng.random() < 0.8:
        reply = orjson.dumps({"type": "message", "role": "assistant", "content": _content(rng), "usage": {}})
    rec = ExchangeRecord(
        str(uuid.uuid4()),
        int(time.time() * 1_000_000) + i,
        "p",
        None,
        "POST",
        "/v1/messages",
        [],
        body,
        200,
        [],
        reply,
    )
    rec.analysis = analyze_request(body, strict=False)
    rec.request_type = rng.choice([None, "main", "subagent", "compaction", "auxiliary"])
    return rec


#: The text migration 0012's `nexus_search_vector` gives `to_tsvector`, from a stored row `r`.
SQL_TEXT = """left(coalesce((
    SELECT nexus_visible_text(b.body -> 'content')
    FROM unnest(r.message_keys[greatest(1, coalesce(array_length(r.message_keys, 1), 0) - 3):])
        WITH ORDINALITY AS k(key, i)
    JOIN content_blobs b ON b.key = k.key
    WHERE b.body ->> 'role' = 'user' AND r.request_type IS DISTINCT FROM 'compaction'
      AND r.request_type IS DISTINCT FROM 'auxiliary'
    ORDER BY k.i DESC LIMIT 1), '') || E'\\n' || nexus_visible_text(r.response_body -> 'content'), 100000)"""


def _edge_records() -> list[ExchangeRecord]:
    """The limits exactly: the 100th block and the 101st, 20,000 and 50,000 characters (multi-byte)."""
    rng = random.Random(5)
    contents: list[object] = [
        [{"type": "text", "text": f"word{i}"} for i in range(101)],
        [{"type": "text", "text": "é" * 19_999 + "zebra"}, {"type": "text", "text": "giraffe"}],
        "日" * 49_999 + " zebra giraffe",
        [{"type": "text", "text": "a" * 20_000} for _ in range(3)] + [{"type": "text", "text": "okapi"}],
        "<system-reminder>hidden</system-reminder>shown<command-name>cut",
        "  \r\n\t  ",
    ]
    records = []
    for i, content in enumerate(contents):
        rec = _record(rng, 10_000 + i)
        body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": content}]}
        rec.request_body = orjson.dumps(body)
        rec.analysis = analyze_request(rec.request_body, strict=False)
        rec.request_type = "main"
        rec.response_body = orjson.dumps({"content": content})
        records.append(rec)
    # written by hand (what a dict cannot hold): a repeated key (jsonb keeps the last), blocks that are
    # no objects, an escaped key, a number past a double and nesting past 128 in fields nobody reads
    deep = "[" * 200 + "]" * 200
    raw_messages = [
        '{"role":"assistant","role":"user","content":"no","content":[{"type":"text","text":"first",'
        '"text":"kept zebra"},"x",7,{"type":"image"},{"type":"text","type":"tool_use","text":"hidden"}]}',
        '{"role":"user","content":[{"type":"text","t\\u0065xt":"escaped okapi"}]}',
        f'{{"role":"user","n":1e400,"deep":{deep},"content":"past the double giraffe"}}',
        '{"role":"user","content":{"type":"text","text":"an object is no content"}}',
    ]
    for i, message in enumerate(raw_messages):
        rec = _record(rng, 10_100 + i)
        rec.request_body = ('{"model":"m","max_tokens":5,"messages":[' + message + "]}").encode()
        rec.analysis = analyze_request(rec.request_body, strict=False)
        rec.request_type = "main"
        rec.response_body = message.encode()
        records.append(rec)
    return records


def _store(conn: psycopg.Connection, built: Any) -> None:
    """Write `built` (a `build_batch` result) with the writer's own statements, and commit."""
    for sql in STAGE_SQL:
        conn.execute(sql)  # type: ignore[arg-type]
    send(conn, Batch(built.requests, built.blobs))
    conn.commit()


def test_the_staged_search_text_is_the_text_the_sql_extracts(migrated_db: str) -> None:
    rng = random.Random(12)
    records = [_record(rng, i) for i in range(400)] + _edge_records()
    built = build_batch(records)
    column = REQUEST_NAMES.index("search_text")
    staged = [copy_row_field(row, column) for row in copy_rows(built.requests)]
    # left to PostgreSQL only past the 256 KiB a message or reply is read to (pieces of 50,001 characters)
    assert sum(text is None for text in staged) < len(records) // 10
    with psycopg.connect(migrated_db) as conn:
        for sql in STAGE_SQL:
            conn.execute(sql)  # type: ignore[arg-type]
        send(conn, Batch(built.requests, built.blobs))
        conn.execute("CREATE TEMP TABLE staged (request_id uuid, t text)")
        with conn.cursor().copy("COPY staged (request_id, t) FROM STDIN") as cp:
            for rec, text in zip(records, staged, strict=True):
                if text is not None:
                    cp.write_row((rec.request_id, text.decode()))
        different = conn.execute(
            f"SELECT r.request_id, s.t, {SQL_TEXT} FROM api_requests r JOIN staged s USING (request_id) "  # noqa: S608
            f"WHERE s.t IS DISTINCT FROM {SQL_TEXT}"
        ).fetchall()
        vectors = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE search_vector = "
            "nexus_search_vector(message_keys, response_body, request_type)), "
            "count(*) FILTER (WHERE search_vector::text <> '') FROM api_requests"
        ).fetchone()
    assert [(rid, t[:200], sql[:200]) for rid, t, sql in different] == []
    assert vectors is not None and vectors[:2] == (len(records), len(records))
    assert vectors[2] > 100  # and many have words to find


def test_a_text_rust_cannot_read_as_postgresql_does_is_left_to_postgresql(migrated_db: str) -> None:
    """A NUL (PostgreSQL stores it repaired, as text), a reply that is not JSON, or a message past what
    the builder reads (256 KiB): no staged text, and the SQL function builds the vector from the stored
    row as before."""
    rng = random.Random(3)
    nul, not_json = _record(rng, 0), _record(rng, 1)
    nul.request_body = orjson.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "a\0b"}]})
    nul.analysis = analyze_request(nul.request_body, strict=False)
    nul.request_type = "main"
    not_json.response_body = b"not json at all"
    huge = _record(rng, 2)  # past what the builder reads (memory): a tree of many small objects
    blocks = [{"type": "text", "text": "zebra"}, *([{}] * 100_000)]
    huge.request_body = orjson.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": blocks}]})
    huge.analysis = analyze_request(huge.request_body, strict=False)
    huge.request_type = "main"
    built = build_batch([nul, not_json, huge])
    column = REQUEST_NAMES.index("search_text")
    assert [copy_row_field(row, column) for row in copy_rows(built.requests)] == [None, None, None]
    with psycopg.connect(migrated_db) as conn:
        _store(conn, built)
        vectors = conn.execute(
            "SELECT search_vector IS NOT DISTINCT FROM nexus_search_vector(message_keys, response_body, request_type) "
            "FROM api_requests"
        ).fetchall()
    assert vectors == [(True,), (True,), (True,)]


def _title_records() -> list[ExchangeRecord]:
    """The title's own edges: every ASCII space the SQL's `\\s` collapses, spaces outside ASCII (left to
    PostgreSQL), a continued session's summary, 120 and 121 characters (multi-byte), the first user
    text as the 12th message and as the 13th, only injected blocks."""
    rng = random.Random(9)
    summary = "This session is being continued from a previous conversation that ran out of context."
    firsts: list[list[object]] = [
        [" \v\f fix\t\tthe \r\n\n bug \x0b"],
        ["a\u00a0b"],
        ["a\u3000b"],
        ["a\x1cb"],
        [summary, "the real first prompt"],
        ["é" * 120],
        ["日" * 121],
        ["<system-reminder>x</system-reminder>", [{"type": "text", "text": "  from  blocks "}]],
        [*(["<command-name>/clear</command-name>"] * 11), "twelfth"],
        [*(["<command-name>/clear</command-name>"] * 12), "thirteenth"],
    ]
    records = []
    for i, contents in enumerate(firsts):
        rec = _record(rng, 20_000 + i)
        messages = [{"role": "user", "content": c} for c in contents] + [{"role": "assistant", "content": "ok"}]
        rec.request_body = orjson.dumps({"model": "m", "max_tokens": 5, "messages": messages})
        rec.analysis = analyze_request(rec.request_body, strict=False)
        records.append(rec)
    return records


def test_the_staged_title_is_the_title_the_sql_gives(migrated_db: str) -> None:
    """The Rust builder's title (staged with the row for the conversation summary) equals migration
    0012's `nexus_title` over the stored row's parts, on the hostile rows above and the title's own
    edges; where it cannot be sure (a space PostgreSQL classes by its locale), it stages none and the
    summary gets the SQL's title, as every summary did before."""
    from nexus.conversations.linker import Link

    rng = random.Random(21)
    records = [_record(rng, i) for i in range(400)] + _edge_records() + _title_records()
    for n, rec in enumerate(records):  # each its own conversation, so each summary takes its title
        rec.link = Link("main", conversation_id=str(uuid.UUID(int=n + 1)), branch_id="main")
    # only a conversation's first request is given a title (no parent); a conversation that opened
    # elsewhere and is still untitled gets the SQL's
    later = [rec for rec in records[:400] if rec.link is not None][::7]
    for rec in later:
        assert rec.link is not None
        rec.link.parent_request_id = str(uuid.uuid4())
    built = build_batch(records)
    column = REQUEST_NAMES.index("conversation_title")
    staged = [copy_row_field(row, column) for row in copy_rows(built.requests)]
    assert sum(t is None for t in staged) < len(records) // 10 + len(later)
    assert sum(bool(t) for t in staged) > 100  # many have a title
    by_id = {rec.request_id: t for rec, t in zip(records, staged, strict=True)}
    assert by_id[records[-10].request_id] == b"fix the bug"
    assert [by_id[r.request_id] for r in records[-9:-6]] == [None, None, None]  # left to PostgreSQL
    assert {by_id[r.request_id] for r in later} == {None}
    with psycopg.connect(migrated_db) as conn:
        _store(conn, built)
        rows = conn.execute(
            "SELECT r.request_id::text, nexus_title(r.message_keys), c.title FROM api_requests r "
            "JOIN conversations c USING (conversation_id)"
        ).fetchall()
    assert len(rows) == len(records)
    different = [(rid, sql, stored) for rid, sql, stored in rows if stored != sql]
    assert different == []
    for rid, sql, _ in rows:
        if by_id[rid] is not None:
            assert by_id[rid].decode() == (sql or ""), rid  # type: ignore[union-attr]
    titles = {rid: sql for rid, sql, _ in rows}
    assert [titles[r.request_id] for r in records[-6:]] == [
        "the real first prompt",
        "é" * 120,
        "日" * 119 + "…",
        "from blocks",
        "twelfth",
        None,
    ]


def test_a_batch_spooled_before_the_title_was_staged_gets_the_sql_title(migrated_db: str) -> None:
    """A batch of the 44-column layout (the search text staged, the title not: spooled by the release
    before this one) is written as it was: each conversation's title comes from `nexus_title`."""
    from nexus._core import encode_copy_binary
    from nexus.conversations.linker import Link
    from nexus.storage.records import BLOB_TYPES, REQUEST_NAMES_BY_COUNT, REQUEST_TYPES_BY_COUNT
    from tests.oracles import python_rows as oracle

    rng = random.Random(33)
    records = _title_records() + [_record(rng, i) for i in range(40)]
    for n, rec in enumerate(records):
        rec.link = Link("main", conversation_id=str(uuid.UUID(int=n + 1)), branch_id="main")
    blobs: dict[bytes, tuple[int, bytes]] = {}
    rows = [oracle.to_row(rec, blobs) for rec in records]
    names = REQUEST_NAMES_BY_COUNT[44]
    assert "conversation_title" not in names and "search_text" in names
    old = [[row[REQUEST_NAMES.index(n)] for n in names] for row in rows]
    parts = encode_copy_binary(BLOB_TYPES, [[k, *v, None] for k, v in blobs.items()])
    with psycopg.connect(migrated_db) as conn:
        _store(conn, Batch(encode_copy_binary(REQUEST_TYPES_BY_COUNT[44], old), parts))
        titles = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE c.title IS NOT DISTINCT FROM nexus_title(r.message_keys)), "
            "count(c.title) FROM api_requests r JOIN conversations c USING (conversation_id)"
        ).fetchone()
    assert titles is not None and titles[:2] == (len(records), len(records)) and titles[2] > 10
