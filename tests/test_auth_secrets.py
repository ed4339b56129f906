"""No secret leaks: after traffic through a proxy with storage on and every auth path exercised
(API key, OAuth with a refresh, a 401 replay and an `invalid_grant`, passthrough, client keys right and
wrong, a misfiled credential), none of the secrets used appears in the proxy's logs (DEBUG on), in any
stored row, in the `/api/requests` answers, in `nexus config`, or in the status files beside the
credentials.
"""

from __future__ import annotations

import secrets
import urllib.request
from pathlib import Path

import orjson
import psycopg
from click.testing import CliRunner

from nexus.auth.client_keys import ClientKeyStore
from nexus.cli import main
from tests.auth_helpers import (
    BODY,
    MODEL,
    cred_path,
    now_ms,
    post,
    proxy_env,
    wait_for,
    write_api_key,
    write_oauth,
)
from tests.harness.control import FakeControl
from tests.harness.servers import run_proxy


def token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(24)


def dump_database(dsn: str) -> str:
    """Every row of every table, as text."""
    with psycopg.connect(dsn) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) FROM information_schema.tables"
                " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
            )
        ]
        return "\n".join(str(row[0]) for t in tables for row in conn.execute(f"SELECT t::text FROM {t} AS t"))  # noqa: S608


def stored_count(dsn: str, outcome: str = "completed") -> int:
    with psycopg.connect(dsn) as conn:
        sql = "SELECT count(*) FROM api_requests WHERE outcome = %s"
        return int(conn.execute(sql, (outcome,)).fetchone()[0])  # type: ignore[index]


def test_no_secret_appears_in_logs_rows_errors_or_config(
    upstream_url: str, migrated_db: str, tmp_path: Path, fake: FakeControl
) -> None:
    creds = tmp_path / "credentials"
    salt, dashboard_key = token("salt-"), token("dash-")
    api_key, caller_key, caller_bearer, misfiled = (token("sk-ant-api03-") for _ in range(4))
    access, refresh = token("sk-ant-oat01-"), token("sk-ant-ort01-")
    revoked_access, refresh_401 = token("sk-ant-oat01-"), token("sk-ant-ort01-")
    dead_access, dead_refresh = token("sk-ant-oat01-"), token("sk-ant-ort01-")
    write_api_key(creds, "s-api", api_key)
    oauth_path = write_oauth(creds, "s-oauth", access, refresh, now_ms(10))  # refreshed on first use
    replay_path = write_oauth(creds, "s-401", revoked_access, refresh_401, now_ms(3600))
    write_oauth(creds, "s-dead", dead_access, dead_refresh, now_ms(-10))  # refused: invalid_grant
    cred_path(creds, "s-misfiled").write_text(orjson.dumps({"type": "apikey", "api_key": misfiled}).decode())
    fake.oauth(refresh_token=refresh)
    fake.oauth(refresh_token=refresh_401, revoke_access=revoked_access)

    store = ClientKeyStore(creds, salt)
    keys = {p: store.create(p)[1] for p in ("s-api", "s-oauth", "s-401", "s-dead", "s-misfiled", "s-pass")}
    revoked, revoked_key = store.create("s-api")
    store.revoke(revoked.key_id)
    wrong_key = "cnp_live_" + secrets.token_urlsafe(32)

    log = tmp_path / "proxy.log"
    env = proxy_env(
        upstream_url,
        creds,
        STORAGE_ENABLED="true",
        DATABASE_URL=migrated_db,
        NEXUS_HOME=str(tmp_path / "home"),
        STORAGE_BATCH_INTERVAL_MS="20",
        ENABLE_CLIENT_AUTH="true",
        API_KEY_SALT=salt,
        DASHBOARD_API_KEY=dashboard_key,
        DEBUG="true",
    )
    stream_body = orjson.dumps({**orjson.loads(BODY), "stream": True})
    with run_proxy(env, workers=2, output=log) as url:
        ok = [
            post(url, {"x-api-key": keys["s-api"], "x-train-account": ""}),
            post(url, {"authorization": f"Bearer {keys['s-api']}"}, body=stream_body),
            post(url, {"x-api-key": keys["s-oauth"], "anthropic-beta": "fine-grained-tool-streaming-2025-05-14"}),
            post(url, {"x-api-key": keys["s-401"]}),
            post(url, {"x-api-key": keys["s-pass"], "authorization": f"Bearer {caller_bearer}"}),
            post(url, {"authorization": f"Bearer {keys['s-pass']}", "x-api-key": caller_key}),
            post(url, {"x-api-key": keys["s-api"]}, path="/v1/messages/count_tokens"),
        ]
        assert [r[0] for r in ok] == [200] * len(ok), [r[2] for r in ok]
        refused = [
            post(url, {"x-api-key": keys["s-dead"]}),
            post(url, {"x-api-key": keys["s-misfiled"]}),
            post(url, {"x-api-key": wrong_key}),
            post(url, {"authorization": f"Bearer {revoked_key}"}),
            post(url, {"x-api-key": caller_key}),
        ]
        assert [r[0] for r in refused] == [401, 500, 401, 401, 401]
        wait_for(lambda: stored_count(migrated_db) == len(ok), timeout_s=20, what="the stored rows")
        wait_for(lambda: stored_count(migrated_db, "refused") == len(refused), timeout_s=20, what="the refusals")
        api_answers = []
        for _, headers, _ in ok:
            req = urllib.request.Request(  # noqa: S310 (loopback)
                f"{url}/api/requests/{headers['x-request-id']}", headers={"x-api-key": dashboard_key}
            )
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 (loopback)
                api_answers.append(resp.read().decode())
    assert all(orjson.loads(a)["model"] == MODEL for a in api_answers)

    rotated = orjson.loads(oauth_path.read_bytes())["oauth"], orjson.loads(replay_path.read_bytes())["oauth"]
    assert rotated[0]["accessToken"] != access and rotated[1]["accessToken"] != revoked_access
    secrets_used = {
        "salt": salt,
        "dashboard key": dashboard_key,
        "API key": api_key,
        "caller key": caller_key,
        "caller bearer": caller_bearer,
        "misfiled key": misfiled,
        "access token": access,
        "refresh token": refresh,
        "revoked access token": revoked_access,
        "refresh token (401)": refresh_401,
        "dead access token": dead_access,
        "dead refresh token": dead_refresh,
        "wrong client key": wrong_key,
        "revoked client key": revoked_key,
        **{f"client key {p}": k for p, k in keys.items()},
        **{f"rotated access {i}": r["accessToken"] for i, r in enumerate(rotated)},
        **{f"rotated refresh {i}": r["refreshToken"] for i, r in enumerate(rotated)},
    }
    seen_upstream = orjson.dumps(fake.requests()).decode()
    for used in (api_key, caller_key, caller_bearer, revoked_access, *(r["accessToken"] for r in rotated)):
        assert used in seen_upstream  # the secrets scanned for below really were in play
    config = CliRunner().invoke(main, ["config"], env=env)
    config_json = CliRunner().invoke(main, ["config", "--json"], env=env)
    assert config.exit_code == 0 and config_json.exit_code == 0
    logs = log.read_text()
    assert logs.count("OAuth accounts loaded") == 1 and "own use" in logs  # once, not once per worker
    assert "invalid_grant" in logs  # the logs do say what went wrong, by name
    places = {
        "proxy logs": logs,
        "stored rows": dump_database(migrated_db),
        "/api/requests answers": "\n".join(api_answers),
        "nexus config": config.output + config_json.output,
        "error messages": "\n".join(orjson.dumps(r[2]).decode() for r in refused),
        "status and client-key files": "\n".join(
            p.read_text() for p in creds.rglob("*") if p.is_file() and not p.name.endswith(".credentials.json")
        ),
    }
    leaks = [f"{what} in {where}" for where, text in places.items() for what, s in secrets_used.items() if s in text]
    assert leaks == []
