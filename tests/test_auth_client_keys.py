"""Client keys (`ENABLE_CLIENT_AUTH`): who gets in, which project they get, what is stored.

Through a real proxy: the right key passes from either header, every wrong one gets a 401
`authentication_error` with `WWW-Authenticate`, the key's project beats a `train-id` header, and the
key never reaches the upstream. In process: the stored record is a salted HMAC that holds nothing of
the key, and the comparison goes through `hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from nexus.auth import client_keys
from nexus.auth.client_keys import ClientKeyRejected, ClientKeyStore
from nexus.auth.files import write_atomically
from tests.auth_helpers import assert_anthropic_error, post, proxy_env, write_api_key
from tests.harness.control import FakeControl
from tests.harness.servers import run_proxy

SALT = "test-salt-4f1c9a7e2b6d8035c1e9f7a2"
KEY_FORMAT = re.compile(r"^cnp_live_[A-Za-z0-9_-]{43}$")


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("client-keys") / "credentials"


@pytest.fixture(scope="module")
def store(creds: Path) -> ClientKeyStore:
    return ClientKeyStore(creds, SALT)


@pytest.fixture(scope="module")
def keyed_proxy(upstream_url: str, creds: Path) -> Iterator[str]:
    env = proxy_env(upstream_url, creds, ENABLE_CLIENT_AUTH="true", API_KEY_SALT=SALT)
    with run_proxy(env) as url:
        yield url


def assert_rejected(status: int, headers: dict[str, str], body: Any, reason: str) -> None:
    message = assert_anthropic_error(status, body, 401, "authentication_error")
    assert reason in message
    assert headers["www-authenticate"].startswith("Bearer realm=")
    # no retry can fix a wrong key: without this Claude Code retried it ten times, minutes of backoff
    assert headers["x-should-retry"] == "false"


def test_the_right_key_passes_from_either_header_and_never_goes_upstream(
    keyed_proxy: str, creds: Path, store: ClientKeyStore, fake: FakeControl
) -> None:
    write_api_key(creds, "team-x", "sk-ant-api03-team-x")
    _, key = store.create("team-x", "alice")
    assert KEY_FORMAT.match(key)
    for headers in ({"x-api-key": key}, {"authorization": f"Bearer {key}"}, {"Authorization": f"bearer  {key} "}):
        status, _, body = post(keyed_proxy, headers)
        assert status == 200, body
    for received in fake.requests():
        assert received["headers"]["x-api-key"] == "sk-ant-api03-team-x"
        assert "authorization" not in received["headers"]
        assert key not in orjson.dumps(received).decode()


def test_the_keys_project_wins_over_a_train_id_header(
    keyed_proxy: str, creds: Path, store: ClientKeyStore, fake: FakeControl
) -> None:
    write_api_key(creds, "team-y", "sk-ant-api03-team-y")
    write_api_key(creds, "team-other", "sk-ant-api03-team-other")
    _, key = store.create("team-y")
    for header in ("train-id", "msl-project-id"):
        status, _, body = post(keyed_proxy, {"x-api-key": key, header: "team-other"})
        assert status == 200, body
        assert fake.requests()[-1]["headers"]["x-api-key"] == "sk-ant-api03-team-y"


def test_wrong_missing_revoked_and_expired_keys_get_401(
    keyed_proxy: str, creds: Path, store: ClientKeyStore, fake: FakeControl
) -> None:
    write_api_key(creds, "team-z", "sk-ant-api03-team-z")
    revoked, revoked_key = store.create("team-z")
    store.revoke(revoked.key_id)
    expired, expired_key = store.create("team-z", expires_days=1)
    record_path = store.directory / f"{expired.key_id}.json"
    record = orjson.loads(record_path.read_bytes())
    write_atomically(record_path, {**record, "expires_at": time.time() - 1})
    _, good = store.create("team-z")
    other_salt_key = ClientKeyStore(creds.parent / "elsewhere", "another-salt-entirely-0123")
    _, foreign = other_salt_key.create("team-z")  # a well-formed key this gateway never issued
    cases = [
        ({}, "No client key was sent."),
        ({"x-api-key": "cnp_live_" + "A" * 43}, "not valid"),
        ({"x-api-key": good[:-1] + ("A" if good[-1] != "A" else "B")}, "not valid"),
        ({"authorization": f"Bearer {foreign}"}, "not valid"),
        ({"x-api-key": "sk-ant-api03-an-anthropic-key"}, "not valid"),
        ({"authorization": "Basic dXNlcjpwYXNz"}, "No client key was sent."),
        ({"x-api-key": revoked_key}, "revoked"),
        ({"authorization": f"Bearer {expired_key}"}, "expired"),
        ({"train-id": "team-z"}, "No client key was sent."),  # a selector is never authorization
    ]
    for headers, reason in cases:
        status, got, body = post(keyed_proxy, headers)
        assert_rejected(status, got, body, reason)
    assert fake.requests() == []
    assert post(keyed_proxy, {"x-api-key": good})[0] == 200


def test_own_credential_passes_beside_a_client_key_and_none_is_a_clear_401(
    keyed_proxy: str, store: ClientKeyStore, fake: FakeControl
) -> None:
    _, key = store.create("no-file-project")
    own = {"x-api-key": key, "authorization": "Bearer sk-ant-oat01-my-own", "anthropic-beta": "oauth-2025-04-20"}
    status, _, body = post(keyed_proxy, own)
    assert status == 200, body
    sent = fake.requests()[-1]["headers"]
    assert sent["authorization"] == "Bearer sk-ant-oat01-my-own" and "x-api-key" not in sent
    status, headers, body = post(keyed_proxy, {"x-api-key": key})
    message = assert_anthropic_error(status, body, 401, "authentication_error")
    assert "No upstream credential for project 'no-file-project'" in message
    assert headers["x-should-retry"] == "false"  # until an operator adds one: a retry only waits
    assert len(fake.requests()) == 1


# --- storage of keys (in process) -----------------------------------------------------------------


def test_the_stored_digest_is_a_salted_hmac_holding_nothing_of_the_key(tmp_path: Path) -> None:
    store = ClientKeyStore(tmp_path, SALT)
    record, key = store.create("proj", "bob", expires_days=30)
    [path] = (tmp_path / "client-keys").iterdir()
    raw = path.read_text()
    stored = orjson.loads(raw)
    secret = key.removeprefix("cnp_live_")
    assert key not in raw and secret not in raw
    assert not any(secret[i : i + 8] in raw for i in range(len(secret) - 8))  # not even a fragment
    assert stored["digest"] == hmac.new(SALT.encode(), key.encode(), hashlib.sha256).hexdigest()
    assert stored["digest"] != hashlib.sha256(key.encode()).hexdigest()  # salted, not a bare hash
    assert stored["digest"] != ClientKeyStore(tmp_path / "b", "another-salt-entirely-0123").digest(key)
    assert record.preview == "cnp_live_****" + key[-4:] and path.stat().st_mode & 0o777 == 0o600
    assert stored["project"] == "proj" and stored["name"] == "bob" and stored["expires_at"] > time.time()
    # the same key under another salt is not recognised: the salt is part of the secret
    with pytest.raises(ClientKeyRejected):
        ClientKeyStore(tmp_path, "another-salt-entirely-0123").check(key)
    assert store.check(key).project == "proj"


def test_comparison_is_constant_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ClientKeyStore(tmp_path, SALT)
    _, key = store.create("proj")
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(client_keys.hmac, "compare_digest", spy)
    assert store.check(key).project == "proj"
    for wrong in (key[:-2] + "zz", "cnp_live_" + "Q" * 43, "not-even-ours"):
        with pytest.raises(ClientKeyRejected):
            store.check(wrong)
    assert len(calls) == 4  # every check compares, found or not
    assert calls[0] == (store.digest(key), store.digest(key))
