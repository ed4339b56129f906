"""A/B of the concurrency-1 latency between proxy settings, alternating rounds in one run.

The harness (`bench.overhead`) measures everything once; a p99 moved by a setting is easier to see by
alternating the variants a few times against the same upstream, database and corpus:

    python -m bench.latency_ab --variant base= --variant off=STORAGE_ENABLED=false [--rounds 3 --seconds 8]

Each `--variant NAME=K=V,K=V` starts its own proxy (pinned like the harness) for each round.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench import overhead
from bench.harness.phases import Side, latency
from bench.harness.procs import pin_tree, plan_layout, postmaster_pid, proxy_command, server, upstream_command
from bench.harness.tools import Tools, build_loadgen
from nexus.storage.embedded import start_embedded


def one_round(layout: Any, corpus: Any, env: dict[str, str], seconds: float) -> dict[str, Any]:
    """A fresh proxy with `env`, warmed up, then the concurrency-1 latency phase."""
    px_cmd, px_env = proxy_command(layout.proxy)
    with server(px_cmd, "/health", env={**env, **px_env}) as proxy:
        tools = Tools(corpus, layout.loadgen, lambda: {"proxy": proxy.pids()})
        latency(tools, Side("nexus", proxy.url), 2)
        return latency(tools, Side("nexus", proxy.url), seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", required=True, help="NAME=K=V,K=V (empty: defaults)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    variants = {}
    for spec in args.variant:
        name, _, env = spec.partition("=")
        variants[name] = dict(kv.split("=", 1) for kv in env.split(",") if kv)
    layout = plan_layout(1)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="nexus-ab-") as tmp:
        home = Path(tmp)
        corpus = overhead.write_corpus(home, 64)
        dsn, stop_db = start_embedded(home / "postgres")
        try:
            pm = postmaster_pid(home / "postgres")
            if pm is not None:
                pin_tree(pm, layout.database)
            up_cmd, up_health = upstream_command("mock", build_loadgen(), layout.upstream)
            with server(up_cmd, up_health) as upstream:
                base = {"CLAUDE_API_BASE_URL": upstream.url, "DATABASE_URL": dsn, "NEXUS_HOME": str(home)}
                for _ in range(args.rounds):
                    for name, extra in variants.items():
                        r = one_round(layout, corpus, {**base, **extra}, args.seconds)
                        results[name].append(r)
                        print(
                            f"{name:>10}: JSON p50 {r['json_p50_ms']:.3f} p99 {r['json_p99_ms']:.3f} ms | "
                            f"TTFB p50 {r['ttfb_p50_ms']:.3f} p99 {r['ttfb_p99_ms']:.3f} ms",
                            flush=True,
                        )
        finally:
            stop_db()
    for name, rs in results.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("json_p50_ms", "json_p99_ms", "ttfb_p99_ms")}
        print(f"median {name:>10}: JSON p50 {med['json_p50_ms']:.3f}  p99 {med['json_p99_ms']:.3f}  "
              f"TTFB p99 {med['ttfb_p99_ms']:.3f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
