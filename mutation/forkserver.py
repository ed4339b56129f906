"""A pytest fork server: each mutant's tests start in milliseconds instead of a second and a half.

Starting pytest with this project's test dependencies (pytest, hypothesis, psycopg, the Anthropic
SDK...) costs about 1.5 s of CPU, more than most mutants' tests take. The server imports those
third-party modules once and forks a child per test run; the child imports Nexus and the tests
from disk, so it sees the mutant mutmut just wrote (nothing of `nexus` or `tests` is imported before
the fork). mutmut runs `python -m mutation.forkserver --run SOCKET -- <pytest args>`, a thin client
that hands its stdout and stderr to the child and exits with the child's status. If the client is
killed (mutmut's timeout), the child's process group is killed with it.

    python -m mutation.forkserver --serve SOCKET      # in the area's copy, its cwd
"""

from __future__ import annotations

import array
import os
import select
import signal
import socket
import struct
import sys

#: Imported before any fork: everything heavy the tests import that is not Nexus itself.
PRELOAD = (
    "asyncio",
    "email.utils",
    "http.client",
    "urllib.request",
    "sqlite3",
    "pytest",
    "_pytest.assertion.rewrite",
    "pytest_asyncio",
    "pytest_timeout",
    "hypothesis",
    "hypothesis.strategies",
    "psycopg",
    "psycopg_pool",
    "orjson",
    "msgspec",
    "anthropic",
    "granian",
    "pyreqwest.client",
)


def serve(path: str) -> None:
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    assert not any(m == "nexus" or m.startswith(("nexus.", "tests")) for m in sys.modules), "imported too early"
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    while True:
        conn, _ = server.accept()
        with conn:
            _run_one(conn)


def _run_one(conn: socket.socket) -> None:
    message, fds, _, _ = socket.recv_fds(conn, 1 << 16, 2)
    if len(fds) != 2:
        return
    args = message.decode().split("\0")
    pid = os.fork()
    if pid == 0:  # the child: a fresh pytest run in its own process group; it never returns
        code = 1
        try:
            os.setpgid(0, 0)
            conn.close()
            os.dup2(fds[0], 1)
            os.dup2(fds[1], 2)
            import pytest

            # plugins preloaded above (pyreqwest's, hypothesis's) cannot have their asserts rewritten
            code = int(pytest.main(["-W", "ignore::pytest.PytestAssertRewriteWarning", *args]))
        except BaseException as exc:
            os.write(2, f"fork server child failed: {exc!r}\n".encode())
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([pidfd, conn.fileno()], [], [])
        if pidfd not in ready:  # the client went away (mutmut's timeout): stop the whole run
            _kill_tree(pid)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(pidfd)
    code = os.waitstatus_to_exitcode(status)
    try:
        conn.sendall(struct.pack("!i", code))
    except OSError:
        pass


def _kill_tree(pid: int) -> None:
    """Kill a test run and everything it started, also the servers it put in process groups of
    their own (a proxy under test must not outlive its run and hold a port and a database)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    doomed, stack = [], [pid]
    while stack:
        current = stack.pop()
        doomed.append(current)
        stack.extend(children.get(current, []))
    for victim in doomed:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run(path: str, args: list[str]) -> int:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    socket.send_fds(client, ["\0".join(args).encode()], array.array("i", [1, 2]).tolist())
    reply = b""
    while len(reply) < 4:
        chunk = client.recv(4 - len(reply))
        if not chunk:
            return 1
        reply += chunk
    (code,) = struct.unpack("!i", reply)
    # mutmut 2 counts only exit status 1 as a failed run: a mutant that breaks an import makes pytest
    # exit 2 (an error during collection), which must count as killed too
    return 0 if code == 0 else 1


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve(sys.argv[2])
    elif sys.argv[1] == "--run":
        sys.exit(run(sys.argv[2], sys.argv[4:] if sys.argv[3:4] == ["--"] else sys.argv[3:]))
    else:
        sys.exit(f"usage: {__doc__}")
