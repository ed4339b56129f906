"""Micro-benchmarks of the Rust core against its Python reference, on real-size inputs.

    .venv/bin/python -m pytest bench/micro            # or: make bench-micro

Not part of `make test` (pytest's testpaths is tests/). Each group pairs the production function (the
Rust core, or the request path's check) with its Python reference on the same input, results checked
equal; the summary at the end prints how many times faster production is, best run against best run.
"""

from __future__ import annotations

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups: dict[str, dict[str, float]] = {}
    for bench in session.benchmarks:
        if bench.stats is None:
            continue
        impl = "reference" if bench.name.endswith(("_python", "_reference")) else "production"
        groups.setdefault(bench.group or bench.name, {})[impl] = bench.stats.min
    terminalreporter.section("production vs Python reference (best run)")
    for group, impls in sorted(groups.items()):
        fast, ref = impls.get("production"), impls.get("reference")
        if fast and ref:
            terminalreporter.write_line(
                f"{group:42} production {fast * 1e6:9.1f} us   reference {ref * 1e6:9.1f} us   {ref / fast:6.1f}x"
            )
    for bench in session.benchmarks:
        per_byte = getattr(bench, "extra_info", {}).get("ns_per_byte")
        if per_byte is not None:
            terminalreporter.write_line(f"{bench.name:42} {per_byte} ns/byte (best run)")
