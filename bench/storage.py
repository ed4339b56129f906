"""Storage benchmarks, same run, same server: writer throughput and bytes stored per request.

    python -m bench.storage [--rows 20000] [--turns 30] [--database-url URL]

1. Writer rows/s: the same Claude Code-shaped rows inserted (a) with psycopg `executemany` (the
   baseline) and (b) the way the writer does it: the Rust core encodes the batch into one binary COPY
   payload, sent through a staging table and `INSERT ... ON CONFLICT DO NOTHING`; (b) again with the
   usage summaries' triggers (migration 0016) disabled, alternated with (b), to show what they cost.
2. The event loop beside the writer thread: an asyncio loop ticking every millisecond while another
   thread builds batches of 200 proxied records, with the Python row builder the writer had before
   (`tests/oracles/python_rows.py`, then the encoder) and with the Rust one (`build_batch`, encoding
   with the GIL released): how late the ticks come, which is what a request on the loop waits.
3. Bytes per request for a `--turns`-turn conversation whose body grows every turn like Claude Code's
   (system blocks, ~20 tools, the whole history re-sent): whole bodies in a jsonb column versus the
   content-addressed layout (envelope per request, each distinct part once).
Without `--database-url` an embedded PostgreSQL is started in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psycopg
from psycopg.types.json import Jsonb

from nexus._core import analyze_request, encode_copy_binary
from nexus.storage.embedded import start_embedded
from nexus.storage.migrate import migrate
from nexus.storage.payload import STAGE_SQL, Batch, send
from nexus.storage.records import BLOB_TYPES, REQUEST_NAMES, REQUEST_TYPES, SEARCH_TEXT, ExchangeRecord, build_batch
from tests.oracles.python_rows import to_row  # the Python row builder the Rust one replaced: the "before"

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


def bench_writer(dsn: str, n: int) -> tuple[float, float, float, float, float, float]:
    bodies = conversation(30)
    recs = records([bodies[i % len(bodies)] for i in range(n)])
    blobs: dict[bytes, tuple[int, bytes]] = {}
    rows = [to_row(r, blobs) for r in recs]
    with psycopg.connect(dsn) as conn:
        stored = [i for i, c in enumerate(REQUEST_NAMES) if c != SEARCH_TEXT]  # staged only, no column
        cols = ", ".join(f'"{REQUEST_NAMES[i]}"' for i in stored)
        placeholders = ", ".join(["%s"] * len(stored))
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
            baseline_rows.append([values[i] for i in stored])
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

        def timed(search: bool, summary: bool, python: bool = False) -> float:
            # the usage summaries' triggers (migration 0016) on or off: what keeping them costs
            conn.execute(f"ALTER TABLE api_requests {'ENABLE' if summary else 'DISABLE'} TRIGGER USER")
            conn.execute("TRUNCATE api_requests, content_blobs, conversations")
            conn.commit()
            started = time.perf_counter()
            send(conn, Batch(b"", encode_copy_binary(BLOB_TYPES, blob_rows)), search=search)
            for i in range(0, n, 500):
                # rows built and encoded as the writer does now (Rust), or as it did before (Python)
                payload = python_build(recs[i : i + 500])[0] if python else build_batch(recs[i : i + 500]).requests
                send(conn, Batch(payload, b""), search=search)
                conn.commit()
            return n / (time.perf_counter() - started)

        # the search vector (STORAGE_SEARCH_ENABLED) on, then off; with and without the summaries'
        # triggers, alternated so a noisy neighbour hurts both alike
        with_summary, without, python = [], [], []
        for _ in range(2):
            with_summary.append(timed(True, True))
            without.append(timed(True, False))
            python.append(timed(True, True, python=True))
        unsearched, unsearched_without = [], []
        for _ in range(2):
            unsearched.append(timed(False, True))
            unsearched_without.append(timed(False, False))
        conn.execute("ALTER TABLE api_requests ENABLE TRIGGER USER")
        conn.commit()
    return baseline, max(with_summary), max(unsearched), max(without), max(unsearched_without), max(python)


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
        built = build_batch(records(bodies))

        for sql in STAGE_SQL:
            conn.execute(sql)  # type: ignore[arg-type]
        send(conn, Batch(built.requests, built.blobs))
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
        whole = conn.execute("SELECT pg_total_relation_size('whole_bodies')").fetchone()[0]  # type: ignore[index]
        parts = conn.execute(SIZE_OF_STORE).fetchone()[0] - empty  # type: ignore[index]
        conn.execute("DROP TABLE whole_bodies")
    return whole / turns, float(parts) / turns


def proxied(recs: list[ExchangeRecord]) -> list[ExchangeRecord]:
    """The records as the proxy hands them over: analysed on the request path, with client headers."""
    headers = [
        ("user-agent", "claude-cli/2.1.330 (external, cli)"),
        ("content-type", "application/json"),
        ("anthropic-version", "2023-06-01"),
        ("anthropic-beta", "claude-code-20250219,interleaved-thinking-2025-05-14"),
        ("x-app", "cli"),
        ("x-claude-code-session-id", "0b9b5d8e-3d3c-4a37-9d55-4b7b0e1c2a11"),
        ("authorization", "Bearer sk-ant-not-stored"),
    ]
    for i, rec in enumerate(recs):
        rec.request_headers = headers
        if i % 5:  # 80% streamed, as Claude Code's traffic (bench.traffic): usage from the stream observer
            rec.streamed, rec.usage_json = True, orjson.dumps(orjson.loads(RESPONSE)["usage"])
            rec.input_tokens, rec.output_tokens, rec.tool_call_count = 12000, 80, 0
        rec.response_headers = [("content-type", "application/json"), ("request-id", "req_1")]
        if rec.request_body is not None:
            rec.analysis = analyze_request(rec.request_body, strict=False)
    return recs


def python_build(recs: list[ExchangeRecord], known: set[bytes] | None = None) -> tuple[bytes, bytes]:
    """The writer's batch before: rows built in Python, then each table encoded by the Rust core.
    `known`: the parts the database has (the writer's recent keys), grown by the new ones."""
    blobs: dict[bytes, tuple[int, bytes]] = {}
    rows = [to_row(r, blobs, known if known is not None else ()) for r in recs]
    if known is not None:
        known.update(blobs)
    return encode_copy_binary(REQUEST_TYPES, rows), encode_copy_binary(
        BLOB_TYPES, [[k, *v, None] for k, v in blobs.items()]
    )


def rust_build(recs: list[ExchangeRecord], known: set[bytes] | None = None) -> tuple[bytes, bytes]:
    """The writer's batch now: one call, built and encoded in Rust, the encoding with the GIL released."""
    built = build_batch(recs, known if known is not None else ())
    if known is not None:
        known.update(built.new_keys)
    return built.requests, built.blobs


#: The event loop's ticker period while a writer thread builds batches beside it.
TICK_S = 0.001


def loop_stall(
    build: Callable[[list[ExchangeRecord], set[bytes]], object] | None,
    recs: list[ExchangeRecord],
    batches: int,
    size: int,
) -> tuple[float, float, float, float]:
    """An asyncio loop ticking every `TICK_S` in this thread while another thread builds `batches`
    batches of `size` records with `build` (None: no writer, for the same number of ticks): how late
    the ticks were (p50, p99, max, in ms, the GIL held by the writer thread is what makes them late)
    and the builder's rows/s. The proxy serves requests on such a loop beside its writer thread."""
    done = threading.Event()
    elapsed = [0.0]

    def work() -> None:
        known: set[bytes] = set()  # as the writer's recent keys: a part is sent once
        started = time.perf_counter()
        for b in range(batches):
            at = (b * size) % max(1, len(recs) - size)
            build(recs[at : at + size], known)  # type: ignore[misc]
        elapsed[0] = time.perf_counter() - started
        done.set()

    async def ticker() -> list[float]:
        late: list[float] = []
        while not done.is_set() or len(late) < 200:
            started = time.perf_counter()
            await asyncio.sleep(TICK_S)
            late.append(time.perf_counter() - started - TICK_S)
            if build is None and len(late) >= 500:
                done.set()
        return late

    thread = threading.Thread(target=work) if build is not None else None
    if thread is not None:
        thread.start()
    late = sorted(asyncio.run(ticker()))
    if thread is not None:
        thread.join()
    rows_s = batches * size / elapsed[0] if elapsed[0] else 0.0
    return (
        late[len(late) // 2] * 1000,
        late[min(len(late) - 1, int(len(late) * 0.99))] * 1000,
        late[-1] * 1000,
        rows_s,
    )


def bench_stall(batches: int, size: int = 200) -> dict[str, tuple[float, float, float, float]]:
    """`loop_stall` for no writer, the Python builder (before) and the Rust one (now), alternated."""
    bodies = conversation(30)
    recs = proxied(records([bodies[i % len(bodies)] for i in range(size * 4)]))
    out: dict[str, list[tuple[float, float, float, float]]] = {"no writer": [], "python rows": [], "rust rows": []}
    for _ in range(2):
        out["no writer"].append(loop_stall(None, recs, batches, size))
        out["python rows"].append(loop_stall(python_build, recs, batches, size))
        out["rust rows"].append(loop_stall(rust_build, recs, batches, size))
    # the better of the two runs of each (a noisy neighbour only ever makes numbers worse)
    return {name: min(runs, key=lambda r: r[1]) for name, runs in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--turns", type=int, default=30)
    ap.add_argument("--database-url")
    ap.add_argument("--stall-batches", type=int, default=500, help="batches of 200 built beside the event loop")
    args = ap.parse_args()
    stall = bench_stall(args.stall_batches)
    stop = None
    dsn = args.database_url
    if dsn is None:
        dsn, stop = start_embedded(Path(tempfile.mkdtemp(prefix="nexus-bench-")))
    try:
        migrate(dsn)
        baseline, copy, unsearched, unsummarised, unsearched_unsummarised, python = bench_writer(dsn, args.rows)
        whole, parts = bench_size(dsn, args.turns)
    finally:
        if stop is not None:
            stop()
    print(f"writer, {args.rows} Claude Code-shaped rows, batches of 500:")
    print(f"  psycopg executemany     {baseline:10.0f} rows/s   1.00x")
    print(f"  Rust COPY binary+stage  {copy:10.0f} rows/s   {copy / baseline:.2f}x   (priced, search vector built)")
    print(f"  same, rows built in Python (before) {python:10.0f} rows/s   {python / baseline:.2f}x")
    print(f"  same, STORAGE_SEARCH_ENABLED=false {unsearched:10.0f} rows/s   {unsearched / baseline:.2f}x")
    print("  the same two without the usage summaries' triggers (best of 2 runs each, alternated with the above):")
    print(f"    searched              {unsummarised:10.0f} rows/s   (with them: {copy / unsummarised:.2f}x)")
    print(
        f"    unsearched            {unsearched_unsummarised:10.0f} rows/s   "
        f"(with them: {unsearched / unsearched_unsummarised:.2f}x)"
    )
    print(
        f"event loop beside the writer thread ({args.stall_batches} batches of 200 built, {TICK_S * 1000:.0f} ms "
        "ticker; lateness p50 / p99 / max, build rows/s):"
    )
    for name, (p50, p99, worst, rows_s) in stall.items():
        rate = f"{rows_s:8.0f} rows/s" if rows_s else ""
        print(f"  {name:12} {p50:6.2f} / {p99:6.2f} / {worst:6.2f} ms   {rate}")
    print(f"bytes stored per request, {args.turns}-turn conversation (tables + indexes + TOAST):")
    print(f"  whole bodies (jsonb)    {whole:10.0f} B")
    print(f"  content-addressed       {parts:10.0f} B   {whole / parts:.1f}x smaller")


if __name__ == "__main__":
    main()
