"""The images and docker/compose.yml, built and run for real with podman (`make container-test`).

Out of the default run (marker `container`): the first build takes minutes. It builds the service image
and a PostgreSQL stand-in from a Debian base, starts docker/compose.yml with podman-compose (plus the
fake Anthropic API as one more service, reachable only on the stack's own network), sends traffic
through the published proxy port with the Anthropic SDK and reads the rows back from PostgreSQL; then
runs the all-in-one image (`nexus serve`, embedded PostgreSQL as the non-root user) the same way.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from tests.container import engine
from tests.container.engine import REPO, podman

pytestmark = [pytest.mark.container, pytest.mark.timeout(3600)]

NEXUS_IMAGE = "localhost/nexus:test"
ALL_IN_ONE_IMAGE = "localhost/nexus:test-all-in-one"
POSTGRES_IMAGE = "localhost/nexus-test-postgres:15"
DASHBOARD_KEY = "container-test-" + secrets.token_hex(8)
MODEL = "claude-sonnet-4-6"

OVERRIDE = """
services:
  fake-upstream:
    image: ${NEXUS_IMAGE}
    command: ["nexus", "fake-upstream", "--host", "0.0.0.0", "--port", "8123"]
    healthcheck: {test: ["CMD", "true"]}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, seconds: float = 90, headers: dict[str, str] | None = None) -> dict[str, object]:
    deadline, last = time.monotonic() + seconds, ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=3) as r:  # noqa: S310
                return json.loads(r.read())  # type: ignore[no-any-return]
        except (OSError, urllib.error.HTTPError) as exc:
            last = repr(exc)
        time.sleep(1)
    raise AssertionError(f"{url} not ready after {seconds} s: {last}")


def sdk_traffic(base_url: str) -> list[str]:
    """One JSON request and one stream through the proxy; the X-Request-IDs it answered with."""
    client = anthropic.Anthropic(base_url=base_url, api_key="sk-ant-api03-container-test", max_retries=0)
    kwargs = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "Hello from a container"}]}
    raw = client.messages.with_raw_response.create(**kwargs)  # type: ignore[call-overload]
    assert raw.parse().stop_reason == "end_turn"
    with client.messages.with_streaming_response.create(**kwargs, stream=True) as streamed:  # type: ignore[call-overload]
        body = b"".join(streamed.iter_bytes())
    assert b"event: message_stop" in body
    return [raw.headers["x-request-id"], streamed.headers["x-request-id"]]


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    if not shutil.which("podman"):
        pytest.skip("podman is not installed (make container-test installs it from Debian)")
    try:
        engine.ensure_base_image()
        runtime = engine.runtime_env()
        seconds = engine.build(NEXUS_IMAGE, REPO / "docker/Dockerfile", REPO, runtime, "--target", "service")
        dockerfile = REPO / "docker/Dockerfile"
        seconds_aio = engine.build(ALL_IN_ONE_IMAGE, dockerfile, REPO, runtime, "--target", "all-in-one")
        here = Path(__file__).parent
        engine.build(POSTGRES_IMAGE, here / "postgres.Containerfile", here, runtime)
    except engine.EngineError as exc:
        pytest.fail(str(exc))
    sizes = {tag: engine.image_size_mb(tag, runtime) for tag in (NEXUS_IMAGE, ALL_IN_ONE_IMAGE)}
    print(f"\nbuild {seconds:.0f} s (all-in-one {seconds_aio:.0f} s); sizes MB {sizes}", file=sys.stderr)
    return runtime


@pytest.fixture(scope="module")
def stack(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("stack")
    settings = (REPO / "docker/nexus.env.example").read_text()
    settings = settings.replace("change-me-to-a-long-random-key", DASHBOARD_KEY)
    settings += "CLAUDE_API_BASE_URL=http://fake-upstream:8123\nSTORAGE_BATCH_INTERVAL_MS=20\n"
    (tmp / "nexus.env").write_text(settings)
    (tmp / "override.yml").write_text(OVERRIDE)
    credentials = tmp / "credentials"
    credentials.mkdir(mode=0o755)
    project = "nexusct" + secrets.token_hex(3)
    ports = {"proxy": free_port(), "dashboard": free_port()}
    compose_env = env | {
        "NEXUS_IMAGE": NEXUS_IMAGE,
        "POSTGRES_IMAGE": POSTGRES_IMAGE,
        "NEXUS_ENV_FILE": str(tmp / "nexus.env"),
        "NEXUS_CREDENTIALS_DIR": str(credentials),
        "NEXUS_PROXY_PUBLISH": f"127.0.0.1:{ports['proxy']}",
        "NEXUS_DASHBOARD_PUBLISH": f"127.0.0.1:{ports['dashboard']}",
    }
    compose = [sys.executable, "-m", "podman_compose", "-p", project,
               "-f", str(REPO / "docker/compose.yml"), "-f", str(tmp / "override.yml")]  # fmt: skip
    try:
        engine.run(*compose, "up", "-d", "--no-build", env=compose_env, timeout=600)
        yield {"project": project, "proxy": f"http://127.0.0.1:{ports['proxy']}",
               "dashboard": f"http://127.0.0.1:{ports['dashboard']}"}  # fmt: skip
    finally:
        logs = engine.run(*compose, "logs", check=False, env=compose_env, timeout=120)
        (tmp / "stack.log").write_text(logs.stdout + logs.stderr)
        engine.run(*compose, "down", "-v", "-t", "5", check=False, env=compose_env, timeout=300)


def container(env: dict[str, str], project: str, service: str) -> str:
    names = podman("ps", "-a", "--format", "{{.Names}}", "--filter", f"label=com.docker.compose.project={project}",
                   "--filter", f"label=com.docker.compose.service={service}", env=env).stdout.split()  # fmt: skip
    assert len(names) == 1, (service, names)
    return names[0]


def psql(env: dict[str, str], name: str, query: str) -> str:
    return podman("exec", name, "psql", "-U", "nexus", "-d", "nexus", "-tAc", query, env=env).stdout.strip()


def test_compose_stack_stores_sdk_traffic(env: dict[str, str], stack: dict[str, str]) -> None:
    project = stack["project"]
    health = wait_http(stack["proxy"] + "/health")
    assert health
    ids = sdk_traffic(stack["proxy"])

    postgres = container(env, project, "postgres")
    assert all(len(i) == 36 and set(i) <= set("0123456789abcdef-") for i in ids)  # uuids: safe to inline
    listed = ",".join(f"'{i}'" for i in ids)
    query = f"SELECT count(*) FROM api_requests WHERE request_id IN ({listed}) AND response_status = 200"  # noqa: S608
    deadline = time.monotonic() + 30
    while psql(env, postgres, query) != "2":
        assert time.monotonic() < deadline, "rows not stored within 30 s"
        time.sleep(0.5)

    migrate = container(env, project, "migrate")
    assert podman("inspect", "--format", "{{.State.ExitCode}}", migrate, env=env).stdout.strip() == "0"
    assert psql(env, postgres, "SELECT count(*) > 0 FROM nexus_migrations") == "t"

    proxy = container(env, project, "proxy")
    # Non-root, and the state volume (spool, quarantine) is writable by that user.
    assert podman("exec", proxy, "id", "-u", env=env).stdout.strip() == "10001"
    podman("exec", proxy, "sh", "-c", "touch /var/lib/nexus/.probe && rm /var/lib/nexus/.probe", env=env)
    assert podman("healthcheck", "run", proxy, env=env).returncode == 0

    dashboard = wait_http(stack["dashboard"] + "/health", headers={"X-API-Key": DASHBOARD_KEY})
    assert dashboard["database"] == "connected"
    assert podman("healthcheck", "run", container(env, project, "dashboard"), env=env).returncode == 0
    stored = wait_http(f"{stack['proxy']}/api/requests/{ids[0]}", headers={"X-API-Key": DASHBOARD_KEY})
    assert stored["request_id"] == ids[0] and stored["model"] == MODEL


def test_all_in_one_serves_with_embedded_postgres(env: dict[str, str], stack: dict[str, str]) -> None:
    """`nexus serve` as the non-root user: pgserver's PostgreSQL under NEXUS_HOME, kept across a restart."""
    name, port = stack["project"] + "-aio", free_port()
    volume = name + "-home"
    network = f"{stack['project']}_default"  # the stack's network, where the fake upstream answers
    try:
        podman("run", "-d", "--name", name, "--network", network, "-p", f"127.0.0.1:{port}:3000",
               "-v", f"{volume}:/var/lib/nexus", "-e", "CLAUDE_API_BASE_URL=http://fake-upstream:8123",
               "-e", f"DASHBOARD_API_KEY={DASHBOARD_KEY}", ALL_IN_ONE_IMAGE, env=env)  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/health")
        ids = sdk_traffic(base)
        key = {"X-API-Key": DASHBOARD_KEY}
        assert wait_http(f"{base}/api/requests/{ids[1]}", headers=key)["request_id"] == ids[1]
        assert podman("exec", name, "id", "-u", env=env).stdout.strip() == "10001"
        podman("restart", "-t", "20", name, env=env)
        wait_http(base + "/health")
        assert wait_http(f"{base}/api/requests/{ids[0]}", headers=key)["request_id"] == ids[0]
        assert podman("healthcheck", "run", name, env=env).returncode == 0
    finally:
        logs = podman("logs", name, check=False, env=env)
        print(logs.stdout[-3000:], logs.stderr[-3000:], file=sys.stderr)
        podman("rm", "-f", "-t", "5", name, check=False, env=env)
        podman("volume", "rm", "-f", volume, check=False, env=env)
