"""One table from a harness run: direct, Nexus, the difference, the issue's target, and what bound each
figure when it was not the proxy."""

from __future__ import annotations

from typing import Any

#: A proxied figure within this fraction of the direct one is bound by the upstream side, not the proxy.
BOUND_RATIO = 0.9
#: A CPU busier than this during a phase was full.
FULL = 0.93


def _bound(meter_direct: dict[str, Any] | None, meter_nexus: dict[str, Any], ratio: float | None) -> str:
    """Why a throughput-like figure stopped where it did."""
    notes = []
    if ratio is not None and ratio >= BOUND_RATIO:
        notes.append(f"upstream-bound ({ratio:.0%} of direct)")
    busy = {int(c): b for c, b in meter_nexus.get("cpu_busy", {}).items()}
    proxy_cpu = meter_nexus["cpu_s"].get("proxy", 0.0) / max(1e-9, meter_nexus["seconds"])
    if busy:
        full = [c for c, b in busy.items() if b >= FULL]
        if proxy_cpu >= FULL:
            notes.append(f"proxy core full ({proxy_cpu:.0%})")
        elif full:
            notes.append(f"cpu {','.join(map(str, full))} full, proxy at {proxy_cpu:.0%}: load tool/upstream side")
    foreign = meter_nexus.get("foreign_cores", 0.0)
    if foreign >= 0.15:
        notes.append(f"machine busy: {foreign:.2f} cores of other work")
    return "; ".join(notes)


def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def render(r: dict[str, Any]) -> str:
    ph = r["phases"]
    rows: list[tuple[str, str, str, str, str, str]] = []

    def add(label: str, d: float | None, n: float | None, delta: str, target: str = "", note: str = "") -> None:
        rows.append((label, _fmt(d), _fmt(n), delta, target, note))

    def check(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lat = ph["latency"]
    d, n = lat["direct"], lat["nexus"]
    for key, label, target in (
        ("json_p50_ms", "JSON latency p50, c=1 (ms)", 0.3),
        ("json_p99_ms", "JSON latency p99, c=1 (ms)", 1.5),
        ("ttfb_p50_ms", "stream TTFB p50, c=1 (ms)", None),
        ("ttfb_p99_ms", "stream TTFB p99, c=1 (ms)", None),
        ("ttft_p50_ms", "stream TTFT p50, c=1 (ms)", None),
        ("ttft_p99_ms", "stream TTFT p99, c=1 (ms)", None),
    ):
        added = n[key] - d[key]
        t = f"+{target:g}: {check(added <= target)}" if target is not None else ""
        note = _bound(None, n["meter_json" if key.startswith("json") else "meter_stream"], None)
        add(label, d[key], n[key], f"{added:+.3f}", t, note)
    for kind in ("json", "stream"):
        tp = ph[f"throughput_{kind}"]
        d, n = tp["direct"], tp["nexus"]
        ratio = n["rps"] / d["rps"] if d["rps"] else None
        target = f">=5,000: {check(n['rps'] >= 5000)}" if kind == "json" else ""
        add(
            f"{kind} req/s, c=32",
            d["rps"],
            n["rps"],
            f"{ratio:.2f}x" if ratio else "-",
            target,
            _bound(d["meter"], n["meter"], ratio),
        )
        add(f"{kind} p99 at c=32 (ms)", d["p99_ms"], n["p99_ms"], f"{n['p99_ms'] - d['p99_ms']:+.2f}")
    tp = ph["throughput_json"]["nexus"]
    add("proxy CPU per JSON request (us)", None, tp["cpu_us_per_request"].get("proxy"), "", "", "at c=32")
    tps = ph["throughput_stream"]["nexus"]
    add("proxy CPU per stream (us)", None, tps["cpu_us_per_request"].get("proxy"), "", "", "at c=32, unpaced")
    floor = ph.get("floor")
    if floor:
        fl, lt = floor["latency"], ph["latency"]
        for key, label in (("json_p50_ms", "JSON p50, c=1 (ms)"), ("json_p99_ms", "JSON p99, c=1 (ms)")):
            f, n = fl[key], lt["nexus"][key]
            add(f"floor: {label}", lt["direct"][key], f, f"nexus {n - f:+.3f} over floor", "", "bench/floor_proxy.py")
        for kind in ("json", "stream"):
            f, n = floor[f"throughput_{kind}"], ph[f"throughput_{kind}"]["nexus"]
            ratio = n["rps"] / f["rps"] if f["rps"] else 0.0
            cpu_f, cpu_n = f["cpu_us_per_request"].get("proxy", 0.0), n["cpu_us_per_request"].get("proxy", 0.0)
            note = f"proxy CPU/req floor {cpu_f:.0f} us, nexus {cpu_n:.0f} us"
            add(
                f"floor: {kind} req/s, c=32",
                ph[f"throughput_{kind}"]["direct"]["rps"],
                f["rps"],
                f"nexus {ratio:.2f}x",
                "",
                note,
            )
    fr = ph["frontier"]
    for key in ("p99_under_5ms", "p99_under_10ms", "p99_under_50ms"):
        d, n = fr["direct"].get(key, 0.0), fr["nexus"].get(key, 0.0)
        capped = " (ladder top: no rate failed)" if fr["nexus"].get(key + "_capped") else ""
        bound = " upstream-bound" if d and n >= BOUND_RATIO * d else ""
        label = "frontier, p99 < " + key.removeprefix("p99_under_").removesuffix("ms") + " ms (req/s)"
        add(label, d, n, f"{n / d:.2f}x" if d else "-", "", (bound + capped).strip())
    streams = ph["streams"]
    first = next(iter(streams.values()), None)
    if first:
        d, n = first["direct"], first["nexus"]
        for key, label in (("p50", "per-event gap p50"), ("p99", "per-event gap p99")):
            dv, nv = d["gap_us"][key] / 1000, n["gap_us"][key] / 1000
            add(f"{label}, {next(iter(streams))} streams (ms)", dv, nv, f"{nv - dv:+.3f}")
        dv, nv = d["ttft_us"]["p50"] / 1000, n["ttft_us"]["p50"] / 1000
        add(f"paced TTFT p50, {next(iter(streams))} streams (ms)", dv, nv, f"{nv - dv:+.3f}")
    for count, pair in streams.items():
        d, n = pair["direct"], pair["nexus"]
        lost = d["events_total"] - n["events_total"]  # the same requests, so the same events, both ways
        incomplete = int(count) - n["completed"]
        ok = n["stalls"] == 0 and lost == 0 and incomplete == 0 and n["failed"] == 0
        worst = n["max_gap_us"]["max"] / 1000
        per_event = n["meter"]["cpu_s"].get("proxy", 0.0) / max(1, n["events_total"]) * 1e6
        detail = (
            f"stalls {n['stalls']}, lost {lost}, incomplete {incomplete}, max gap {worst:.0f} ms, "
            f"{per_event:.0f} us proxy CPU/event"
        )
        direct_note = "" if d["stalls"] == 0 else f"direct also stalled ({d['stalls']}): upstream/loadgen-bound"
        rows.append(
            (
                f"{count} paced streams",
                f"stalls {d['stalls']}",
                detail,
                "",
                f"no stall: {check(ok)}",
                direct_note,
            )
        )
    mem = r["memory"]
    add("proxy worker peak RSS (MiB)", None, mem["worker_peak_mib"], "", f"<150: {check(mem['worker_peak_mib'] < 150)}")
    add("proxy tree peak RSS (MiB)", None, mem["tree_peak_mib"], "", "", "main process + workers")
    soak = r.get("soak")
    if soak:
        g = soak["worker_growth_mib_per_min"]
        samples = soak["samples"]
        add(
            f"soak {soak['minutes']:g} min @ {soak['rate']:g}/s: worker RSS growth (MiB/min)",
            None,
            g,
            f"{samples[0][2]:.0f} -> {samples[-1][2]:.0f} MiB" if samples else "",
            f"flat: {check(abs(g) < 0.5)}",
            f"recovered {soak['recovered_mib']:.0f} MiB (tree)",
        )
    st = r.get("storage") or {}
    h = st.get("health") or {}
    if h:
        stored = st.get("rows", 0)
        add(
            "stored rows / proxied requests",
            None,
            float(stored),
            f"of {st.get('proxied', {}).get('requests', 0):,}",
            "",
            f"dropped {h.get('dropped_rows')}, spooled {h.get('spooled_batches')}, queue {h.get('queue_depth')}",
        )
        if stored:
            add(
                "rows linked to a parent (%)",
                None,
                100.0 * st.get("with_parent", 0) / stored,
                f"{st.get('subtasks', 0):,} sub-agent",
                "",
                f"{st.get('conversations', 0):,} conversations",
            )
    widths = [max(len(row[i]) for row in [*rows, _HEAD]) for i in range(6)]
    lines = [
        f"nexus {r['versions']['nexus']} | python {r['versions']['python']} | granian {r['versions']['granian']} | "
        f"pyreqwest {r['versions']['pyreqwest']} | upstream {r['args']['upstream']} | {r['layout']}",
        "  ".join(h.ljust(w) for h, w in zip(_HEAD, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


_HEAD = ("metric", "direct", "nexus", "nexus vs direct", "target", "bound / note")


def render_same_body(r: dict[str, Any]) -> str:
    """`--same-body`: each kind of traffic through the proxy, its ratio to the varied bodies measured first
    in the same run and, for the one body, late (after it was sent many times) against early."""
    sb = r["phases"]["same_body"]
    base = sb["varied"]
    head = (
        f"{'traffic':<40} {'seen before':>11} {'p50 c=1':>8} {'x varied':>8} {'req/s c=32':>10} {'x varied':>8} "
        f"{'proxy us/req':>12} {'db us/req':>9} {'link work/req':>13} {'lookups':>7}"
    )
    lines = [f"one body of {r.get('same_body_bytes', 0):,} bytes; varied = the Claude Code corpus", head]

    def row(label: str, x: dict[str, Any]) -> None:
        cpu = x["cpu_us_per_request"]
        link = x.get("linking", {})
        work = link.get("entries_examined", 0) / max(1, x["requests"])
        seen = _fmt(x.get("seen_before"), 0)
        lines.append(
            f"{label:<40} {seen:>11} {x['p50_ms']:>8.3f} {x['p50_ms'] / base['p50_ms']:>7.2f}x "
            f"{x['rps']:>10,.0f} {x['rps'] / base['rps']:>7.2f}x {cpu.get('proxy', 0):>12,.0f} "
            f"{cpu.get('database', 0):>9,.0f} {work:>13,.1f} {_fmt(link.get('lookups'), 0):>7}"
        )
        note = _bound(None, x["meter_c32"], None)
        if note:
            lines.append(f"{'':<40} c=32: {note}")

    row("varied bodies", base)
    for key, label in (("fixed", "same body, one session"), ("fresh", "same body, new session each")):
        row(f"{label}: early", sb[key]["early"])
        row(f"{label}: late", sb[key]["late"])
        e, late = sb[key]["early"], sb[key]["late"]
        cpu = late["cpu_us_per_request"].get("proxy", 0) / max(1e-9, e["cpu_us_per_request"].get("proxy", 0))
        lines.append(
            f"{'':<40} late/early: p50 {late['p50_ms'] / e['p50_ms']:.2f}x, req/s {late['rps'] / e['rps']:.2f}x, "
            f"proxy CPU per request {cpu:.2f}x"
        )
    row("varied bodies again", sb["varied_after"])
    return "\n".join(lines)
