"""The processes of a benchmark run: where each one is pinned, and what it costs (CPU, memory) from /proc.

On a machine with few cores the proxy gets a core of its own and everything else (fake upstream, load
generator, PostgreSQL) shares the rest, so a figure that hits a ceiling can be blamed on the right side:
per-CPU busy time (from /proc/stat) says whether the proxy's core or the other one was full.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.harness.servers import free_port, stop, wait_until_healthy

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class Layout:
    """Which CPUs each side runs on; empty sets mean no pinning (one CPU, or affinity not allowed)."""

    proxy: frozenset[int]
    upstream: frozenset[int]
    loadgen: frozenset[int]
    database: frozenset[int]

    def describe(self) -> str:
        if not self.proxy:
            return "not pinned (one CPU available)"
        names = {"proxy": self.proxy, "upstream": self.upstream, "load generator": self.loadgen}
        names["PostgreSQL"] = self.database
        groups: dict[frozenset[int], list[str]] = {}
        for name, cpus in names.items():
            groups.setdefault(cpus, []).append(name)
        return "; ".join(f"cpu {','.join(map(str, sorted(c)))}: {' + '.join(n)}" for c, n in groups.items())


def plan_layout(proxy_workers: int = 1) -> Layout:
    """One core per proxy worker, then upstream, load generator and database on what is left."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        empty: frozenset[int] = frozenset()
        return Layout(empty, empty, empty, empty)
    n_proxy = max(1, min(proxy_workers, len(cpus) - 1))
    proxy, rest = frozenset(cpus[-n_proxy:]), cpus[:-n_proxy]
    if len(rest) >= 3:
        return Layout(proxy, frozenset({rest[0]}), frozenset({rest[1]}), frozenset(rest[2:]))
    if len(rest) == 2:
        return Layout(proxy, frozenset({rest[0]}), frozenset({rest[1]}), frozenset({rest[1]}))
    one = frozenset(rest)
    return Layout(proxy, one, one, one)


def pinned(cmd: Sequence[str], cpus: frozenset[int]) -> list[str]:
    """`cmd` run on `cpus` (through taskset, so children and threads inherit the mask)."""
    if not cpus:
        return list(cmd)
    return ["taskset", "-c", ",".join(map(str, sorted(cpus))), *cmd]


def pin_tree(root: int, cpus: frozenset[int]) -> None:
    """Pin a running process, its threads and its children (e.g. a PostgreSQL postmaster and backends)."""
    if not cpus:
        return
    for pid in [root, *descendants(root)]:
        for tid in _threads(pid):
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU of the processes (all their threads) and of their children that have exited
    (e.g. PostgreSQL backends that closed), in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / CLK_TCK


def memory_mib(pids: Sequence[int]) -> tuple[float, float]:
    """(current RSS, peak RSS) summed over the processes, MiB."""
    rss = hwm = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for key, value in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.M):
            if key == "VmRSS":
                rss += int(value)
            else:
                hwm += int(value)
    return rss / 1024, hwm / 1024


def cpu_busy() -> dict[int, float]:
    """Busy jiffies per CPU since boot (everything but idle and iowait), from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *vals = line.split()
            v = [int(x) for x in vals]
            out[int(name[3:])] = float(sum(v) - v[3] - v[4])
    return out


class Meter:
    """CPU used over one measured phase: by each of our process groups (proxy, upstream, database), by
    the load tool (a waited-for child of this process), by each CPU, and by everything else on the
    machine (`foreign`: other people's work, the noise in every figure)."""

    def __init__(self, groups: Mapping[str, Sequence[int]]) -> None:
        self.groups = {k: list(v) for k, v in groups.items()}
        self.started = time.monotonic()
        self.cpu0 = {k: cpu_seconds(v) for k, v in self.groups.items()}
        self.child0 = _children_cpu()
        self.busy0 = cpu_busy()
        self.seconds = 0.0
        self.cpu: dict[str, float] = {}
        self.busy: dict[int, float] = {}
        self.foreign = 0.0

    def stop(self) -> Meter:
        self.seconds = max(1e-6, time.monotonic() - self.started)
        self.cpu = {k: cpu_seconds(v) - self.cpu0[k] for k, v in self.groups.items()}
        self.cpu["loadgen"] = _children_cpu() - self.child0
        now = cpu_busy()
        self.busy = {c: (now[c] - self.busy0.get(c, 0.0)) / CLK_TCK / self.seconds for c in now}
        self.foreign = max(0.0, sum(self.busy.values()) - sum(self.cpu.values()) / self.seconds)
        return self

    def summary(self) -> dict[str, object]:
        return {
            "seconds": round(self.seconds, 3),
            "cpu_s": {k: round(v, 3) for k, v in self.cpu.items()},
            "cpu_busy": {str(c): round(b, 3) for c, b in self.busy.items()},
            "foreign_cores": round(self.foreign, 3),
        }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(slots=True)
class Proc:
    """A started server: its process, URL and every pid of its tree (Granian workers included)."""

    proc: subprocess.Popen[bytes]
    url: str

    def pids(self) -> list[int]:
        return [self.proc.pid, *descendants(self.proc.pid)]


@contextmanager
def server(cmd: Sequence[str], health_path: str, *, env: Mapping[str, str] | None = None) -> Iterator[Proc]:
    """Start `cmd` (already holding its `--port`), wait for `health_path` to answer 200, stop it at the end."""
    proc = subprocess.Popen(list(cmd), env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        url = _url_of(cmd, env)
        wait_until_healthy(url + health_path, proc, timeout_s=60)
        yield Proc(proc, url)
    finally:
        stop(proc)


def _url_of(cmd: Sequence[str], env: Mapping[str, str] | None) -> str:
    if "--port" in cmd:
        return f"http://127.0.0.1:{cmd[list(cmd).index('--port') + 1]}"
    return f"http://127.0.0.1:{(env or {})['PORT']}"


def upstream_command(kind: str, loadgen: Path, cpus: frozenset[int]) -> tuple[list[str], str]:
    """The command line of the upstream (`fake`: the project's Python fake; `mock`: the Rust mock)."""
    port = free_port()
    if kind == "mock":
        return pinned([str(loadgen), "upstream", "--port", str(port)], cpus), "/health"
    cmd = [sys.executable, "-m", "nexus.fake_upstream", "--port", str(port), "--no-record-bodies"]
    return pinned(cmd, cpus), "/_fake/health"


def proxy_command(cpus: frozenset[int]) -> tuple[list[str], dict[str, str]]:
    port = free_port()
    return pinned([sys.executable, "-m", "nexus.cli", "proxy"], cpus), {"HOST": "127.0.0.1", "PORT": str(port)}


def postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def floor_command(upstream_url: str, cpus: frozenset[int]) -> tuple[list[str], dict[str, str]]:
    """The stack's floor (bench/floor_proxy.py under Granian RSGI) forwarding to `upstream_url`: the
    command line (holding its `--port`) and its environment."""
    cmd = [sys.executable, "-m", "granian", "--interface", "rsgi", "--loop", "uvloop", "--log-level", "warning"]
    cmd = pinned([*cmd, "--port", str(free_port()), "bench.floor_proxy:app"], cpus)
    return cmd, {"FLOOR_UPSTREAM": upstream_url, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


@contextmanager
def bench_database(dsn: str | None, directory: Path, cpus: frozenset[int]) -> Iterator[tuple[str, int | None]]:
    """The benchmark's PostgreSQL: `dsn` (or NEXUS_BENCH_DATABASE_URL) as given, else an embedded one in
    `directory` pinned to `cpus`; yields its URL and, when embedded, its postmaster's pid (to meter it,
    and to pin the backends forked later)."""
    from nexus.storage.embedded import start_embedded

    dsn = dsn or os.environ.get("NEXUS_BENCH_DATABASE_URL")
    if dsn:
        yield dsn, None
        return
    dsn, stop_db = start_embedded(directory)
    try:
        pm = postmaster_pid(directory)
        if pm is not None:
            pin_tree(pm, cpus)
        yield dsn, pm
    finally:
        stop_db()
