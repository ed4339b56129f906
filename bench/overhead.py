"""The overhead harness: the upstream directly and through Nexus, same run, same load tools, one table.

    python -m bench.overhead                      # full run (~25 min with the default 10-minute soak)
    python -m bench.overhead --quick              # short phases, 1-minute soak (~6 min), for development
    make bench                                    # installs the bench extras, then the full run

It starts PostgreSQL (embedded, or `NEXUS_BENCH_DATABASE_URL` / `--database-url`), the upstream (the
Rust mock of bench/loadgen by default; `--upstream fake` for the project's Python fake, whose ~4k req/s
ceiling on one core here would bind every throughput figure), and `nexus proxy` with storage on (and
whatever the proxy turns on by default, e.g. conversation linking), each pinned to its CPUs (see the
printed layout), then measures, direct and through the proxy:

  * added latency at concurrency 1 (p50, p99): JSON (wrk) and stream time to first byte / first token;
  * throughput at concurrency 32 (wrk), JSON and unpaced streams, and the proxy's CPU per request;
  * the frontier: the highest open-loop rate whose p99 stays under 5, 10, 50 ms (bench/loadgen);
  * 64/256/512 concurrent streams paced 20 ms apart upstream: stalls (a gap > 10x the pacing), lost
    events, the per-event gap, time to first token;
  * proxy peak RSS, and RSS over a `--soak-minutes` soak of mixed traffic (growth MiB/min).

`--same-body` measures instead whether a request costs more the more often its body was seen: varied
bodies, then one ~50 KB body sent `--same-body-count` times (from one session, then from a new session
each time) and measured at c=1 and c=32, then varied bodies again, all through the proxy in one run.

Every figure is marked when it is bound by the upstream, the load generator or the machine rather
than the proxy (within 10% of the direct figure, or the shared core full). Results go to
bench/results/overhead-<time>.json. wrk comes from Debian (installed when missing and run as root);
bench/loadgen is built with cargo on first use (its own workspace, not part of `make test`).
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg

from bench import traffic
from bench.harness import phases, report
from bench.harness.phases import Side
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
from bench.harness.tools import Corpus, Tools
from nexus import __version__

RESULTS = Path(__file__).resolve().parent / "results"


def write_corpus(directory: Path, sessions: int) -> Corpus:
    """The same sessions three times: all JSON, all streams, and mixed (80% streams) for the soak."""
    paths = {name: directory / f"corpus-{name}.txt" for name in ("json", "stream", "mixed")}
    for name, share in (("json", 0.0), ("stream", 1.0), ("mixed", 0.8)):
        traffic.write_corpus(paths[name], traffic.corpus(sessions, stream_share=share))
    headers = directory / "headers.txt"
    headers.write_text("".join(f"{k}: {v}\n" for k, v in traffic.corpus_headers().items()))
    return Corpus(paths["json"], paths["stream"], paths["mixed"], headers)


def health(url: str) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(url + "/health", timeout=10) as resp:  # noqa: S310 (loopback)
        return orjson.loads(resp.read())


def stored_rows(dsn: str) -> dict[str, int]:
    """Rows stored, and how many the linker tied to a parent or to the sub-agent call that spawned them."""
    sql = (
        "SELECT count(*), count(parent_request_id), count(*) FILTER (WHERE is_subtask), "
        "count(DISTINCT conversation_id) FROM api_requests"
    )
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return {"rows": int(row[0]), "with_parent": int(row[1]), "subtasks": int(row[2]), "conversations": int(row[3])}


def versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {"nexus": __version__, "python": platform.python_version(), "kernel": platform.release()}
    for dist in ("granian", "pyreqwest", "psycopg", "uvloop", "orjson"):
        try:
            out[dist] = version(dist)
        except Exception:
            out[dist] = "?"
    try:
        out["wrk"] = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split(" [")[0]
    except OSError:
        out["wrk"] = "?"
    try:
        out["cpu"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        out["cpu"] = platform.processor()
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    layout = plan_layout(args.workers)
    print(f"layout: {layout.describe()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="nexus-bench-") as tmp:
        home = Path(tmp)
        corpus = write_corpus(home, args.sessions)
        print(f"corpus: {args.sessions} Claude Code sessions, bodies 40-60 KiB, in {home}", flush=True)
        with bench_stack(args.database_url, home, layout, args.upstream) as stack:
            env = {
                **stack.proxy_env(args.workers),
                "STORAGE_ENABLED": "true",
                **dict(kv.split("=", 1) for kv in args.env),
            }
            px_cmd, px_env = proxy_command(layout.proxy)
            with server(px_cmd, "/health", env={**env, **px_env}) as proxy:
                if stack.postmaster is not None:
                    pin_tree(stack.postmaster, layout.database)  # backends forked since the first pinning
                return measure(args, layout, corpus, stack.upstream, proxy, stack.postmaster, stack.dsn)


def measure(
    args: argparse.Namespace,
    layout: Any,
    corpus: Corpus,
    upstream: Proc,
    proxy: Proc,
    postmaster: int | None,
    dsn: str,
) -> dict[str, Any]:
    def groups() -> dict[str, list[int]]:
        g = {"proxy": proxy.pids(), "upstream": upstream.pids()}
        if postmaster is not None:
            g["database"] = [postmaster, *descendants(postmaster)]
        return g

    tools = Tools(corpus, layout.loadgen, groups)
    direct, nexus = Side("direct", upstream.url), Side("nexus", proxy.url)
    sides = (direct, nexus)
    out: dict[str, Any] = {"layout": layout.describe(), "phases": {}}
    ph = out["phases"]

    def step(name: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)

    step("warm-up")
    for side in sides:
        tools.wrk_run(side.url, connections=8, seconds=2)
        tools.wrk_run(side.url, connections=8, seconds=1, stream=True)
    if args.same_body:
        bodies = (corpus.headers.parent / "same-body-1.json", corpus.headers.parent / "same-body-2.json")
        for seed, path in enumerate(bodies, 7):
            path.write_bytes(traffic.one_body(stream=False, seed=seed))
        out["same_body_bytes"] = bodies[0].stat().st_size
        step(f"same body: varied, then one body {args.same_body_count:,} times (one session, then new sessions)")
        ph["same_body"] = phases.same_body(
            tools,
            nexus,
            bodies,
            args.seconds,
            args.same_body_count,
            args.same_body_seconds,
            lambda: health(proxy.url).get("linking", {}),
        )
        step("storage check")
        time.sleep(2)
        out["storage"] = {"health": health(proxy.url).get("storage"), **stored_rows(dsn)}
        return out
    step("latency at concurrency 1")
    ph["latency"] = {s.name: phases.latency(tools, s, args.seconds) for s in sides}
    step("throughput at concurrency 32")
    ph["throughput_json"] = {s.name: phases.throughput(tools, s, args.seconds, 32, stream=False) for s in sides}
    ph["throughput_stream"] = {s.name: phases.throughput(tools, s, args.seconds, 32, stream=True) for s in sides}
    if args.floor:
        step("the stack's floor (bench/floor_proxy.py) at c=1 and c=32")
        floor_cmd, floor_env = floor_command(upstream.url, layout.proxy)
        with server(floor_cmd, "/health", env=floor_env) as fl:
            floor_tools = Tools(corpus, layout.loadgen, lambda: {"proxy": fl.pids(), "upstream": upstream.pids()})
            fside = Side("floor", fl.url)
            floor_tools.wrk_run(fl.url, connections=8, seconds=2)
            ph["floor"] = {
                "latency": phases.latency(floor_tools, fside, args.seconds),
                "throughput_json": phases.throughput(floor_tools, fside, args.seconds, 32, stream=False),
                "throughput_stream": phases.throughput(floor_tools, fside, args.seconds, 32, stream=True),
            }
    step("frontier (open loop)")
    ph["frontier"] = {
        s.name: phases.frontier(tools, s, ph["throughput_json"][s.name]["rps"], args.frontier_seconds) for s in sides
    }
    step("paced streams")
    ph["streams"] = {}
    for count in args.streams:
        ph["streams"][str(count)] = {s.name: phases.paced_streams(tools, s, count, args.pacing_ms) for s in sides}
    rss, hwm = memory_mib(proxy.pids())
    worker_peak = memory_mib(descendants(proxy.proc.pid))[1]
    out["memory"] = {"rss_mib": rss, "worker_peak_mib": worker_peak, "tree_peak_mib": hwm}
    if args.soak_minutes > 0:
        # a steady load the proxy can carry: half its frontier at p99 < 50 ms, unless given
        frontier_50 = ph["frontier"]["nexus"].get("p99_under_50ms", 0.0)
        rate = args.soak_rate or max(50.0, round(frontier_50 / 2, -1))
        step(f"soak: {args.soak_minutes:g} min of mixed traffic at {rate:g} req/s")
        soak = phases.soak(
            tools,
            nexus,
            proxy.pids,
            lambda: descendants(proxy.proc.pid),
            args.soak_minutes,
            rate,
        )
        out["soak"] = {
            "rate": rate,
            "minutes": args.soak_minutes,
            "idle_before_mib": soak.idle_before,
            "samples": soak.samples,
            "growth_mib_per_min": phases.growth_mib_per_min(soak.samples),
            "worker_growth_mib_per_min": phases.growth_mib_per_min(soak.samples, column=2),
            "recovered_mib": soak.recovered,
            "load": soak.load,
        }
        out["memory"]["worker_peak_mib"] = memory_mib(descendants(proxy.proc.pid))[1]
        out["memory"]["tree_peak_mib"] = memory_mib(proxy.pids())[1]
    step("storage check")
    time.sleep(2)  # the writer's last batch
    h = health(proxy.url)
    out["storage"] = {"health": h.get("storage"), **stored_rows(dsn), "proxied": h.get("stats", {})}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", choices=("mock", "fake"), default="mock", help="upstream to measure against")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each closed-loop phase")
    ap.add_argument("--frontier-seconds", type=float, default=3.0, help="length of each open-loop probe")
    ap.add_argument("--streams", default="64,256,512", help="concurrent paced stream counts")
    ap.add_argument("--pacing-ms", type=float, default=20.0, help="upstream pacing between stream events")
    ap.add_argument("--soak-minutes", type=float, default=10.0)
    ap.add_argument(
        "--soak-rate", type=float, default=0.0, help="soak req/s, 80%% streams (default: half the frontier)"
    )
    ap.add_argument(
        "--sessions", type=int, default=64, help="Claude Code sessions in the corpus (more than the concurrency)"
    )
    ap.add_argument("--workers", type=int, default=1, help="PROXY_WORKERS")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra proxy setting")
    ap.add_argument("--database-url", help="PostgreSQL to store into (default: NEXUS_BENCH_DATABASE_URL or embedded)")
    ap.add_argument("--quick", action="store_true", help="short phases and a 1-minute soak (development)")
    ap.add_argument(
        "--floor", action="store_true", help="also measure the stack's floor (bench/floor_proxy.py) at c=1 and c=32"
    )
    ap.add_argument(
        "--same-body",
        action="store_true",
        help="only compare one body sent over and over with varied bodies (c=1 latency, c=32 throughput)",
    )
    ap.add_argument("--same-body-count", type=int, default=20_000, help="times the body is sent before measuring")
    ap.add_argument("--same-body-seconds", type=float, default=120.0, help="time bound of sending it that often")
    ap.add_argument("--json", dest="json_out", type=Path, help="results file (default bench/results/...)")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.frontier_seconds = min(args.seconds, 4.0), min(args.frontier_seconds, 2.0)
        args.soak_minutes = min(args.soak_minutes, 1.0)
    args.streams = [int(x) for x in str(args.streams).split(",") if x]
    started = datetime.now(UTC)
    results = run(args)
    results.update(
        {
            "when": started.isoformat(),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "versions": versions(),
            "command": " ".join(["python -m bench.overhead", *sys.argv[1:]]),
        }
    )
    table = report.render_same_body(results) if args.same_body else report.render(results)
    print(table)
    results["table"] = table
    name = "same-body" if args.same_body else "overhead"
    out = args.json_out or RESULTS / f"{name}-{started.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
