"""What credentials in the database cost a request: the per-worker lookup, and a refresh under the lock.

On a fresh embedded PostgreSQL (or `--database-url`), with a local stub token endpoint that answers
at once, it times, best of `--repeat` rounds of `--n` calls each:

- a lookup served from the worker's cache (what nearly every request pays), next to the file store's
  lookup it replaces;
- a client key check (`ENABLE_CLIENT_AUTH`), cached and not, next to the file record read it replaces;
- a lookup that misses the cache (once a second per name per worker): a worker thread, the file
  sync, one indexed read and the Fernet open;
- a refresh that does happen (advisory lock, row lock, token call, re-seal, commit), and one that
  finds the token already fresh (another instance refreshed: the lock and the re-read alone).

    python -m bench.credentials --n 2000
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg

from nexus.auth.client_keys import ClientKeyStore
from nexus.auth.credentials import CredentialStore
from nexus.auth.db_client_keys import DbClientKeyStore
from nexus.auth.db_credentials import PROJECT, import_document, refresh_row
from nexus.auth.db_store import DbCredentials
from nexus.auth.files import write_atomically
from nexus.auth.sealing import SecretBox, new_key, parse_keys
from nexus.auth.token_endpoint import TokenEndpoint
from nexus.storage.embedded import start_embedded
from nexus.storage.migrate import migrate


class _Tokens(http.server.BaseHTTPRequestHandler):
    issued = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        _Tokens.issued += 1
        body = orjson.dumps(
            {"access_token": f"sk-ant-oat01-{_Tokens.issued}", "refresh_token": f"r{_Tokens.issued}", "expires_in": 30}
        )
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


def _best(fn: Any, n: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n)
    return best


def run(dsn: str, n: int, repeat: int, creds: Path) -> None:
    migrate(dsn)
    box = SecretBox(parse_keys(new_key()), "bench")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Tokens)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = TokenEndpoint(f"http://127.0.0.1:{server.server_address[1]}/token", "bench")
    doc = {"type": "api_key", "accountId": "acc_b", "api_key": "sk-ant-api03-bench"}
    write_atomically(creds / "b.credentials.json", doc)
    oauth = {"accessToken": "sk-ant-oat01-0", "refreshToken": "r0", "expiresAt": int(time.time() * 1000) + 3_600_000}
    with psycopg.connect(dsn, autocommit=True) as conn:
        import_document(conn, box, PROJECT, "o", {"type": "oauth", "accountId": "acc_o", "oauth": oauth}, None)
    store = CredentialStore(creds)
    db = DbCredentials(dsn, box, CredentialStore(creds), endpoint)

    async def lookups() -> tuple[float, float]:
        await db.get(False, "b")
        t = time.perf_counter()
        for _ in range(n):
            await db.get(False, "b")
        hit = (time.perf_counter() - t) / n
        misses = []
        for _ in range(min(n, 500)):
            db._cache.clear()
            t = time.perf_counter()
            await db.get(False, "b")
            misses.append(time.perf_counter() - t)
        misses.sort()
        return hit, misses[len(misses) // 2]

    hit, miss = asyncio.run(lookups())
    files = _best(lambda: store.for_project("b"), n, repeat)
    print(f"lookup, file store (before):       {files * 1e6:8.2f} us")
    print(f"lookup, database, cached:          {hit * 1e6:8.2f} us")
    print(f"lookup, database, cache miss p50:  {miss * 1e3:8.2f} ms")
    keys = DbClientKeyStore(dsn, ClientKeyStore(creds, "bench-salt"))
    _, key = keys.create("b")
    files = ClientKeyStore(creds, "bench-salt")
    _, file_key = files.create("b")
    key_hit = _best(lambda: keys.check(key), n, repeat)

    def key_miss() -> None:
        keys._cache.clear()
        keys.check(key)

    key_cold = _best(key_miss, min(n, 500), repeat)
    key_files = _best(lambda: files.check(file_key), n, repeat)
    keys.close()
    print(f"client key check, files (before):  {key_files * 1e6:8.2f} us")
    print(f"client key check, database cached:  {key_hit * 1e6:8.2f} us")
    print(f"client key check, database miss:    {key_cold * 1e3:8.2f} ms  (on the event loop, once a second per key)")
    rounds = max(1, min(200, n // 10))
    with psycopg.connect(dsn, autocommit=True) as conn:
        did = _best(lambda: refresh_row(conn, box, PROJECT, "o", endpoint, lambda _r: True), rounds, repeat)
        skip = _best(lambda: refresh_row(conn, box, PROJECT, "o", endpoint, lambda _r: False), rounds, repeat)
    print(f"refresh (lock, token call, commit): {did * 1e3:7.2f} ms  (token endpoint stub on loopback)")
    print(f"refresh already done elsewhere:     {skip * 1e3:7.2f} ms  (lock and re-read only)")
    db.close()
    server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nexus-bench-creds-") as tmp:
        if args.database_url:
            run(args.database_url, args.n, args.repeat, Path(tmp) / "credentials")
            return
        dsn, stop = start_embedded(Path(tmp) / "pg")
        try:
            run(dsn, args.n, args.repeat, Path(tmp) / "credentials")
        finally:
            stop()


if __name__ == "__main__":
    main()
