"""docker/: the files agree with the code, without an engine (tests/container builds and runs them).

Cheap checks of what a build or `compose up` would only find late: every setting is in the env file,
every command the images and the compose file run is a real `nexus` command with real options, the
services wait for the migration, the build context leaves the virtualenv out, and the health check
script answers for a live proxy.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from nexus.cli import main
from nexus.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((DOCKER / "compose.yml").read_text())  # type: ignore[no-any-return]


def dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text()


def check_nexus_command(argv: list[str]) -> None:
    """Parse `nexus ...` the way the CLI would: an unknown command or option fails here."""
    assert argv[0] == "nexus", argv
    command = main.commands[argv[1]]
    command.make_context(argv[1], list(argv[2:]))


def test_env_example_names_every_setting() -> None:
    text = (DOCKER / "nexus.env.example").read_text()
    named = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", text, re.M))
    missing = sorted(name.upper() for name in Settings.model_fields if name.upper() not in named)
    assert not missing, f"add to docker/nexus.env.example: {missing}"
    unknown = sorted(n for n in named - {f.upper() for f in Settings.model_fields} if not n.startswith("POSTGRES_"))
    assert not unknown, f"not a setting: {unknown}"


def test_env_example_database_url_matches_postgres_settings() -> None:
    values = dict(re.findall(r"^([A-Z_]+)=(.*)$", (DOCKER / "nexus.env.example").read_text(), re.M))
    url = urlsplit(values["DATABASE_URL"])
    assert (url.username, url.password, url.path.lstrip("/")) == (
        values["POSTGRES_USER"],
        values["POSTGRES_PASSWORD"],
        values["POSTGRES_DB"],
    )
    assert url.hostname == "postgres"  # the compose service name


def test_compose_services_wait_for_the_migration() -> None:
    services = compose()["services"]
    # It waits for PostgreSQL itself: podman 4.3 cannot start a two-level dependency chain.
    assert not services["migrate"]["depends_on"]
    assert "--wait-seconds" in services["migrate"]["command"]
    assert services["migrate"]["restart"] == "no"
    for name in ("proxy", "dashboard"):
        assert services[name]["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
        assert services[name]["restart"] == "unless-stopped"
    assert services["postgres"]["restart"] == "unless-stopped"
    for name, service in services.items():
        assert "env_file" in service, f"{name} must read its settings from the env file"
        assert "environment" not in service, f"{name}: settings belong in the env file"


def test_compose_commands_and_volumes_exist() -> None:
    spec = compose()
    declared = set(spec["volumes"])
    for name, service in spec["services"].items():
        if name != "postgres":
            check_nexus_command(service["command"])
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            assert source.startswith(("$", ".", "/")) or source in declared, f"{name}: undeclared volume {source}"


def test_dockerfile_stages_user_and_commands() -> None:
    text = dockerfile()
    stages = re.findall(r"^FROM (\S+) AS (\S+)$", text, re.M)
    assert [s for _, s in stages] == ["build", "runtime", "all-in-one", "service"]  # the default is the last
    assert [base for base, _ in stages[:2]] == ["${BASE_IMAGE}", "${BASE_IMAGE}"]
    assert re.search(r"^USER 10001:10001$", text, re.M)  # numeric: Kubernetes' runAsNonRoot checks it
    assert re.search(r"^HEALTHCHECK .*nexus-healthcheck", text, re.M)
    assert "maturin" in (REPO / "pyproject.toml").read_text() and "pip wheel" in text
    for cmd in re.findall(r"^CMD (\[.*\])$", text, re.M):
        check_nexus_command(json.loads(cmd))
    for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for source in shlex.split(sources):
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", "target", "credentials", "docker/nexus.env"} <= ignored
    for copied in ("nexus", "nexus_core/src", "pyproject.toml", "Cargo.lock", "README.md"):
        assert copied not in ignored


def healthcheck(port: int | str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PORT=str(port), DASHBOARD_PORT=str(port))
    script = str(DOCKER / "healthcheck.py")
    return subprocess.run([sys.executable, script, *args], env=env, capture_output=True, text=True, timeout=30)


def test_healthcheck_script(proxy_url: str) -> None:
    port = urlsplit(proxy_url).port
    assert port is not None
    ok = healthcheck(port)
    assert ok.returncode == 0, ok.stderr
    assert "HTTP 200" in ok.stdout


@pytest.mark.parametrize("service", ["proxy", "dashboard"])
def test_healthcheck_script_fails_without_a_server(service: str) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        result = healthcheck(port, service)
    assert result.returncode == 1
    assert f"{service} on port {port}" in result.stderr
