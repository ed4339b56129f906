"""Where a proxy worker's memory is: one worker under bench/targets.py's load, its mappings by owner.

    python -m bench.memprobe [--seconds 10] [--env KEY=VALUE ...]

Starts PostgreSQL, the Rust mock upstream and `nexus proxy` (one worker, storage and linking on) like
bench/targets.py, then drives the varied Claude Code corpus at c=32 for `--seconds` and prints the
worker's /proc/PID/smaps split by owner: idle, at the highest sampled resident size, right after the
load and 3 s later, with its threads and its peak (VmHWM). The owner of each anonymous mapping comes
from `mmaplog.c` (built with `cc` into a temporary directory and LD_PRELOADed: it logs the library that
called each anonymous mmap, so Granian's jemalloc, pyreqwest's mimalloc and CPython's object arenas are
told apart; what it never sees is glibc's: its mmapped chunks, its other arenas, thread stacks).
`site/sitecustomize.py` samples glibc's mallinfo2 and malloc_info inside the worker. Findings:
docs/storage.md, "Memory". Results are printed only.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness.procs import (
    descendants,
    memory_mib,
    plan_layout,
    proxy_command,
    server,
)
from bench.harness.stack import bench_stack
from bench.harness.tools import Tools
from bench.overhead import health, write_corpus

HERE = Path(__file__).resolve().parent
MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")


def build_shim(directory: Path) -> Path | None:
    """mmaplog.so, or None without a C compiler (owners are then 'anonymous')."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    out = directory / "mmaplog.so"
    done = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(out), str(HERE / "mmaplog.c"), "-ldl"], check=False)
    return out if done.returncode == 0 else None


def owner_of(probe: Path, pid: int) -> Callable[[int], str]:
    """Who mapped the anonymous memory at an address: the last logged mmap covering it (the parent's
    log first: a forked worker inherits its parent's mappings)."""
    entries: list[tuple[int, int, str]] = []
    ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    for log in (probe / f"{ppid}.mmap", probe / f"{pid}.mmap"):
        if log.exists():
            for line in log.read_text().splitlines():
                addr, length, lib = line.split(" ", 2)
                entries.append((int(addr, 16), int(length), lib))

    def owner(lo: int) -> str:
        for addr, length, lib in reversed(entries):
            if addr <= lo < addr + length:
                return lib.split(".cpython")[0]
        return "glibc (mmapped chunks, arenas) or stacks"

    return owner


def by_owner(pid: int, owner: Callable[[int], str]) -> dict[str, float]:
    """Resident MiB per owner: file-backed pages, [heap], [stack], or the anonymous mapping's owner."""
    sizes: collections.Counter[str] = collections.Counter()
    current = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if MAPPING.match(line):
            parts = line.split(None, 5)
            path = parts[5] if len(parts) > 5 else ""
            lo = int(parts[0].split("-")[0], 16)
            current = "file-backed" if path.startswith("/") else path or owner(lo)
        elif line.startswith("Rss:"):
            sizes[current] += int(line.split()[1]) / 1024
    return {k: round(v, 1) for k, v in sizes.most_common() if v >= 0.1}


def threads(pid: int) -> dict[str, int]:
    names: collections.Counter[str] = collections.Counter()
    for tid in Path(f"/proc/{pid}/task").iterdir():
        try:
            names[(tid / "comm").read_text().strip()] += 1
        except OSError:
            pass
    return dict(names)


def show(label: str, pid: int, probe: Path) -> None:
    rss, hwm = memory_mib([pid])
    print(f"== {label}: resident {rss:.0f} MiB (peak {hwm:.0f}); threads {threads(pid)}")
    for name, mib in by_owner(pid, owner_of(probe, pid)).items():
        print(f"   {mib:6.1f} MiB  {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the c=32 load")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra Nexus environment")
    args = ap.parse_args()
    layout = plan_layout(1)
    with tempfile.TemporaryDirectory(prefix="nexus-memprobe-") as tmp:
        home = Path(tmp)
        corpus = write_corpus(home, 64)
        probe = home / "probe"
        probe.mkdir()
        shim = build_shim(home)
        with bench_stack(None, home, layout) as stack:
            env = {
                **stack.proxy_env(1),
                "NEXUS_MEMPROBE": str(probe),
                "PYTHONPATH": str(HERE / "site"),
                **({"LD_PRELOAD": str(shim), "MMAPLOG_DIR": str(probe)} if shim else {}),
                **dict(kv.split("=", 1) for kv in args.env),
            }
            px_cmd, px_env = proxy_command(layout.proxy)
            with server(px_cmd, "/health", env={**env, **px_env}) as nexus:
                time.sleep(2)
                worker = max(descendants(nexus.proc.pid), key=lambda pid: memory_mib([pid])[0])
                show("idle worker", worker, probe)
                highest: dict[str, Any] = {"rss": 0.0, "owners": {}}
                stop = threading.Event()

                def sample() -> None:
                    while not stop.wait(0.2):
                        try:
                            rss = memory_mib([worker])[0]
                            if rss > highest["rss"]:
                                highest.update(rss=rss, owners=by_owner(worker, owner_of(probe, worker)))
                        except (OSError, ValueError):
                            pass

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                tools = Tools(corpus, layout.loadgen, lambda: {"proxy": nexus.pids()})
                tools.wrk_run(nexus.url, connections=8, seconds=2)
                r = tools.wrk_run(nexus.url, connections=32, seconds=args.seconds)
                stop.set()
                sampler.join()
                cpu_us = r["meter"].cpu.get("proxy", 0.0) / max(1, r["requests"]) * 1e6
                busy = r["meter"].foreign
                print(f"load: {r['rps']:.0f} req/s, {cpu_us:.0f} us CPU a request, other work {busy:.2f} cores")
                print(f"== highest sampled resident size: {highest['rss']:.0f} MiB")
                for name, mib in highest["owners"].items():
                    print(f"   {mib:6.1f} MiB  {name}")
                show("right after the load", worker, probe)
                time.sleep(3)
                show("3 s later", worker, probe)
                st = health(nexus.url).get("storage", {})
                print(
                    "storage:",
                    {k: st.get(k) for k in ("rows_written", "queue_depth", "overflow_rows", "spooled_batches")},
                )
                for log in sorted(probe.glob(f"{worker}.mallinfo")):
                    lines = log.read_text().splitlines()
                    most = max(lines, key=lambda line: int(re.search(r"arena=(\d+)", line).group(1)))
                    print(f"glibc at its largest: {most.split(' ', 1)[1]}; last: {lines[-1].split(' ', 1)[1]}")
                xml = probe / f"{worker}.malloc_info.xml"
                if xml.exists():
                    tail = re.findall(r'<total type="mmap" count="(\d+)" size="(\d+)"/>', xml.read_text())
                    if tail:
                        count, size = tail[-1]
                        print(f"glibc's mmapped chunks at its largest: {count}, {int(size) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
