"""Storage benchmarks, same run, same server: writer throughput and bytes stored per request.

    python -m bench.storage [--rows 20000] [--turns 30] [--database-url URL]

1. Writer rows/s: the same Claude Code-shaped rows inserted (a) with psycopg `executemany` (the
   baseline) and (b) the way the writer does it: the Rust core encodes the batch into one binary COPY
   payload, sent through a staging table and `INSERT ... ON CONFLICT DO NOTHING`; (b) again with the
   usage summaries' triggers (migration 0016) disabled, alternated with (b), to show what they cost.
2. Bytes per request for a `--turns`-turn conversation whose body grows every turn like Claude Code's
   (system blocks, ~20 tools, the whole history re-sent): whole bodies in a jsonb column versus the
   content-addressed layout (envelope per request, each distinct part once).
Without `--database-url` an embedded PostgreSQL is started in a temporary directory.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psycopg
from psycopg.types.json import Jsonb

from nexus._core import encode_copy_binary
from nexus.storage.embedded import start_embedded
from nexus.storage.migrate import migrate
from nexus.storage.payload import STAGE_SQL, Batch, send
from nexus.storage.records import BLOB_TYPES, REQUEST_NAMES, REQUEST_TYPES, ExchangeRecord, to_row

RESPONSE = orjson.dumps(
    {
        "id": "msg_1",
        "type": "message",
        "content": [{"type": "text", "text": "done " * 40}],
        "usage": {"input_tokens": 12000, "output_tokens": 80, "cache_read_input_tokens": 11000},
    }
)


WORDS = "the a file test run build error fix read write code line function return value proxy stream".split()


def prose(rng: random.Random, words: int) -> str:
    """Text that compresses like prose and code (about 3x), not like one repeated phrase."""
    return " ".join(rng.choice(WORDS) + (str(rng.randrange(1000)) if rng.random() < 0.2 else "") for _ in range(words))


def conversation(turns: int) -> list[bytes]:
    """Bodies of one conversation: each turn re-sends everything before it plus a new exchange."""
    rng = random.Random(7)
    base = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 32000,
        "stream": True,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.330.a1b; cc_entrypoint=cli;"},
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
            {"type": "text", "text": prose(rng, 2000), "cache_control": {"type": "ephemeral"}},
        ],
        "tools": [
            {
                "name": f"Tool{i}",
                "description": prose(rng, 120),
                "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
            }
            for i in range(20)
        ],
    }
    history: list[dict[str, object]] = [{"role": "user", "content": [{"type": "text", "text": prose(rng, 100)}]}]
    bodies = []
    for _ in range(turns):
        history = [*history, {"role": "assistant", "content": [{"type": "text", "text": prose(rng, 150)}]}]
        history.append({"role": "user", "content": [{"type": "text", "text": prose(rng, 60)}]})
        bodies.append(orjson.dumps({**base, "messages": history}))
    return bodies


def records(bodies: list[bytes]) -> list[ExchangeRecord]:
    now = int(time.time() * 1_000_000)
    return [
        ExchangeRecord(str(uuid.uuid4()), now + i, "bench", None, "POST", "/v1/messages", [], body, 200, [], RESPONSE)
        for i, body in enumerate(bodies)
    ]


def bench_writer(dsn: str, n: int) -> tuple[float, float, float]:
    bodies = conversation(30)
    recs = records([bodies[i % len(bodies)] for i in range(n)])
    blobs: dict[bytes, tuple[int, bytes]] = {}
    rows = [to_row(r, blobs) for r in recs]
    with psycopg.connect(dsn) as conn:
        cols = ", ".join(f'"{c}"' for c in REQUEST_NAMES)
        placeholders = ", ".join(["%s"] * len(REQUEST_NAMES))
        conn.execute("TRUNCATE api_requests, content_blobs")
        # the baseline gets the same values in the types psycopg adapts natively
        baseline_rows = []
        for row in rows:
            values = [
                Jsonb(orjson.loads(v)) if t == "jsonb" and v is not None else v
                for v, t in zip(row, REQUEST_TYPES, strict=True)
            ]
            values[0] = uuid.UUID(values[0])
            values[1] = datetime.fromtimestamp(values[1] / 1e6, UTC)
            baseline_rows.append(values)
        # the baseline as it always was: without the usage summaries' triggers (one statement per row
        # would run them once per row)
        conn.execute("ALTER TABLE api_requests DISABLE TRIGGER USER")
        started = time.perf_counter()
        with conn.cursor() as cur:
            for i in range(0, n, 500):
                cur.executemany(
                    f"INSERT INTO api_requests ({cols}) VALUES ({placeholders})",  # noqa: S608 (constant columns)
                    baseline_rows[i : i + 500],
                )
                conn.commit()
        baseline = n / (time.perf_counter() - started)
        conn.execute("TRUNCATE api_requests, content_blobs")
        conn.commit()
        for sql in STAGE_SQL:
            conn.execute(sql)  # type: ignore[arg-type]
        blob_rows = [[k, kind, body, None] for k, (kind, body) in blobs.items()]

        def timed(search: bool, summary: bool) -> float:
            # the usage summaries' triggers (migration 0016) on or off: what keeping them costs
            conn.execute(f"ALTER TABLE api_requests {'ENABLE' if summary else 'DISABLE'} TRIGGER USER")
            conn.execute("TRUNCATE api_requests, content_blobs, conversations")
            conn.commit()
            started = time.perf_counter()
            send(conn, Batch(b"", encode_copy_binary(BLOB_TYPES, blob_rows)), search=search)
            for i in range(0, n, 500):
                send(conn, Batch(encode_copy_binary(REQUEST_TYPES, rows[i : i + 500]), b""), search=search)
                conn.commit()
            return n / (time.perf_counter() - started)

        # the search vector (STORAGE_SEARCH_ENABLED) on, then off; with and without the summaries'
        # triggers, alternated so a noisy neighbour hurts both alike
        with_summary, without = [], []
        for _ in range(2):
            with_summary.append(timed(True, True))
            without.append(timed(True, False))
        unsearched, unsearched_without = [], []
        for _ in range(2):
            unsearched.append(timed(False, True))
            unsearched_without.append(timed(False, False))
        conn.execute("ALTER TABLE api_requests ENABLE TRIGGER USER")
        conn.commit()
    return baseline, max(with_summary), max(unsearched), max(without), max(unsearched_without)


SIZE_OF_STORE = (
    "SELECT pg_total_relation_size('content_blobs') + (SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) "
    "FROM pg_inherits WHERE inhparent = 'api_requests'::regclass)"
)


def bench_size(dsn: str, turns: int) -> tuple[float, float]:
    """Bytes each layout grows by per request (tables, indexes and TOAST, measured before and after)."""
    bodies = conversation(turns)
    with psycopg.connect(dsn) as conn:
        conn.execute("DROP TABLE IF EXISTS whole_bodies")
        conn.execute("CREATE TABLE whole_bodies (request_id uuid, body jsonb, response_body jsonb)")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO whole_bodies VALUES (%s, %s, %s)",
                [(uuid.uuid4(), Jsonb(orjson.loads(b)), Jsonb(orjson.loads(RESPONSE))) for b in bodies],
            )
        conn.execute("TRUNCATE api_requests, content_blobs")
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM FULL")
        conn.autocommit = False
        empty = conn.execute(SIZE_OF_STORE).fetchone()[0]  # type: ignore[index]
        blobs: dict[bytes, tuple[int, bytes]] = {}
        rows = [to_row(r, blobs) for r in records(bodies)]

        for sql in STAGE_SQL:
            conn.execute(sql)  # type: ignore[arg-type]
        blob_rows = [[k, kd, b, None] for k, (kd, b) in blobs.items()]
        send(conn, Batch(encode_copy_binary(REQUEST_TYPES, rows), encode_copy_binary(BLOB_TYPES, blob_rows)))
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
        whole = conn.execute("SELECT pg_total_relation_size('whole_bodies')").fetchone()[0]  # type: ignore[index]
        parts = conn.execute(SIZE_OF_STORE).fetchone()[0] - empty  # type: ignore[index]
        conn.execute("DROP TABLE whole_bodies")
    return whole / turns, float(parts) / turns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--turns", type=int, default=30)
    ap.add_argument("--database-url")
    args = ap.parse_args()
    stop = None
    dsn = args.database_url
    if dsn is None:
        dsn, stop = start_embedded(Path(tempfile.mkdtemp(prefix="nexus-bench-")))
    try:
        migrate(dsn)
        baseline, copy, unsearched, unsummarised, unsearched_unsummarised = bench_writer(dsn, args.rows)
        whole, parts = bench_size(dsn, args.turns)
    finally:
        if stop is not None:
            stop()
    print(f"writer, {args.rows} Claude Code-shaped rows, batches of 500:")
    print(f"  psycopg executemany     {baseline:10.0f} rows/s   1.00x")
    print(f"  Rust COPY binary+stage  {copy:10.0f} rows/s   {copy / baseline:.2f}x   (priced, search vector built)")
    print(f"  same, STORAGE_SEARCH_ENABLED=false {unsearched:10.0f} rows/s   {unsearched / baseline:.2f}x")
    print("  the same two without the usage summaries' triggers (best of 2 runs each, alternated with the above):")
    print(f"    searched              {unsummarised:10.0f} rows/s   (with them: {copy / unsummarised:.2f}x)")
    print(
        f"    unsearched            {unsearched_unsummarised:10.0f} rows/s   "
        f"(with them: {unsearched / unsearched_unsummarised:.2f}x)"
    )
    print(f"bytes stored per request, {args.turns}-turn conversation (tables + indexes + TOAST):")
    print(f"  whole bodies (jsonb)    {whole:10.0f} B")
    print(f"  content-addressed       {parts:10.0f} B   {whole / parts:.1f}x smaller")


if __name__ == "__main__":
    main()
