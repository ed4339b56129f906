"""First overhead measurement: the fake upstream directly vs through the proxy, in the same run.

    python -m bench.overhead [--requests 2000] [--concurrency 32] [--body-kb 40] [--json out.json]

Starts the fake upstream (no event delay, no body recording), the stack's floor (bench/floor_proxy.py:
the least a Granian RSGI + pyreqwest forwarder does) and Nexus, then drives all three with the same
load generator (an in-process asyncio client on one shared pooled connection set):
  * latency at concurrency 1: JSON round trip and streaming time to first byte, p50 / p99;
  * throughput at `--concurrency` (JSON requests/s) and its p99.
The proxy's added latency is the difference between the two columns of one run; the load generator's
own cost is in both columns and cancels out. Every loop is bounded by `--requests`.
The full suite (frontier, paced streams, soak, wrk) belongs to bench/README.md's later sections.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import orjson
from pyreqwest.client import ClientBuilder

from nexus import __version__
from nexus.storage.embedded import start_embedded
from nexus.storage.migrate import migrate
from nexus.testing.servers import free_port, run_fake_upstream, run_proxy, stop, wait_until_healthy


def claude_code_like_body(kb: int, stream: bool) -> bytes:
    """A body shaped like Claude Code's: system blocks, tools, a history, padded to about `kb` KiB."""
    tools = [
        {
            "name": f"tool_{i}",
            "description": "Does a thing. " * 20,
            "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
        }
        for i in range(20)
    ]
    messages: list[dict[str, object]] = []
    body: dict[str, object] = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 32000,
        "stream": stream,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.330.abc; cc_entrypoint=cli;"},
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
            {"type": "text", "text": "Instructions. " * 400, "cache_control": {"type": "ephemeral"}},
        ],
        "tools": tools,
        "messages": messages,
    }
    turn = 0
    while len(orjson.dumps(body)) < kb * 1024:
        messages.append({"role": "user", "content": [{"type": "text", "text": f"Turn {turn}: " + "please " * 60}]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": "Done. " * 60}]})
        turn += 1
    messages.append({"role": "user", "content": "Continue."})
    return orjson.dumps(body)


HEADERS = [
    ("content-type", "application/json"),
    ("x-api-key", "sk-ant-api03-bench"),
    ("anthropic-version", "2023-06-01"),
]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def one(client, url: str, body: bytes, stream: bool) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    req = client.post(url + "/v1/messages").headers(HEADERS).body_bytes(body).streamed_read_buffer_limit(0)
    async with req.build_streamed() as resp:
        reader = resp.body_reader
        first = await reader.read_chunk()
        ttfb = time.perf_counter() - start
        assert resp.status == 200 and first, resp.status
        while await reader.read_chunk() is not None:
            pass
    return ttfb if stream else time.perf_counter() - start


async def latency(url: str, body: bytes, stream: bool, n: int) -> list[float]:
    async with ClientBuilder().build() as client:
        for _ in range(min(50, n)):  # warm-up: connections, caches
            await one(client, url, body, stream)
        return [await one(client, url, body, stream) for _ in range(n)]


async def throughput(url: str, body: bytes, n: int, concurrency: int) -> tuple[float, float]:
    async with ClientBuilder().build() as client:
        await asyncio.gather(*(one(client, url, body, False) for _ in range(concurrency)))
        remaining = n
        samples: list[float] = []

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                samples.append(await one(client, url, body, False))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return n / elapsed, pct(samples, 99)


async def measure(url: str, args: argparse.Namespace) -> dict[str, float]:
    json_body = claude_code_like_body(args.body_kb, stream=False)
    sse_body = claude_code_like_body(args.body_kb, stream=True)
    lat_json = await latency(url, json_body, False, args.latency_requests)
    lat_sse = await latency(url, sse_body, True, args.latency_requests)
    rps, p99 = await throughput(url, json_body, args.requests, args.concurrency)
    return {
        "json_p50_ms": statistics.median(lat_json) * 1000,
        "json_p99_ms": pct(lat_json, 99) * 1000,
        "ttfb_p50_ms": statistics.median(lat_sse) * 1000,
        "ttfb_p99_ms": pct(lat_sse, 99) * 1000,
        "rps": rps,
        "rps_p99_ms": p99 * 1000,
    }


@contextmanager
def run_floor(upstream: str) -> Iterator[str]:
    """The minimal Granian + pyreqwest forwarder (bench/floor_proxy.py) on a free port."""
    port = free_port()
    cmd = [sys.executable, "-m", "granian", "--interface", "rsgi", "--loop", "uvloop", "--log-level", "warning"]
    cmd += ["--port", str(port), "bench.floor_proxy:app"]
    proc = subprocess.Popen(cmd, env={**os.environ, "FLOOR_UPSTREAM": upstream})
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}/health", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000, help="requests in the throughput phase")
    ap.add_argument("--latency-requests", type=int, default=500, help="requests per latency phase")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--body-kb", type=int, default=40)
    ap.add_argument("--json", dest="json_out", help="also write the results here")
    ap.add_argument("--storage", action="store_true", help="also measure Nexus with storage on (embedded PostgreSQL)")
    args = ap.parse_args()

    with run_fake_upstream(record_bodies=False) as upstream:
        direct = asyncio.run(measure(upstream, args))
        with run_floor(upstream) as floor_url:
            floor = asyncio.run(measure(floor_url, args))
        with run_proxy({"CLAUDE_API_BASE_URL": upstream, "STORAGE_ENABLED": "false"}) as proxy:
            proxied = asyncio.run(measure(proxy, args))
        stored: dict[str, float] | None = None
        if args.storage:
            with tempfile.TemporaryDirectory(prefix="nexus-bench-") as home:
                dsn, stop_db = start_embedded(Path(home) / "postgres")
                try:
                    migrate(dsn)
                    env = {"CLAUDE_API_BASE_URL": upstream, "DATABASE_URL": dsn, "NEXUS_HOME": home}
                    with run_proxy(env) as proxy:
                        stored = asyncio.run(measure(proxy, args))
                finally:
                    stop_db()

    rows = [
        ("JSON latency p50 (c=1)", "json_p50_ms", "ms"),
        ("JSON latency p99 (c=1)", "json_p99_ms", "ms"),
        ("stream TTFB p50 (c=1)", "ttfb_p50_ms", "ms"),
        ("stream TTFB p99 (c=1)", "ttfb_p99_ms", "ms"),
        (f"throughput (c={args.concurrency})", "rps", "req/s"),
        (f"p99 at c={args.concurrency}", "rps_p99_ms", "ms"),
    ]
    print(f"nexus {__version__} | {platform.python_version()} | {os.cpu_count()} cpus | body {args.body_kb} KiB")
    head = f"{'metric':28} {'direct':>10} {'floor':>10} {'nexus':>10} {'nexus-direct':>13} {'nexus-floor':>12}"
    print(head + (f" {'+storage':>10} {'storage cost':>13}" if stored else ""))
    for label, key, unit in rows:
        d, f, p = direct[key], floor[key], proxied[key]
        if unit == "req/s":
            delta, own = f"{p / d:.2f}x", f"{p / f:.2f}x"
        else:
            delta, own = f"+{p - d:.3f}", f"{p - f:+.3f}"
        line = f"{label:28} {d:10.3f} {f:10.3f} {p:10.3f} {delta:>13} {own:>12}"
        if stored:
            st = stored[key]
            line += f" {st:10.3f} {(f'{st / p:.2f}x' if unit == 'req/s' else f'{st - p:+.3f}'):>13}"
        print(f"{line} {unit}")
    print("note: one load generator process on the same 2 cores as both servers; ratios, not absolutes.")
    if args.json_out:
        with open(args.json_out, "wb") as fh:
            fh.write(
                orjson.dumps(
                    {
                        "when": datetime.now(UTC).isoformat(),
                        "args": vars(args),
                        "direct": direct,
                        "floor": floor,
                        "proxy": proxied,
                        "proxy_storage": stored,
                    },
                    option=orjson.OPT_INDENT_2,
                )
            )


if __name__ == "__main__":
    main()
