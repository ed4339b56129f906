"""Settings sweeps for docs/tuning.md: how each knob moves latency, throughput and durability.

    python -m bench.tuning [--seconds 5] [--rounds 2] [--only STORAGE_BATCH_SIZE,...] [--json out.json]

Same machinery as the overhead harness (bench/harness: pinned processes, the Rust mock upstream,
embedded PostgreSQL, wrk with the Claude Code corpus). One upstream and one database for the whole
sweep; a fresh `nexus proxy` per value, storage and linking on. For each value (medians over `--rounds`
interleaved passes): JSON latency at c=1 (p50, p99), requests/s and p99 at c=32, the proxy's CPU per
request, and what a crash would lose: the storage writer's queue (rows held only in memory), sampled
from /health during the c=32 phase.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from bench.harness.procs import descendants, pin_tree, plan_layout, postmaster_pid, proxy_command, server
from bench.harness.procs import upstream_command as upstream_cmd
from bench.harness.tools import Tools, build_loadgen
from bench.overhead import health, write_corpus
from nexus.storage.embedded import start_embedded

#: (setting, values, what it is for); the first value of each list is not necessarily the default.
SWEEPS: list[tuple[str, list[str]]] = [
    ("STORAGE_BATCH_SIZE", ["20", "200", "1000"]),
    ("STORAGE_BATCH_INTERVAL_MS", ["10", "50", "250"]),
    ("UPSTREAM_POOL_MAX_IDLE", ["0", "8", "256"]),
    ("PROXY_THREADS", ["1", "2"]),
    ("PROXY_WORKERS", ["1", "2"]),
]


def measure(tools: Tools, url: str, seconds: float) -> dict[str, Any]:
    lat = tools.wrk_run(url, connections=1, seconds=seconds)
    depths: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.25):
            try:
                depths.append(int((health(url).get("storage") or {}).get("queue_depth") or 0))
            except OSError:
                pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tp = tools.wrk_run(url, connections=32, seconds=seconds)
    stop.set()
    sampler.join(5)
    storage = health(url).get("storage") or {}
    return {
        "p50_c1_ms": lat["p50_ms"],
        "p99_c1_ms": lat["p99_ms"],
        "rps_c32": tp["rps"],
        "p99_c32_ms": tp["p99_ms"],
        "cpu_us": tp["meter"].cpu.get("proxy", 0.0) / max(1, tp["requests"]) * 1e6,
        "db_cpu_us": tp["meter"].cpu.get("database", 0.0) / max(1, tp["requests"]) * 1e6,
        "queue_mean": sum(depths) / len(depths) if depths else 0.0,
        "queue_max": max(depths, default=0),
        "last_flush_ms": float(storage.get("last_flush_ms") or 0.0),
        "errors": lat["non_2xx"] + lat["socket_errors"] + tp["non_2xx"] + tp["socket_errors"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--only", default="", help="comma-separated settings to sweep (default: all)")
    ap.add_argument("--rounds", type=int, default=2, help="passes over each sweep (medians are reported)")
    ap.add_argument("--json", dest="json_out", type=Path)
    args = ap.parse_args()
    sweeps = [(k, v) for k, v in SWEEPS if not args.only or k in args.only.split(",")]
    layout = plan_layout(1)
    print(f"layout: {layout.describe()} (PROXY_WORKERS=2 runs its workers on every CPU)", flush=True)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory(prefix="nexus-tuning-") as tmp:
        home = Path(tmp)
        corpus = write_corpus(home, 64)
        dsn, stop_db = start_embedded(home / "postgres")
        try:
            pm = postmaster_pid(home / "postgres")
            if pm is not None:
                pin_tree(pm, layout.database)
            cmd, health_path = upstream_cmd("mock", build_loadgen(), layout.upstream)
            with server(cmd, health_path) as up:
                for setting, values in sweeps:
                    for value in [v for _ in range(args.rounds) for v in values]:
                        workers = int(value) if setting == "PROXY_WORKERS" else 1
                        cpus = layout.proxy if workers == 1 else frozenset(os.sched_getaffinity(0))
                        px_cmd, px_env = proxy_command(cpus)
                        env = {
                            **px_env,
                            "CLAUDE_API_BASE_URL": up.url,
                            "DATABASE_URL": dsn,
                            "NEXUS_HOME": str(home / f"{setting}-{value}"),
                            setting: value,
                        }
                        with server(px_cmd, "/health", env=env) as px:

                            def groups(px: Any = px) -> dict[str, list[int]]:
                                return {"proxy": px.pids(), "database": [pm, *descendants(pm)] if pm else []}

                            tools = Tools(corpus, layout.loadgen, groups)
                            tools.wrk_run(px.url, connections=8, seconds=1)  # warm-up
                            r = measure(tools, px.url, args.seconds)
                        results.setdefault(setting, {}).setdefault(value, []).append(r)
                        print(f"{setting}={value}: {orjson.dumps(r).decode()}", flush=True)
                        time.sleep(0.5)
        finally:
            stop_db()
    print()
    for setting, by_value in results.items():
        print(f"### {setting}\n")
        print("| value | c=1 p50 | c=1 p99 | req/s c=32 | p99 c=32 | proxy CPU/req | rows in memory (mean / max) |")
        print("|---|---|---|---|---|---|---|")
        for value, runs in by_value.items():
            r = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
            print(
                f"| {value} | {r['p50_c1_ms']:.2f} ms | {r['p99_c1_ms']:.2f} ms | {r['rps_c32']:,.0f} | "
                f"{r['p99_c32_ms']:.1f} ms | {r['cpu_us']:.0f} us | {r['queue_mean']:.0f} / {r['queue_max']} |"
            )
        print()
    if args.json_out:
        args.json_out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
