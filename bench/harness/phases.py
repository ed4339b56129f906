"""The measurements. Each runs against the upstream directly and through the proxy, back to back, so
the difference (or ratio) of the two is the proxy's cost measured under the same machine noise."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness.procs import Meter, memory_mib
from bench.harness.tools import Tools

#: A stall is a gap between two events longer than this many times the upstream's pacing.
STALL_FACTOR = 10
#: Reply length of the paced streams: 300 words, 100 deltas, ~106 events (~2.1 s at 20 ms pacing).
STREAM_TOKENS = 300
#: Streams start evenly over this many ms per stream (512 streams: over ~1 s, i.e. ~500 new streams a
#: second, harsher than Claude Code, whose streams last 5-60 s, so 512 at once start at <100 a second).
RAMP_MS_PER_STREAM = 2
FRONTIER_BOUNDS_MS = (5.0, 10.0, 50.0)


@dataclass(slots=True)
class Side:
    name: str  # "direct" or "nexus"
    url: str


def latency(tools: Tools, side: Side, seconds: float) -> dict[str, Any]:
    """Concurrency 1: JSON round trip (wrk), stream time to first byte and to first token (loadgen)."""
    j = tools.wrk_run(side.url, connections=1, seconds=seconds)
    s = tools.loadgen_run("closed", side.url, kind="stream", connections=1, duration=seconds, warmup=0.5)
    return {
        "json_p50_ms": j["p50_ms"],
        "json_p99_ms": j["p99_ms"],
        "json_errors": j["non_2xx"] + j["socket_errors"],
        "ttfb_p50_ms": s["ttfb_us"]["p50"] / 1000,
        "ttfb_p99_ms": s["ttfb_us"]["p99"] / 1000,
        "ttft_p50_ms": s["ttft_us"]["p50"] / 1000,
        "ttft_p99_ms": s["ttft_us"]["p99"] / 1000,
        "stream_errors": s["errors"] + s["non_2xx"],
        "meter_json": j["meter"].summary(),
        "meter_stream": s["meter"].summary(),
    }


def throughput(tools: Tools, side: Side, seconds: float, connections: int, *, stream: bool) -> dict[str, Any]:
    """Closed loop at `connections` (wrk): requests/s, p99, and CPU per request of each process group."""
    r = tools.wrk_run(side.url, connections=connections, seconds=seconds, stream=stream)
    meter: Meter = r["meter"]
    per_request = {k: v / max(1, r["requests"]) * 1e6 for k, v in meter.cpu.items()}
    return {
        "rps": r["rps"],
        "p50_ms": r["p50_ms"],
        "p99_ms": r["p99_ms"],
        "requests": r["requests"],
        "errors": r["non_2xx"] + r["socket_errors"],
        "cpu_us_per_request": per_request,
        "meter": meter.summary(),
    }


def _probe(tools: Tools, side: Side, rate: float, seconds: float) -> dict[str, Any]:
    r = tools.loadgen_run("open", side.url, rate=round(rate, 1), duration=seconds, warmup=0.5)
    r["meter"] = r["meter"].summary()
    r["passes"] = (
        r["errors"] == 0 and r["non_2xx"] == 0 and r["achieved_rps"] >= 0.97 * rate and r["latency_us"]["n"] > 0
    )
    return r


def frontier(tools: Tools, side: Side, ceiling: float, seconds: float, *, start: float = 50.0) -> dict[str, Any]:
    """Open loop: the highest offered rate whose p99 (counted from each request's scheduled time) stays
    under each bound. A ladder of rates x1.3 up to 1.25x the closed-loop ceiling, then two bisection
    steps per bound between the last rate that held and the first that did not: at most ~30 probes."""
    probes: dict[float, dict[str, Any]] = {}

    def ok(rate: float, bound_ms: float) -> bool:
        if rate not in probes:
            probes[rate] = _probe(tools, side, rate, seconds)
        p = probes[rate]
        return bool(p["passes"]) and p["latency_us"]["p99"] < bound_ms * 1000

    rate, ladder = start, []
    top = max(start, 1.25 * ceiling)
    while rate <= top and len(ladder) < 24:
        ladder.append(rate)
        if not ok(rate, max(FRONTIER_BOUNDS_MS)):
            break
        rate *= 1.3
    out: dict[str, Any] = {}
    for bound in FRONTIER_BOUNDS_MS:
        held = [r for r in ladder if ok(r, bound)]
        if not held:
            out[f"p99_under_{bound:g}ms"] = 0.0
            continue
        lo = max(held)
        above = [r for r in ladder if r > lo]
        if above:
            hi = min(above)
            for _ in range(2):
                mid = round((lo + hi) / 2, 1)
                if ok(mid, bound):
                    lo = mid
                else:
                    hi = mid
        out[f"p99_under_{bound:g}ms"] = lo
        out[f"p99_under_{bound:g}ms_capped"] = not above  # the ladder ended before any rate failed
    out["probes"] = [{"rate": k, **{x: v for x, v in p.items() if x != "ttft_us"}} for k, p in sorted(probes.items())]
    return out


def paced_streams(tools: Tools, side: Side, count: int, pacing_ms: float) -> dict[str, Any]:
    """`count` concurrent streams, events paced `pacing_ms` apart upstream, every event timestamped."""
    headers = [f"x-fake-scenario: event-delay:{pacing_ms:g}", f"x-fake-text-tokens: {STREAM_TOKENS}"]
    r = tools.loadgen_run(
        "streams",
        side.url,
        headers=headers,
        streams=count,
        ramp_ms=max(200, RAMP_MS_PER_STREAM * count),
        stall_ms=STALL_FACTOR * pacing_ms,
        timeout_s=120,
    )
    r["meter"] = r["meter"].summary()
    return r


@dataclass(slots=True)
class Soak:
    samples: list[tuple[float, float, float]]  # (seconds since start, tree RSS MiB, worker RSS MiB)
    load: dict[str, Any]
    idle_before: float
    recovered: float


def soak(
    tools: Tools,
    side: Side,
    pids: Callable[[], list[int]],
    worker_pids: Callable[[], list[int]],
    minutes: float,
    rate: float,
    every_s: float = 5.0,
) -> Soak:
    """Mixed traffic (80% streams) at `rate` for `minutes`, proxy RSS sampled every `every_s`."""
    idle_before = memory_mib(pids())[0]
    result: dict[str, Any] = {}
    seconds = minutes * 60

    def drive() -> None:
        r = tools.loadgen_run(
            "open", side.url, kind="all", rate=rate, duration=seconds, warmup=0, timeout_s=seconds + 300
        )
        r["meter"] = r["meter"].summary()
        result.update(r)

    t = threading.Thread(target=drive, name="soak-load", daemon=True)
    start = time.monotonic()
    t.start()
    samples = []
    while t.is_alive() and time.monotonic() - start < seconds + 300:
        samples.append((time.monotonic() - start, memory_mib(pids())[0], memory_mib(worker_pids())[0]))
        t.join(every_s)
    time.sleep(10)  # idle: what is given back
    return Soak(samples, result, idle_before, memory_mib(pids())[0])


def growth_mib_per_min(samples: list[tuple[float, float, float]], column: int = 1) -> float:
    """Least-squares slope of RSS over the second half of the soak (the first half is warm-up)."""
    half = [s for s in samples if s[0] >= samples[-1][0] / 2] if samples else []
    if len(half) < 3:
        return 0.0
    xs = [s[0] / 60 for s in half]
    ys = [s[column] for s in half]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def _c1_c32(
    run: Callable[[int, float, int], dict[str, Any]], seconds: tuple[float, float], limit: int
) -> dict[str, Any]:
    """Latency at concurrency 1 (ended after `limit` answers, 0: none, or `seconds[0]`) and throughput
    at 32 (for `seconds[1]`: wrk divides by its whole duration, so a count bound would understate it)
    of one kind of traffic, with CPU per request."""
    lat, thr = run(1, seconds[0], limit), run(32, seconds[1], 0)
    meter: Meter = thr["meter"]
    per_request = {k: v / max(1, thr["requests"]) * 1e6 for k, v in meter.cpu.items()}
    return {
        "p50_ms": lat["p50_ms"],
        "p99_ms": lat["p99_ms"],
        "rps": thr["rps"],
        "p99_ms_c32": thr["p99_ms"],
        "requests": lat["requests"] + thr["requests"],
        "errors": lat["non_2xx"] + lat["socket_errors"] + thr["non_2xx"] + thr["socket_errors"],
        "cpu_us_per_request": per_request,
        "meter_c1": lat["meter"].summary(),
        "meter_c32": meter.summary(),
    }


#: Answers in each same-body latency measurement (c=1), and the length of each throughput one (c=32):
#: short, so that "early" means after a few thousand sends of the body at most.
SAME_BODY_LIMIT = 500
SAME_BODY_C32_SECONDS = 3.0
LINKING_COUNTERS = ("entries_examined", "lookups", "lookups_skipped", "lookup_failures")


def same_body(
    tools: Tools,
    side: Side,
    bodies: tuple[Path, Path],
    seconds: float,
    prime: int,
    prime_seconds: float,
    linking: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    """Does a request cost more the more often its body was seen? Varied bodies (the corpus) first;
    then one ~50 KB body (another for each shape), measured at c=1 (`SAME_BODY_LIMIT` answers) and
    c=32 (`SAME_BODY_C32_SECONDS`) right after its first sends (`early`) and again once it was sent `prime` times
    (`late`; the sending is bounded by `prime_seconds` too), once from one session (every request a
    retry of the last) and once from a new session each time (no retry, so memory holds no evidence
    and the database is asked); varied bodies again at the end. `linking()` is the proxy's /health
    `linking` block (the linker's work per request)."""

    def measured(
        run: Callable[[int, float, int], dict[str, Any]], times: tuple[float, float], limit: int
    ) -> dict[str, Any]:
        before = linking()
        r = _c1_c32(run, times, limit)
        after = linking()
        r["linking"] = {k: after.get(k, 0) - before.get(k, 0) for k in LINKING_COUNTERS}
        return r

    def varied(connections: int, secs: float, limit: int) -> dict[str, Any]:
        return tools.wrk_run(side.url, connections=connections, seconds=secs)

    same_times = (seconds, min(seconds, SAME_BODY_C32_SECONDS))
    out: dict[str, Any] = {"varied": measured(varied, same_times, 0)}
    for session, body in zip(("fixed", "fresh"), bodies, strict=True):

        def same(
            connections: int, secs: float, limit: int, session: str = session, body: Path = body
        ) -> dict[str, Any]:
            return tools.wrk_same_body(
                side.url, body, session=session, connections=connections, seconds=secs, limit=limit
            )

        early = measured(same, same_times, SAME_BODY_LIMIT)
        left = prime - early["requests"]
        primed = {"requests": 0, "rps": 0.0}
        if left > 0:
            primed = tools.wrk_same_body(
                side.url, body, session=session, connections=8, seconds=prime_seconds, limit=left
            )
        late = measured(same, same_times, SAME_BODY_LIMIT)
        early["seen_before"] = 0
        late["seen_before"] = early["requests"] + primed["requests"]
        late["prime_rps"] = primed["rps"]
        out[session] = {"early": early, "late": late}
    out["varied_after"] = measured(varied, same_times, 0)
    return out
