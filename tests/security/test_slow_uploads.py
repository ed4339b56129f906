"""Finding 3 of "Safe on a network": ~2,100 connections that send a request head and trickle the body
stopped every normal request for 30 s. Here 2,200 of them stay open for 40 s (from the same address as
the normal client, the hardest case) while a normal request is sent every 200 ms: at least 95% of those
must be answered, and the trickling uploads are ended by the body deadlines, not served for ever."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.auth_helpers import BODY, proxy_env
from tests.harness.servers import run_proxy
from tests.helpers import get_json

SLOW = 2200
HOLD_S = 40.0
NORMAL_EVERY_S = 0.2


async def _slow_upload(host: str, port: int, stop: asyncio.Event, opened: list[int]) -> None:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return
    opened.append(1)
    writer.write(
        b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/json\r\n"
        b"anthropic-version: 2023-06-01\r\nx-api-key: sk-ant-api03-slow\r\ncontent-length: 100000\r\n\r\n{"
    )
    try:
        while not stop.is_set():
            await writer.drain()
            try:
                await asyncio.wait_for(stop.wait(), 5.0)
            except TimeoutError:
                writer.write(b" ")  # one byte every 5 s: never idle long enough for the idle deadline
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _normal(host: str, port: int) -> int:
    request = (
        b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/json\r\n"
        b"anthropic-version: 2023-06-01\r\nx-api-key: sk-ant-api03-normal\r\nconnection: close\r\n"
        b"content-length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
    )
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        writer.write(request)
        status_line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        return int(status_line.split()[1])
    except (TimeoutError, OSError, IndexError, ValueError):
        return 0


async def _attack(host: str, port: int) -> tuple[list[int], int]:
    stop = asyncio.Event()
    opened: list[int] = []
    slow = [asyncio.create_task(_slow_upload(host, port, stop, opened)) for _ in range(SLOW)]
    await asyncio.sleep(2.0)  # all heads sent
    results: list[asyncio.Task[int]] = []
    started = time.monotonic()
    while time.monotonic() - started < HOLD_S:
        results.append(asyncio.create_task(_normal(host, port)))
        await asyncio.sleep(NORMAL_EVERY_S)
    statuses = list(await asyncio.gather(*results))
    stop.set()
    await asyncio.wait_for(asyncio.gather(*slow, return_exceptions=True), 30)
    return statuses, len(opened)


def test_normal_requests_are_served_while_2200_uploads_trickle(upstream_url: str, tmp_path: Path) -> None:
    with run_proxy(proxy_env(upstream_url, tmp_path)) as url:
        host, port = url.removeprefix("http://").split(":")
        statuses, opened = asyncio.run(_attack(host, int(port)))
        health = get_json(url + "/health")
    assert opened == SLOW
    served = sum(1 for s in statuses if s == 200)
    assert served >= 0.95 * len(statuses), f"{served}/{len(statuses)} served; statuses {sorted(set(statuses))}"
    assert health["status"] in ("healthy", "degraded")


def test_trickled_uploads_end_with_408(upstream_url: str, tmp_path: Path) -> None:
    env = proxy_env(upstream_url, tmp_path, BODY_READ_IDLE_TIMEOUT_MS="500", BODY_READ_TIMEOUT_MS="1500")

    async def trickle(host: str, port: int, length: int, pause_s: float, part: bytes) -> tuple[bytes, float]:
        reader, writer = await asyncio.open_connection(host, port)
        started = time.monotonic()
        writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/json\r\n")
        writer.write(b"content-length: %d\r\n\r\n{" % length)
        read = asyncio.ensure_future(reader.read(4096))
        while not read.done() and time.monotonic() - started < 10:
            await asyncio.wait([read], timeout=pause_s)
            try:
                writer.write(part)
                await writer.drain()
            except (ConnectionError, OSError):
                break
        answer = await asyncio.wait_for(read, 5)
        writer.close()
        return answer, time.monotonic() - started

    async def all_three(host: str, port: int) -> list[tuple[bytes, float]]:
        big = 2 << 20  # read part by part
        return await asyncio.gather(
            trickle(host, port, 1000, 1.0, b" "),  # small: must arrive within the idle timeout as a whole
            trickle(host, port, big, 1.0, b" "),  # large, stalled: a part late
            trickle(host, port, big, 0.1, b" " * 2048),  # large, steady parts, too slow in all
        )

    with run_proxy(env) as url:
        host, port = url.removeprefix("http://").split(":")
        small, stalled, slow = asyncio.run(all_three(host, int(port)))
    for (answer, took), fragment in (
        (small, b"0.5 s in all"),
        (stalled, b"between two parts"),
        (slow, b"1.5 s in all"),
    ):
        assert answer.startswith(b"HTTP/1.1 408") and fragment in answer, answer[:300]
        assert took < 4.0


async def _spread_attack(host: str, port: int, addresses: int, per_address: int, hold_s: float) -> list[int]:
    """Trickled uploads from many loopback addresses (each under the per-address limit), all at once."""
    stop = asyncio.Event()

    async def slow(source: str) -> None:
        try:
            _, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
        except OSError:
            return
        writer.write(
            b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/json\r\n"
            b"x-api-key: sk-ant-api03-slow\r\ncontent-length: 30000000\r\n\r\n{"
        )
        try:
            while not stop.is_set():
                await writer.drain()
                try:
                    await asyncio.wait_for(stop.wait(), 2.0)
                except TimeoutError:
                    writer.write(b" ")
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    slow_tasks = [
        asyncio.create_task(slow(f"127.0.{1 + a // 250}.{2 + a % 250}"))
        for a in range(addresses)
        for _ in range(per_address)
    ]
    await asyncio.sleep(1.5)
    results = []
    started = time.monotonic()
    while time.monotonic() - started < hold_s:
        results.append(asyncio.create_task(_normal(host, port)))
        await asyncio.sleep(NORMAL_EVERY_S)
    statuses = list(await asyncio.gather(*results))
    stop.set()
    await asyncio.wait_for(asyncio.gather(*slow_tasks, return_exceptions=True), 30)
    return statuses


def test_slow_uploads_from_many_addresses_cannot_fill_every_slot(upstream_url: str, tmp_path: Path) -> None:
    """Attack pass finding: 8,400 uploads from 140 addresses (60 each, under the per-address limit)
    filled all 8,192 request slots. Scaled down here (256 slots, 320 uploads from 10 addresses): once a
    quarter of the slots hold slow uploads, new and old ones must finish within 2 s."""
    env = proxy_env(upstream_url, tmp_path, PROXY_BACKPRESSURE="256")
    with run_proxy(env) as url:
        host, port = url.removeprefix("http://").split(":")
        statuses = asyncio.run(_spread_attack(host, int(port), addresses=10, per_address=32, hold_s=15))
        health = get_json(url + "/health")
    served = sum(1 for s in statuses if s == 200)
    assert served >= 0.95 * len(statuses), f"{served}/{len(statuses)} served; statuses {sorted(set(statuses))}"
    assert health["stats"]["slow_uploads"] < 256
