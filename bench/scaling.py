"""Scaling out on one machine: 1, 2 and 4 proxy workers, and two instances sharing one PostgreSQL.

    python -m bench.scaling                     # ~3 min: every configuration, same run, same corpus
    python -m bench.scaling --seconds 5         # shorter phases

Each configuration is `nexus proxy` (storage and conversation linking on, as by default: with a
`DATABASE_URL`, `LINK_SHARED=auto`: a lone single-worker instance links in memory (the solo lease), more
workers or instances share their decisions through PostgreSQL; two rows set LINK_SHARED=off and =on to
show per-worker memory and always-shared decisions for one worker) in front of
the Rust mock upstream, measured with wrk on the Claude Code corpus of bench/traffic.py: JSON latency at
concurrency 1 (p50, p99) and throughput at concurrency 32 with the proxy's CPU per request; the
upstream direct is measured in the same run as the baseline. "Two instances" are two `nexus proxy`
processes, each with its own `NEXUS_HOME`, sharing only `DATABASE_URL`; the concurrency-32 load is split
between them (two wrk processes of 16 connections, their rates added). Nothing is pinned: with more
workers than cores the workers share them, which is the point of the table (what an operator gets by
raising `PROXY_WORKERS` on this machine). Results go to bench/results/scaling-<time>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.harness.procs import Proc, descendants, memory_mib, proxy_command, server, upstream_command
from bench.harness.tools import Tools, build_loadgen
from bench.overhead import RESULTS, health, stored_rows, versions, write_corpus
from nexus.auth.sealing import new_key
from nexus.storage.embedded import start_embedded

NONE: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Config:
    """One measured deployment: `instances` proxies of `workers` Granian workers each."""

    name: str
    instances: int
    workers: int
    env: tuple[tuple[str, str], ...] = ()


CONFIGS = (
    Config("1 worker, LINK_SHARED=off (one instance only)", 1, 1, (("LINK_SHARED", "off"),)),
    Config("1 worker, LINK_SHARED=on (always shared)", 1, 1, (("LINK_SHARED", "on"),)),
    Config("1 worker", 1, 1),  # auto: alone against its database, so solo
    Config("2 workers", 1, 2),
    Config("4 workers", 1, 4),
    Config("2 instances x 1 worker", 2, 1),
    Config("2 instances x 2 workers", 2, 2),
)


def measure(tools: Tools, urls: list[str], seconds: float) -> dict[str, Any]:
    """c=1 latency against the first URL, then c=32 split evenly over the URLs at once."""
    lat = tools.wrk_run(urls[0], connections=1, seconds=seconds)
    per = max(1, 32 // len(urls))
    with ThreadPoolExecutor(len(urls)) as pool:
        runs = list(pool.map(lambda u: tools.wrk_run(u, connections=per, seconds=seconds), urls))
    requests = sum(r["requests"] for r in runs)
    proxy_cpu = sum(r["meter"].cpu.get("proxy", 0.0) for r in runs[:1])  # one meter sees every group
    return {
        "p50_ms": lat["p50_ms"],
        "p99_ms": lat["p99_ms"],
        "rps": sum(r["rps"] for r in runs),
        "p99_c32_ms": max(r["p99_ms"] for r in runs),
        "errors": sum(r["non_2xx"] + r["socket_errors"] for r in runs) + lat["non_2xx"] + lat["socket_errors"],
        "proxy_cpu_us_per_request": proxy_cpu / max(1, requests) * 1e6,
        "foreign_cores": max(r["meter"].foreign for r in runs),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"configs": {}}
    with tempfile.TemporaryDirectory(prefix="nexus-scaling-") as tmp:
        home = Path(tmp)
        corpus = write_corpus(home, args.sessions)
        dsn = args.database_url or os.environ.get("NEXUS_BENCH_DATABASE_URL")
        stop_db = None
        if not dsn:
            dsn, stop_db = start_embedded(home / "postgres")
        try:
            loadgen = build_loadgen()
            up_cmd, up_health = upstream_command("mock", loadgen, NONE)
            secret = new_key()
            with server(up_cmd, up_health) as upstream:
                procs: list[Proc] = [upstream]
                tools = Tools(corpus, NONE, lambda: {"proxy": [p for x in procs[1:] for p in x.pids()]})
                tools.wrk_run(upstream.url, connections=8, seconds=2)
                print(f"[{time.strftime('%H:%M:%S')}] direct", flush=True)
                out["direct"] = measure(tools, [upstream.url], args.seconds)
                for config in CONFIGS:
                    if args.only and config.name not in args.only:
                        continue
                    print(f"[{time.strftime('%H:%M:%S')}] {config.name}", flush=True)
                    with ExitStack() as stack:
                        del procs[1:]
                        for i in range(config.instances):
                            env = {
                                "CLAUDE_API_BASE_URL": upstream.url,
                                "DATABASE_URL": dsn,
                                "NEXUS_HOME": str(home / f"instance-{i}"),
                                "STORAGE_ENABLED": "true",
                                "PROXY_WORKERS": str(config.workers),
                                "NEXUS_SECRET_KEY": secret,
                                **dict(config.env),
                            }
                            (home / f"instance-{i}").mkdir(exist_ok=True)
                            cmd, px_env = proxy_command(NONE)
                            procs.append(stack.enter_context(server(cmd, "/health", env={**env, **px_env})))
                        urls = [p.url for p in procs[1:]]
                        for url in urls:
                            tools.wrk_run(url, connections=8, seconds=2)
                        before = stored_rows(dsn)["rows"]
                        result = measure(tools, urls, args.seconds)
                        result["worker_peak_mib"] = max(memory_mib(descendants(p.proc.pid))[1] for p in procs[1:])
                        time.sleep(2)  # the writers' last batches
                        result["stored"] = stored_rows(dsn)["rows"] - before
                        result["storage"] = [health(u).get("storage", {}).get("state") for u in urls]
                        out["configs"][config.name] = result
        finally:
            if stop_db is not None:
                stop_db()
    return out


def render(r: dict[str, Any]) -> str:
    d = r["direct"]
    lines = [
        "| deployment | JSON p50 c=1 (ms) | p99 c=1 (ms) | req/s c=32 | vs 1 worker "
        "| proxy CPU/request (us) | errors |",
        "|---|---|---|---|---|---|---|",
        f"| upstream direct (baseline) | {d['p50_ms']:.2f} | {d['p99_ms']:.2f} | {d['rps']:,.0f} | | | {d['errors']} |",
    ]
    one = r["configs"].get("1 worker", {}).get("rps")
    for name, c in r["configs"].items():
        ratio = f"{c['rps'] / one:.2f}x" if one else "-"
        lines.append(
            f"| {name} | {c['p50_ms']:.2f} | {c['p99_ms']:.2f} | {c['rps']:,.0f} | {ratio} | "
            f"{c['proxy_cpu_us_per_request']:,.0f} | {c['errors']} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each measured phase")
    ap.add_argument("--sessions", type=int, default=64, help="Claude Code sessions in the corpus")
    ap.add_argument("--database-url", help="PostgreSQL to store into (default: NEXUS_BENCH_DATABASE_URL or embedded)")
    ap.add_argument("--only", action="append", default=[], help="only this configuration (repeatable)")
    ap.add_argument("--json", dest="json_out", type=Path, help="results file (default bench/results/...)")
    args = ap.parse_args()
    started = datetime.now(UTC)
    results = run(args)
    table = render(results)
    results.update(
        {
            "when": started.isoformat(),
            "versions": versions(),
            "command": " ".join(["python -m bench.scaling", *sys.argv[1:]]),
            "table": table,
        }
    )
    print(table)
    out = args.json_out or RESULTS / f"scaling-{started.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
