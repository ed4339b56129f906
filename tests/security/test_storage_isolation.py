"""Finding 1 of "Safe on a network", the writer itself: whatever PostgreSQL refuses, every other row of
the batch goes in, refused rows are stored in their last-resort form or kept in the quarantine, spool
replay never stops at a bad batch, and `/health` and `nexus storage quarantine` say what happened."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import orjson
import psycopg
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus._core import encode_copy_binary
from nexus.cli import main
from nexus.storage.payload import Batch
from nexus.storage.records import REQUEST_TYPES_BY_COUNT, ExchangeRecord
from nexus.storage.spool import Spool
from nexus.storage.writer import StorageWriter
from tests.freezable import freezable
from tests.hostile import hostile_json, hostile_text
from tests.oracles import python_rows as oracle


def record(
    model: str = "claude-sonnet-4-6", body: bytes | None = None, response: bytes | None = None
) -> ExchangeRecord:
    return ExchangeRecord(
        request_id=str(uuid.uuid4()),
        started_at_us=int(time.time() * 1_000_000),
        project_id="p",
        account_id=None,
        method="POST",
        path="/v1/messages",
        request_headers=[("user-agent", "test")],
        request_body=body
        or orjson.dumps({"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
        response_status=200,
        response_headers=[("request-id", "req_1")],
        response_body=response
        or orjson.dumps({"type": "message", "usage": {"input_tokens": 3, "output_tokens": 4}, "content": []}),
    )


def wait(predicate, timeout_s: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def stored_ids(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {str(r[0]) for r in conn.execute("SELECT request_id FROM api_requests").fetchall()}


def quarantined_ids(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {str(r[0]) for r in conn.execute("SELECT request_id FROM storage_quarantine").fetchall()}


def writer_for(dsn: str, tmp_path: Path, **kw: int) -> StorageWriter:
    spool = Spool(tmp_path / "spool", 1 << 24)
    return StorageWriter(dsn, batch_size=kw.get("batch_size", 50), interval_ms=kw.get("interval_ms", 20), spool=spool)


def test_a_refused_row_is_quarantined_and_every_other_row_goes_in(migrated_db: str, tmp_path: Path) -> None:
    """A row PostgreSQL refuses for any reason (here a CHECK constraint: class 23) is isolated by
    bisection; its 26 neighbours go in; it is quarantined; once the cause is gone it can be retried."""
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE api_requests ADD CONSTRAINT no_poison CHECK (model IS DISTINCT FROM 'poison')")
    records = [record() for _ in range(26)]
    records.insert(13, record("poison"))
    writer = writer_for(migrated_db, tmp_path, batch_size=27, interval_ms=200)
    writer.start()
    try:
        for rec in records:
            writer.submit(rec)
        wait(lambda: writer.metrics.rows_quarantined == 1)
        snapshot = writer.snapshot()
    finally:
        writer.close()
    bad = records[13].request_id
    assert stored_ids(migrated_db) == {r.request_id for r in records} - {bad}
    assert quarantined_ids(migrated_db) == {bad}
    assert snapshot["degraded"] is True and snapshot["rows_written"] == 26 and snapshot["refused_batches"] == 1
    assert any("quarantine" in reason for reason in snapshot["degraded_reasons"])  # type: ignore[attr-defined]

    env = {"DATABASE_URL": migrated_db, "NEXUS_HOME": str(tmp_path)}
    listed = CliRunner().invoke(main, ["storage", "quarantine", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    item = orjson.loads(listed.output.splitlines()[0])
    assert item["request_id"] == bad and item["table"] == "api_requests" and "no_poison" in item["error"]
    assert item["sqlstate"] == "23514"
    again = CliRunner().invoke(main, ["storage", "quarantine", "--retry"], env=env)
    assert "refused again" in again.output and quarantined_ids(migrated_db) == {bad}
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE api_requests DROP CONSTRAINT no_poison")
    retried = CliRunner().invoke(main, ["storage", "quarantine", "--retry"], env=env)
    assert retried.exit_code == 0 and "stored" in retried.output, retried.output
    assert bad in stored_ids(migrated_db) and quarantined_ids(migrated_db) == set()


def test_a_refused_row_goes_in_in_its_last_resort_form(migrated_db: str, tmp_path: Path) -> None:
    """A JSON value PostgreSQL refuses (here by a constraint on the reply's content) is stored as a JSON string."""
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE api_requests ADD CONSTRAINT object_reply CHECK (jsonb_typeof(response_body) <> 'array')"
        )
    bad = record(response=b'[{"type": "text"}]')
    writer = writer_for(migrated_db, tmp_path)
    writer.start()
    try:
        for rec in (record(), bad, record()):
            writer.submit(rec)
        wait(lambda: writer.metrics.rows_last_resort == 1 and writer.metrics.rows_written == 3)
    finally:
        writer.close()
    with psycopg.connect(migrated_db) as conn:
        body, repairs = conn.execute(
            "SELECT response_body, storage_repairs FROM api_requests WHERE request_id = %s", (bad.request_id,)
        ).fetchone()  # type: ignore[misc]
    assert body == '[{"type": "text"}]' and "stored_as_text" in repairs


def test_an_unknown_error_is_waited_out_once_then_isolated(migrated_db: str, tmp_path: Path) -> None:
    """An error of no known class (a trigger's `RAISE`: P0001) could be passing: the batch is spooled
    first; refused again with the same error on replay, its rows are isolated, so replay goes on."""
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.model = 'odd' THEN RAISE EXCEPTION 'odd model'; END IF; RETURN NEW; END $$"
        )
        conn.execute("CREATE TRIGGER refuse_days BEFORE INSERT ON api_requests FOR EACH ROW EXECUTE FUNCTION refuse()")
    records = [record(), record("odd"), record()]
    writer = writer_for(migrated_db, tmp_path, batch_size=3, interval_ms=100)
    writer.start()
    try:
        for rec in records:
            writer.submit(rec)
        wait(lambda: writer.metrics.rows_quarantined == 1, timeout_s=30)
    finally:
        writer.close()
    assert writer.metrics.spooled_batches == 1  # waited out once
    assert stored_ids(migrated_db) == {records[0].request_id, records[2].request_id}
    assert quarantined_ids(migrated_db) == {records[1].request_id}


def test_spool_replay_goes_past_a_batch_an_older_release_encoded_badly(migrated_db: str, tmp_path: Path) -> None:
    """A spooled batch from before the safe encoder, with a NUL byte in a text column, no longer stops
    replay: its rows are isolated, the bad one stored in its last-resort form, later batches replayed."""
    layout = REQUEST_TYPES_BY_COUNT[39]
    first, second = [record("POISONMODEL"), record()], [record(), record()]

    def old_batch(records: list[ExchangeRecord]) -> bytes:
        rows = [[*row[:10], *row[11:18], *row[19:41]] for row in (oracle.to_row(r, {}) for r in records)]  # 39 columns
        payload = encode_copy_binary(layout, rows)
        return Batch(payload.replace(b"POISONMODEL", b"POISON\x00ODEL"), b"").pack()

    spool = Spool(tmp_path / "spool", 1 << 24)
    spool.append(old_batch(first))
    spool.append(old_batch(second))
    writer = StorageWriter(migrated_db, batch_size=10, interval_ms=20, spool=spool)
    writer.start()
    try:
        wait(lambda: not spool.pending_files())
    finally:
        writer.close()
    assert stored_ids(migrated_db) == {r.request_id for r in first + second}
    with psycopg.connect(migrated_db) as conn:
        model = conn.execute("SELECT model FROM api_requests WHERE request_id = %s", (first[0].request_id,)).fetchone()
    assert model == ("POISON\\u0000ODEL",)
    assert writer.metrics.rows_last_resort == 1 and writer.metrics.rows_quarantined == 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(hostile_json, hostile_json, hostile_text, st.integers() | st.floats() | st.text()),
        min_size=1,
        max_size=6,
    )
)
def test_any_hostile_json_lands_and_every_later_row_lands(migrated_db: str, tmp_path: Path, hostile: list) -> None:  # type: ignore[type-arg]
    """Arbitrary hostile requests and replies (NUL, lone surrogates, raw invalid bytes, numbers no reader
    holds, nesting past every limit, usage values of any type) through the real writer into PostgreSQL:
    each row lands (or, at worst, is quarantined), and the normal rows submitted after them all land."""
    writer = writer_for(migrated_db, tmp_path / uuid.uuid4().hex, batch_size=4, interval_ms=10)
    writer.start()
    bad, good = [], [record() for _ in range(3)]
    try:
        for request, reply, model, tokens in hostile:
            rec = record(body=request, response=reply)
            if isinstance(model, str):
                rec.request_headers = [("user-agent", model), ("x-claude-code-session-id", model)]
            rec.usage_json = reply
            rec.streamed = isinstance(tokens, float)
            rec.input_tokens = tokens if isinstance(tokens, int) else None
            bad.append(rec)
            writer.submit(rec)
        for rec in good:
            writer.submit(rec)
        ids = {r.request_id for r in bad + good}
        wait(lambda: ids <= stored_ids(migrated_db) | quarantined_ids(migrated_db))
    finally:
        writer.close()
    assert {r.request_id for r in good} <= stored_ids(migrated_db)
    assert writer.metrics.dropped_rows == 0


def test_one_bad_usage_value_does_not_drop_its_batch(migrated_db: str, tmp_path: Path) -> None:
    """Finding 7: an upstream `usage` value too large for bigint dropped its whole batch (26 innocent rows)."""
    records = [record() for _ in range(26)]
    huge = record(response=b'{"type": "message", "content": [], "usage": {"input_tokens": 1e30, "output_tokens": 5}}')
    streamed = record()
    streamed.streamed, streamed.output_tokens = True, 2**64 - 1  # what the SSE observer reports as u64
    records[10:10] = [huge, streamed]
    writer = writer_for(migrated_db, tmp_path, batch_size=28, interval_ms=200)
    writer.start()
    try:
        for rec in records:
            writer.submit(rec)
        wait(lambda: writer.metrics.rows_written == 28)
    finally:
        writer.close()
    assert writer.metrics.refused_batches == 0 and writer.metrics.dropped_rows == 0
    with psycopg.connect(migrated_db) as conn:
        rows = {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT request_id::text, input_tokens, output_tokens, storage_repairs FROM api_requests "
                "WHERE request_id = ANY(%s::uuid[])",
                ([huge.request_id, streamed.request_id],),
            ).fetchall()
        }
    assert rows[huge.request_id] == (2**63 - 1, 5, ["int_clamped"])
    assert rows[streamed.request_id][1] == 2**63 - 1 and "int_clamped" in rows[streamed.request_id][2]


def test_when_the_quarantine_table_refuses_too_the_row_goes_to_a_file(migrated_db: str, tmp_path: Path) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE api_requests ADD CONSTRAINT no_poison CHECK (model IS DISTINCT FROM 'poison')")
        conn.execute("DROP TABLE storage_quarantine")
    records = [record(), record("poison"), record()]
    writer = writer_for(migrated_db, tmp_path, batch_size=3, interval_ms=100)
    writer.start()
    try:
        for rec in records:
            writer.submit(rec)
        wait(lambda: writer.metrics.quarantine_file_rows == 1 and writer.metrics.rows_written == 2)
        snapshot = writer.snapshot()
    finally:
        writer.close()
    assert snapshot["degraded"] is True and snapshot["rows_written"] == 2
    files = list((tmp_path / "quarantine").glob("quarantine-*.log"))
    assert len(files) == 1 and oct(files[0].stat().st_mode & 0o777) == "0o600"
    env = {"DATABASE_URL": migrated_db, "NEXUS_HOME": str(tmp_path)}
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE api_requests DROP CONSTRAINT no_poison")
        conn.execute(  # back, as the migration made it, so the command can list both places
            "CREATE TABLE storage_quarantine (id bigserial PRIMARY KEY, quarantined_at timestamptz NOT NULL "
            "DEFAULT now(), table_name text NOT NULL, column_count int NOT NULL, request_id uuid, row_data bytea "
            "NOT NULL, sqlstate text, error text NOT NULL, retries int NOT NULL DEFAULT 0, last_retry_at timestamptz)"
        )
    listed = CliRunner().invoke(main, ["storage", "quarantine", "--json"], env=env)
    item = orjson.loads(listed.output.splitlines()[0])
    assert item["id"].startswith("file:") and item["request_id"] == records[1].request_id
    retried = CliRunner().invoke(main, ["storage", "quarantine", "--retry"], env=env)
    assert "stored" in retried.output, retried.output
    assert records[1].request_id in stored_ids(migrated_db)
    assert not files[0].exists()


def test_a_database_that_hangs_never_holds_rows(migrated_db: str, tmp_path: Path) -> None:
    """A server that hangs keeps the connection open and never answers: the watchdog ends the call
    after the write timeout, the batch goes to the spool, /health says so meanwhile, shutdown does not
    lose what is queued, and everything lands once the server answers again."""
    with freezable(migrated_db) as relay:
        spool = Spool(tmp_path / "spool", 1 << 24)
        writer = StorageWriter(relay.dsn, batch_size=5, interval_ms=20, spool=spool, write_timeout_ms=1000)
        writer.start()
        first = [record() for _ in range(3)]
        for rec in first:
            writer.submit(rec)
        wait(lambda: writer.metrics.rows_written == 3)
        relay.frozen.set()
        stuck = [record() for _ in range(10)]
        for rec in stuck:
            writer.submit(rec)
        time.sleep(0.5)  # the first batch is now waiting on the frozen server
        during = writer.snapshot()
        assert during["oldest_unwritten_s"] > 0.3
        wait(lambda: writer.metrics.spooled_batches >= 1, timeout_s=10)
        wait(lambda: writer.snapshot()["degraded"] is True, timeout_s=10)
        started = time.monotonic()
        writer.close()
        assert time.monotonic() - started < 10
        assert writer.metrics.dropped_rows == 0
        relay.frozen.clear()
    assert stored_ids(migrated_db) == {r.request_id for r in first}
    again = StorageWriter(migrated_db, batch_size=5, interval_ms=20, spool=spool)
    again.start()
    try:
        wait(lambda: not spool.pending_files())
    finally:
        again.close()
    assert stored_ids(migrated_db) == {r.request_id for r in first + stuck}


def test_huge_counts_in_one_conversation_do_not_overflow_its_summary(migrated_db: str, tmp_path: Path) -> None:
    """Two replies of one conversation each reporting (clamped) bigint-maximum tokens: the summary's sum
    is capped instead of overflowing, which would have made PostgreSQL refuse the batch."""
    from nexus.conversations.linker import Link

    conversation = str(uuid.uuid4())
    huge = b'{"type": "message", "content": [], "usage": {"input_tokens": 9223372036854775807, "output_tokens": 1}}'
    records = [record(response=huge) for _ in range(3)]
    for rec in records:
        rec.link = Link("main", conversation, "main")
    writer = writer_for(migrated_db, tmp_path, batch_size=1, interval_ms=10)
    writer.start()
    try:
        for rec in records:
            writer.submit(rec)
        wait(lambda: writer.metrics.rows_written == 3)
    finally:
        writer.close()
    assert writer.metrics.refused_batches == 0
    with psycopg.connect(migrated_db) as conn:
        summary = conn.execute(
            "SELECT request_count, input_tokens, output_tokens FROM conversations WHERE conversation_id = %s",
            (conversation,),
        ).fetchone()
    assert summary == (3, 2**63 - 1, 3)
