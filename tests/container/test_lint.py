"""The container files through the tools that read them: hadolint, and podman-compose's own parser."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.container.engine import REPO

pytestmark = pytest.mark.container


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install -e '.[container]')")
    files = [REPO / "docker/Dockerfile", REPO / "tests/container/postgres.Containerfile"]
    result = subprocess.run([hadolint, *map(str, files)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_resolves() -> None:
    """Every interpolation has a default and the example env file is accepted as the env file."""
    env = dict(os.environ, NEXUS_ENV_FILE=str(REPO / "docker/nexus.env.example"))
    result = subprocess.run(
        [sys.executable, "-m", "podman_compose", "-f", str(REPO / "docker/compose.yml"), "config"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for service in ("postgres", "migrate", "proxy", "dashboard"):
        assert f"  {service}:" in result.stdout
    assert "nexus:latest" in result.stdout and "python:3.11-slim-bookworm" in result.stdout
