"""Finding 9 of "Safe on a network": malformed API parameters gave 500s. Every one is a 400 in
Anthropic's shape; nothing malformed reaches SQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.harness.servers import run_proxy
from tests.helpers import FAST, wait_for
from tests.security.wire import call, is_anthropic_error

UUID = "01a20ff9-a7fd-799f-8b74-7e2b1304e5de"
MALFORMED = [
    "/api/requests?project_id=%00",
    "/api/requests?project_id=a%00b",
    "/api/requests?conversation_id=not-a-uuid",
    "/api/requests?conversation_id=%00",
    "/api/requests?limit=-1",
    "/api/requests?limit=0",
    "/api/requests?limit=99999999999999999999999",
    "/api/requests?limit=1e3",
    "/api/requests?limit=%00",
    "/api/requests?before=junk",
    "/api/requests?before=99999999999999999999999_" + UUID,
    "/api/requests?before=-99999999999999999999_" + UUID,
    "/api/requests?before=1_not-a-uuid",
    "/api/requests?project_id=" + "x" * 5000,
    "/api/requests/not-a-uuid",
    "/api/requests/%00",
    "/api/conversations?limit=-5",
    "/api/conversations?before=%ff%fe",
    "/api/conversations/xyz",
    "/api/token-usage/current?window=-1",
    "/api/token-usage/current?window=99999999999999999999",
    "/api/token-usage/current?accountId=%00",
    "/api/token-usage/daily?days=abc",
    "/api/token-usage/daily?aggregate=maybe",
    "/api/token-usage/time-series?interval=0",
    "/api/token-usage/time-series?hours=100000",
]


VALID = [
    "/api/requests?limit=5&project_id=p1",
    "/api/requests?conversation_id=" + UUID,
    "/api/requests/" + UUID.upper(),  # 404: well-formed, not stored
    "/api/conversations?limit=500",
    "/api/token-usage/current?window=60&accountId=acc",
    "/api/token-usage/daily?days=7&aggregate=true",
]


@pytest.fixture
def api_proxy(upstream_url: str, migrated_db: str, tmp_path: Path) -> Iterator[str]:
    env = {"CLAUDE_API_BASE_URL": upstream_url, "DATABASE_URL": migrated_db, "NEXUS_HOME": str(tmp_path), **FAST}
    with run_proxy(env) as url:
        yield url


def test_malformed_parameters_are_400_never_500(api_proxy: str) -> None:
    answers = {path: call(api_proxy, path) for path in MALFORMED}
    wrong = {p: (s, b) for p, (s, _, b) in answers.items() if s != 400 or not is_anthropic_error(b)}
    assert wrong == {}
    valid = {path: call(api_proxy, path)[0] for path in VALID}
    assert valid == {path: 404 if "/requests/" in path else 200 for path in VALID}


def test_unknown_routes_and_methods(api_proxy: str) -> None:
    assert call(api_proxy, "/api/nothing")[0] == 404
    assert call(api_proxy, "/api/requests", method="POST", body=b"{}")[0] == 405


def test_the_api_answers_503_while_the_database_is_away(
    upstream_url: str, migrated_db: str, database_admin_url: str, tmp_path: Path
) -> None:
    from tests.helpers import set_database_reachable

    name = str(psycopg.conninfo.conninfo_to_dict(migrated_db)["dbname"])
    env = {"CLAUDE_API_BASE_URL": upstream_url, "DATABASE_URL": migrated_db, "NEXUS_HOME": str(tmp_path), **FAST}
    set_database_reachable(database_admin_url, name, False)
    try:
        with run_proxy(env, ready=False) as url:
            for path in ("/api/requests", "/api/token-usage/current", "/api/conversations"):
                status, headers, body = call(url, path)
                assert status == 503 and is_anthropic_error(body, "api_error"), (path, body)
                assert headers["retry-after"] == "5"
            set_database_reachable(database_admin_url, name, True)
            wait_for(lambda: call(url, "/api/requests")[0] == 200, timeout_s=30, what="the API back")
    finally:
        set_database_reachable(database_admin_url, name, True)


def test_a_database_that_hangs_gets_503_and_never_freezes_the_proxy(
    upstream_url: str, migrated_db: str, tmp_path: Path
) -> None:
    """Second attack pass: a cancelled query made psycopg send a blocking cancel request (libpq < 17)
    that held the GIL while the frozen server never answered: one `/api/*` call froze every stream.
    Now the pool shuts the hung connection down instead: 503, and the proxy keeps serving meanwhile."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.freezable import freezable

    with freezable(migrated_db) as relay:
        env = {"CLAUDE_API_BASE_URL": upstream_url, "DATABASE_URL": relay.dsn, "NEXUS_HOME": str(tmp_path), **FAST}
        with run_proxy(env) as url:
            assert call(url, "/api/requests")[0] == 200  # the pool holds a connection
            relay.frozen.set()
            with ThreadPoolExecutor(1) as pool:
                pending = pool.submit(call, url, "/api/requests")
                started = time.monotonic()
                health_times = []
                while not pending.done() and time.monotonic() - started < 40:
                    t0 = time.monotonic()
                    status, _, _ = call(url, "/health")
                    health_times.append((status, time.monotonic() - t0))
                    time.sleep(0.5)
                status, _, body = pending.result(timeout=30)
            relay.frozen.clear()
    assert status == 503 and is_anthropic_error(body, "api_error")
    assert time.monotonic() - started < 25
    # /health answers at once meanwhile (503 once the writer reports its call stuck: not ready)
    assert health_times and all(s in (200, 503) and took < 3 for s, took in health_times), health_times
