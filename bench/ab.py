"""Same-run A/B of two builds of Nexus: the working tree against a git revision, rounds alternating.

    python -m bench.ab --base HEAD~1                       # 4 rounds of 8 s each, c=32, varied bodies
    python -m bench.ab --base main --connections 1 --rounds 6
    python -m bench.ab --base a7d988d --same-body --env STORAGE_SEARCH_ENABLED=false

This machine's noise moves `bench.targets` runs by more than most changes (the floor alone moved
175-229 us between runs), so a change is measured against its base in one run: both builds serve at
once on the proxy's core (one worker each, every setting at its default), wrk drives them in turn,
alternating the order each round, and the table gives each round's figures and the means. What is
counted per request: the worker tree's CPU (split by thread, so a change that moves work between the
event loop and the storage threads shows), its context switches, and requests/s and latency from wrk.

Each build has a database of its own on one PostgreSQL (the base's, `nexus_ab_base`, is dropped
and made anew on the server given, so point `--database-url` only at a server kept for benchmarks).
Two builds sharing one database would see each other through the solo lease
(nexus/conversations/lease.py) and both link shared, a transaction per request: the A/B would
measure shared linking instead of the default. So each side's /health must say `solo`, or the run
stops. Between rounds each side's write queue and spool are let drain,
so one side's backlog is not written on the other's time.

The base is checked out as a git worktree in a temporary directory. Its Rust core is the working
tree's build when `nexus_core/` and the Cargo files are the same at both (copied), else built with
cargo (release, its own target directory under bench/results/ab-target, kept between runs).
Results: printed, and bench/results/ab-<time>.json.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import psycopg.conninfo

from bench import traffic
from bench.harness.procs import Proc, _threads, descendants, memory_mib, pin_tree, plan_layout, proxy_command, server
from bench.harness.stack import bench_stack
from bench.harness.tools import Tools
from bench.overhead import RESULTS, health, write_corpus

ROOT = Path(__file__).resolve().parents[1]
#: The paths whose difference means the base needs its own Rust build.
CORE_PATHS = ("nexus_core", "Cargo.toml", "Cargo.lock")
SIDES = ("new", "base")
DRAIN_S = 60.0


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def _core_name() -> str:
    return "_core" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so")


@contextlib.contextmanager
def base_tree(revision: str) -> Iterator[Path]:
    """A worktree of `revision` with a Rust core that matches its sources, removed at the end."""
    sha = _git("rev-parse", "--verify", f"{revision}^{{commit}}")
    tmp = Path(tempfile.mkdtemp(prefix="nexus-ab-"))
    tree = tmp / "tree"
    _git("worktree", "add", "--detach", "-f", str(tree), sha)
    try:
        core = ROOT / "nexus" / _core_name()
        same = subprocess.run(["git", "diff", "--quiet", sha, "--", *CORE_PATHS], cwd=ROOT).returncode == 0
        if same and core.exists():
            shutil.copy2(core, tree / "nexus" / core.name)
        else:
            target = RESULTS / "ab-target"
            env = {**os.environ, "CARGO_TARGET_DIR": str(target), "PYO3_PYTHON": sys.executable}
            cmd = ["cargo", "build", "-q", "--release", "--features", "python", "-p", "nexus_core"]
            print(f"building the base's Rust core ({sha[:9]}) with cargo", flush=True)
            subprocess.run(cmd, cwd=tree, env=env, check=True)
            shutil.copy2(target / "release" / "libnexus_core.so", tree / "nexus" / core.name)
        yield tree
    finally:
        _git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(tmp, ignore_errors=True)


def thread_counts(pids: list[int]) -> tuple[collections.Counter[str], int]:
    """CPU seconds by thread and context switches, summed over `pids`' threads. A thread is named by
    its OS name and its rank by start among its process's threads of that name (`python*` is a
    worker's main thread: the event loop), so both builds' storage threads line up."""
    cpu: collections.Counter[str] = collections.Counter()
    switches = 0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        seen: collections.Counter[str] = collections.Counter()
        for tid in sorted(_threads(pid)):
            try:
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            if tid == pid:
                name += "*"
            else:
                seen[name] += 1
                name += f"-{seen[name]}"
            fields = stat[stat.rindex(")") + 2 :].split()
            cpu[name] += (int(fields[11]) + int(fields[12])) / tick
            switches += sum(int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line)
    return cpu, switches


def wait_drained(url: str) -> float:
    """Wait (up to DRAIN_S) until the side's write queue and spool are empty; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < DRAIN_S:
        storage = health(url).get("storage", {})
        if not storage.get("queue_depth") and not storage.get("spool_bytes"):
            break
        time.sleep(0.5)
    return time.monotonic() - started


def one_round(tools: Tools, proc: Proc, body: Path | None, connections: int, seconds: float) -> dict[str, Any]:
    pids = proc.pids()
    cpu0, cs0 = thread_counts(pids)
    if body is None:
        out = tools.wrk_run(proc.url, connections=connections, seconds=seconds)
    else:
        out = tools.wrk_same_body(proc.url, body, session="none", connections=connections, seconds=seconds)
    cpu1, cs1 = thread_counts(pids)
    n = max(1, out["requests"])
    threads = {k: (cpu1[k] - cpu0[k]) / n * 1e6 for k in cpu1 if cpu1[k] > cpu0[k]}
    return {
        "rps": out["rps"],
        "p50_ms": out["p50_ms"],
        "p99_ms": out["p99_ms"],
        "cpu_us": sum(threads.values()),
        "switches": (cs1 - cs0) / n,
        "errors": out["non_2xx"] + out["socket_errors"],
        "threads_us": dict(sorted(threads.items(), key=lambda kv: -kv[1])),
        "drain_s": wait_drained(proc.url),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    layout = plan_layout(1)
    print(f"layout: {layout.describe()} (both builds share the proxy's core)", flush=True)
    with tempfile.TemporaryDirectory(prefix="nexus-ab-home-") as tmp, base_tree(args.base) as tree:
        home = Path(tmp)
        corpus = write_corpus(home, args.sessions)
        body = home / "same-body.json"
        body.write_bytes(traffic.one_body(stream=False, seed=7))
        with bench_stack(args.database_url, home, layout) as stack, contextlib.ExitStack() as started:
            procs: dict[str, Proc] = {}
            for side, cwd in (("new", ROOT), ("base", tree)):
                dsn = stack.dsn
                if side == "base":
                    dsn = psycopg.conninfo.make_conninfo(stack.dsn, dbname="nexus_ab_base")
                    with psycopg.connect(stack.dsn, autocommit=True) as conn:
                        conn.execute("DROP DATABASE IF EXISTS nexus_ab_base")
                        conn.execute("CREATE DATABASE nexus_ab_base")
                env = {**stack.proxy_env(1, args.env), "DATABASE_URL": dsn, "NEXUS_HOME": str(home / side)}
                (home / side).mkdir()
                cmd, port_env = proxy_command(layout.proxy)
                with contextlib.chdir(cwd):  # `python -m nexus.cli` imports the tree it starts in
                    procs[side] = started.enter_context(
                        server(cmd, "/health", env={**env, **port_env, "PYTHONPATH": str(cwd)})
                    )
            if stack.postmaster is not None:
                pin_tree(stack.postmaster, layout.database)
            tools = Tools(corpus, layout.loadgen, lambda: {})
            for side in SIDES:  # warm-up: connections, caches, the linker's first entries
                tools.wrk_run(procs[side].url, connections=8, seconds=2)
                wait_drained(procs[side].url)
            for side in SIDES:
                linking = health(procs[side].url).get("linking", {})
                if not args.allow_shared and not linking.get("solo"):
                    raise SystemExit(f"the {side} build links shared, not solo: {linking}; not a fair A/B")
            rounds: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
            same = body if args.same_body else None
            for n in range(args.rounds):
                for side in SIDES if n % 2 == 0 else reversed(SIDES):
                    r = one_round(tools, procs[side], same, args.connections, args.seconds)
                    rounds[side].append(r)
                    print(_round_line(n, side, r), flush=True)
            peaks = {side: memory_mib(descendants(procs[side].proc.pid))[1] for side in SIDES}
            storage = {side: health(procs[side].url).get("storage", {}) for side in SIDES}
    return {"base": args.base, "rounds": rounds, "peak_mib": peaks, "storage": storage}


def _round_line(n: int, side: str, r: dict[str, Any]) -> str:
    top = ", ".join(f"{k}={v:.0f}" for k, v in list(r["threads_us"].items())[:5])
    return (
        f"round {n + 1} {side:4}: {r['rps']:7,.0f} req/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
        f"CPU {r['cpu_us']:.0f} us/req ({top})  switches {r['switches']:.2f}/req  errors {r['errors']}"
    )


def render(result: dict[str, Any]) -> str:
    def mean(side: str, key: str) -> float:
        return statistics.fmean(r[key] for r in result["rounds"][side])

    count = len(result["rounds"]["new"])
    lines = [f"| per request (means of {count} rounds) | new | base {result['base']} | new/base |"]
    lines.append("|---|---|---|---|")
    for key, label in (
        ("cpu_us", "worker CPU, us"),
        ("switches", "context switches"),
        ("rps", "req/s"),
        ("p50_ms", "p50, ms"),
        ("p99_ms", "p99, ms"),
    ):
        new, base = mean("new", key), mean("base", key)
        lines.append(f"| {label} | {new:,.2f} | {base:,.2f} | {new / base if base else float('nan'):.3f} |")
    pairs = zip(result["rounds"]["new"], result["rounds"]["base"], strict=True)
    lower = sum(a["cpu_us"] < b["cpu_us"] for a, b in pairs)
    peaks, spooled = result["peak_mib"], {side: result["storage"][side].get("spooled_rows", 0) for side in SIDES}
    lines.append(
        f"\nnew's CPU lower in {lower} of {count} rounds; worker peak RSS new {peaks['new']:.0f} MiB, "
        f"base {peaks['base']:.0f} MiB; rows spooled new {spooled['new']:,}, base {spooled['base']:,}"
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the git revision to compare the working tree with")
    ap.add_argument("--rounds", type=int, default=4, help="rounds per side, alternating (default 4)")
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each round (default 8)")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    ap.add_argument("--same-body", action="store_true", help="one ~50 KB body over and over, not varied ones")
    ap.add_argument("--sessions", type=int, default=40, help="corpus sessions (bench/traffic.py)")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="a setting for both builds")
    ap.add_argument(
        "--allow-shared",
        action="store_true",
        help="run even when a side links shared (when --env asks for it: LINK_SHARED=on)",
    )
    ap.add_argument("--database-url", help="a PostgreSQL to use instead of an embedded one")
    args = ap.parse_args()
    result = run(args)
    print(render(result))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"ab-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
