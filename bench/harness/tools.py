"""The load tools: wrk (Debian) for closed-loop latency and throughput, and bench/loadgen (Rust) for the
open-loop frontier, time to first token and paced streams. Each run is bounded by its duration."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.harness.procs import Meter, pinned

HERE = Path(__file__).resolve().parent
LUA = HERE / "corpus.lua"
SAME_BODY_LUA = HERE / "same_body.lua"
LOADGEN_DIR = HERE.parent / "loadgen"


class ToolError(RuntimeError):
    pass


def ensure_wrk() -> str:
    """wrk's path; installed from Debian when missing and we are root (as the Makefile does for libpq-dev)."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True, timeout=300)
        if not shutil.which("wrk"):
            subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True, timeout=300)
            subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True, timeout=300)
        found = shutil.which("wrk")
        if found:
            return found
    raise ToolError("wrk not found: install it (Debian/Ubuntu: apt-get install wrk; macOS: brew install wrk)")


def build_loadgen() -> Path:
    """Build bench/loadgen (its own Cargo workspace, release profile) once; return the binary."""
    binary = LOADGEN_DIR / "target" / "release" / "nexus-loadgen"
    cargo = shutil.which("cargo")
    if cargo is None:
        if binary.exists():
            return binary
        raise ToolError("cargo not found: the Rust load generator (bench/loadgen) needs a Rust toolchain")
    done = subprocess.run(
        [cargo, "build", "--release", "--locked", "--quiet"], cwd=LOADGEN_DIR, capture_output=True, timeout=900
    )
    if done.returncode != 0:
        raise ToolError("building bench/loadgen failed:\n" + done.stderr.decode(errors="replace")[-3000:])
    return binary


@dataclass(slots=True)
class Corpus:
    """Corpus files written by bench/traffic.py for this run, and the shared headers."""

    json: Path
    stream: Path
    mixed: Path
    headers: Path


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value.strip())
    if not m:
        raise ToolError(f"unreadable wrk latency {value!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(text: str) -> dict[str, Any]:
    """Requests/s, total requests, latency percentiles (ms) and errors from wrk's `--latency` report."""
    out: dict[str, Any] = {"non_2xx": 0, "socket_errors": 0}
    if m := re.search(r"(\d+) requests in ([\d.]+)(\w+)", text):
        out["requests"] = int(m.group(1))
    if m := re.search(r"Requests/sec:\s+([\d.]+)", text):
        out["rps"] = float(m.group(1))
    for p in ("50", "75", "90", "99"):
        if m := re.search(rf"^\s+{p}(?:\.000)?%\s+(\S+)", text, re.M):
            out[f"p{p}_ms"] = _ms(m.group(1))
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        out["non_2xx"] = int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        out["socket_errors"] = sum(int(g) for g in m.groups())
    if "rps" not in out:
        raise ToolError("wrk printed no result:\n" + text[-2000:])
    return out


class Tools:
    """Runs the load tools pinned to the load generator's CPUs, metering our process groups meanwhile."""

    def __init__(
        self, corpus: Corpus, loadgen_cpus: frozenset[int], groups: Callable[[], dict[str, list[int]]]
    ) -> None:
        self.corpus = corpus
        self.cpus = loadgen_cpus
        self.groups = groups
        self.wrk = ensure_wrk()
        self.loadgen = build_loadgen()
        self._salt = 0

    def salt(self) -> int:
        """A new token prefix for every run, so no two runs send the same bodies."""
        self._salt = (self._salt + 1) % 256
        return self._salt

    def wrk_run(self, url: str, *, connections: int, seconds: float, stream: bool = False) -> dict[str, Any]:
        corpus = self.corpus.stream if stream else self.corpus.json
        return self._wrk(LUA, url, [str(corpus), str(self.corpus.headers), str(self.salt())], connections, seconds)

    def wrk_same_body(
        self, url: str, body: Path, *, session: str, connections: int, seconds: float, limit: int = 0
    ) -> dict[str, Any]:
        """One body over and over (`session`: fixed, fresh or none; see same_body.lua), for `seconds`
        or until each connection's thread has had `limit` answers."""
        args = [str(body), str(self.corpus.headers), session, str(self.salt()), str(limit)]
        return self._wrk(SAME_BODY_LUA, url, args, connections, seconds)

    def _wrk(self, script: Path, url: str, args: list[str], connections: int, seconds: float) -> dict[str, Any]:
        cmd = [self.wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s"]
        cmd += ["-s", str(script), url, "--", *args]
        meter = Meter(self.groups())
        done = subprocess.run(pinned(cmd, self.cpus), capture_output=True, timeout=seconds + 60)
        meter.stop()
        result = parse_wrk(done.stdout.decode(errors="replace"))
        result["meter"] = meter
        return result

    def loadgen_run(
        self,
        mode: str,
        url: str,
        *,
        headers: list[str] | None = None,
        timeout_s: float = 600,
        **options: object,
    ) -> dict[str, Any]:
        kind = options.pop("kind", "stream" if mode == "streams" else "json")
        corpus = {"json": self.corpus.json, "stream": self.corpus.stream, "all": self.corpus.mixed}[str(kind)]
        cmd = [str(self.loadgen), mode, "--url", url, "--corpus", str(corpus), "--kind", str(kind)]
        cmd += ["--headers-file", str(self.corpus.headers), "--salt", str(self.salt())]
        for header in headers or []:
            cmd += ["--header", header]
        for name, value in options.items():
            cmd += [f"--{name.replace('_', '-')}", str(value)]
        meter = Meter(self.groups())
        done = subprocess.run(pinned(cmd, self.cpus), capture_output=True, timeout=timeout_s)
        meter.stop()
        if done.returncode != 0:
            raise ToolError(f"nexus-loadgen {mode} failed: {done.stderr.decode(errors='replace')[-2000:]}")
        result: dict[str, Any] = orjson.loads(done.stdout)
        result["meter"] = meter
        return result
