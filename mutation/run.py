"""`make mutation`: how many one-line breaking changes the suite notices, per area.

The suite's honesty is measured, not assumed: mutmut (Python) and cargo-mutants (Rust) each make
small breaking changes to the modules that decide safety and correctness and run the tests that
guard them; a change no test notices is a survivor. `mutation/areas.toml` says which files each area
mutates and which tests guard each file; `docs/testing.md` records the rates and every survivor.

Each Python area runs in its own copy of the tree (mutmut edits files in place, and the proxy under
test runs in subprocesses that import from disk), against one shared PostgreSQL server, so areas run
side by side. The last line printed is the kill rate per area.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
AREAS_FILE = Path(__file__).resolve().parent / "areas.toml"
HOOK_TEMPLATE = Path(__file__).resolve().parent / "hook.py"
PYTEST_ARGS = "-x -q -p no:cacheprovider --no-header -o addopts="
LOGGERS = {"log", "logger", "_log", "LOG", "_logger", "LOGGER"}


@dataclass
class Outcome:
    """What one area's run found: counts by verdict and the survivors, each with its diff."""

    area: str
    killed: int = 0
    survived: int = 0
    timeout: int = 0
    skipped: int = 0
    survivors: list[dict[str, object]] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    @property
    def tested(self) -> int:
        return self.killed + self.survived + self.timeout

    @property
    def rate(self) -> float:
        return 100.0 * (self.killed + self.timeout) / self.tested if self.tested else 0.0

    def line(self) -> str:
        if self.error:
            return f"{self.area} error"
        return f"{self.area} {self.rate:.1f}% ({self.killed + self.timeout}/{self.tested})"


def log_lines(path: Path) -> list[int]:
    """Line numbers inside logging calls and logger definitions: their text is for people and log
    routing, not behaviour, so not mutated."""
    lines: set[int] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Attribute)
            and node.value.func.attr == "getLogger"
        ):
            lines.add(node.lineno)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in LOGGERS
        ):
            lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return sorted(lines)


def copy_tree(dest: Path) -> None:
    """The tracked files (as they are in the working tree) and the built native module."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        src = ROOT / raw.decode()
        if src.is_file():
            target = dest / raw.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    for native in (ROOT / "nexus").glob("_core*.so"):
        shutil.copy2(native, dest / "nexus" / native.name)


@contextmanager
def shared_database() -> Iterator[str]:
    """One PostgreSQL for every area (each test session makes its own databases in it)."""
    given = os.environ.get("NEXUS_TEST_DATABASE_URL")
    if given:
        yield given
        return
    from nexus.storage.embedded import start_embedded

    data_dir = Path(tempfile.mkdtemp(prefix="nexus-mutation-pg-"))
    url, stop = start_embedded(data_dir, database="postgres")
    try:
        yield url
    finally:
        stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def read_cache(copy: Path, outcome: Outcome) -> None:
    """Counts and survivors from mutmut's result database (`.mutmut-cache`, SQLite)."""
    db = sqlite3.connect(copy / ".mutmut-cache")
    rows = db.execute(
        "SELECT m.id, m.status, s.filename, l.line_number, l.line FROM Mutant m "
        "JOIN Line l ON m.line = l.id JOIN SourceFile s ON l.sourcefile = s.id"
    ).fetchall()
    db.close()
    for mutant_id, status, filename, line_number, line in rows:
        if status in ("ok_killed", "ok_suspicious"):
            outcome.killed += 1
        elif status == "bad_timeout":
            outcome.timeout += 1
        elif status == "skipped":
            outcome.skipped += 1
        elif status == "bad_survived":
            outcome.survived += 1
            diff = subprocess.run(
                [sys.executable, "-m", "mutmut", "show", str(mutant_id)],
                cwd=copy,
                capture_output=True,
                text=True,
            ).stdout
            outcome.survivors.append(
                {
                    "file": filename,
                    "line": line_number + 1,
                    "source": line.strip(),
                    "diff": "\n".join(d for d in diff.splitlines() if d[:1] in "+-" and d[:3] not in ("+++", "---")),
                }
            )
        else:  # untested: mutmut stopped early
            outcome.error = f"mutant {mutant_id} left {status}"


def run_area(name: str, area: dict[str, object], database_url: str, workdir: Path, unit_only: bool = False) -> Outcome:
    """Mutate one area's files in a private copy.

    Each mutant first meets the fast tests that guard its file (in-process, about a second); only a
    mutant they miss meets the area's slower end-to-end tests (real proxy processes), so the run
    costs little where the unit tests are strong and a survivor is one that every guard missed.
    """
    files: dict[str, list[str]] = area["unit"]  # type: ignore[assignment]
    integration: list[str] = area["integration"]  # type: ignore[assignment]
    if unit_only:  # a quick look while writing tests: survivors of the fast tier only
        integration = list(dict.fromkeys(t for selected in files.values() for t in selected))
    started = time.monotonic()
    outcome = Outcome(name)
    copy = workdir / name
    copy_tree(copy)
    for cache in copy.rglob("__pycache__"):
        shutil.rmtree(cache)
    union = " ".join(integration)
    python = sys.executable
    sock = workdir / f"{name}.sock"
    pytest = f"{python} -m mutation.forkserver --run {sock} -- {PYTEST_ARGS}"
    hook = HOOK_TEMPLATE.read_text()
    config = {
        "tests": {path: f"{pytest} {' '.join(selected or integration)}" for path, selected in files.items()},
        "skip_lines": {path: log_lines(copy / path) for path in files},
    }
    (copy / "mutmut_config.py").write_text(
        hook.replace("CONFIG: dict[str, Any] = {}", f"CONFIG: dict[str, Any] = {config!r}")
    )
    check = subprocess.run(
        [python, "-c", "import mutmut, mutmut_config; assert mutmut.mutmut_config is not None"], cwd=copy
    )
    if check.returncode != 0:
        raise RuntimeError("mutmut cannot import the hook (mutmut_config.py)")
    env = {
        **os.environ,
        "PYTHONPATH": str(copy),
        "PYTHONDONTWRITEBYTECODE": "1",
        "NEXUS_TEST_DATABASE_URL": database_url,
    }
    command = [
        python,
        "-m",
        "mutmut",
        "run",
        "--paths-to-mutate",
        ",".join(files),
        "--runner",
        f"{pytest} {union}",
        "--tests-dir",
        "tests",
        "--no-progress",
        "--simple-output",
        *([] if unit_only else ["--rerun-all"]),
        "--CI",
    ]
    log_file = workdir / f"{name}.log"
    with log_file.open("w") as log:
        server = subprocess.Popen(
            [python, "-m", "mutation.forkserver", "--serve", str(sock)], cwd=copy, env=env, stdout=log, stderr=log
        )
        try:
            _wait_for_socket(sock, server)
            done = subprocess.run(command, cwd=copy, env=env, stdout=log, stderr=subprocess.STDOUT)
        finally:
            server.kill()
            server.wait()
    if done.returncode != 0:
        outcome.error = f"mutmut exited {done.returncode}: see {log_file}"
    if (copy / ".mutmut-cache").exists():
        read_cache(copy, outcome)
    outcome.seconds = time.monotonic() - started
    return outcome


def _wait_for_socket(sock: Path, server: subprocess.Popen[bytes]) -> None:
    """The fork server listens once its imports are done (seconds on a busy machine)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the fork server exited with {server.returncode}")
        if sock.exists():
            return
        time.sleep(0.1)
    raise RuntimeError("the fork server did not start within 120 s")


def run_rust(files: list[str], jobs: int, workdir: Path) -> Outcome:
    """cargo-mutants over the Rust files whose logic `cargo test` covers (installed when missing)."""
    started = time.monotonic()
    outcome = Outcome("nexus_core")
    if shutil.which("cargo-mutants") is None:
        subprocess.run(["cargo", "install", "--locked", "cargo-mutants"], check=True)
    out = workdir / "rust"
    command = ["cargo", "mutants", "--no-shuffle", "-j", str(jobs), "--output", str(out)]
    for path in files:
        command += ["--file", path]
    with (workdir / "nexus_core.log").open("w") as log:
        subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    read_rust(out, outcome, workdir)
    outcome.seconds = time.monotonic() - started
    return outcome


def read_rust(out: Path, outcome: Outcome, workdir: Path) -> None:
    """Counts and survivors from cargo-mutants' `outcomes.json` (unviable mutants do not compile: they
    say nothing about the tests and are not counted)."""
    outcomes = out / "mutants.out" / "outcomes.json"
    if not outcomes.exists():
        outcome.error = f"cargo mutants wrote no outcomes: see {workdir / 'nexus_core.log'}"
        return
    for item in json.loads(outcomes.read_text())["outcomes"]:
        summary = item["summary"]
        scenario = item["scenario"]
        if not isinstance(scenario, dict):
            continue  # the baseline
        mutant = scenario["Mutant"]
        if summary == "CaughtMutant":
            outcome.killed += 1
        elif summary == "Timeout":
            outcome.timeout += 1
        elif summary == "MissedMutant":
            outcome.survived += 1
            outcome.survivors.append(
                {
                    "file": mutant["file"],
                    "line": mutant["span"]["start"]["line"],
                    "source": (mutant.get("function") or {}).get("function_name", ""),
                    "diff": mutant.get("name", ""),
                }
            )
        else:
            outcome.skipped += 1


def collect(workdir: Path, names: list[str]) -> list[Outcome]:
    """The outcomes of a run kept with --keep, read again (e.g. after the report step failed)."""
    found: list[Outcome] = []
    for name in names:
        outcome = Outcome(name)
        if name == "nexus_core":
            read_rust(workdir / "rust", outcome, workdir)
        elif (workdir / name / ".mutmut-cache").exists():
            read_cache(workdir / name, outcome)
        else:
            continue
        found.append(outcome)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--area", action="append", help="only these areas (default: all)")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MUTATION_JOBS", "2")))
    parser.add_argument("--report", type=Path, default=ROOT / "target" / "mutation" / "report.json")
    parser.add_argument("--rust-file", action="append", help="Rust files to mutate instead of areas.toml's")
    parser.add_argument("--unit-only", action="store_true", help="skip the end-to-end tier (quick look)")
    parser.add_argument("--collect", type=Path, help="only read the results a --keep run left in this directory")
    parser.add_argument("--keep", action="store_true", help="keep the copies (for `mutmut show`)")
    args = parser.parse_args(argv)

    areas = tomllib.loads(AREAS_FILE.read_text())
    rust_files: list[str] = args.rust_file or areas.pop("nexus_core")["files"]
    areas.pop("nexus_core", None)
    wanted = args.area or [*areas, "nexus_core"]
    outcomes: list[Outcome] = []
    if args.collect:
        outcomes = collect(args.collect, wanted)
        args.keep = True
        workdir = args.collect
    else:
        workdir = Path(tempfile.mkdtemp(prefix="nexus-mutation-"))
        outcomes = run_all(args, areas, rust_files, wanted, workdir)
    return report(args, outcomes, workdir)


def run_all(
    args: argparse.Namespace, areas: dict[str, Any], rust_files: list[str], wanted: list[str], workdir: Path
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    with shared_database() as database_url, ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = []
        if "nexus_core" in wanted:  # the longest: started first, beside the Python areas
            futures.append(pool.submit(run_rust, rust_files, 1, workdir))
        futures += [
            pool.submit(run_area, name, area, database_url, workdir, args.unit_only)
            for name, area in areas.items()
            if name in wanted
        ]
        for future in futures:
            outcome = future.result()
            outcomes.append(outcome)
            print(f"{outcome.line()} in {outcome.seconds:.0f} s", flush=True)
    return outcomes


def report(args: argparse.Namespace, outcomes: list[Outcome], workdir: Path) -> int:
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(
        json.dumps(
            [
                {
                    "area": o.area,
                    "killed": o.killed,
                    "timeout": o.timeout,
                    "survived": o.survived,
                    "skipped": o.skipped,
                    "rate": round(o.rate, 1),
                    "seconds": round(o.seconds),
                    "error": o.error,
                    "survivors": o.survivors,
                }
                for o in outcomes
            ],
            indent=2,
        )
    )
    for o in outcomes:
        for s in o.survivors:
            print(f"survived {s['file']}:{s['line']}: {s['source']}\n{s['diff']}")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"copies kept in {workdir}")
    print(f"report: {args.report}")
    print("mutation kill rate: " + " | ".join(o.line() for o in outcomes))
    return 1 if any(o.error for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
