"""Memory of a running proxy under Claude Code traffic, to size a container's requests and limits.

Sends generated Claude Code sessions (bench/traffic.py: ~20-60 KiB bodies, 80% streams, every pass
new conversations, so the linker's index and the writer fill as in production) at a fixed
concurrency to any proxy URL, and samples the resident memory of a process tree every second: the
proxy's main process on this machine, or a container's from the host (`podman inspect --format
'{{.State.Pid}}'`, which is tini, the tree's root). Prints one JSON line per sample and a summary.

    python -m bench.container_memory --url http://127.0.0.1:3000 --pid 12345 --requests 20000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from pyreqwest.client import ClientBuilder

from bench.traffic import TOKEN, corpus, corpus_headers


def tree_rss_mib(root: int) -> tuple[float, dict[int, float]]:
    """Resident memory of `root` and all its descendants, MiB (total, per pid)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    per_pid: dict[int, float] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    per_pid[pid] = int(line.split()[1]) / 1024
        except OSError:
            continue
        todo.extend(children.get(pid, []))
    return sum(per_pid.values()), per_pid


async def drive(url: str, total: int, concurrency: int, sessions: int) -> tuple[int, int, float]:
    requests = corpus(sessions)
    headers = corpus_headers() | {"x-api-key": "sk-ant-api03-memory-bench", "content-type": "application/json"}
    sent = errors = 0
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=concurrency * 2)

    async def feed() -> None:
        while True:
            token = secrets.token_hex(3).encode()  # a new pass: new conversations, same shapes
            for req in requests:
                await queue.put(req.body.replace(TOKEN.encode(), token))

    async def worker(client: Any) -> None:
        nonlocal sent, errors
        while sent < total:
            body = await queue.get()
            sent += 1
            req = client.post(url + "/v1/messages?beta=true").headers(list(headers.items())).body_bytes(body)
            try:
                async with req.build_streamed() as resp:
                    await resp.bytes()
                    errors += resp.status != 200
            except Exception:
                errors += 1

    started = time.monotonic()
    feeder = asyncio.create_task(feed())
    async with ClientBuilder().timeout(timedelta(seconds=60)).build() as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    feeder.cancel()
    return sent, errors, time.monotonic() - started


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--pid", type=int, required=True, help="root of the process tree to measure")
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--sessions", type=int, default=48, help="sessions per pass of the generated corpus")
    args = ap.parse_args()

    samples: list[float] = []
    idle, _ = tree_rss_mib(args.pid)

    async def sample() -> None:
        while True:
            total, per_pid = tree_rss_mib(args.pid)
            samples.append(total)
            print(json.dumps({"t": round(time.monotonic(), 1), "tree_mib": round(total, 1),
                              "largest_mib": round(max(per_pid.values(), default=0), 1)}), flush=True)  # fmt: skip
            await asyncio.sleep(1)

    sampler = asyncio.create_task(sample())
    sent, errors, seconds = await drive(args.url, args.requests, args.concurrency, args.sessions)
    sampler.cancel()
    after, per_pid = tree_rss_mib(args.pid)
    summary = {
        "requests": sent,
        "errors": errors,
        "req_per_s": round(sent / seconds),
        "concurrency": args.concurrency,
        "idle_tree_mib": round(idle, 1),
        "peak_tree_mib": round(max(samples, default=after), 1),
        "after_tree_mib": round(after, 1),
        "per_process_mib_after": {pid: round(v, 1) for pid, v in sorted(per_pid.items())},
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
