"""Podman for the container tests: a working runtime configuration, the base image, image builds.

This machine reaches Debian's packages but no image registry, so the base image is made from Debian's
packages with debootstrap and imported. Its kernel runs cgroups v1 (hybrid) and refuses raising
rlimits, where podman's defaults (crun, nofile 1048576) fail: when they do, a containers.conf of our
own selects runc, cgroupfs and this process's own limits. Nothing on the machine is reconfigured.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = os.environ.get("NEXUS_TEST_BASE_IMAGE", "localhost/debian-base:bookworm")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class EngineError(RuntimeError):
    """Podman cannot run containers here; the message carries podman's own error."""


def run(*args: str, check: bool = True, timeout: float = 1800, **kw: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    if check and result.returncode != 0:
        raise EngineError(f"{' '.join(args[:4])} ... exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result


def podman(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return run("podman", *args, **kw)  # type: ignore[arg-type]


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def apt_mirror() -> str:
    """The Debian mirror apt uses on this machine (deb822 or one-line sources)."""
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        text = path.read_text() if path.is_file() else ""
        for uri in re.findall(r"^URIs:\s*(\S+)", text, re.M) + re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M):
            if "security" not in uri and uri.rstrip("/").endswith("/debian"):
                return uri
    return "http://deb.debian.org/debian"


def ensure_base_image() -> str:
    """The Debian bookworm base with python3 and venv: given, already imported, or made now (~1 min)."""
    if image_exists(BASE_IMAGE):
        return BASE_IMAGE
    if BASE_IMAGE != "localhost/debian-base:bookworm" or not shutil.which("debootstrap"):
        raise EngineError(f"base image {BASE_IMAGE} is missing and cannot be made here (debootstrap)")
    with tempfile.TemporaryDirectory(prefix="nexus-rootfs-", dir="/var/tmp") as root:
        run("debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", "bookworm", root,
            apt_mirror())  # fmt: skip
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        podman("import", "-", BASE_IMAGE, stdin=tar.stdout)
        tar.wait()
    return BASE_IMAGE


def runtime_env() -> dict[str, str]:
    """The environment podman runs with: its defaults when they work here, else our containers.conf."""
    env = dict(os.environ)
    if "CONTAINERS_CONF" in env:
        return env
    probe = ("run", "--rm", "--network=none", BASE_IMAGE, "true")
    first = podman(*probe, check=False, env=env)
    if first.returncode == 0:
        return env
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    conf = Path(tempfile.gettempdir()) / "nexus-test-containers.conf"
    conf.write_text(
        "[containers]\n"
        f'default_ulimits = ["nofile={soft}:{hard}", "nproc=4096:4096"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
    )
    env["CONTAINERS_CONF"] = str(conf)
    second = podman(*probe, check=False, env=env)
    if second.returncode != 0:
        raise EngineError(f"podman cannot run a container here:\n{first.stderr.strip()}\n{second.stderr.strip()}")
    return env


def build(tag: str, containerfile: Path, context: Path, env: dict[str, str], *extra: str) -> float:
    """Build an image; return the seconds it took. Builds use the host network (package downloads) and
    see the host's CA bundle, which carries this network's TLS-inspecting CA. Docker's image format:
    the OCI format podman writes by default has no HEALTHCHECK."""
    mounts = ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"] if HOST_CA_BUNDLE.is_file() else []
    started = time.monotonic()
    podman("build", "--format=docker", "--network=host", *mounts, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
           "-f", str(containerfile), "-t", tag, *extra, str(context), env=env, timeout=3600)  # fmt: skip
    return time.monotonic() - started


def image_size_mb(tag: str, env: dict[str, str]) -> float:
    return int(podman("image", "inspect", "--format", "{{.Size}}", tag, env=env).stdout.strip()) / 1e6
