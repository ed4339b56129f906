"""Issue 13's targets in one run: Nexus beside the stack's floor, on the same core, varied and same bodies.

    python -m bench.targets                       # 2 alternating rounds of 6 s phases (~5 min)
    python -m bench.targets --rounds 3 --seconds 10 --database-url postgresql://...

It starts PostgreSQL (embedded, or `--database-url` / `NEXUS_BENCH_DATABASE_URL`), the Rust mock
upstream of bench/loadgen, `nexus proxy` (one worker by default, storage and conversation linking on,
every other setting at its default: what a user who points `DATABASE_URL` at a PostgreSQL gets) and
`bench/floor_proxy.py` (Granian RSGI + pyreqwest: read, forward, reply) pinned to the same core, and
drives each in turn with wrk from the other core, rounds alternating (floor, Nexus, floor, Nexus...) so
both see the same machine noise:

  * varied bodies (the Claude Code corpus of bench/traffic.py, a new token per pass): c=1 p50/p99 for
    `--seconds`, c=32 requests/s and CPU per request of the serving process tree;
  * one ~50 KB Claude Code body sent over and over, no session header (a quota probe, a health prompt,
    a retry storm, a load test): the same measurements.

The table compares the medians over rounds with the issue's targets: proxy CPU per varied request at
most 2x the floor's (stretch 1.3x), same-body throughput at least 0.9x varied, added latency at c=1 at
most +0.15 ms (p50) and +1 ms (p99) over the floor, the worker's peak RSS under 150 MiB. The soak
(flat memory over 30 minutes) is `python -m bench.overhead --soak-minutes 30`. Results go to
bench/results/targets-<time>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg

from bench import traffic
from bench.harness.procs import (
    Proc,
    descendants,
    floor_command,
    memory_mib,
    pin_tree,
    plan_layout,
    proxy_command,
    server,
)
from bench.harness.stack import bench_stack
from bench.harness.tools import Tools
from bench.overhead import RESULTS, health, stored_rows, versions, write_corpus

#: The issue's targets (docs: bench/README.md, "Issue 13's targets").
CPU_RATIO, CPU_STRETCH, SAME_RATIO = 2.0, 1.3, 0.9
ADDED_P50_MS, ADDED_P99_MS, PEAK_MIB = 0.15, 1.0, 150.0
SIDES = ("floor", "nexus")


def measure_side(tools: Tools, url: str, body: Path, seconds: float) -> dict[str, float]:
    """One round of one side: varied and same body, c=1 latency and c=32 throughput with CPU/request."""
    out: dict[str, float] = {}
    runs = {
        "varied": lambda c, s: tools.wrk_run(url, connections=c, seconds=s),
        "same": lambda c, s: tools.wrk_same_body(url, body, session="none", connections=c, seconds=s),
    }
    for kind, run in runs.items():
        lat = run(1, seconds)
        thr = run(32, seconds)
        cpu = thr["meter"].cpu.get("proxy", 0.0)
        out[f"{kind}_p50_ms"] = lat["p50_ms"]
        out[f"{kind}_p99_ms"] = lat["p99_ms"]
        out[f"{kind}_rps"] = thr["rps"]
        out[f"{kind}_cpu_us"] = cpu / max(1, thr["requests"]) * 1e6
        out[f"{kind}_errors"] = lat["non_2xx"] + lat["socket_errors"] + thr["non_2xx"] + thr["socket_errors"]
        out[f"{kind}_busy"] = thr["meter"].foreign
    return out


class Watch:
    """Nexus's write queue, sampled while it is measured: rows waiting in memory are most of what its
    memory peak can grow by, and a queue that keeps growing means the writer does not keep up."""

    def __init__(self, proc: Proc) -> None:
        self.proc, self.max_queue = proc, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                depth = int(health(self.proc.url).get("storage", {}).get("queue_depth", 0))
            except Exception:  # noqa: S112 (a busy proxy may not answer in time; the next sample will)
                continue
            self.max_queue = max(self.max_queue, depth)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run(args: argparse.Namespace) -> dict[str, Any]:
    layout = plan_layout(1)
    print(f"layout: {layout.describe()} (the floor shares the proxy's core)", flush=True)
    with tempfile.TemporaryDirectory(prefix="nexus-targets-") as tmp:
        home = Path(tmp)
        corpus = write_corpus(home, args.sessions)
        body = home / "same-body.json"
        body.write_bytes(traffic.one_body(stream=False, seed=7))
        with bench_stack(args.database_url, home, layout) as stack:
            env = stack.proxy_env(args.workers, args.env)
            px_cmd, px_env = proxy_command(layout.proxy)
            floor_cmd, floor_env = floor_command(stack.upstream.url, layout.proxy)
            with (
                server(px_cmd, "/health", env={**env, **px_env}) as nexus,
                server(floor_cmd, "/health", env=floor_env) as floor,
            ):
                if stack.postmaster is not None:
                    pin_tree(stack.postmaster, layout.database)
                procs = {"floor": floor, "nexus": nexus}
                return measure(args, layout, corpus, body, procs, stack.upstream, stack.postmaster, stack.dsn)


def measure(
    args: argparse.Namespace,
    layout: Any,
    corpus: Any,
    body: Path,
    procs: dict[str, Proc],
    upstream: Proc,
    postmaster: int | None,
    dsn: str,
) -> dict[str, Any]:
    def tools_for(name: str) -> Tools:
        def groups() -> dict[str, list[int]]:
            g = {"proxy": procs[name].pids(), "upstream": upstream.pids()}
            if postmaster is not None:
                g["database"] = [postmaster, *descendants(postmaster)]
            return g

        return Tools(corpus, layout.loadgen, groups)

    tools = {name: tools_for(name) for name in SIDES}
    watch = Watch(procs["nexus"])
    for name in SIDES:  # warm-up: connections, caches, the linker's first entries
        tools[name].wrk_run(procs[name].url, connections=8, seconds=2)
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in SIDES}
    for n in range(args.rounds):
        for name in SIDES if n % 2 == 0 else reversed(SIDES):
            print(f"[{time.strftime('%H:%M:%S')}] round {n + 1}: {name}", flush=True)
            rounds[name].append(measure_side(tools[name], procs[name].url, body, args.seconds))
    median = {name: {k: statistics.median(r[k] for r in rounds[name]) for k in rounds[name][0]} for name in SIDES}
    watch.stop()
    worker_peak = memory_mib(descendants(procs["nexus"].proc.pid))[1]
    floor_peak = memory_mib(descendants(procs["floor"].proc.pid))[1]
    time.sleep(2)  # the writer's last batch
    h = health(procs["nexus"].url)
    return {
        "rounds": rounds,
        "median": median,
        "memory": {"nexus_worker_peak_mib": worker_peak, "floor_worker_peak_mib": floor_peak},
        "max_queue_depth": watch.max_queue,
        "linking": h.get("linking", {}),
        "storage": {"health": h.get("storage"), **_stored(dsn), "proxied": h.get("stats", {})},
    }


def _stored(dsn: str) -> dict[str, int]:
    """Rows stored (none, without a schema: `--env STORAGE_ENABLED=false` never migrates)."""
    try:
        return stored_rows(dsn)
    except psycopg.errors.UndefinedTable:
        return {"rows": 0, "with_parent": 0, "subtasks": 0, "conversations": 0}


def render(r: dict[str, Any]) -> str:
    f, x = r["median"]["floor"], r["median"]["nexus"]
    peak = r["memory"]["nexus_worker_peak_mib"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    cpu_ratio = x["varied_cpu_us"] / max(1e-9, f["varied_cpu_us"])
    same_ratio = x["same_rps"] / max(1e-9, x["varied_rps"])
    added50 = x["varied_p50_ms"] - f["varied_p50_ms"]
    added99 = x["varied_p99_ms"] - f["varied_p99_ms"]
    rows = [
        ("| metric | floor | nexus | nexus vs floor | target |", ""),
        ("|---|---|---|---|---|", ""),
        (
            f"| proxy CPU per request, varied, c=32 | {f['varied_cpu_us']:.0f} us | {x['varied_cpu_us']:.0f} us "
            f"| {cpu_ratio:.2f}x | <= {CPU_RATIO:g}x: {verdict(cpu_ratio <= CPU_RATIO)} "
            f"(stretch {CPU_STRETCH:g}x: {verdict(cpu_ratio <= CPU_STRETCH)}) |",
            "",
        ),
        (
            f"| proxy CPU per request, same body, c=32 | {f['same_cpu_us']:.0f} us | {x['same_cpu_us']:.0f} us "
            f"| {x['same_cpu_us'] / max(1e-9, f['same_cpu_us']):.2f}x | |",
            "",
        ),
        (
            f"| req/s, varied, c=32 | {f['varied_rps']:,.0f} | {x['varied_rps']:,.0f} "
            f"| {x['varied_rps'] / max(1e-9, f['varied_rps']):.2f}x | |",
            "",
        ),
        (
            f"| req/s, same body, c=32 | {f['same_rps']:,.0f} | {x['same_rps']:,.0f} "
            f"| same/varied {same_ratio:.2f}x (floor {f['same_rps'] / max(1e-9, f['varied_rps']):.2f}x) "
            f"| >= {SAME_RATIO:g}x varied: {verdict(same_ratio >= SAME_RATIO)} |",
            "",
        ),
        (
            f"| latency p50, varied, c=1 | {f['varied_p50_ms']:.3f} ms | {x['varied_p50_ms']:.3f} ms "
            f"| +{added50:.3f} ms | <= +{ADDED_P50_MS:g} ms: {verdict(added50 <= ADDED_P50_MS)} |",
            "",
        ),
        (
            f"| latency p99, varied, c=1 | {f['varied_p99_ms']:.3f} ms | {x['varied_p99_ms']:.3f} ms "
            f"| +{added99:.3f} ms | <= +{ADDED_P99_MS:g} ms: {verdict(added99 <= ADDED_P99_MS)} |",
            "",
        ),
        (
            f"| latency p50 / p99, same body, c=1 | {f['same_p50_ms']:.3f} / {f['same_p99_ms']:.3f} ms "
            f"| {x['same_p50_ms']:.3f} / {x['same_p99_ms']:.3f} ms "
            f"| +{x['same_p50_ms'] - f['same_p50_ms']:.3f} / +{x['same_p99_ms'] - f['same_p99_ms']:.3f} ms | |",
            "",
        ),
        (
            f"| worker peak RSS | {r['memory']['floor_worker_peak_mib']:.0f} MiB | {peak:.0f} MiB | "
            f"| < {PEAK_MIB:g} MiB: {verdict(peak < PEAK_MIB)} |",
            "",
        ),
    ]
    st = r["storage"]
    errors = sum(v for k, v in x.items() if k.endswith("_errors")) + sum(
        v for k, v in f.items() if k.endswith("_errors")
    )
    busy = max(v for k, v in {**x, **f}.items() if k.endswith("_busy"))
    tail = (
        f"\nrows stored {st['rows']:,} (linked to a parent {st['with_parent']:,}); error answers {errors:g}; "
        f"most rows waiting in the write queue {r['max_queue_depth']:,}; "
        f"{_past_the_bound(st.get('health') or {})}"
        f"other work on the machine up to {busy:.2f} cores during a phase; "
        f"linking: {', '.join(f'{k}={v}' for k, v in sorted(r['linking'].items()) if k.startswith(('shared', 'solo')))}"
    )
    return "\n".join(line for line, _ in rows) + tail


def _past_the_bound(h: dict[str, Any]) -> str:
    """What the writer did with rows past STORAGE_MAX_QUEUE_BYTES: encoded early (kept in memory), spooled."""
    encoded, spooled = h.get("overflow_encoded_rows", 0), h.get("spooled_rows", 0)
    return f"rows encoded early (past the queue's byte bound) {encoded:,}, spooled {spooled:,}; "


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0, help="length of each c=1 and c=32 phase")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per side (medians are reported)")
    ap.add_argument("--sessions", type=int, default=64, help="Claude Code sessions in the varied corpus")
    ap.add_argument("--workers", type=int, default=1, help="PROXY_WORKERS of Nexus")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra Nexus setting")
    ap.add_argument("--database-url", help="PostgreSQL to store into (default: NEXUS_BENCH_DATABASE_URL or embedded)")
    ap.add_argument("--json", dest="json_out", type=Path, help="results file (default bench/results/...)")
    args = ap.parse_args()
    started = datetime.now(UTC)
    results = run(args)
    results.update(
        {
            "when": started.isoformat(),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "versions": versions(),
            "command": " ".join(["python -m bench.targets", *sys.argv[1:]]),
        }
    )
    table = render(results)
    print(table)
    results["table"] = table
    out = args.json_out or RESULTS / f"targets-{started.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
