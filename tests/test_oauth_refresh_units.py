"""One OAuth refresh (nexus/auth/refresh.py) against a scripted token endpoint, without a proxy.

test_auth_oauth proves the proxies refresh through the fake token endpoint; these pin each branch of
the single-use rule in milliseconds: re-read under the lock, refresh only while needed, rotated
tokens on disk before use, failures remembered so a refused token is not spent again.
"""

from __future__ import annotations

import errno
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from nexus.auth import oauth_status
from nexus.auth.credentials import Credential, CredentialError
from nexus.auth.refresh import refresh_credential
from nexus.auth.token_endpoint import OAuthError, TokenAnswer


class Endpoint:
    def __init__(self, *answers: TokenAnswer | OAuthError) -> None:
        self.answers = list(answers)
        self.spent: list[str] = []

    def refresh(self, token: str) -> TokenAnswer:
        self.spent.append(token)
        answer = self.answers.pop(0)
        if isinstance(answer, OAuthError):
            raise answer
        return answer


def oauth_file(tmp_path: Path, refresh: str | None = "r1", **extra: Any) -> Path:
    path = tmp_path / "p.credentials.json"
    oauth = {"accessToken": "a1", "refreshToken": refresh, "expiresAt": 1, "isMax": True}
    path.write_bytes(orjson.dumps({"type": "oauth", "accountId": "acc", "oauth": oauth, **extra}))
    return path


def always(_: Credential) -> bool:
    return True


NEW = TokenAnswer("a2", "r2", 99_000, ["user:inference"], {})


def test_a_refresh_rotates_the_file_and_records_success(tmp_path: Path) -> None:
    path = oauth_file(tmp_path, keep="me")
    endpoint = Endpoint(NEW)
    credential, refreshed = refresh_credential(path, endpoint, always)  # type: ignore[arg-type]
    assert refreshed is True
    assert endpoint.spent == ["r1"]
    assert (credential.access_token, credential.refresh_token) == ("a2", "r2")
    on_disk = orjson.loads(path.read_bytes())
    assert on_disk["keep"] == "me" and on_disk["oauth"]["refreshToken"] == "r2"
    assert on_disk["oauth"]["expiresAt"] == 99_000 and on_disk["oauth"]["isMax"] is True
    status = oauth_status.load_status(path)
    assert status["refresh_fingerprint"] == oauth_status.fingerprint("r2")
    assert status["needs_login"] is False and status["failed_at"] is None
    assert time.time() - status["last_refresh_at"] < 60


def test_no_longer_needed_under_the_lock_spends_nothing(tmp_path: Path) -> None:
    path = oauth_file(tmp_path)
    endpoint = Endpoint(NEW)
    seen: list[str | None] = []

    def needed(on_disk: Credential) -> bool:
        seen.append(on_disk.access_token)
        return False

    credential, refreshed = refresh_credential(path, endpoint, needed)  # type: ignore[arg-type]
    assert (refreshed, credential.access_token, endpoint.spent, seen) == (False, "a1", [], ["a1"])


def test_not_an_oauth_credential(tmp_path: Path) -> None:
    path = tmp_path / "k.credentials.json"
    path.write_bytes(orjson.dumps({"type": "api_key", "accountId": "acc", "api_key": "sk-ant-api03-x"}))
    with pytest.raises(CredentialError) as caught:
        refresh_credential(path, Endpoint(NEW), always)  # type: ignore[arg-type]
    assert str(caught.value) == "k.credentials.json: not an OAuth credential (type is 'api_key')"
    with pytest.raises(CredentialError) as caught:
        refresh_credential(path, Endpoint(NEW), always, where="project k")  # type: ignore[arg-type]
    assert str(caught.value).startswith("project k: not an OAuth credential")


def test_no_refresh_token_needs_a_login(tmp_path: Path) -> None:
    path = oauth_file(tmp_path, refresh=None)
    endpoint = Endpoint(NEW)
    with pytest.raises(OAuthError) as caught:
        refresh_credential(path, endpoint, always)  # type: ignore[arg-type]
    assert str(caught.value) == "the credential has no refresh token"
    assert caught.value.invalid_grant is True
    assert endpoint.spent == []


def test_a_refused_token_is_remembered_and_never_spent_again(tmp_path: Path) -> None:
    path = oauth_file(tmp_path)
    endpoint = Endpoint(OAuthError("invalid_grant: revoked", invalid_grant=True), NEW, NEW)
    with pytest.raises(OAuthError):
        refresh_credential(path, endpoint, always)  # type: ignore[arg-type]
    status = oauth_status.load_status(path)
    assert status["needs_login"] is True and status["last_error"] == "invalid_grant: revoked"
    with pytest.raises(OAuthError) as caught:
        refresh_credential(path, endpoint, always)  # type: ignore[arg-type]
    assert str(caught.value) == "this refresh token was already refused (invalid_grant)"
    assert caught.value.invalid_grant is True
    assert endpoint.spent == ["r1"]
    # an operator's explicit refresh tries regardless
    credential, refreshed = refresh_credential(path, endpoint, always, honour_failures=False)  # type: ignore[arg-type]
    assert refreshed and credential.refresh_token == "r2" and endpoint.spent == ["r1", "r1"]


def test_a_recent_failure_is_not_retried_for_a_while(tmp_path: Path) -> None:
    path = oauth_file(tmp_path)
    endpoint = Endpoint(OAuthError("HTTP 500 from the token endpoint"), NEW)
    with pytest.raises(OAuthError):
        refresh_credential(path, endpoint, always)  # type: ignore[arg-type]
    with pytest.raises(OAuthError) as caught:
        refresh_credential(path, endpoint, always)  # type: ignore[arg-type]
    assert str(caught.value) == "HTTP 500 from the token endpoint; not retried for 10 s"
    assert caught.value.invalid_grant is False
    assert endpoint.spent == ["r1"]
    status = oauth_status.load_status(path)
    status["failed_at"] -= oauth_status.FAILURE_TTL_S  # the failure is old now
    oauth_status.status_path(path).write_bytes(orjson.dumps(status))
    _, refreshed = refresh_credential(path, endpoint, always)  # type: ignore[arg-type]
    assert refreshed and endpoint.spent == ["r1", "r1"]


def test_rotated_tokens_that_cannot_be_saved_are_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = oauth_file(tmp_path)

    def disk_full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("nexus.auth.refresh.write_atomically", disk_full)
    with pytest.raises(OAuthError) as caught:
        refresh_credential(path, Endpoint(NEW), always)  # type: ignore[arg-type]
    assert str(caught.value) == "the rotated tokens could not be saved (No space left on device)"
    assert orjson.loads(path.read_bytes())["oauth"]["refreshToken"] == "r1"
