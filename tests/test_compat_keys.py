"""Issue 14, keys and defaults: the reference system's clients keep working unchanged.

Its client keys live in credential files (`client_api_key`) and key files
(`train-client-keys/<project>.client-keys.json`); before, Nexus ignored both and refused to start
without `API_KEY_SALT`, so every old client got a 401. Its clients send no `anthropic-version` (the
reference added one); before, Anthropic's 400 came back. Through a real proxy and fake upstream.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from nexus.auth.client_keys import ClientKeyStore
from nexus.auth.files import write_atomically
from nexus.auth.reference_keys import ReferenceKeyIndex, read_reference_keys
from nexus.cli import main
from tests.auth_helpers import BODY, assert_anthropic_error, post, proxy_env, write_api_key
from tests.harness.control import FakeControl
from tests.harness.servers import run_proxy

OLD_KEY = "cnp_live_Old-Key-From-The-Reference-0123456789abcdefghijk"
FILE_KEY = "cnp_live_Train-Key-File-Entry-9876543210zyxwvutsrqpo"
SALT = "compat-salt-7d1e5a9c3b2f4e6d8a0c"
README = Path(__file__).parent.parent / "README.md"
#: What the reference system's clients send: no anthropic-version, the key as a bearer token.
REFERENCE_CLIENT = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("compat-keys") / "credentials"
    write_api_key(directory, "team-old", "sk-ant-api03-team-old", client_api_key=OLD_KEY, slack={"channel": "#x"})
    write_api_key(directory, "team-file", "sk-ant-api03-team-file")
    write_atomically(directory / "train-client-keys" / "team-file.client-keys.json", {"keys": [FILE_KEY]})
    return directory


@pytest.fixture(scope="module")
def saltless_proxy(upstream_url: str, creds: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A reference-style environment: client auth on, no API_KEY_SALT."""
    log = tmp_path_factory.mktemp("compat-keys-log") / "proxy.log"
    env = proxy_env(upstream_url, creds, ENABLE_CLIENT_AUTH="true", API_KEY_SALT="", DEBUG="true")
    with run_proxy(env, output=log) as url:
        yield url
    text = log.read_text()
    secret = OLD_KEY.removeprefix("cnp_live_")
    assert secret not in text and FILE_KEY.removeprefix("cnp_live_") not in text, "a client key reached the logs"


def _bare_post(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], object]:
    """`post` without its default anthropic-version: exactly these headers."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("POST", "/v1/messages", body=BODY, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, orjson.loads(data) if data else None


def test_a_key_from_a_credential_file_admits_its_project_without_a_salt(saltless_proxy: str, fake: FakeControl) -> None:
    status, _, body = _bare_post(saltless_proxy, {**REFERENCE_CLIENT, "authorization": f"Bearer {OLD_KEY}"})
    assert status == 200, body
    sent = fake.requests()[-1]["headers"]
    assert sent["x-api-key"] == "sk-ant-api03-team-old"  # the file's project, from the key alone
    assert sent["anthropic-version"] == "2023-06-01"  # added: the client sent none
    assert "authorization" not in sent and OLD_KEY.removeprefix("cnp_live_") not in orjson.dumps(sent).decode()
    status, _, body = post(saltless_proxy, {"x-api-key": OLD_KEY, "train-id": "team-file"})
    assert status == 200, body
    assert fake.requests()[-1]["headers"]["x-api-key"] == "sk-ant-api03-team-old"  # a header cannot move a key


def test_a_key_from_a_key_file_admits_its_project(saltless_proxy: str, fake: FakeControl) -> None:
    status, _, body = post(saltless_proxy, {"authorization": f"Bearer {FILE_KEY}"})
    assert status == 200, body
    assert fake.requests()[-1]["headers"]["x-api-key"] == "sk-ant-api03-team-file"


def test_other_keys_are_still_refused(saltless_proxy: str, fake: FakeControl) -> None:
    for headers in ({"x-api-key": OLD_KEY[:-1] + "X"}, {"authorization": "Bearer cnp_live_" + "A" * 43}, {}):
        status, got, body = post(saltless_proxy, headers)
        assert_anthropic_error(status, body, 401, "authentication_error")
        assert got["www-authenticate"].startswith("Bearer")
    assert fake.requests() == []


def test_key_files_are_reread_when_they_change(saltless_proxy: str, creds: Path, fake: FakeControl) -> None:
    added = "cnp_live_Added-Later-To-The-Key-File-000111222333"
    write_atomically(creds / "train-client-keys" / "team-file.client-keys.json", [FILE_KEY, added])
    deadline = time.monotonic() + 5
    while post(saltless_proxy, {"x-api-key": added})[0] != 200:
        assert time.monotonic() < deadline, "the new key was never accepted"
        time.sleep(0.3)
    assert fake.requests()[-1]["headers"]["x-api-key"] == "sk-ant-api03-team-file"


def test_import_makes_salted_records_and_remove_clears_the_files(
    upstream_url: str, tmp_path: Path, fake: FakeControl
) -> None:
    creds = tmp_path / "credentials"
    write_api_key(creds, "team-old", "sk-ant-api03-team-old", client_api_key=OLD_KEY, slack={"channel": "#x"})
    write_api_key(creds, "team-file", "sk-ant-api03-team-file")
    write_atomically(creds / "train-client-keys" / "team-file.client-keys.json", [FILE_KEY, "not-a-cnp-key-xyz"])
    env = proxy_env(upstream_url, creds, ENABLE_CLIENT_AUTH="true", API_KEY_SALT=SALT)
    runner = CliRunner()
    first = runner.invoke(main, ["keys", "import"], env=env)
    assert first.exit_code == 0, first.output
    assert first.output.count("imported: ") == 2 and "not imported" in first.output
    again = runner.invoke(main, ["keys", "import", "--remove"], env=env)
    assert again.exit_code == 0, again.output
    assert again.output.count("already imported: ") == 2
    for text in (first.output, again.output):
        assert OLD_KEY.removeprefix("cnp_live_") not in text and FILE_KEY.removeprefix("cnp_live_") not in text
    old_file = orjson.loads((creds / "team-old.credentials.json").read_bytes())
    assert "client_api_key" not in old_file and old_file["slack"] == {"channel": "#x"}  # the rest kept
    assert orjson.loads((creds / "train-client-keys" / "team-file.client-keys.json").read_bytes()) == {
        "keys": ["not-a-cnp-key-xyz"]
    }
    records = [orjson.loads(p.read_bytes()) for p in (creds / "client-keys").glob("*.json")]
    assert sorted(r["project"] for r in records) == ["team-file", "team-old"]
    expected = hmac.new(SALT.encode(), OLD_KEY.encode(), hashlib.sha256).hexdigest()  # `keys create`'s digest
    assert expected in {r["digest"] for r in records}
    assert OLD_KEY.removeprefix("cnp_live_") not in repr(records)
    store = ClientKeyStore(creds, SALT)
    assert store.check(OLD_KEY).project == "team-old" and store.check(FILE_KEY).project == "team-file"
    with run_proxy(env) as url:
        assert post(url, {"x-api-key": OLD_KEY})[0] == 200  # now from the salted record alone
        assert fake.requests()[-1]["headers"]["x-api-key"] == "sk-ant-api03-team-old"
        assert post(url, {"x-api-key": "not-a-cnp-key-xyz"})[0] == 200  # left in its file: still accepted
        [record] = [r for r in records if r["project"] == "team-old"]
        store.revoke(record["id"])
        write_api_key(creds, "team-old", "sk-ant-api03-team-old", client_api_key=OLD_KEY)  # back in a file
        status, _, body = post(url, {"x-api-key": OLD_KEY})
        assert "revoked" in assert_anthropic_error(status, body, 401, "authentication_error")  # records win


def test_every_stored_digest_is_compared_in_constant_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(5):
        write_atomically(tmp_path / f"p{i}.credentials.json", {"type": "api_key", "client_api_key": f"cnp_live_k{i}"})
    index = ReferenceKeyIndex(tmp_path, tmp_path / "train-client-keys")
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr("nexus.auth.reference_keys.hmac.compare_digest", counting)
    assert index.project_for("cnp_live_k0") == "p0"
    assert len(calls) == 5  # a match early in the list does not stop the scan
    assert index.project_for("cnp_live_nope") is None and len(calls) == 10
    assert not any("cnp_live_k" in repr(entry) for entry in index._entries)  # digests only


def test_key_file_shapes_and_bad_files(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    write_atomically(keys_dir / "a.client-keys.json", {"client_api_keys": ["k-a1", " k-a2 ", 3]})
    write_atomically(keys_dir / "b.client-keys.json", {"keys": []})
    (keys_dir / "c.client-keys.json").write_text("{not json")
    write_atomically(keys_dir / "bad..name.client-keys.json", ["k-x"])
    found, problems = read_reference_keys(tmp_path, keys_dir)
    assert [(k.project, k.key) for k in found] == [("a", "k-a1"), ("a", "k-a2")]
    assert len(problems) == 3 and all("k-" not in p for p in problems)


def test_the_readme_curl_example_works(proxy_url: str, fake: FakeControl) -> None:
    """The README's plain curl call (no anthropic-version), run with the real curl against a proxy."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    [example] = [b for b in blocks if "curl http://localhost:3000/v1/messages" in b]
    command = example.replace("http://localhost:3000", proxy_url)
    done = subprocess.run(
        ["bash", "-c", command],
        env={"PATH": "/usr/bin:/bin", "ANTHROPIC_API_KEY": "sk-ant-api03-readme"},
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    reply = orjson.loads(done.stdout)
    assert reply["type"] == "message", reply
    sent = fake.requests()[-1]["headers"]
    assert sent["anthropic-version"] == "2023-06-01" and sent["x-api-key"] == "sk-ant-api03-readme"


def test_a_client_version_is_kept_and_the_oauth_beta_still_merged(
    upstream_url: str, tmp_path: Path, fake: FakeControl
) -> None:
    from tests.auth_helpers import now_ms, write_oauth

    creds = tmp_path / "credentials"
    write_oauth(creds, "team-o", "sk-ant-oat01-held", "sk-ant-ort01-held", now_ms(3600))
    with run_proxy(proxy_env(upstream_url, creds)) as url:
        status, _, body = post(
            url, {"train-id": "team-o", "anthropic-version": "2023-01-01", "anthropic-beta": "tools-2024-04-04"}
        )
        assert status == 200, body
        sent = fake.requests()[-1]["headers"]
        assert sent["anthropic-version"] == "2023-01-01"  # the client's own value is never replaced
        assert sent["anthropic-beta"] == "tools-2024-04-04,oauth-2025-04-20"
        status, _, body = _bare_post(url, {**REFERENCE_CLIENT, "train-id": "team-o"})
        assert status == 200, body
        sent = fake.requests()[-1]["headers"]
        assert sent["anthropic-version"] == "2023-06-01" and sent["anthropic-beta"] == "oauth-2025-04-20"
