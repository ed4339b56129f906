"""Client keys (nexus/auth/client_keys.py) without a proxy: the store's records and checks, and the
detection and redaction of keys wherever a client puts them.

test_auth_client_keys proves the proxy applies them; these pin each rule so a one-line change fails in
a second (`make mutation`'s first guard for the module).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from pathlib import Path

import orjson
import pytest

from nexus.auth.client_keys import (
    CLIENT_KEY_PREFIXES,
    ID_LENGTH,
    PREFIX,
    ClientKey,
    ClientKeyRejected,
    ClientKeyStore,
    carries_client_key,
    is_client_key,
    redact_client_keys,
)

SECRET = "cnp_live_" + "Ab1-_" * 8


def rejected(store: ClientKeyStore, presented: str) -> str:
    with pytest.raises(ClientKeyRejected) as caught:
        store.check(presented)
    return str(caught.value)


def test_constants() -> None:
    assert PREFIX == "cnp_live_"
    assert CLIENT_KEY_PREFIXES == ("cnp_live_", "cnp_test_")
    assert ID_LENGTH == 16


def test_a_created_key_checks_and_its_record_holds_only_a_salted_digest(tmp_path: Path) -> None:
    store = ClientKeyStore(tmp_path, "salt")
    before = time.time()
    record, key = store.create("proj", name="ci", expires_days=1)
    assert key.startswith(PREFIX) and len(key) == len(PREFIX) + 43
    digest = hmac.new(b"salt", key.encode(), hashlib.sha256).hexdigest()
    assert store.digest(key) == digest
    assert record.key_id == digest[:16]
    assert (record.project, record.name, record.revoked_at) == ("proj", "ci", None)
    assert record.preview == f"cnp_live_****{key[-4:]}"
    assert before <= record.created_at <= time.time()
    assert record.expires_at is not None and abs(record.expires_at - record.created_at - 86400) < 1e-3
    path = tmp_path / "client-keys" / f"{record.key_id}.json"
    stored = orjson.loads(path.read_bytes())
    assert set(stored) == {"id", "digest", "project", "name", "preview", "created_at", "expires_at", "revoked_at"}
    assert stored["revoked_at"] is None
    assert stored["digest"] == digest and stored["id"] == record.key_id
    assert key not in path.read_text() and key[len(PREFIX) :] not in path.read_text()
    assert store.check(key) == record
    assert store.list() == [record]
    forever, _ = store.create("proj")
    assert forever.expires_at is None and forever.name is None


def test_a_salt_is_required_and_another_salt_admits_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^API_KEY_SALT is required for client keys$"):
        ClientKeyStore(tmp_path, "")
    _, key = ClientKeyStore(tmp_path, "one").create("p")
    assert rejected(ClientKeyStore(tmp_path, "two"), key) == "The client key is not valid."


def test_wrong_keys_are_refused(tmp_path: Path) -> None:
    store = ClientKeyStore(tmp_path, "salt")
    _, key = store.create("p")
    for bad in (key[:-1] + ("A" if key[-1] != "A" else "B"), key + "x", "", "sk-ant-something", key.upper()):
        assert rejected(store, bad) == "The client key is not valid."
    # a key without one of our prefixes is not looked up, even when its digest prefix names a file
    unprefixed = "x" + key
    (tmp_path / "client-keys" / f"{store.digest(unprefixed)[:16]}.json").write_bytes(
        orjson.dumps({"digest": store.digest(unprefixed), "project": "p"})
    )
    assert rejected(store, unprefixed) == "The client key is not valid."
    test_key = "cnp_test_abc"
    (tmp_path / "client-keys" / f"{store.digest(test_key)[:16]}.json").write_bytes(
        orjson.dumps({"digest": store.digest(test_key), "project": "q"})
    )
    assert store.check(test_key).project == "q"


def test_a_record_whose_digest_differs_admits_nothing(tmp_path: Path) -> None:
    store = ClientKeyStore(tmp_path, "salt")
    record, key = store.create("p")
    path = tmp_path / "client-keys" / f"{record.key_id}.json"
    data = orjson.loads(path.read_bytes())
    data["digest"] = data["digest"][:-1] + ("0" if data["digest"][-1] != "0" else "1")
    path.write_bytes(orjson.dumps(data))
    assert rejected(store, key) == "The client key is not valid."


def test_revoked_and_expired_keys(tmp_path: Path) -> None:
    store = ClientKeyStore(tmp_path, "salt")
    record, key = store.create("p")
    revoked = store.revoke(record.key_id)
    assert revoked is not None and revoked.revoked_at is not None
    assert rejected(store, key) == "The client key has been revoked."
    again = store.revoke(record.key_id)  # idempotent: the first revocation time stays
    assert again is not None and again.revoked_at == revoked.revoked_at
    assert store.revoke("0" * 16) is None
    _, old = store.create("p", expires_days=-1)
    assert rejected(store, old) == "The client key has expired."


def test_key_problem() -> None:
    key = ClientKey("0" * 16, "p", None, "", 0.0, expires_at=100.0, revoked_at=None)
    assert key.problem(now=99.9) is None
    assert key.problem(now=100.0) == "The client key has expired."
    assert key.problem(now=101) == "The client key has expired."
    assert ClientKey("0" * 16, "p", None, "", 0.0, None, None).problem() is None
    assert ClientKey("0" * 16, "p", None, "", 0.0, 100.0, 5.0).problem(now=1) == "The client key has been revoked."
    with pytest.raises(AttributeError):
        key.project = "other"  # type: ignore[misc]  # a checked key's project must not change: frozen


@pytest.mark.parametrize(
    "key_id", ["", "0" * 15, "0" * 17, "g" * 16, "A" * 16, "X" * 16, "../" + "0" * 13, "0" * 15 + "/", "f" * 60]
)
def test_key_ids_are_sixteen_lowercase_hex_characters(tmp_path: Path, key_id: str) -> None:
    store = ClientKeyStore(tmp_path, "salt")
    with pytest.raises(ValueError) as caught:
        store._path(key_id)
    assert str(caught.value) == (
        f"invalid key id {key_id[:40]!r} (16 hexadecimal characters, as `nexus keys list` shows)"
    )
    assert store.revoke(key_id) is None


def test_unreadable_or_partial_records_are_skipped(tmp_path: Path) -> None:
    store = ClientKeyStore(tmp_path, "salt")
    good, _ = store.create("p")
    directory = tmp_path / "client-keys"
    (directory / ("1" * 16 + ".json")).write_text("not json")
    (directory / ("2" * 16 + ".json")).write_bytes(orjson.dumps({"digest": "x"}))  # no project
    (directory / ("3" * 16 + ".json")).write_bytes(orjson.dumps({"project": "x"}))  # no digest
    (directory / ("4" * 16 + ".json")).write_bytes(orjson.dumps(["digest", "project"]))
    (directory / "short.json").write_bytes(orjson.dumps({"digest": "x", "project": "y"}))
    (directory / ("5" * 16 + ".json")).mkdir()  # OSError other than not-found
    no_id = "6" * 16
    (directory / f"{no_id}.json").write_bytes(orjson.dumps({"digest": "x", "project": "y", "created_at": 1.0}))
    bare = "7" * 16
    (directory / f"{bare}.json").write_bytes(orjson.dumps({"digest": "x", "project": "y"}))
    listed = store.list()
    assert [k.key_id for k in listed] == [bare, no_id, good.key_id]  # oldest first; the id taken from the name
    assert (listed[0].created_at, listed[0].preview, listed[0].name) == (0.0, "", None)
    assert ClientKeyStore(tmp_path / "none", "salt").list() == []


def test_is_client_key() -> None:
    assert is_client_key("cnp_live_x") and is_client_key("cnp_test_x")
    assert not is_client_key(None) and not is_client_key("") and not is_client_key("CNP_LIVE_x")
    assert not is_client_key("sk-ant-api03-x") and not is_client_key(" cnp_live_x")


@pytest.mark.parametrize(
    "value",
    [
        SECRET,
        SECRET.upper(),
        f"Bearer {SECRET}",
        "cnp_test_abc",
        "cnp%5Flive_abc",
        "cnp_live%5Fabc",
        "x=cnp%5ftest%5fabc",
    ],
)
def test_keys_are_found_as_they_are_in_any_case_and_percent_encoded(value: str) -> None:
    assert carries_client_key(value)


@pytest.mark.parametrize("value", ["", "sk-ant-api03-abc", "cnp_other_abc", "cnp_", "cnp%5Fother", "live_abc"])
def test_other_values_carry_no_key(value: str) -> None:
    assert not carries_client_key(value)
    assert not carries_client_key(value, deep=True)


def test_keys_inside_base64_are_found_only_when_looking_deep() -> None:
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for text in (f"user:{SECRET}".encode(), f"{SECRET}:".encode(), b"cnp_test_0123"):
            token = encode(text).decode()
            assert not carries_client_key(f"Basic {token}")
            assert carries_client_key(f"Basic {token}", deep=True)
            assert carries_client_key(f"session={token.rstrip('=')}; other=1", deep=True)
    for pad in range(3):  # both alphabets, each padding length, with or without the padding
        raw = b"\xfb\xff\xbf" * (pad + 1) + b"x" * pad + b"cnp_live_key"
        for token in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
            assert carries_client_key(f"Basic {token}", deep=True)
            assert carries_client_key(f"Basic {token.rstrip('=')}", deep=True)
    assert "-" in base64.urlsafe_b64encode(b"\xfb\xff\xbf").decode()
    shortest = base64.b64encode(b"cnp_live_").decode()  # the shortest token that can hold a prefix
    assert len(shortest) == 12 and carries_client_key(shortest, deep=True)
    assert not carries_client_key("Basic !!!!!!!!!!!!!!!!", deep=True)
    assert not carries_client_key("Basic abcdefghijklm", deep=True)  # 13 characters: not base64 at all
    assert not carries_client_key(base64.b64encode(b"nothing to see here").decode(), deep=True)


def test_redaction() -> None:
    assert redact_client_keys(f"key {SECRET} end") == "key cnp_live_[redacted] end"
    assert redact_client_keys("a CNP_TEST_abc-d_e b") == "a CNP_TEST_[redacted] b"
    assert redact_client_keys("/v1/x?k=cnp%5Flive_abc") == "/v1/x?k=cnp_live_[redacted]"
    assert redact_client_keys("a%20b") == "a b"  # judged and stored decoded
    assert redact_client_keys("nothing here") == "nothing here"
    assert redact_client_keys("cnp_other_abc") == "cnp_other_abc"
    assert redact_client_keys(f"{SECRET},{SECRET}") == "cnp_live_[redacted],cnp_live_[redacted]"
