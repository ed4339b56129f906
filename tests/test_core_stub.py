"""The type stub `nexus/_core.pyi` describes the compiled module exactly.

mypy's stubtest imports the built `nexus._core` and compares it with the stub: every name in one is in
the other, and every signature it can inspect (the PyO3 functions' `__text_signature__`) matches. A stub
that drifts would let mypy pass code that fails at run time. `make install` rebuilds the module, so this
checks the extension as the tests use it.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nexus import _core

STUB = Path(_core.__file__).with_name("_core.pyi")


def stubtest(stub_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run stubtest on `nexus._core`; with `stub_dir`, against the stub found there instead."""
    env = dict(os.environ)
    if stub_dir is not None:
        env["MYPYPATH"] = str(stub_dir)
    return subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "nexus._core"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=stub_dir or Path(__file__).parent.parent,
    )


def test_stub_matches_the_compiled_module() -> None:
    result = stubtest()
    assert result.returncode == 0, result.stdout + result.stderr


def test_stub_names_are_the_module_names() -> None:
    """The same check by hand, readable in a failure: the stub's top-level names against `dir()`."""
    tree = ast.parse(STUB.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    public = {n for n in dir(_core) if not n.startswith("_")} | {"__version__"}
    assert names == public
    assert sorted(_core.__all__) == sorted(public)


@pytest.mark.parametrize(
    ("old", "new", "reported"),
    [
        ("def prompt_key(", "def prompt_key_gone(", "nexus._core.prompt_key is not present in stub"),
        ("max_line_bytes: int = ...", "max_bytes: int = ...", "SseObserver.__new__ is inconsistent"),
    ],
)
def test_a_drifted_stub_is_caught(tmp_path: Path, old: str, new: str, reported: str) -> None:
    """The check can fail: a stub with a name or a parameter the module does not have is reported."""
    text = STUB.read_text()
    assert old in text
    (tmp_path / "nexus").mkdir()
    (tmp_path / "nexus" / "__init__.pyi").write_text("")
    (tmp_path / "nexus" / "_core.pyi").write_text(text.replace(old, new))
    result = stubtest(tmp_path)
    assert result.returncode == 1 and reported in result.stdout, result.stdout + result.stderr
