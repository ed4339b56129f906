"""Credentials in the database (issue 10, part 2): two real `nexus serve` instances sharing only
DATABASE_URL serve one OAuth account with a single refresh; files are imported without ever
replacing newer tokens; rotated tokens go back to the file; nothing secret is stored in clear; and the
sealing key can be rotated.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from click.testing import CliRunner

from nexus.auth.db_credentials import ACCOUNT, PROJECT, fetch, import_document
from nexus.auth.db_files import import_directory
from nexus.auth.sealing import SecretBox, key_id, load_box, new_key, parse_keys
from nexus.cli import main
from tests.auth_helpers import cred_path, now_ms, post, proxy_env, write_oauth
from tests.harness.control import FakeControl
from tests.harness.servers import free_port, stop, wait_until_healthy

KEY = new_key()


def oauth_doc(access: str, refresh: str, expires_at_ms: int, **extra: Any) -> dict[str, Any]:
    oauth = {"accessToken": access, "refreshToken": refresh, "expiresAt": expires_at_ms, "scopes": [], "isMax": True}
    return {"type": "oauth", "accountId": "acc_team", "oauth": oauth, **extra}


def db_env(upstream_url: str, creds: Path, home: Path, dsn: str, key: str = KEY) -> dict[str, str]:
    return proxy_env(
        upstream_url,
        creds,
        STORAGE_ENABLED="true",
        DATABASE_URL=dsn,
        NEXUS_HOME=str(home),
        NEXUS_SECRET_KEY=key,
    )


@contextmanager
def serve(env: dict[str, str], log: Path) -> Iterator[str]:
    """A real `nexus serve` (proxy and dashboard) on free loopback ports; yields the proxy's URL."""
    proxy_port, dash_port = free_port(), free_port()
    full = {
        **os.environ,
        **env,
        "HOST": "127.0.0.1",
        "PORT": str(proxy_port),
        "DASHBOARD_HOST": "127.0.0.1",
        "DASHBOARD_PORT": str(dash_port),
        "PROXY_WORKERS": "2",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nexus.cli", "serve"], env=full, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{proxy_port}"
    try:
        wait_until_healthy(url + "/health", proc, 40)
        yield url
    finally:
        stop(proc, 40)


def bearers(fake: FakeControl) -> list[str]:
    return [r["headers"].get("authorization", "") for r in fake.requests() if r["path"] == "/v1/messages"]


def stored_row(dsn: str, kind: str, name: str) -> str:
    """Every column of the credential's row as PostgreSQL prints it (the sealed column in hex)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT c::text FROM credentials c WHERE kind = %s AND name = %s", (kind, name)).fetchone()
    assert row is not None
    return str(row[0])


def test_two_instances_sharing_only_the_database_refresh_an_account_once(
    tmp_path: Path, upstream_url: str, migrated_db: str, fake: FakeControl
) -> None:
    """The check of issue 10: A has the account's file (access token expiring in 20 s), B an empty
    credentials folder; 50 concurrent requests naming the account, split across A and B, all succeed
    with exactly one call to the token endpoint."""
    fake.oauth(refresh_token="sk-ant-ort01-team-start", delay_ms=300)
    creds_a, creds_b = tmp_path / "a" / "credentials", tmp_path / "b" / "credentials"
    creds_b.mkdir(parents=True)
    path = write_oauth(
        creds_a, "team", "sk-ant-oat01-team-old", "sk-ant-ort01-team-start", now_ms(20), account=True, custom=7
    )
    env_a = db_env(upstream_url, creds_a, tmp_path / "a" / "home", migrated_db)
    env_b = db_env(upstream_url, creds_b, tmp_path / "b" / "home", migrated_db)
    with serve(env_a, tmp_path / "a.log") as a, serve(env_b, tmp_path / "b.log") as b:
        urls = [a, b]
        with ThreadPoolExecutor(max_workers=50) as pool:
            futures = [pool.submit(post, urls[i % 2], {"x-train-account": "team"}) for i in range(50)]
            results = [f.result() for f in futures]
        assert [r[0] for r in results] == [200] * 50, [r[2] for r in results if r[0] != 200][:3]
        state = fake.oauth()
        assert state["calls"] == 1 and state["grants"] == ["refresh_token"], state
        time.sleep(1.1)  # past the per-worker recheck: A's next look syncs its file with the database
        again = post(a, {"x-train-account": "team"})
        assert again[0] == 200, again[2]
        assert post(b, {"x-train-account": "team"})[0] == 200
        assert fake.oauth()["calls"] == 1
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        row = fetch(conn, SecretBox(parse_keys(KEY), "test"), ACCOUNT, "team")
    assert row is not None and row.version >= 2
    live = fake.oauth()["valid_refresh_tokens"]
    assert live == [row.refresh_token]  # the database holds the one live refresh token
    assert set(bearers(fake)) == {f"Bearer {row.access_token}"}  # every request went out with the new token
    saved = orjson.loads(path.read_bytes())
    assert saved["oauth"]["refreshToken"] == row.refresh_token  # written back to A's file, whoever refreshed
    assert saved["custom"] == 7 and os.stat(path).st_mode & 0o777 == 0o600
    assert list(creds_b.rglob("*")) == []  # B never made a file: it served the account from the database
    text = stored_row(migrated_db, ACCOUNT, "team")
    for secret in ("sk-ant-oat01-team-old", "sk-ant-ort01-team-start", row.access_token, row.refresh_token):
        assert secret not in text and secret.encode().hex() not in text
    for log in (tmp_path / "a.log", tmp_path / "b.log"):
        content = log.read_text()
        assert "sk-ant-o" not in content, "a token reached a log"
        # the policy notice names the account on B too, which serves it from the database alone
        assert "OAuth accounts loaded (accounts/team)" in content


def test_an_import_never_replaces_newer_database_tokens_with_older_file_tokens(
    tmp_path: Path, migrated_db: str
) -> None:
    box = SecretBox(parse_keys(KEY), "test")
    creds = tmp_path / "credentials"
    path = write_oauth(creds, "p1", "sk-ant-oat01-v1", "sk-ant-ort01-v1", now_ms(600), slack={"channel": "#a"})
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        done, problems = import_directory(conn, box, creds)
        assert problems == [] and [(w, i.outcome) for w, i in done] == [("p1.credentials.json", "imported")]
        # another instance refreshed: the database now holds newer tokens than this machine's file
        newer = oauth_doc("sk-ant-oat01-v2", "sk-ant-ort01-v2", now_ms(3600), slack={"channel": "#a"})
        assert import_document(conn, box, PROJECT, "p1", newer, None).outcome == "updated"
        # the old file is imported again (a restart): the tokens stay, the file's other fields are taken
        old = orjson.loads(path.read_bytes())
        old["slack"] = {"channel": "#b"}
        path.write_bytes(orjson.dumps(old))
        done, _ = import_directory(conn, box, creds)
        assert [(i.outcome, i.file_stale) for _, i in done] == [("kept newer tokens", True)]
        row = fetch(conn, box, PROJECT, "p1")
        assert row is not None and row.refresh_token == "sk-ant-ort01-v2" and row.raw["slack"] == {"channel": "#b"}
        # and the stale file was rewritten with the database's tokens
        assert orjson.loads(path.read_bytes())["oauth"]["refreshToken"] == "sk-ant-ort01-v2"
        # a file with newer tokens than the database (a login on this machine) does replace them
        write_oauth(creds, "p1", "sk-ant-oat01-v3", "sk-ant-ort01-v3", now_ms(7200))
        done, _ = import_directory(conn, box, creds)
        assert [i.outcome for _, i in done] == ["updated"]
        row = fetch(conn, box, PROJECT, "p1")
        assert row is not None and row.refresh_token == "sk-ant-ort01-v3"
        # importing the same file again changes nothing
        assert [i.outcome for _, i in import_directory(conn, box, creds)[0]] == ["unchanged"]


def test_credentials_import_command_and_clear_errors(tmp_path: Path, upstream_url: str, migrated_db: str) -> None:
    creds = tmp_path / "credentials"
    write_oauth(creds, "p2", "sk-ant-oat01-x", "sk-ant-ort01-x", now_ms(600))
    (creds / "bad.credentials.json").write_text("{not json")
    env = db_env(upstream_url, creds, tmp_path / "home", migrated_db)
    result = CliRunner().invoke(main, ["credentials", "import"], env=env)
    assert result.exit_code == 1
    assert "p2.credentials.json: imported" in result.output and "bad.credentials.json: not valid JSON" in result.output
    assert "sk-ant" not in result.output
    listed = CliRunner().invoke(main, ["credentials", "list", "--json"], env=env)
    assert listed.exit_code == 0 and [r["name"] for r in orjson.loads(listed.stdout)] == ["p2"]
    assert "sk-ant" not in listed.output
    # one file, by path
    other = write_oauth(tmp_path / "elsewhere", "acct", "sk-ant-oat01-y", "sk-ant-ort01-y", now_ms(600), account=True)
    result = CliRunner().invoke(main, ["credentials", "import", str(other)], env=env)
    assert result.exit_code == 0 and "imported" in result.output
    listed = CliRunner().invoke(main, ["credentials", "list", "--json"], env=env)
    assert sorted(r["name"] for r in orjson.loads(listed.stdout)) == ["accounts/acct", "p2"]


def test_a_refresh_in_one_instance_writes_the_rotated_token_back_to_its_file(
    tmp_path: Path, upstream_url: str, migrated_db: str, fake: FakeControl
) -> None:
    fake.oauth(refresh_token="sk-ant-ort01-wb")
    creds = tmp_path / "credentials"
    path = write_oauth(creds, "wb", "sk-ant-oat01-wb", "sk-ant-ort01-wb", now_ms(5))
    env = db_env(upstream_url, creds, tmp_path / "home", migrated_db)
    with serve(env, tmp_path / "serve.log") as url:
        status, _, body = post(url, {"train-id": "wb"})
        assert status == 200, body
        on_disk = orjson.loads(path.read_bytes())["oauth"]
        assert fake.oauth()["valid_refresh_tokens"] == [on_disk["refreshToken"]] != ["sk-ant-ort01-wb"]
        assert bearers(fake) == [f"Bearer {on_disk['accessToken']}"]
        # `nexus oauth status` reads the database: the refresh is recorded, no token printed
        result = CliRunner().invoke(main, ["oauth", "status", "--json"], env=env)
        assert result.exit_code == 0, result.output
        rows = orjson.loads(result.stdout)
        assert [(r["account"], r["state"]) for r in rows] == [("wb", "valid")] and rows[0]["last_refresh_at"]
        assert "sk-ant" not in result.output
        # `nexus oauth refresh` goes through the same lock and writes the file back too
        result = CliRunner().invoke(main, ["oauth", "refresh", "wb"], env=env)
        assert result.exit_code == 0, result.output
        assert fake.oauth()["calls"] == 2
        after = orjson.loads(path.read_bytes())["oauth"]
        assert fake.oauth()["valid_refresh_tokens"] == [after["refreshToken"]]
        # the proxy picks the new token up from the database
        time.sleep(1.1)
        assert post(url, {"train-id": "wb"})[0] == 200
        assert bearers(fake)[-1] == f"Bearer {after['accessToken']}"


def test_an_instance_without_the_key_says_which_key_it_needs(
    tmp_path: Path, upstream_url: str, migrated_db: str
) -> None:
    box = SecretBox(parse_keys(KEY), "test")
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        import_document(conn, box, PROJECT, "sealed", oauth_doc("sk-ant-oat01-s", "sk-ant-ort01-s", now_ms(3600)), None)
    other = new_key()
    env = db_env(upstream_url, tmp_path / "credentials", tmp_path / "home", migrated_db, key=other)
    result = CliRunner().invoke(main, ["credentials", "list"], env=env)
    assert result.exit_code == 1
    assert key_id(KEY.encode()) in result.output and key_id(other.encode()) in result.output
    assert "same NEXUS_SECRET_KEY" in result.output and "sk-ant" not in result.output


def test_key_rotation_reseals_every_credential(tmp_path: Path, upstream_url: str, migrated_db: str) -> None:
    old, new = KEY, new_key()
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        box = SecretBox(parse_keys(old), "test")
        for name in ("r1", "r2"):
            import_document(conn, box, PROJECT, name, oauth_doc("sk-ant-oat01-r", "sk-ant-ort01-r", now_ms(60)), None)
    creds, home = tmp_path / "credentials", tmp_path / "home"
    both = db_env("http://127.0.0.1:9", creds, home, migrated_db, key=f"{new},{old}")
    result = CliRunner().invoke(main, ["credentials", "rotate-key"], env=both)
    assert result.exit_code == 0 and f"re-sealed 2 credential(s) with key {key_id(new.encode())}" in result.output
    with psycopg.connect(migrated_db) as conn:
        ids = {r[0] for r in conn.execute("SELECT key_id FROM credentials").fetchall()}
    assert ids == {key_id(new.encode())}
    # the new key alone opens every row; the old one alone no longer does
    only_new = CliRunner().invoke(main, ["credentials", "list"], env={**both, "NEXUS_SECRET_KEY": new})
    assert only_new.exit_code == 0 and "r1" in only_new.output and "r2" in only_new.output
    only_old = CliRunner().invoke(main, ["credentials", "list"], env={**both, "NEXUS_SECRET_KEY": old})
    assert only_old.exit_code == 1 and "same NEXUS_SECRET_KEY" in only_old.output
    # running it again has nothing left to do
    again = CliRunner().invoke(main, ["credentials", "rotate-key"], env=both)
    assert again.exit_code == 0 and "re-sealed 0" in again.output


def test_without_nexus_secret_key_a_private_key_file_is_made_once(tmp_path: Path) -> None:
    first = load_box(None, tmp_path / "home")
    key_file = tmp_path / "home" / "secret.key"
    assert os.stat(key_file).st_mode & 0o777 == 0o600
    second = load_box(None, tmp_path / "home")
    assert first.keys == second.keys and first.source == str(key_file)
    sealed = first.seal(b"sk-ant-ort01-secret")
    assert b"sk-ant" not in sealed and second.open(sealed) == b"sk-ant-ort01-secret"


def test_a_bad_nexus_secret_key_stops_start_up_without_echoing_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["config"], env={"NEXUS_SECRET_KEY": "not-a-fernet-key-sk-ant-123"})
    assert result.exit_code != 0 and "NEXUS_SECRET_KEY" in result.output
    assert "not-a-fernet-key" not in result.output


@pytest.mark.parametrize("account", [False, True])
def test_an_unknown_name_is_none_and_a_file_alone_still_works_without_a_database(
    tmp_path: Path, upstream_url: str, fake: FakeControl, account: bool
) -> None:
    """STORAGE_ENABLED=false (no database): the files are used as they are, as before."""
    from tests.harness.servers import run_proxy

    creds = tmp_path / "credentials"
    fake.oauth(refresh_token="sk-ant-ort01-f")
    path = write_oauth(creds, "f", "sk-ant-oat01-f", "sk-ant-ort01-f", now_ms(3600), account=account)
    assert path == cred_path(creds, "f", account=account)
    header = {"x-train-account": "f"} if account else {"train-id": "f"}
    with run_proxy(proxy_env(upstream_url, creds)) as url:
        assert post(url, header)[0] == 200
    assert bearers(fake) == ["Bearer sk-ant-oat01-f"]


def test_client_keys_live_in_the_database_for_every_instance(
    tmp_path: Path, upstream_url: str, migrated_db: str, fake: FakeControl
) -> None:
    """A key created on one machine admits requests on another with an empty credentials folder, a
    revocation refuses it everywhere, and only the salted digest is stored."""
    from tests.harness.servers import run_proxy

    box = SecretBox(parse_keys(KEY), "test")
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        doc = {"type": "api_key", "accountId": "acc_kp", "api_key": "sk-ant-api03-kp"}
        import_document(conn, box, PROJECT, "kp", doc, None)
    creds_a, creds_b = tmp_path / "a", tmp_path / "b"
    extra = {"ENABLE_CLIENT_AUTH": "true", "API_KEY_SALT": "salt-for-tests"}
    env_a = {**db_env(upstream_url, creds_a, tmp_path / "ha", migrated_db), **extra}
    env_b = {**db_env(upstream_url, creds_b, tmp_path / "hb", migrated_db), **extra}
    created = CliRunner().invoke(main, ["keys", "create", "--project", "kp"], env=env_a)
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[0]
    assert key.startswith("cnp_live_") and not (creds_a / "client-keys").exists()  # in the database, not a file
    with psycopg.connect(migrated_db) as conn:
        table = str(conn.execute("SELECT array_agg(c::text) FROM client_keys c").fetchone())
    assert key not in table and key[len("cnp_live_") :] not in table
    with run_proxy(env_a) as a, run_proxy(env_b) as b:
        for url in (a, b):
            status, _, body = post(url, {"x-api-key": key})
            assert status == 200, body
        assert {r["headers"].get("x-api-key") for r in fake.requests()} == {"sk-ant-api03-kp"}
        listed = CliRunner().invoke(main, ["keys", "list", "--json"], env=env_b)
        key_id_ = orjson.loads(listed.stdout)[0]["key_id"]
        revoked = CliRunner().invoke(main, ["keys", "revoke", key_id_], env=env_b)
        assert revoked.exit_code == 0, revoked.output
        time.sleep(1.1)  # past the per-worker recheck
        for url in (a, b):
            status, _, body = post(url, {"x-api-key": key})
            assert status == 401 and body["error"]["message"].startswith("The client key has been revoked.")
        # a key made the old way, in a file on this machine (no database), is taken up on first sight
        file_env = {**env_a, "STORAGE_ENABLED": "false"}
        made = CliRunner().invoke(main, ["keys", "create", "--project", "kp"], env=file_env)
        file_key = made.stdout.strip().splitlines()[0]
        assert (creds_a / "client-keys").is_dir()
        assert post(a, {"x-api-key": file_key})[0] == 200
        assert post(b, {"x-api-key": file_key})[0] == 200  # imported into the database by A


def test_the_dashboard_knows_an_account_that_only_the_database_holds(
    tmp_path: Path, upstream_url: str, migrated_db: str
) -> None:
    import urllib.error
    import urllib.request

    from tests.harness.servers import run_proxy

    with psycopg.connect(migrated_db, autocommit=True) as conn:
        doc = oauth_doc("sk-ant-oat01-l", "sk-ant-ort01-l", now_ms(3600)) | {"accountId": "acc_lonely"}
        import_document(conn, SecretBox(parse_keys(KEY), "test"), ACCOUNT, "lonely", doc, None)
    with run_proxy(db_env(upstream_url, tmp_path / "empty", tmp_path / "home", migrated_db)) as url:
        with urllib.request.urlopen(f"{url}/api/oauth-usage/acc_lonely", timeout=10) as resp:  # noqa: S310
            assert resp.status == 200, resp.read()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/api/oauth-usage/acc_nobody", timeout=10)  # noqa: S310
        assert refused.value.code == 404


def test_a_login_goes_to_the_database_and_wins_over_newer_looking_tokens(
    tmp_path: Path, upstream_url: str, migrated_db: str, fake: FakeControl
) -> None:
    from tests.auth_helpers import run_login

    box = SecretBox(parse_keys(KEY), "test")
    creds = tmp_path / "credentials"
    with psycopg.connect(migrated_db, autocommit=True) as conn:  # tokens that expire later than a login's
        import_document(conn, box, ACCOUNT, "me", oauth_doc("sk-ant-oat01-o", "sk-ant-ort01-o", now_ms(10**6)), None)
    env = db_env(upstream_url, creds, tmp_path / "home", migrated_db)
    code, _, out, err = run_login(env, ["--account", "me"])
    assert code == 0, err
    assert "stored in the database (replaced by login)" in out
    saved = orjson.loads(cred_path(creds, "me", account=True).read_bytes())["oauth"]
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        row = fetch(conn, box, ACCOUNT, "me")
    assert row is not None and row.refresh_token == saved["refreshToken"] != "sk-ant-ort01-o"
    assert row.last_login_at is not None and "sk-ant" not in out + err
    assert fake.oauth()["grants"] == ["authorization_code"]


def test_a_worker_whose_database_is_away_serves_from_its_files(
    tmp_path: Path, upstream_url: str, fake: FakeControl
) -> None:
    from tests.auth_helpers import write_api_key
    from tests.harness.servers import run_proxy

    creds = tmp_path / "credentials"
    write_api_key(creds, "away", "sk-ant-api03-away")
    nowhere = f"postgresql://nexus@127.0.0.1:{free_port()}/nexus"
    env = {**db_env(upstream_url, creds, tmp_path / "home", nowhere), "NEXUS_SECRET_KEY": KEY}
    fake.oauth(refresh_token="sk-ant-ort01-away")
    write_oauth(creds, "valid", "sk-ant-oat01-valid", "sk-ant-ort01-valid", now_ms(3600))
    write_oauth(creds, "expired", "sk-ant-oat01-expired", "sk-ant-ort01-away", now_ms(-5))
    with run_proxy(env, ready=False) as url:
        status, _, body = post(url, {"train-id": "away"})
        assert status == 200, body
        assert post(url, {"train-id": "valid"})[0] == 200  # an access token still valid is used as it is
        # but no refresh from a file: another instance reaching the database may be spending that token
        status, _, body = post(url, {"train-id": "expired"})
        assert status == 503 and "cannot be refreshed safely" in body["error"]["message"]
    assert [r["headers"].get("x-api-key") or r["headers"].get("authorization") for r in fake.requests()] == [
        "sk-ant-api03-away",
        "Bearer sk-ant-oat01-valid",
    ]
    assert fake.oauth()["calls"] == 0


def test_a_read_only_credentials_folder_is_imported_all_the_same(
    tmp_path: Path, migrated_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mounted secret (a read-only directory) cannot hold the lock file beside a credential; the file
    is imported without it (root writes anywhere, so the refusal is made here the way the kernel says it)."""
    import errno
    from contextlib import contextmanager

    from nexus.auth import db_files
    from tests.auth_helpers import write_api_key

    @contextmanager
    def read_only(path: Path) -> Iterator[None]:
        raise OSError(errno.EROFS, "Read-only file system")
        yield

    monkeypatch.setattr(db_files, "credential_lock", read_only)
    path = write_api_key(tmp_path / "credentials", "ro", "sk-ant-api03-ro")
    box = SecretBox(parse_keys(KEY), "test")
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        assert db_files.import_file(conn, box, path).outcome == "imported"
        row = fetch(conn, box, PROJECT, "ro")
        assert row is not None and row.raw["api_key"] == "sk-ant-api03-ro"
        with pytest.raises(OSError):  # and writing back says so (the proxy logs it; the database has the truth)
            db_files.write_back(path, row.raw | {"api_key": "sk-ant-api03-other"})
    assert orjson.loads(path.read_bytes())["api_key"] == "sk-ant-api03-ro"


def test_a_refused_refresh_token_needs_a_login_on_every_instance(
    tmp_path: Path, upstream_url: str, migrated_db: str, fake: FakeControl
) -> None:
    """`invalid_grant` is committed with the token's fingerprint: no instance tries that token again,
    and a new login (here: a newer file imported) clears it everywhere."""
    from tests.auth_helpers import assert_anthropic_error
    from tests.harness.servers import run_proxy

    creds_a, creds_b = tmp_path / "a", tmp_path / "b"
    path = write_oauth(creds_a, "gone", "sk-ant-oat01-gone", "sk-ant-ort01-unknown", now_ms(-5), account=True)
    env_a = db_env(upstream_url, creds_a, tmp_path / "ha", migrated_db)
    env_b = db_env(upstream_url, creds_b, tmp_path / "hb", migrated_db)
    with run_proxy(env_a) as a, run_proxy(env_b) as b:
        status, _, body = post(a, {"x-train-account": "gone"})
        assert "needs a new login" in assert_anthropic_error(status, body, 401, "authentication_error")
        status, _, body = post(b, {"x-train-account": "gone"})
        assert "needs a new login" in assert_anthropic_error(status, body, 401, "authentication_error")
        assert fake.oauth()["calls"] == 1  # B read the refusal from the database instead of trying again
        result = CliRunner().invoke(main, ["oauth", "status", "--json"], env=env_b)
        assert [r["state"] for r in orjson.loads(result.stdout)] == ["needs login"]
        fake.oauth(refresh_token="sk-ant-ort01-new")
        write_oauth(creds_a, "gone", "sk-ant-oat01-new", "sk-ant-ort01-new", now_ms(3600), account=True)
        time.sleep(1.1)  # A's next look imports the changed file
        assert post(a, {"x-train-account": "gone"})[0] == 200
        time.sleep(1.1)
        assert post(b, {"x-train-account": "gone"})[0] == 200
        assert bearers(fake)[-2:] == ["Bearer sk-ant-oat01-new"] * 2
    assert path.exists()


def test_an_unusable_key_file_stops_start_up_with_the_setting_to_change(tmp_path: Path, migrated_db: str) -> None:
    from nexus.settings import load_settings
    from nexus.startup import StartupError, check_secret_key

    home = tmp_path / "home"
    home.mkdir()
    (home / "secret.key").write_text("not a key\n")
    settings = load_settings(database_url=migrated_db, nexus_home=home, credentials_dir=tmp_path / "c")
    with pytest.raises(StartupError) as refused:
        check_secret_key(settings)
    assert "set NEXUS_SECRET_KEY" in str(refused.value) and "not a key" not in str(refused.value)
    check_secret_key(load_settings(database_url=migrated_db, nexus_home=home, nexus_secret_key=KEY))  # set: fine
    check_secret_key(load_settings(database_url=migrated_db, nexus_home=tmp_path / "fresh"))  # made on first use
    assert (tmp_path / "fresh" / "secret.key").exists()
