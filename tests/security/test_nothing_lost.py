"""Finding 11 of "Safe on a network": requests the proxy refused itself were not stored (so they never
showed up), and a 529 that used up every retry was stored as `completed` with no attempt count."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.auth_helpers import BODY
from tests.conftest import FAST_RETRIES
from tests.harness.control import FakeControl
from tests.harness.servers import run_proxy
from tests.helpers import FAST, get_json, wait_for
from tests.security.wire import call

JSON = {"content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": "sk-ant-api03-x"}


@pytest.fixture
def stored_proxy(upstream_url: str, migrated_db: str, tmp_path: Path) -> Iterator[str]:
    env = {
        "CLAUDE_API_BASE_URL": upstream_url,
        "DATABASE_URL": migrated_db,
        "NEXUS_HOME": str(tmp_path),
        "MAX_REQUEST_SIZE": "4096",
        **FAST,
        **FAST_RETRIES,
    }
    with run_proxy(env) as url:
        yield url


def stored(url: str, request_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def readable() -> bool:
        try:
            found.append(get_json(f"{url}/api/requests/{request_id}"))
        except OSError:
            return False
        return True

    wait_for(readable, timeout_s=15, what=f"request {request_id}")
    return found[-1]


def test_refused_requests_are_stored_with_the_reason(stored_proxy: str, fake: FakeControl) -> None:
    cases = [
        ("/v1/messages", b"{not json", JSON, 400, "not valid JSON"),
        ("/v1/messages", b'{"model": "m"}', JSON, 400, "messages"),
        ("/v1/messages", b"x" * 5000, JSON, 413, "limit"),
        ("/v1/messages", BODY, {**JSON, "content-type": "text/plain"}, 415, "Content-Type"),
        ("/v1/../x", BODY, JSON, 400, "segments"),
        ("/nowhere", BODY, JSON, 404, "No route"),
        ("/v1/messages", BODY, {**JSON, "origin": "https://evil.example"}, 403, "origin"),
    ]
    for path, body, headers, status, reason in cases:
        got, answer_headers, _ = call(stored_proxy, path, method="POST", body=body, headers=headers)
        assert got == status, path
        row = stored(stored_proxy, answer_headers["x-request-id"])
        assert row["outcome"] == "refused" and row["response_status"] == status, row
        assert reason.lower() in row["error"].lower(), row["error"]
        assert row["attempts"] is None  # nothing went upstream
    assert fake.requests() == []
    bad_json = stored(
        stored_proxy, call(stored_proxy, "/v1/messages", method="POST", body=b"{oops", headers=JSON)[1]["x-request-id"]
    )
    assert bad_json["request_body"] == {"unparsed_body": "{oops"}  # what the client sent is kept


def test_retries_and_the_final_outcome_are_recorded(stored_proxy: str, fake: FakeControl) -> None:
    fake.queue("error:529", "error:529", "error:529")
    status, headers, body = call(stored_proxy, "/v1/messages", method="POST", body=BODY, headers=JSON)
    assert status == 529 and body["error"]["type"] == "overloaded_error"
    row = stored(stored_proxy, headers["x-request-id"])
    assert row["attempts"] == 3 and row["outcome"] == "upstream_error" and row["response_status"] == 529
    assert "529" in row["error"] and "3 attempts" in row["error"]
    fake.queue("error:529")
    status, headers, _ = call(stored_proxy, "/v1/messages", method="POST", body=BODY, headers=JSON)
    row = stored(stored_proxy, headers["x-request-id"])
    assert status == 200 and row["attempts"] == 2 and row["outcome"] == "completed"
