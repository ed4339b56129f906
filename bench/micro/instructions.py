"""Instructions per proxied request of Nexus's own Python (`bench.micro.request_path`), counted by
callgrind: a figure that stays put on a busy machine, where time per request swings by 2x.

Each kind (JSON, stream; storage and linking on or off) runs twice under `valgrind --tool=callgrind`
in a fresh process, with `--requests` and then 3x that many requests after the same warm-up; the
difference divided by the extra requests is the cost of one request, start-up and warm-up taken out.
PYTHONHASHSEED is fixed so both runs hash alike. Slow (~50x under valgrind): a few minutes.

    python -m bench.micro.instructions [--requests 60] [--kinds json,stream] [--no-storage]

Needs `valgrind` (Debian: `apt-get install valgrind`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WARMUP = 100
_COLLECTED = re.compile(rb"Collected : (\d+)")


def _run_requests(kind: str, n: int, storage: bool) -> None:
    """The child: warm up, then `n` requests of `kind` (what callgrind counts, with start-up)."""
    import uvloop

    from bench.micro import request_path as rp

    app = rp.make_app(storage=storage)
    bodies = rp.BODIES_STREAM if kind == "stream" else rp.BODIES_JSON

    async def go() -> None:
        await rp._requests(app, bodies, WARMUP)
        await rp._requests(app, bodies, n)

    uvloop.run(go())


def count(kind: str, n: int, storage: bool) -> int:
    """Instructions of one child process running `n` requests of `kind` (after the warm-up)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="nexus-callgrind-") as tmp:
        cmd = [valgrind, "--tool=callgrind", f"--callgrind-out-file={Path(tmp) / 'out'}"]
        cmd += [sys.executable, "-m", "bench.micro.instructions", "--child", kind, str(n)]
        cmd += [] if storage else ["--no-storage"]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(cmd, capture_output=True, env=env, timeout=1800, check=True)
    found = _COLLECTED.search(done.stderr)
    if found is None:
        raise RuntimeError(f"callgrind printed no count: {done.stderr[-500:]!r}")
    return int(found.group(1))


def per_request(kind: str, n: int, storage: bool) -> float:
    """Instructions per request: (count with 3n requests - count with n) / 2n."""
    return (count(kind, 3 * n, storage) - count(kind, n, storage)) / (2 * n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--kinds", default="json,stream")
    ap.add_argument("--no-storage", action="store_true", help="storage (and so linking) off")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _run_requests(args.child[0], int(args.child[1]), not args.no_storage)
        return
    for kind in args.kinds.split(","):
        instructions = per_request(kind, args.requests, not args.no_storage)
        print(f"{kind:6} {instructions / 1e3:9.1f} k instructions per request (Nexus's Python, no network)")


if __name__ == "__main__":
    main()
