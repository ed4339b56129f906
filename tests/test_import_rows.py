"""Reference rows turned into storage records (nexus/importing/rows.py): what fails a row, what is kept."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from nexus.importing.progress import Progress
from nexus.importing.rows import BadRow, ReferenceRow, conversation_of, micros, to_record
from nexus.importing.source import source_name

AT = datetime(2026, 11, 30, 10, 0, 0, 123456, tzinfo=UTC)
BODY = orjson.dumps({"model": "claude-test", "messages": [{"role": "user", "content": "hi"}]}).decode()
ID = "0e1416aa-1ffe-428a-9ea4-376daaadf59a"


def row(**fields: object) -> ReferenceRow:
    base: dict[str, object] = {"request_id": ID, "timestamp": AT, "project_id": "team", "body": BODY}
    return ReferenceRow(**(base | fields))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"request_id": "not-a-uuid"}, "request_id 'not-a-uuid' is not a UUID"),
        ({"request_id": None}, "request_id None is not a UUID"),
        ({"timestamp": None}, "timestamp is missing"),
        ({"project_id": None}, "project_id is empty"),
        ({"project_id": " \t"}, "project_id is empty"),
        ({"project_id": "a\nb"}, "project_id 'a\\nb' holds control characters"),
        ({"project_id": "p" * 256}, "project_id is longer than 255 characters"),
    ],
)
def test_rows_that_cannot_be_a_request(fields: dict[str, object], reason: str) -> None:
    with pytest.raises(BadRow) as raised:
        to_record(row(**fields))
    assert str(raised.value).startswith(reason)


def test_a_plain_row() -> None:
    rec = to_record(
        row(
            request_id=ID.upper(),
            account_id=" acc ",
            headers='{"User-Agent": "cli", "accept": ["a", "b"], "x-n": 3}',
            response_status="200",
            response_body='{"type": "message", "usage": {"input_tokens": 5}}',
            input_tokens="5",
            output_tokens="1.0",
            cache_read_input_tokens="1.5",
            duration_ms="99999999999",
            first_token_ms="12",
        )
    )
    assert rec.request_id == ID and rec.account_id == "acc" and rec.method == "POST" and rec.path == "/v1/messages"
    assert rec.started_at_us == micros(AT) and micros(AT) % 1_000_000 == 123456
    assert rec.request_headers == [("user-agent", "cli"), ("accept", "a, b"), ("x-n", "3")]
    assert (rec.input_tokens, rec.output_tokens, rec.cache_read_input_tokens) == (5, 1, None)
    assert (rec.duration_ms, rec.first_byte_ms) == (None, 12)  # past int4: not kept
    assert rec.outcome == "completed" and rec.error is None
    assert rec.analysis is not None and rec.analysis.model == "claude-test"


def test_statuses_and_errors() -> None:
    assert to_record(row(response_status="529")).outcome == "upstream_error"
    assert to_record(row(response_status="529")).error == "upstream answered 529"
    assert to_record(row(response_status="500", error="boom")).error == "boom"
    missing = to_record(row())
    assert missing.outcome == "upstream_error" and "stored none" in (missing.error or "")
    assert to_record(row(response_status="12")).response_status is None  # not an HTTP status


def test_json_null_and_other_paths() -> None:
    rec = to_record(row(body="null", response_body="null", path="/v1/models", method="get"))
    assert rec.request_body is None and rec.response_body is None and rec.analysis is None
    assert (rec.method, rec.path) == ("GET", "/v1/models")


def test_secret_response_headers_dropped() -> None:
    rec = to_record(row(response_status="200", response_headers='{"Set-Cookie": "s=1", "x-api-key": "k", "a": "b"}'))
    assert rec.response_headers == [("a", "b")]


def test_times_without_a_zone_are_utc() -> None:
    naive = AT.replace(tzinfo=None)
    assert micros(naive) == micros(AT)
    assert micros(AT.astimezone(timezone(timedelta(hours=5)))) == micros(AT)


def test_conversation_ids() -> None:
    assert conversation_of(row(conversation_id=ID.upper())) == ID
    assert conversation_of(row(conversation_id="x")) is None
    assert conversation_of(row()) is None


def test_source_name_has_no_credentials() -> None:
    assert source_name("postgresql://u:secret@db.example:6543/claude") == "db.example:6543/claude"
    assert source_name("host=h dbname=d password=secret") == "h:5432/d"
    assert "secret" not in source_name("postgresql://u:secret@/x?host=/tmp")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere() -> None:
    tty, plain = Terminal(), io.StringIO()
    for stream in (tty, plain):
        bar = Progress(10, stream=stream)
        bar.advance(4, 3, 0, 1)
        bar.advance(6, 8, 0, 2)
        bar.close()
    assert "importing requests" in tty.getvalue() and "10/10" in tty.getvalue()
    assert plain.getvalue().splitlines() == [
        "import-reference: 4/10 requests read (imported 3, skipped 0, failed 1)",  # the first at once
        "import-reference: 10/10 requests read (imported 8, skipped 0, failed 2)",  # the last at the end
    ]
    quiet = io.StringIO()
    bar = Progress(10, stream=quiet, enabled=False)
    bar.advance(10, 10, 0, 0)
    bar.close()
    assert quiet.getvalue() == ""
