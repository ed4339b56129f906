"""The Rust row builder (`records.build_batch`) against the Python one it replaced (tests/oracles/python_rows):
the same COPY payloads, byte for byte, for the recorded fixtures and for hostile records; and the GIL is
released while a batch is encoded, so the event loop serving requests is not held up by it."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus._core import KnownKeys, SseObserver, analyze_request, copy_rows, encode_copy_binary, read_reply
from nexus.conversations.linker import Link
from nexus.storage.payload import Batch
from nexus.storage.records import (
    BLOB_TYPES,
    REQUEST_COLUMNS,
    REQUEST_TYPES,
    REQUEST_TYPES_BY_COUNT,
    STORED_REQUEST_HEADERS,
    ExchangeRecord,
    build_batch,
)
from nexus.storage.spool import Spool
from nexus.storage.writer import StorageWriter
from tests.oracles import python_rows as oracle

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "claude_code"
REQUEST_ID = "01a20ff9-a7fd-799f-8b74-7e2b1304e5de"


def old_payloads(
    records: list[ExchangeRecord], known: frozenset[bytes] = frozenset(), conversations: list[Any] | None = None
) -> tuple[bytes, bytes, list[bytes]]:
    """What the Python builder and the encoder made of `records`."""
    blobs: dict[bytes, tuple[int, bytes]] = {}
    rows = []
    for i, rec in enumerate(records):
        rows.append(oracle.to_row(rec, blobs, known, conversations[i] if conversations else None))
    keys = [k for k in blobs if k not in known]
    payload = encode_copy_binary(BLOB_TYPES, [[k, *blobs[k], None] for k in keys]) if keys else b""
    return encode_copy_binary(REQUEST_TYPES, rows), payload, keys


def assert_same(records: list[ExchangeRecord], known: frozenset[bytes] = frozenset(), **kwargs: Any) -> None:
    built = build_batch(records, known, **kwargs)
    requests, blobs, keys = old_payloads(records, known, kwargs.get("conversations"))
    assert built.lost == []
    new_rows, old_rows = copy_rows(built.requests), copy_rows(requests)
    assert len(new_rows) == len(old_rows) == len(records)
    for new, old in zip(new_rows, old_rows, strict=True):
        assert new == old
    assert built.requests == requests
    assert built.blobs == blobs
    assert built.new_keys == keys


def fixture_records() -> list[ExchangeRecord]:
    records = []
    for i, path in enumerate(sorted(FIXTURES.glob("*/*.json"))):
        data = orjson.loads(path.read_bytes())
        if "response" not in data:
            continue
        body = orjson.dumps(data["body"])
        response = data["response"]
        rec = ExchangeRecord(
            REQUEST_ID[:-4] + f"{i:04x}",
            1_780_000_000_000_000 + i,
            "fixtures",
            "acct" if i % 2 else None,
            data["method"],
            data["path"],
            list(data["headers"].items()),
            body,
            response_status=response["status"],
            response_headers=[("content-type", "application/json"), ("request-id", f"req_{i}")],
            response_body=orjson.dumps(response["body"]) if response["body"] is not None else None,
            duration_ms=i,
            attempts=1,
        )
        if i % 3 and isinstance(data["body"], dict):  # most analysed on the request path; the rest split here
            rec.analysis = analyze_request(body, strict=False)
        if i % 4 == 1:
            rec.link = Link("main", conversation_id=REQUEST_ID, branch_id="b", current_hash=b"h" * 16)
        records.append(rec)
    return records


def test_the_layout_is_the_one_the_python_builder_wrote() -> None:
    assert REQUEST_COLUMNS == oracle.REQUEST_COLUMNS
    assert REQUEST_TYPES_BY_COUNT == oracle.REQUEST_TYPES_BY_COUNT
    assert STORED_REQUEST_HEADERS == oracle.STORED_REQUEST_HEADERS


def test_recorded_fixtures_give_the_same_payloads() -> None:
    records = fixture_records()
    assert len(records) > 40
    assert_same(records)
    # parts the database has already are left out, as before
    known = frozenset(copy_rows(build_batch(records[:5]).blobs) and build_batch(records[:5]).new_keys)
    assert_same(records, known)


def test_a_streamed_record_keeps_its_observer_facts() -> None:
    observer = SseObserver()
    observer.feed(
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":"message","role":'
        b'"assistant","model":"m","content":[],"usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
    )
    rec = base_record()
    rec.streamed = True
    rec.response_body = b'{"id":"m","type":"message","content":[]}'
    rec.take_stream_usage(observer)
    rec.repairs = ["stream_events_malformed"]
    assert_same([rec])


def test_imported_conversations_fill_only_an_empty_link() -> None:
    linked, unlinked = base_record(), base_record()
    linked.link = Link("main", conversation_id="11111111-1111-1111-1111-111111111111")
    other = "22222222-2222-2222-2222-222222222222"
    assert_same([linked, unlinked], conversations=[other, other])


def base_record(**kwargs: Any) -> ExchangeRecord:
    values: dict[str, Any] = {
        "request_id": REQUEST_ID,
        "started_at_us": 1_780_000_000_000_000,
        "project_id": "p",
        "account_id": None,
        "method": "POST",
        "path": "/v1/messages",
        "request_headers": [("user-agent", "t"), ("authorization", "Bearer sk-ant-secret")],
        "request_body": b'{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}',
        "response_status": 200,
        "response_body": b'{"type":"message","content":[{"type":"tool_use"}],"usage":{"input_tokens":2}}',
    }
    values.update(kwargs)
    return ExchangeRecord(**values)


def test_a_record_that_cannot_be_built_gets_the_same_minimal_row() -> None:
    rec = base_record()
    rec.analysis = analyze_request(rec.request_body or b"")
    rec.request_body = b"short"  # the spans now point past the body
    broken = base_record(request_headers=[("user-agent", b"bytes, not str")])
    assert_same([rec, broken, base_record()])


def test_a_value_no_column_takes_is_lost_alone() -> None:
    bad = base_record(duration_ms="soon")
    built = build_batch([base_record(), bad, base_record()])
    assert built.lost and built.lost[0][0] == REQUEST_ID and "int4" in built.lost[0][1]
    assert len(copy_rows(built.requests)) == 2


_text = st.text(alphabet=st.characters(codec=None), max_size=30)  # lone surrogates, NUL, controls
_header_names = st.sampled_from([*sorted(STORED_REQUEST_HEADERS), "authorization", "x-api-key", "cookie"])
_keyish = st.sampled_from(["cnp_live_abcdefghijklmnopqrstuvwxyz012345", "CNP_TEST_x", "%63np_live_zz", "50%", ""])
_values = st.one_of(_text, st.builds(lambda a, b: a + b, _text, _keyish))
_json_text = st.text(max_size=30)  # what orjson can write: no lone surrogates
_int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_json = st.recursive(
    st.none() | st.booleans() | _int64 | st.floats(allow_nan=False) | _json_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_json_text, inner, max_size=3),
    max_leaves=8,
)
_usage = st.dictionaries(
    st.sampled_from(["input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"]),
    st.one_of(_int64, st.floats(allow_nan=False), st.text(max_size=5), st.none()),
)


@st.composite
def hostile_records(draw: st.DrawFn) -> ExchangeRecord:
    body_kind = draw(st.sampled_from(["messages", "json", "bytes", "none", "empty"]))
    if body_kind == "messages":
        body = orjson.dumps(
            {
                "model": draw(st.one_of(_json_text, _int64)),
                "system": draw(_json_text),
                "messages": [{"role": "user", "content": draw(_json_text)}],
                "metadata": {"user_id": draw(st.sampled_from(["user_1_account__session_abc-1", '{"session_id":"s"}']))},
            }
        )
    elif body_kind == "json":
        body = orjson.dumps(draw(_json))
    elif body_kind == "bytes":
        body = draw(st.binary(max_size=40))
    else:
        body = None if body_kind == "none" else b""
    reply = draw(st.one_of(st.none(), st.binary(max_size=30), st.builds(orjson.dumps, _json)))
    if draw(st.booleans()):
        content = draw(st.lists(st.sampled_from([{"type": "tool_use"}, {"type": "text"}, 3]), max_size=3))
        reply = orjson.dumps({"type": "message", "content": content, "usage": draw(_usage)})
    rec = ExchangeRecord(
        REQUEST_ID,
        draw(st.integers(min_value=946_684_800_000_000, max_value=4_000_000_000_000_000)),
        draw(_text),
        draw(st.one_of(st.none(), _text)),
        draw(_text),
        draw(_values),
        draw(st.lists(st.tuples(_header_names, _values), max_size=5)),
        body,
        response_status=draw(st.one_of(st.none(), st.integers(min_value=-(2**40), max_value=2**40))),
        response_headers=draw(st.one_of(st.none(), st.lists(st.tuples(_text, _text), max_size=3))),
        response_body=reply,
        streamed=draw(st.booleans()),
        usage_json=draw(st.one_of(st.none(), st.builds(orjson.dumps, _usage))),
        input_tokens=draw(st.one_of(st.none(), st.integers(min_value=-(2**70), max_value=2**70))),
        tool_call_count=draw(st.one_of(st.none(), st.integers(min_value=0, max_value=5))),
        outcome=draw(_text),
        error=draw(st.one_of(st.none(), _values)),
        request_type=draw(st.one_of(st.none(), _text)),
        task_prompt_keys=draw(st.one_of(st.none(), st.lists(st.binary(min_size=16, max_size=16), max_size=2))),
        attempts=draw(st.one_of(st.none(), st.integers(min_value=0, max_value=2**33))),
        repairs=draw(st.one_of(st.none(), st.lists(st.one_of(_text, st.just("usage_not_integer")), max_size=2))),
    )
    if reply and draw(st.booleans()):
        rec.reply = read_reply(reply)  # as the request path reads it (the row builder takes its facts in Rust)
    if body and body_kind != "bytes" and draw(st.booleans()):
        try:
            rec.analysis = analyze_request(body, strict=False)
        except ValueError:
            pass
    if draw(st.booleans()):
        rec.link = Link("main", conversation_id=REQUEST_ID, is_subtask=draw(st.booleans()), parent_hash=b"p" * 16)
    return rec


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile_records(), min_size=1, max_size=4))
def test_hostile_records_give_the_same_payloads(records: list[ExchangeRecord]) -> None:
    assert_same(records)


def ticks_during(work: Callable[[], object]) -> int:
    """How often another thread ran while `work` ran. The switch interval is made huge, so that thread
    can run only when `work` releases the GIL: a call that holds it throughout gives exactly 0."""
    ticks = 0
    done = threading.Event()
    started = threading.Event()

    def count() -> None:
        nonlocal ticks
        started.set()
        while not done.is_set():
            ticks += 1
            time.sleep(0.0001)  # releases the GIL

    old = sys.getswitchinterval()
    ticker = threading.Thread(target=count)
    ticker.start()
    started.wait()
    sys.setswitchinterval(100.0)
    try:
        before = ticks
        work()
        return ticks - before
    finally:
        sys.setswitchinterval(old)
        done.set()
        ticker.join()


def test_the_gil_is_released_while_a_batch_is_encoded() -> None:
    """Another Python thread makes progress while a large batch is encoded (the old builder, whose
    encoder held the GIL, gives that thread no turn at all: the control)."""
    text = "x" * 4_000_000
    body = orjson.dumps({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": text}]})
    records = [base_record(request_body=body, response_body=b'{"t":"' + b"y\\u0000" * 1_000_000 + b'"}')]
    records *= 10
    assert ticks_during(lambda: build_batch(records)) > 0
    rows = [oracle.to_row(rec, {}) for rec in records]
    assert ticks_during(lambda: encode_copy_binary(REQUEST_TYPES, rows)) == 0


def test_a_batch_spooled_by_the_python_builder_replays_as_a_new_one_is_stored(migrated_db: str, tmp_path: Path) -> None:
    """The spool format is unchanged: a batch the previous release spooled (rows built in Python)
    replays, and its rows read back exactly as the same records written now."""
    records = fixture_records()[:12]
    requests, blobs, _ = old_payloads(records)
    spool = Spool(tmp_path / "spool", 1 << 26)
    spool.append(Batch(requests, blobs).pack())
    writer = StorageWriter(migrated_db, batch_size=50, interval_ms=20, spool=spool)
    writer.start()
    try:
        deadline = time.monotonic() + 30
        while spool.pending_files():
            assert time.monotonic() < deadline, "the spooled batch was not replayed"
            time.sleep(0.02)
    finally:
        writer.close()
    assert writer.metrics.replayed_rows == len(records)
    query = "SELECT * FROM api_requests ORDER BY request_id"
    with psycopg.connect(migrated_db) as conn:
        cur = conn.execute(query)
        replayed = cur.fetchall()
        columns = [d.name for d in cur.description or ()]
        conn.execute("TRUNCATE api_requests")
        conn.commit()
    writer = StorageWriter(migrated_db, batch_size=50, interval_ms=20, spool=Spool(tmp_path / "spool2", 1 << 26))
    writer.start()
    for rec in records:
        writer.submit(rec)
    writer.close()
    assert writer.metrics.rows_written == len(records)
    with psycopg.connect(migrated_db) as conn:
        written = conn.execute(query).fetchall()
    assert len(replayed) == len(records)
    for new, old in zip(written, replayed, strict=True):
        # all but when the row reached the database
        assert [(c, a) for c, a, b in zip(columns, new, old, strict=True) if a != b and c != "created_at"] == []


def test_known_keys_forget_the_oldest_and_a_key_added_again_is_new() -> None:
    known = KnownKeys(3)
    known.add_all([b"a", b"b", b"c"])
    known.add_all([b"a"])  # now the newest
    known.add_all([b"d"])
    assert [k in known for k in (b"a", b"b", b"c", b"d")] == [True, False, True, True]
    assert len(known) == 3 and "a" not in known  # type: ignore[operator]
    for i in range(1000):  # stale entries do not pile up
        known.add_all([b"a", bytes([i % 7])])
    assert len(known) == 3


def test_parts_the_writer_knows_are_left_out_as_with_a_python_set() -> None:
    records = fixture_records()
    first = build_batch(records[:6]).new_keys
    known = KnownKeys(50_000)
    known.add_all(first)
    built = build_batch(records, known)
    requests, blobs, keys = old_payloads(records, frozenset(first))
    assert (built.requests, built.blobs, built.new_keys) == (requests, blobs, keys)
    assert not set(first) & set(built.new_keys)
