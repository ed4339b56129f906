"""Each `/api/*` parameter rule on its own (test_api_params proves the proxy answers them as 400s).

Pins every bound and branch, so a one-line change to a rule fails here in a second (`make mutation`'s
first guard for nexus/api/params.py).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from nexus.api.params import (
    MAX_VALUE,
    bool_param,
    check_query,
    cursor_param,
    first,
    found,
    int_param,
    limit_param,
    next_cursor,
    path_uuid,
    uuid_param,
)
from nexus.errors import ProxyError

UID = "0b5a4c52-5b7e-4c1a-9a3e-1f2d3c4b5a69"


def refused(call: object, *args: object) -> ProxyError:
    with pytest.raises(ProxyError) as caught:
        call(*args)  # type: ignore[operator]
    assert caught.value.status == 400
    assert caught.value.error_type == "invalid_request_error"
    return caught.value


def test_check_query_refuses_control_characters_and_long_values() -> None:
    check_query({"q": ["fine text", ""], "x": ["~" * MAX_VALUE]})
    assert MAX_VALUE == 512
    for bad in ("a\x00b", "\x1f", "\x7f", "tab\there", "x" * (MAX_VALUE + 1)):
        error = refused(check_query, {"q": ["ok", bad]})
        assert error.message == "Query parameter 'q' has a control character or is too long."
    refused(check_query, {"bad\x01name": ["ok"]})
    check_query({"q": [" \x80é"]})  # 0x20 and above, but 0x7f, are text
    long_name = "n" * 100
    assert refused(check_query, {long_name: ["\x00"]}).message.startswith(f"Query parameter {'n' * 40!r}")


def test_first() -> None:
    assert first({}, "a") is None
    assert first({"a": []}, "a") is None
    assert first({"a": ["1", "2"]}, "a") == "1"
    assert first({"b": ["2"]}, "a", "b") == "2"
    assert first({"a": ["1"], "b": ["2"]}, "a", "b") == "1"


def test_int_param_bounds() -> None:
    assert int_param({}, "n", 7, 1, 10) == 7
    assert int_param({"n": ["1"]}, "n", 7, 1, 10) == 1
    assert int_param({"n": ["10"]}, "n", 7, 1, 10) == 10
    assert int_param({"n": [" 5 "]}, "n", 7, 1, 10) == 5
    assert refused(int_param, {"n": ["0"]}, "n", 7, 1, 10).message == "n must be between 1 and 10, got 0."
    assert refused(int_param, {"n": ["11"]}, "n", 7, 1, 10).message == "n must be between 1 and 10, got 11."
    assert refused(int_param, {"n": ["x"]}, "n", 7, 1, 10).message == "n must be an integer, got 'x'."
    assert refused(int_param, {"n": ["1.5"]}, "n", 7, 1, 10).status == 400
    long = "9" * 60
    assert refused(int_param, {"n": ["x" * 60]}, "n", 7, 1, 10).message == f"n must be an integer, got {'x' * 40!r}."
    assert refused(int_param, {"n": [long]}, "n", 7, 1, 10).message == f"n must be between 1 and 10, got {long[:40]}."


def test_limit_param() -> None:
    assert limit_param({}) == 50
    assert limit_param({}, default=20) == 20
    assert limit_param({"limit": ["500"]}) == 500
    assert limit_param({"limit": ["1"]}) == 1
    refused(limit_param, {"limit": ["501"]})
    refused(limit_param, {"limit": ["0"]})
    assert limit_param({"limit": ["9"]}, most=9) == 9
    refused(limit_param, {"limit": ["10"]}, 50, 9)


@pytest.mark.parametrize(
    ("raw", "value"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("false", False), ("0", False), ("No", False)],
)
def test_bool_param(raw: str, value: bool) -> None:
    assert bool_param({"b": [raw]}, "b") is value


def test_bool_param_absent_and_malformed() -> None:
    assert bool_param({}, "b") is False
    assert refused(bool_param, {"b": ["maybe"]}, "b").message == "b must be true or false, got 'maybe'."
    assert refused(bool_param, {"b": ["m" * 60]}, "b").message == f"b must be true or false, got {'m' * 40!r}."


def test_uuid_params() -> None:
    assert uuid_param({}, "id") is None
    assert uuid_param({"id": [UID.upper()]}, "id") == UID
    assert uuid_param({"other": [UID]}, "id", "other") == UID
    assert refused(uuid_param, {"other": ["nope"]}, "id", "other").message == "id must be a UUID, got 'nope'."
    assert refused(uuid_param, {"id": ["u" * 60]}, "id").message == f"id must be a UUID, got {'u' * 40!r}."
    assert path_uuid(UID.replace("-", ""), "request") == UID
    assert refused(path_uuid, "x" * 60, "request").message == f"request id must be a UUID, got {'x' * 40!r}."


def test_cursors_round_trip() -> None:
    at = datetime(2026, 12, 5, 12, 0, 0, 123456, tzinfo=UTC)
    rows = [{"timestamp": at, "request_id": UID}]
    cursor = next_cursor(rows, 1)
    assert cursor == f"{int(at.timestamp() * 1_000_000)}_{UID}"
    assert cursor_param({"before": [cursor]}) == (at, UID)
    assert next_cursor(rows, 2) is None  # a short page is the last one
    assert next_cursor([{"t": at, "k": UID}, {"t": at, "k": "b"}], 2, at="t", key="k").endswith("_b")  # type: ignore[union-attr]
    assert cursor_param({}) is None
    for bad in ("nounderscore", f"x_{UID}", "1_notauuid", f"{10**30}_{UID}", "_"):
        assert refused(cursor_param, {"before": [bad]}).message == "before must be a cursor returned as next_cursor."


def test_found() -> None:
    row = {"a": 1}
    assert found(row, "request", "x") is row
    with pytest.raises(ProxyError) as caught:
        found(None, "request", "abc")
    assert caught.value.status == 404
    assert caught.value.error_type == "not_found_error"
    assert caught.value.message == "No request 'abc'."
