"""OAuth refresh through real proxy processes against the fake token endpoint (single-use rotating tokens).

What must hold: one refresh per credential at a time across requests, workers and processes; the
rotated tokens on disk before they are used; one refresh and one replay after an upstream 401;
`invalid_grant` as a clear 401 and a `needs login` state that a new login clears; failures cached
briefly; an access token still used while it is valid even when its early refresh fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from nexus.cli import main
from tests.auth_helpers import assert_anthropic_error, now_ms, post, proxy_env, run_login, wait_for, write_oauth
from tests.harness.control import FakeControl
from tests.harness.servers import run_proxy


@pytest.fixture
def creds(tmp_path: Path) -> Path:
    return tmp_path / "credentials"


@pytest.fixture
def oauth_proxy(upstream_url: str, creds: Path) -> Iterator[str]:
    with run_proxy(proxy_env(upstream_url, creds)) as url:
        yield url


def oauth_file(path: Path) -> dict[str, Any]:
    return orjson.loads(path.read_bytes())


def bearers(fake: FakeControl) -> list[str]:
    return [r["headers"].get("authorization", "") for r in fake.requests() if r["path"] == "/v1/messages"]


def send_many(urls: list[str], n: int, project: str) -> list[int]:
    """n requests at once, spread over `urls`; their statuses."""
    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(post, urls[i % len(urls)], {"train-id": project}) for i in range(n)]
        return [f.result()[0] for f in futures]


def status_of(creds: Path, upstream_url: str) -> list[dict[str, Any]]:
    env = proxy_env(upstream_url, creds)
    result = CliRunner().invoke(main, ["oauth", "status", "--json"], env=env)
    assert result.exit_code == 0, result.output
    return orjson.loads(result.output)


def test_50_concurrent_requests_with_an_expiring_token_cause_one_refresh(
    oauth_proxy: str, creds: Path, fake: FakeControl
) -> None:
    fake.oauth(refresh_token="sk-ant-ort01-start", delay_ms=300)
    path = write_oauth(
        creds, "p50", "sk-ant-oat01-old", "sk-ant-ort01-start", now_ms(20), slack={"channel": "#ops"}, custom=7
    )
    assert send_many([oauth_proxy], 50, "p50") == [200] * 50
    state = fake.oauth()
    assert state["calls"] == 1 and state["grants"] == ["refresh_token"]
    saved = oauth_file(path)
    assert saved["oauth"]["refreshToken"] != "sk-ant-ort01-start"
    assert state["valid_refresh_tokens"] == [saved["oauth"]["refreshToken"]]  # the one on disk is the live one
    assert saved["slack"] == {"channel": "#ops"} and saved["custom"] == 7 and saved["accountId"] == "acc_p50"
    assert saved["oauth"]["expiresAt"] > now_ms(3000)
    assert set(bearers(fake)) == {f"Bearer {saved['oauth']['accessToken']}"}
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_two_proxy_processes_sharing_the_directory_refresh_once(
    upstream_url: str, creds: Path, fake: FakeControl
) -> None:
    fake.oauth(refresh_token="sk-ant-ort01-shared", delay_ms=300)
    path = write_oauth(creds, "pair", "sk-ant-oat01-old", "sk-ant-ort01-shared", now_ms(-5))
    env = proxy_env(upstream_url, creds)
    with run_proxy(env) as first, run_proxy(env) as second:
        assert send_many([first, second], 50, "pair") == [200] * 50
    state = fake.oauth()
    assert state["calls"] == 1, state
    saved = oauth_file(path)["oauth"]
    assert state["valid_refresh_tokens"] == [saved["refreshToken"]]
    assert set(bearers(fake)) == {f"Bearer {saved['accessToken']}"}


def test_rotated_tokens_are_on_disk_before_they_are_used(
    upstream_url: str, oauth_proxy: str, creds: Path, fake: FakeControl
) -> None:
    # tokens issued for 30 s are always inside the 60 s margin: every request refreshes again,
    # spending the refresh token the previous one left on disk
    fake.oauth(refresh_token="sk-ant-ort01-r0", expires_in=30)
    path = write_oauth(creds, "rot", "sk-ant-oat01-a0", "sk-ant-ort01-r0", now_ms(10))
    for i in range(1, 4):
        status, _, body = post(oauth_proxy, {"train-id": "rot"})
        assert status == 200, body
        on_disk = oauth_file(path)["oauth"]
        written_at = os.stat(path).st_mtime_ns / 1e9
        last = fake.requests()[-1]
        assert last["headers"]["authorization"] == f"Bearer {on_disk['accessToken']}"
        assert written_at <= last["received_at"]  # the file held the token before the upstream saw it
        assert fake.oauth()["calls"] == i
    assert fake.oauth()["valid_refresh_tokens"] == [oauth_file(path)["oauth"]["refreshToken"]]
    # a new process starts from the file alone, and its refresh token is the live one
    with run_proxy(proxy_env(upstream_url, creds)) as fresh:
        assert post(fresh, {"train-id": "rot"})[0] == 200
    assert fake.oauth()["calls"] == 4 and "invalid_grant" not in str(status_of(creds, upstream_url))


def test_an_upstream_401_triggers_one_refresh_and_one_replay(oauth_proxy: str, creds: Path, fake: FakeControl) -> None:
    fake.oauth(refresh_token="sk-ant-ort01-r401", revoke_access="sk-ant-oat01-revoked")
    path = write_oauth(creds, "p401", "sk-ant-oat01-revoked", "sk-ant-ort01-r401", now_ms(3600))
    status, _, body = post(oauth_proxy, {"train-id": "p401"})
    assert status == 200, body
    new_access = oauth_file(path)["oauth"]["accessToken"]
    assert bearers(fake) == ["Bearer sk-ant-oat01-revoked", f"Bearer {new_access}"]
    assert fake.oauth()["calls"] == 1
    # an upstream that keeps refusing: still one refresh and one replay, then its 401 as it was
    fake.oauth(reject_access=True)
    status, _, body = post(oauth_proxy, {"train-id": "p401"})
    assert status == 401 and body["error"]["type"] == "authentication_error"
    assert body["error"]["message"] == "OAuth token has expired."  # the upstream's own error, untouched
    assert fake.oauth()["calls"] == 2 and len(bearers(fake)) == 4


def test_invalid_grant_is_a_clear_401_and_needs_login_until_a_new_login(
    upstream_url: str, oauth_proxy: str, creds: Path, fake: FakeControl
) -> None:
    write_oauth(creds, "dead", "sk-ant-oat01-dead", "sk-ant-ort01-unknown-to-the-endpoint", now_ms(-60))
    for _ in range(2):
        status, headers, body = post(oauth_proxy, {"train-id": "dead"})
        message = assert_anthropic_error(status, body, 401, "authentication_error")
        assert "needs a new login" in message and "nexus oauth login --project dead" in message
        assert headers["x-request-id"] == body["request_id"]
        assert headers["x-should-retry"] == "false"  # only an operator's login helps: clients stop at once
    assert fake.oauth()["calls"] == 1  # the refused token is not tried again
    assert bearers(fake) == []
    [row] = status_of(creds, upstream_url)
    assert row["state"] == "needs login" and "invalid_grant" in row["last_error"]
    # a new login (a new file, new refresh token) clears the state, for `status` and in the proxy
    code, _, _, err = run_login(proxy_env(upstream_url, creds), ["--project", "dead"])
    assert code == 0, err
    [row] = status_of(creds, upstream_url)
    assert row["state"] == "valid" and row["last_error"] is None and row["last_login_at"] is not None
    wait_for(lambda: post(oauth_proxy, {"train-id": "dead"})[0] == 200, what="the new login to be used")
    new_access = oauth_file(creds / "dead.credentials.json")["oauth"]["accessToken"]
    assert bearers(fake)[-1] == f"Bearer {new_access}" and new_access != "sk-ant-oat01-dead"


def test_a_failed_refresh_is_cached_briefly_and_a_still_valid_token_keeps_working(
    oauth_proxy: str, creds: Path, fake: FakeControl
) -> None:
    fake.oauth(refresh_token="sk-ant-ort01-flaky", fail_next=1)
    write_oauth(creds, "flaky", "sk-ant-oat01-flaky", "sk-ant-ort01-flaky", now_ms(-1))
    for _ in range(3):
        status, _, body = post(oauth_proxy, {"train-id": "flaky"})
        message = assert_anthropic_error(status, body, 502, "api_error")
        assert "refresh for 'flaky' failed" in message and "503" in message
    assert fake.oauth()["calls"] == 1  # not retried within the failure window
    # expiring inside our margin but not expired: the refresh fails, the request still goes out
    fake.oauth(refresh_token="sk-ant-ort01-soon", fail_next=1)
    write_oauth(creds, "soon", "sk-ant-oat01-soon", "sk-ant-ort01-soon", now_ms(30))
    status, _, body = post(oauth_proxy, {"train-id": "soon"})
    assert status == 200, body
    assert bearers(fake)[-1] == "Bearer sk-ant-oat01-soon"
    assert fake.oauth()["calls"] == 2
