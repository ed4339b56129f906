"""What shared linking costs per request: the proxy with `LINK_SHARED=off` (each worker links from its
own memory), `auto` (with one worker: alone against the database, so decided in memory and written in
batches, the solo lease; with two: shared once the second worker starts) and `on` (every decision read
from and written to PostgreSQL), in the same run, rounds alternating off/auto/on so the machine's noise
falls on all, and the upstream directly as the floor.

    python -m bench.linking_shared                   # 1 and 2 workers, 2 rounds, 5 s phases (~6 min)
    python -m bench.linking_shared --workers 1 --rounds 1 --seconds 3

Per proxy: added latency at concurrency 1 (wrk, Claude Code bodies of the overhead corpus, p50 and
p99), requests/s at concurrency 32, and CPU per request of the proxy and of PostgreSQL (which does
the shared work). Same harness, layout and corpus as `bench.overhead`; results to
bench/results/linking-shared-<time>.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.harness.phases import Side
from bench.harness.procs import descendants, pin_tree, plan_layout, postmaster_pid, proxy_command, server
from bench.harness.procs import upstream_command as upstream_cmd
from bench.harness.tools import Tools, build_loadgen
from bench.overhead import RESULTS, health, write_corpus
from nexus.storage.embedded import start_embedded


def measure(tools: Tools, url: str, seconds: float) -> dict[str, Any]:
    tools.wrk_run(url, connections=8, seconds=2)  # warm-up: connections, pools, prepared statements
    c1 = tools.wrk_run(url, connections=1, seconds=seconds)
    c32 = tools.wrk_run(url, connections=32, seconds=seconds)
    cpu = {k: v / max(1, c32["requests"]) * 1e6 for k, v in c32["meter"].cpu.items()}
    return {
        "c1_p50_ms": c1["p50_ms"],
        "c1_p99_ms": c1["p99_ms"],
        "c32_rps": c32["rps"],
        "c32_p99_ms": c32["p99_ms"],
        "errors": c1["non_2xx"] + c1["socket_errors"] + c32["non_2xx"] + c32["socket_errors"],
        "cpu_us_per_request": cpu,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"when": datetime.now(UTC).isoformat(), "seconds": args.seconds, "runs": []}
    with tempfile.TemporaryDirectory(prefix="nexus-bench-link-") as tmp:
        home = Path(tmp)
        corpus = write_corpus(home, args.sessions)
        dsn, stop_db = start_embedded(home / "postgres")
        try:
            pm = postmaster_pid(home / "postgres")
            loadgen = build_loadgen()
            for workers in [int(w) for w in args.workers.split(",")]:
                layout = plan_layout(workers)
                if pm is not None:
                    pin_tree(pm, layout.database)
                up_cmd, up_health = upstream_cmd("mock", loadgen, layout.upstream)
                with server(up_cmd, up_health) as upstream:
                    for rnd in range(args.rounds):
                        for mode in args.modes.split(","):
                            env = {
                                "CLAUDE_API_BASE_URL": upstream.url,
                                "DATABASE_URL": dsn,
                                "NEXUS_HOME": str(home),
                                "PROXY_WORKERS": str(workers),
                                "LINK_SHARED": mode,
                            }
                            px_cmd, px_env = proxy_command(layout.proxy)
                            with server(px_cmd, "/health", env={**env, **px_env}) as proxy:

                                def groups(proxy: Any = proxy) -> dict[str, list[int]]:
                                    g = {"proxy": proxy.pids(), "upstream": upstream.pids()}
                                    if pm is not None:
                                        g["database"] = [pm, *descendants(pm)]
                                    return g

                                tools = Tools(corpus, layout.loadgen, groups)
                                measured = {r["mode"] for r in out["runs"] if r["workers"] == workers}
                                if "direct" not in measured:
                                    direct = measure(tools, Side("direct", upstream.url).url, args.seconds)
                                    out["runs"].append({"workers": workers, "mode": "direct", "round": 0, **direct})
                                r = measure(tools, proxy.url, args.seconds)
                                r["linking"] = health(proxy.url).get("linking")
                                out["runs"].append({"workers": workers, "mode": mode, "round": rnd, **r})
                                print(
                                    f"[{time.strftime('%H:%M:%S')}] workers={workers} round={rnd} {mode}: "
                                    f"c1 p50 {r['c1_p50_ms']:.2f} ms p99 {r['c1_p99_ms']:.2f} ms, "
                                    f"c32 {r['c32_rps']:.0f} req/s, cpu/req {r['cpu_us_per_request']}",
                                    flush=True,
                                )
        finally:
            stop_db()
    out["summary"] = summary(out["runs"])
    return out


def summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per worker count: medians over rounds of each mode, and their ratios to off."""
    rows = []
    for workers in sorted({r["workers"] for r in runs}):

        def med(mode: str, key: str, sub: str | None = None, w: int = workers) -> float:
            vals = [(r[key].get(sub, 0.0) if sub else r[key]) for r in runs if r["workers"] == w and r["mode"] == mode]
            return statistics.median(vals) if vals else float("nan")

        modes = [m for m in ("off", "auto", "on") if any(r["mode"] == m for r in runs)]
        row: dict[str, Any] = {"workers": workers}
        for key in ("c1_p50_ms", "c1_p99_ms", "c32_rps"):
            row[key] = {m: med(m, key) for m in ("direct", *modes)}
            for m in modes[1:]:
                row[key][f"{m}_over_off"] = row[key][m] / row[key]["off"]
        for group in ("proxy", "database"):
            row[f"cpu_{group}_us"] = {m: med(m, "cpu_us_per_request", group) for m in modes}
        solo = [r["linking"].get("solo") for r in runs if r["workers"] == workers and r["mode"] == "auto"]
        row["auto_solo"] = solo  # per round: whether /health said the proxy decided alone
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="1,2", help="PROXY_WORKERS values, comma-separated")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of every mode per worker count")
    ap.add_argument("--modes", default="off,auto,on", help="LINK_SHARED values, in round order")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each measured phase")
    ap.add_argument("--sessions", type=int, default=64, help="Claude Code sessions in the corpus")
    ap.add_argument("--json", dest="json_out", type=Path)
    args = ap.parse_args()
    result = run(args)
    RESULTS.mkdir(exist_ok=True)
    path = args.json_out or RESULTS / f"linking-shared-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(result["summary"], option=orjson.OPT_INDENT_2).decode())
    print(f"results: {path}")


if __name__ == "__main__":
    main()
