"""Which HTTP client should carry upstream traffic? Each candidate against the fake upstream, same run.

    python -m bench.upstream_clients [--requests 3000] [--concurrency 32]

Measures what the proxy pays per upstream call: a 40 KiB Claude Code-shaped POST, the whole JSON
response read, at concurrency 1 (p50 latency) and at `--concurrency` (requests/s). Clients that are not
installed are skipped (`pip install -e '.[bench]'` brings aiohttp and httpx).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

from bench.traffic import corpus_headers, one_body
from tests.harness.servers import run_fake_upstream

HEADERS = corpus_headers()

Send = Callable[[], Awaitable[None]]


async def run_phase(send: Send, n: int, concurrency: int) -> tuple[float, float]:
    for _ in range(20):
        await send()
    lat: list[float] = []
    for _ in range(min(n, 500)):
        t = time.perf_counter()
        await send()
        lat.append(time.perf_counter() - t)
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await send()

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statistics.median(lat) * 1e3, n / (time.perf_counter() - t)


async def bench_pyreqwest(url: str, body: bytes, n: int, c: int) -> tuple[float, float]:
    from pyreqwest.client import ClientBuilder

    async with ClientBuilder().build() as client:

        async def send() -> None:
            req = client.post(url).headers(list(HEADERS.items())).body_bytes(body).streamed_read_buffer_limit(0)
            async with req.build_streamed() as resp:
                await resp.bytes()

        return await run_phase(send, n, c)


async def bench_aiohttp(url: str, body: bytes, n: int, c: int) -> tuple[float, float]:
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def send() -> None:
            async with session.post(url, data=body, headers=HEADERS) as resp:
                await resp.read()

        return await run_phase(send, n, c)


async def bench_httpx(url: str, body: bytes, n: int, c: int) -> tuple[float, float]:
    import httpx

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=None)) as client:

        async def send() -> None:
            resp = await client.post(url, content=body, headers=HEADERS)
            await resp.aread()

        return await run_phase(send, n, c)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    body = one_body(stream=False, kb=45)
    results: dict[str, tuple[float, float]] = {}
    with run_fake_upstream(record_bodies=False) as upstream:
        url = upstream + "/v1/messages"
        for name, fn in (("pyreqwest", bench_pyreqwest), ("aiohttp", bench_aiohttp), ("httpx", bench_httpx)):
            try:
                results[name] = asyncio.run(fn(url, body, args.requests, args.concurrency))
            except ImportError:
                print(f"{name}: not installed, skipped")
    base = results.get("pyreqwest")
    print(f"{'client':10} {'p50 c=1 (ms)':>14} {'req/s c=' + str(args.concurrency):>14} {'vs pyreqwest':>13}")
    for name, (p50, rps) in results.items():
        ratio = f"{rps / base[1]:.2f}x" if base else "-"
        print(f"{name:10} {p50:14.3f} {rps:14.0f} {ratio:>13}")


if __name__ == "__main__":
    main()
