"""Conversation linking cost per request, and the in-memory index's memory.

Bodies are real Claude Code 2.1 requests from tests/fixtures/claude_code, grown to the wanted size by
repeating their tool loop (the shape of a long session). For each size it times, in one run:
the Rust analysis (split + checks + prefix hashes, what the proxy calls once per request), the linker's
decision and registration on a warm index, and the pure-Python reference analysis for comparison.
Memory: the resident size a fresh process gains filling a `LinkIndex` with 100,000 linked requests
(and, of that, what tracemalloc sees in Python).

    python -m bench.linking [--sizes-kb 50,1024] [--repeat 200] [--index 100000] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from nexus._core import analyze_request
from nexus.conversations.index import LinkIndex
from nexus.conversations.linker import Linker, LinkRequest
from nexus.conversations.service import link_request
from tests.oracles.linking import analyze_request as reference_analyze

FIXTURE = Path(__file__).parent.parent / "tests" / "fixtures" / "claude_code" / "tool_loop" / "0005-messages.json"


def body_of_size(target: int) -> bytes:
    """The fixture's request with its tool loop repeated (fresh ids) until the body reaches `target` bytes."""
    base = orjson.loads(FIXTURE.read_bytes())["body"]
    loop = [m for m in base["messages"][2:] if m["role"] in ("assistant", "user")][:4] or base["messages"][-2:]
    body = copy.deepcopy(base)
    n = 0
    while len(orjson.dumps(body)) < target:
        n += 1
        for m in copy.deepcopy(loop):
            if isinstance(m["content"], list):
                for block in m["content"]:
                    for field in ("id", "tool_use_id"):
                        if field in block:
                            block[field] = f"{block[field]}_{n}"
            body["messages"].append(m)
    return orjson.dumps(body)


def timed(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1000)
    samples.sort()
    return {"p50_us": statistics.median(samples), "p99_us": samples[int(len(samples) * 0.99) - 1]}


def measure_size(size_kb: int, repeat: int) -> dict[str, Any]:
    body = body_of_size(size_kb * 1024)
    headers = {"x-claude-code-session-id": "bench"}
    linker = Linker(LinkIndex(1_000_000))
    analysis = analyze_request(body)
    # a warm index: the parent of this request (its history minus the last two messages) is known
    parent_body = orjson.loads(body)
    parent_body["messages"] = parent_body["messages"][:-2]
    parent = link_request("00000000-0000-7000-8000-000000000001", "p", 1.0, "/v1/messages", headers,
                          analyze_request(orjson.dumps(parent_body)))  # fmt: skip
    linker.register(parent, linker.decide(parent))
    counter = iter(range(10**9))

    # decisions only: registered, each repeat of the same body would be a retry of the one before
    # rather than the prefix match measured here
    def link() -> None:
        req = link_request(f"00000000-0000-7000-9000-{next(counter):012d}", "p", 2.0, "/v1/messages", headers, analysis)
        linker.decide(req)

    def analyze_and_link() -> None:
        a = analyze_request(body)
        req = link_request(f"00000000-0000-7000-a000-{next(counter):012d}", "p", 2.0, "/v1/messages", headers, a)
        linker.decide(req)

    decided = linker.decide(link_request("x", "p", 2.0, "/v1/messages", headers, analysis))
    assert decided.evidence in ("prefix", "retry"), decided
    reference_repeat = max(3, repeat // 20)
    return {
        "body_bytes": len(body),
        "messages": analysis.message_count,
        "rust_analysis": timed(lambda: analyze_request(body), repeat),
        "link_decision": timed(link, repeat),
        "analysis_and_link": timed(analyze_and_link, repeat),
        "python_reference_analysis": timed(lambda: reference_analyze(body), reference_repeat),
    }


def measure_index(entries: int) -> dict[str, float]:
    """What `entries` linked requests add to the resident size of a fresh process (the index is held
    in Rust since the tenth session: tracemalloc sees only its Python part, also reported)."""
    out = subprocess.run(
        [sys.executable, "-c", f"from bench.linking import _fill_index; _fill_index({int(entries)})"],
        capture_output=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    return orjson.loads(out.stdout)


def _fill_index(entries: int) -> None:
    """In a process of its own: fill an index of `entries` with 10-turn conversations (one hash per
    request, a parent for most, UUIDv7-shaped ids as the proxy's) and print what it cost."""
    linker = Linker(LinkIndex(entries))
    reqs = []
    for i in range(entries):
        conversation, turn = divmod(i, 10)
        hashes = b"".join(f"{conversation:08d}{t:08d}".encode() for t in range(turn + 1))
        reqs.append(LinkRequest(f"{i:08x}-0000-7000-8000-{i:012x}", "project-a", float(i), "main", hashes,
                                f"session-{conversation}"))  # fmt: skip
    gc.collect()
    tracemalloc.start()
    before, rss_before = tracemalloc.take_snapshot(), _rss()
    for req in reqs:
        linker.register(req, linker.decide(req))
    gc.collect()
    after, rss_after = tracemalloc.take_snapshot(), _rss()
    tracemalloc.stop()
    python = sum(s.size_diff for s in after.compare_to(before, "filename"))
    total = rss_after - rss_before
    print(orjson.dumps({"entries": entries, "bytes_total": total, "bytes_per_request": total / entries,
                        "python_bytes_per_request": python / entries}).decode())  # fmt: skip


def _rss() -> int:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-kb", default="50,1024")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--index", type=int, default=100_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {"sizes": {}, "index": measure_index(args.index)}
    print(f"{'body':>9} {'msgs':>5} {'rust analysis':>15} {'link decision':>15} {'both':>15} {'python ref':>15}")
    for kb in (int(x) for x in args.sizes_kb.split(",")):
        r = results["sizes"][kb] = measure_size(kb, args.repeat)
        cells = [r[k] for k in ("rust_analysis", "link_decision", "analysis_and_link", "python_reference_analysis")]
        row = " ".join(f"{c['p50_us']:>8.1f}/{c['p99_us']:<6.0f}" for c in cells)
        print(f"{r['body_bytes'] / 1024:>7.0f}KB {r['messages']:>5} {row}   (p50/p99 µs)")
    idx = results["index"]
    print(f"index: {idx['entries']:,} requests use {idx['bytes_total'] / 2**20:.1f} MiB resident "
          f"({idx['bytes_per_request']:.0f} B per request, "
          f"{idx['python_bytes_per_request']:.0f} of them Python objects)")  # fmt: skip
    if args.json:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
