"""`nexus serve`: the proxy and the dashboard started, supervised and stopped together."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.harness.servers import free_port, stop, wait_until_healthy
from tests.helpers import wait_for


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still "exists": look at its state
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _group_members(pgid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp
            found.append(int(stat.parent.name))
    return found


def _refused(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1)  # noqa: S310 (loopback)
    except OSError as exc:
        return "refused" in str(exc).lower()
    return False


def _start(
    tmp_path: Path, upstream_url: str, migrated_db: str, extra: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str, str, Path]:
    proxy_port, dash_port = free_port(), free_port()
    env = {
        **os.environ,
        **(extra or {}),
        "DATABASE_URL": migrated_db,
        "CLAUDE_API_BASE_URL": upstream_url,
        "HOST": "127.0.0.1",
        "PORT": str(proxy_port),
        "DASHBOARD_HOST": "127.0.0.1",
        "DASHBOARD_PORT": str(dash_port),
        "NEXUS_HOME": str(tmp_path),
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nexus.cli", "serve"], env=env, stderr=out, stdout=out)
    proxy, dashboard = f"http://127.0.0.1:{proxy_port}", f"http://127.0.0.1:{dash_port}"
    try:
        wait_until_healthy(proxy + "/health", proc, 30)
        wait_until_healthy(dashboard + "/health", proc, 30)
    except BaseException:
        stop(proc, 40)
        raise
    return proc, proxy, dashboard, log


def _pids(log: Path) -> dict[str, int]:
    found = re.search(r"proxy pid (\d+), dashboard pid (\d+)", log.read_text())
    assert found, log.read_text()
    return {"proxy": int(found.group(1)), "dashboard": int(found.group(2))}


def test_serve_runs_both_and_stops_both_on_sigterm(tmp_path: Path, upstream_url: str, migrated_db: str) -> None:
    proc, proxy, dashboard, log = _start(tmp_path, upstream_url, migrated_db)
    pids = _pids(log)
    assert "worker pid" not in log.read_text() and "no dashboard" not in log.read_text()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(45) == 0
    assert not _alive(pids["proxy"]) and not _alive(pids["dashboard"])
    assert _refused(proxy + "/health") and _refused(dashboard + "/health")
    # the first line says where the data lives, one last line that it stopped and where the data stays
    # (not the database's password)
    first, *_, last = log.read_text().strip().splitlines()
    info = conninfo_to_dict(migrated_db)
    database = f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}/{info['dbname']}"
    kept = f"NEXUS_HOME={tmp_path}; database: {database} (DATABASE_URL)"
    assert first == f"nexus serve: {kept}"
    assert last == f"nexus serve: stopped on SIGTERM; data kept: {kept}"
    assert not info.get("password") or str(info["password"]) not in log.read_text()


def test_serve_runs_the_analysis_worker_when_enabled(tmp_path: Path, upstream_url: str, migrated_db: str) -> None:
    extra = {"AI_WORKER_ENABLED": "true", "AI_ANALYSIS_PROJECT_ID": "analysis"}
    proc, _, _, log = _start(tmp_path, upstream_url, migrated_db, extra)
    found = re.search(r"worker pid (\d+)", log.read_text())
    assert found, log.read_text()
    worker = int(found.group(1))
    assert _alive(worker)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(45) == 0
    assert not _alive(worker)


@pytest.mark.parametrize("victim", ["dashboard", "proxy"])
def test_serve_exits_when_either_service_dies(tmp_path: Path, upstream_url: str, migrated_db: str, victim: str) -> None:
    proc, _, _, log = _start(tmp_path, upstream_url, migrated_db)
    pids = _pids(log)
    try:
        os.kill(pids[victim], signal.SIGKILL)
        assert proc.wait(45) == 1
        survivor = "proxy" if victim == "dashboard" else "dashboard"
        wait_for(lambda: not _alive(pids[survivor]), 10, f"{survivor} stopped")
        assert f"{victim} exited" in log.read_text()
        # nothing of either service is left: not even the workers of a main process killed with -9
        wait_for(lambda: not _group_members(pids[victim]), 10, f"{victim}'s workers stopped")
    finally:
        stop(proc, 40)


def test_the_lines_name_the_embedded_database_under_nexus_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every checkout shares the default NEXUS_HOME, so one embedded database: the start line says which."""
    from nexus.settings import Settings
    from nexus.supervise import where_data_lives

    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("NEXUS_HOME", raising=False)
    home = tmp_path / "home"
    settings = Settings(nexus_home=home)  # type: ignore[call-arg]
    assert where_data_lives(settings, embedded=True) == (
        f"NEXUS_HOME={home}; database: embedded PostgreSQL with its data in {home / 'postgres'}"
    )
    default = Settings()  # type: ignore[call-arg]
    assert f"NEXUS_HOME={Path.home() / '.local/share/nexus'};" in where_data_lives(default, embedded=True)
