"""Isolating the rows of a refused batch (nexus/storage/isolate.py) against a scripted database.

The writer's tests (security/test_storage_isolation) prove it with PostgreSQL; here a fake `attempt`
refuses exactly the rows a test names, so every branch is pinned and counted in milliseconds: which
halves are tried in which order, when the last-resort form is used, what the quarantine receives,
and that an outage met on the way stops the isolation at once.
"""

from __future__ import annotations

import uuid

import orjson
import psycopg
import pytest

from nexus._core import NexusCoreError, copy_row_last_resort, copy_rows, encode_copy_binary
from nexus.storage.isolate import Isolated, _request_id, isolate
from nexus.storage.payload import Batch
from nexus.storage.quarantine import QuarantinedRow
from nexus.storage.records import BLOB_TYPES, REQUEST_TYPES, ExchangeRecord, build_batch


def record(text: str = "hi") -> ExchangeRecord:
    return ExchangeRecord(
        request_id=str(uuid.uuid4()),
        started_at_us=1_700_000_000_000_000,
        project_id="p",
        account_id=None,
        method="POST",
        path="/v1/messages",
        request_headers=[],
        request_body=orjson.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": text}]}),
        response_status=200,
        response_headers=[],
        response_body=orjson.dumps({"type": "message", "usage": {"input_tokens": 3, "output_tokens": 4}}),
    )


def batch_of(records: list[ExchangeRecord], with_blobs: bool = False) -> Batch:
    built = build_batch(records)
    return Batch(built.requests, built.blobs if with_blobs else b"")


class FakeDatabase:
    """Refuses any batch holding a `bad` request id (a content error), except, for ids in `rescued`,
    that row alone in its last-resort form. `outage_after` attempts, it goes away."""

    def __init__(self, bad: set[str], rescued: frozenset[str] = frozenset(), outage_after: int | None = None) -> None:
        self.bad = {uuid.UUID(b).bytes: b for b in bad}
        self.rescued = rescued
        self.outage_after = outage_after
        self.sent: list[tuple[str, int]] = []  # (table, rows) per attempt
        self.stored_requests: list[bytes] = []
        self.stored_blobs = 0
        self.kept: list[QuarantinedRow] = []
        self.originals: list[bytes] = []
        self.bad_blob = b"\xff" * 64  # no blob holds this
        self.blob_original = b""

    def attempt(self, batch: Batch) -> None:
        if self.outage_after is not None and len(self.sent) >= self.outage_after:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        assert not (batch.blobs and batch.requests), "one table per attempt"
        if batch.blobs:
            rows = copy_rows(batch.blobs)
            self.sent.append(("content_blobs", len(rows)))
            if any(self.bad_blob in row for row in rows) and not (
                len(rows) == 1
                and self.blob_original
                and rows[0] == copy_row_last_resort(BLOB_TYPES, self.blob_original)
            ):
                raise psycopg.errors.lookup("54000")("row is too big")
            self.stored_blobs += len(rows)
            return
        rows = copy_rows(batch.requests)
        self.sent.append(("api_requests", len(rows)))
        for row in rows:
            for raw, rid in self.bad.items():
                if raw in row and not (len(rows) == 1 and rid in self.rescued and self._last_resort(row)):
                    raise psycopg.errors.lookup("22P05")("unsupported Unicode escape sequence")
        self.stored_requests += rows

    def _last_resort(self, row: bytes) -> bool:
        return any(row == copy_row_last_resort(REQUEST_TYPES, original) for original in self.originals)

    def keep(self, row: QuarantinedRow) -> None:
        self.kept.append(row)


def run(db: FakeDatabase, batch: Batch) -> Isolated:
    db.originals = copy_rows(batch.requests) if batch.requests else []
    return isolate(batch, db.attempt, db.keep)


def test_a_good_batch_goes_in_whole() -> None:
    records = [record() for _ in range(5)]
    db = FakeDatabase(set())
    counts = run(db, batch_of(records))
    assert (counts.requests, counts.blobs, counts.last_resort, counts.quarantined) == (5, 0, 0, 0)
    assert db.sent == [("api_requests", 5)]


def test_one_bad_row_is_found_by_halving_and_quarantined_and_the_rest_go_in_in_order() -> None:
    records = [record() for _ in range(8)]
    bad = records[5]
    db = FakeDatabase({bad.request_id})
    counts = run(db, batch_of(records))
    assert (counts.requests, counts.last_resort, counts.quarantined) == (7, 0, 1)
    # 8 refused; 0-3 in; 4-7 refused; 4-5 refused; 4 in; 5 refused; 5 (last resort) refused; 6-7 in
    assert db.sent == [("api_requests", n) for n in (8, 4, 4, 2, 1, 1, 1, 2)]
    stored_ids = [str(uuid.UUID(bytes=row[6:22])) for row in db.stored_requests]
    assert stored_ids == [r.request_id for r in records if r is not bad]
    (kept,) = db.kept
    assert kept.table_name == "api_requests"
    assert kept.request_id == bad.request_id
    assert kept.column_count == len(REQUEST_TYPES)
    assert kept.sqlstate == "22P05"
    assert kept.error == "[22P05] UntranslatableCharacter: unsupported Unicode escape sequence"
    assert kept.row_data in db.originals
    assert kept.id == "" and kept.retries == 0 and kept.quarantined_at > 0


def test_a_row_its_last_resort_form_rescues_is_stored_not_quarantined() -> None:
    records = [record() for _ in range(3)]
    db = FakeDatabase({records[0].request_id}, rescued=frozenset({records[0].request_id}))
    counts = run(db, batch_of(records))
    assert (counts.requests, counts.last_resort, counts.quarantined) == (3, 1, 0)
    assert db.kept == []
    assert db.sent == [("api_requests", n) for n in (3, 1, 1, 2)]


def test_several_bad_rows() -> None:
    records = [record() for _ in range(6)]
    db = FakeDatabase({records[0].request_id, records[5].request_id})
    counts = run(db, batch_of(records))
    assert (counts.requests, counts.quarantined) == (4, 2)
    assert [k.request_id for k in db.kept] == [records[0].request_id, records[5].request_id]


def test_a_single_row_batch() -> None:
    (only,) = records = [record()]
    db = FakeDatabase({only.request_id})
    counts = run(db, batch_of(records))
    assert (counts.requests, counts.quarantined) == (0, 1)
    assert db.sent == [("api_requests", 1), ("api_requests", 1)]


def test_content_rows_are_counted_apart_and_sent_first() -> None:
    records = [record() for _ in range(2)]
    db = FakeDatabase(set())
    counts = run(db, batch_of(records, with_blobs=True))
    assert counts.blobs == db.stored_blobs > 0
    assert counts.requests == 2
    assert db.sent[0][0] == "content_blobs" and db.sent[-1] == ("api_requests", 2)


def test_an_empty_batch_sends_nothing() -> None:
    db = FakeDatabase(set())
    counts = run(db, Batch(b"", b""))
    assert (counts.requests, counts.blobs) == (0, 0)
    assert db.sent == []


@pytest.mark.parametrize("after", [1, 2, 3, 4, 5])  # 6 attempts without an outage; the 6th is the last resort
def test_an_outage_on_the_way_is_raised_and_nothing_is_quarantined(after: int) -> None:
    records = [record() for _ in range(4)]
    db = FakeDatabase({records[3].request_id}, outage_after=after)
    with pytest.raises(psycopg.OperationalError):
        run(db, batch_of(records))
    assert db.kept == []


def test_an_outage_while_the_last_resort_form_is_sent_is_raised() -> None:
    records = [record()]
    db = FakeDatabase({records[0].request_id}, outage_after=1)
    with pytest.raises(psycopg.OperationalError):
        run(db, batch_of(records))
    assert db.kept == []


def test_a_refused_content_row_is_rescued_in_its_last_resort_form_with_its_own_types() -> None:
    records = [record(f"prompt number {i}") for i in range(3)]
    batch = batch_of(records, with_blobs=True)
    db = FakeDatabase(set())
    blob_rows = copy_rows(batch.blobs)
    assert len(blob_rows) == 3
    db.bad_blob = b"prompt number 2"
    (db.blob_original,) = [row for row in blob_rows if db.bad_blob in row]
    counts = run(db, batch)
    assert counts.blobs == len(blob_rows) == db.stored_blobs
    assert (counts.last_resort, counts.quarantined, counts.requests) == (1, 0, 3)
    assert db.sent[0] == ("content_blobs", len(blob_rows))


def test_a_content_row_nothing_rescues_is_quarantined_as_a_content_row() -> None:
    records = [record(f"prompt number {i}") for i in range(2)]
    batch = batch_of(records, with_blobs=True)
    db = FakeDatabase(set())
    db.bad_blob = b"prompt number 1"  # blob_original left empty: the last-resort form is refused too
    counts = run(db, batch)
    (kept,) = db.kept
    assert (kept.table_name, kept.request_id, kept.sqlstate) == ("content_blobs", None, "54000")
    assert (counts.blobs, counts.quarantined, counts.requests) == (1, 1, 2)


def test_two_rows_rescued_are_counted_twice() -> None:
    records = [record() for _ in range(4)]
    bad = {records[1].request_id, records[2].request_id}
    db = FakeDatabase(bad, rescued=frozenset(bad))
    counts = run(db, batch_of(records))
    assert (counts.requests, counts.last_resort, counts.quarantined) == (4, 2, 0)


def test_a_row_that_cannot_even_be_encoded_again_is_quarantined_with_that_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def cannot(types: list[str], row: bytes) -> bytes:
        raise NexusCoreError("invalid argument: malformed COPY data")

    monkeypatch.setattr("nexus.storage.isolate.copy_row_last_resort", cannot)
    records = [record() for _ in range(2)]
    db = FakeDatabase({records[0].request_id})
    counts = run(db, batch_of(records))
    assert (counts.requests, counts.quarantined) == (1, 1)
    (kept,) = db.kept
    assert kept.error == "NexusCoreError: invalid argument: malformed COPY data" and kept.sqlstate is None


def test_the_request_id_of_a_row_is_read_only_from_a_request_row_with_a_uuid() -> None:
    (row,) = copy_rows(encode_copy_binary(["bytea", "text"], [[b"abc", "x"]]))
    assert _request_id("api_requests", row) is None
    (good,) = copy_rows(batch_of([r := record()]).requests)
    assert _request_id("api_requests", good) == r.request_id
    assert _request_id("content_blobs", good) is None
    assert _request_id("api_requests", b"\x00\x01") is None  # not even a field
