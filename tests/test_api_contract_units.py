"""The contract's rules on their own, in process: parameter spellings, refusals, dates, cursors, path
values, the generated document and the OAuth windows read from reply headers (test_api_contract proves
them on a real proxy; these pin each branch in milliseconds, `make mutation`'s first guard)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from nexus.api import oauth_usage, openapi, schemas
from nexus.api.contract import OPERATIONS, PROJECT, Operation, Param, limit, parse_datetime, path_value, to_wire
from nexus.errors import ProxyError

UID = "01a20ff9-a7fd-799f-8b74-7e2b1304e5de"


def refused(call: object, *args: object) -> str:
    with pytest.raises(ProxyError) as caught:
        call(*args)  # type: ignore[operator]
    assert caught.value.status == 400 and caught.value.error_type == "invalid_request_error"
    return caught.value.message


def test_every_spelling_of_a_parameter_is_read_and_they_must_agree() -> None:
    for name in ("projectId", "project_id", "domain", "trainId", "train_id"):
        assert PROJECT.read({name: ["alpha"]}) == "alpha"
    assert PROJECT.read({"projectId": ["a"], "domain": ["a"]}) == "a"
    assert refused(PROJECT.read, {"projectId": ["a"], "domain": ["b"]}) == (
        "projectId and domain name the same parameter with different values."
    )
    assert refused(PROJECT.read, {"domain": ["a", "b"]}) == "domain was given more than once."
    assert PROJECT.read({}) is None
    # an empty text filter is no filter, and does not conflict with a given one
    assert PROJECT.read({"projectId": [""]}) is None
    assert PROJECT.read({"projectId": [""], "domain": ["x"]}) == "x"


def test_typed_parameters_parse_or_refuse() -> None:
    page = limit(50, 500)
    assert page.read({}) == 50 and page.read({"limit": ["500"]}) == 500
    assert refused(page.read, {"limit": ["501"]}) == "limit must be between 1 and 500, got 501."
    assert refused(page.read, {"limit": [""]}) == "limit must be an integer, got ''."
    flag = Param("aggregate", "bool", "")
    assert flag.read({}) is False and flag.read({"aggregate": ["true"]}) is True
    assert refused(flag.read, {"aggregate": [""]}).startswith("aggregate must be true or false")
    ident = Param("conversationId", "uuid", "")
    assert ident.read({"conversationId": [UID.upper()]}) == UID
    assert refused(ident.read, {"conversationId": ["x"]}) == "conversationId must be a UUID, got 'x'."
    needed = Param("accountId", "text", "", required=True)
    assert refused(needed.read, {}) == "accountId is required."
    assert refused(needed.read, {"accountId": [""]}) == "accountId is required."
    days = Param("days", "int", "", low=0, high=365)
    assert days.read({}) is None and days.read({"days": ["0"]}) == 0


def test_cursors_must_be_what_listings_return() -> None:
    cursor = Param("before", "cursor", "")
    at, rid = cursor.read({"before": [f"1700000000000000_{UID}"]})
    assert at == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC) and rid == UID
    for bad in ("junk", f"+1_{UID}", f"1_{UID.upper()}", f" 1_{UID}", f"1_{UID}x", "1_" + UID.replace("-", "")):
        assert refused(cursor.read, {"before": [bad]}) == "before must be a cursor returned as next_cursor."


def test_dates_are_iso_8601_and_utc_without_an_offset() -> None:
    assert parse_datetime("d", "2026-01-02") == datetime(2026, 1, 2, tzinfo=UTC)
    assert parse_datetime("d", "2026-01-02T03:04:05Z") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_datetime("d", "2026-01-02T03:04:05.5+02:00") == datetime(2026, 1, 2, 1, 4, 5, 500000, tzinfo=UTC)
    assert parse_datetime("d", "2026-01-02 03:04") == datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    nanos = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert parse_datetime("d", "2026-01-02t03:04:05.123456789z") == nanos
    for bad in ("yesterday", "", "2026-13-01", "2026-01-02T25:00", "0001-01-01T00:00:00+01:00", "20260102"):
        assert refused(parse_datetime, "dateFrom", bad).startswith("dateFrom must be an ISO 8601 date-time")


def test_unknown_parameters_are_named_in_the_refusal() -> None:
    op = Operation("/api/x", "x", "x", schemas.Stats, (PROJECT, limit()))
    assert op.read_args({"domain": ["a"], "limit": ["2"]}) == {"projectId": "a", "limit": 2}
    assert refused(op.read_args, {"domian": ["a"]}) == (
        "Unknown query parameter 'domian' for GET /api/x; accepted: projectId, limit."
    )
    bare = Operation("/api/y", "y", "y", schemas.Stats)
    assert refused(bare.read_args, {"a": ["1"]}).endswith("accepted: none.")


def test_path_values() -> None:
    request = Param("requestId", "uuid", "")
    assert path_value(request, UID.upper()) == UID
    assert refused(path_value, request, "nope") == "request id must be a UUID, got 'nope'."
    account = Param("accountId", "text", "")
    assert path_value(account, "acc_1") == "acc_1"
    for bad in ("", "a\x00", "x" * 513):
        assert refused(path_value, account, bad).startswith("accountId is empty")


def test_answers_keep_datetimes_and_ids_for_orjson_and_omit_unset_fields() -> None:
    at = datetime(2026, 1, 2, tzinfo=UTC)
    wire = to_wire(schemas.HourCount(hour=at, count=2**70))
    assert wire == {"hour": at, "count": 2**70}
    row = schemas.DailyUsage(
        date=at.date(), account_id=None, project_id="p", total_input_tokens=1, total_output_tokens=2,
        total_tokens=3, total_requests=1, cache_creation_input_tokens=0, cache_read_input_tokens=0,
        cache_creation5m_input_tokens=0, cache_creation1h_input_tokens=0, cost_usd=None, unpriced_requests=1,
    )  # fmt: skip
    assert "model" not in to_wire(row) and to_wire(row)["cacheCreation5mInputTokens"] == 0
    assert to_wire(row)["costUsd"] is None  # unknown stays unknown on the wire, never 0


def test_the_document_describes_every_declared_operation() -> None:
    doc = openapi.document()
    assert doc["openapi"] == "3.1.0"
    assert {op.path for op in OPERATIONS} == set(doc["paths"])
    assert len({op.operation_id for op in OPERATIONS}) == len(OPERATIONS)
    listing = doc["paths"]["/api/conversations"]["get"]
    params = {p["name"]: p for p in listing["parameters"]}
    assert params["projectId"]["x-aliases"] == ["project_id", "domain", "trainId", "train_id"]
    assert params["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}
    assert "404" not in listing["responses"] and "400" in listing["responses"]
    assert "404" in doc["paths"]["/api/requests/{requestId}"]["get"]["responses"]
    path_param = doc["paths"]["/api/requests/{requestId}"]["get"]["parameters"][0]
    assert path_param == {"name": "requestId", "in": "path", "required": True,
                          "schema": {"type": "string", "format": "uuid"},
                          "description": "The request's id (its `X-Request-ID`)."}  # fmt: skip
    stats = doc["paths"]["/token-stats"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert [s.get("type") for s in stats["anyOf"]] == ["object", None, "null"]
    assert "Reference system: `GET /api/stats" in doc["paths"]["/api/stats"]["get"]["description"]
    assert set(doc["components"]["securitySchemes"]) == {"apiKey", "dashboardKey", "bearer"}


def test_oauth_windows_from_reply_headers() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    reset = int((now + timedelta(hours=2, minutes=5)).timestamp())
    headers = {
        "anthropic-ratelimit-unified-5h-utilization": "0.42",
        "anthropic-ratelimit-unified-5h-reset": str(reset),
        "anthropic-ratelimit-unified-7d_opus-utilization": "1",
        "anthropic-ratelimit-unified-7d_opus-reset": str(reset + 3 * 86400),
        "anthropic-ratelimit-unified-weekly-utilization": "0.5",
        "anthropic-ratelimit-unified-7d-utilization": "inf",
        "anthropic-ratelimit-unified-status-utilization": "x",
        "anthropic-ratelimit-unified-5h-status": "allowed",
        "anthropic-ratelimit-unified-weekly-reset": "99999999999999999999",
    }
    windows = oauth_usage.windows_of(headers, now)
    assert [(w.name, w.short_name, w.utilization, w.resets_at) for w in windows] == [
        ("five_hour", "5h", 42.0, "in 2 h 5 min"),
        ("seven_day_opus", "7d_opus", 100.0, "in 3 days"),
        ("weekly", "weekly", 50.0, None),
    ]
    assert windows[0].resets_at_iso == "2026-01-01T02:05:00+00:00"
    assert oauth_usage.windows_of({}, now) == []
    assert oauth_usage._human(timedelta(seconds=-5)) == "in 0 min"
    assert oauth_usage._human(timedelta(minutes=59, seconds=59)) == "in 59 min"
    assert oauth_usage._human(timedelta(hours=47, minutes=59)) == "in 47 h 59 min"
    assert oauth_usage._human(timedelta(hours=48)) == "in 2 days"


def test_every_route_table_gets_the_templated_routes() -> None:
    """Each `ApiRoutes` (one per proxy worker, several in one test process) serves `/api/requests/{id}`."""
    from nexus.api.routes import ApiRoutes

    tables = [ApiRoutes(None) for _ in range(2)]
    for api in tables:
        assert {p for p, _ in api._prefixes} == {
            "/api/requests/",
            "/api/conversations/",
            "/api/oauth-usage/",
            "/api/analyses/",
        }
        assert api._find(f"/api/requests/{UID}/subtasks") is not None


def test_the_answer_types_hold_exactly_the_columns_read() -> None:
    """A column added to a query must be added to its answer type (and so to `/openapi.json`): the
    handlers build the types from the rows by name, so a mismatch would be a 500, caught here first."""
    from nexus.conversations.repository import CONVERSATION_COLUMNS, TREE_COLUMNS
    from nexus.storage.requests_repo import DETAIL_COLUMNS, SUMMARY_COLUMNS

    def names(columns: str) -> tuple[str, ...]:
        return tuple(c.strip().split(" AS ")[-1] for c in columns.split(","))

    summary = names(SUMMARY_COLUMNS)
    assert schemas.RequestSummary.__struct_fields__[: len(summary)] == summary
    rebuilt = {"envelope", "system_key", "tools_key", "message_keys"}  # replaced by request_body
    detail = [c for c in names(DETAIL_COLUMNS)[len(summary) :] if c not in rebuilt] + ["request_body"]
    assert set(detail) <= set(schemas.RequestDetail.__struct_fields__)
    conversation = names(CONVERSATION_COLUMNS)
    assert schemas.ConversationSummary.__struct_fields__[: len(conversation)] == conversation
    assert schemas.ConversationTree.__struct_fields__[: len(conversation)] == conversation
    assert schemas.TreeRequest.__struct_fields__ == names(TREE_COLUMNS)


def test_every_cursor_the_document_allows_is_a_time() -> None:
    """schemathesis found `before=2175817828694120071_<uuid>`: a 19-digit cursor the document allowed
    was past the last representable time, and the schema-valid request got a 400. The pattern now
    allows 17 digits (epoch microseconds until the year 5138), every one of which parses."""
    import re as _re

    from nexus.api.contract import BEFORE

    pattern = _re.compile(BEFORE.schema()["pattern"])
    largest = f"{'9' * 17}_{UID}"
    assert pattern.fullmatch(largest) and BEFORE.parse(largest) is not None
    assert not pattern.fullmatch(f"{'9' * 18}_{UID}")
