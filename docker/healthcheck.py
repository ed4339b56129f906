"""Container health check: exit 0 when the service on this container's loopback is ready.

`nexus-healthcheck` checks the proxy (PORT), `nexus-healthcheck dashboard` the dashboard
(DASHBOARD_PORT). It asks `/health/ready` first and falls back to `/health` when that route is not
there (404), so one image works with releases before and after the readiness probe was added.
Standard library only: it runs every few seconds and must not pay for importing Nexus.
"""

import os
import sys
import urllib.error
import urllib.request


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (a fixed loopback http URL)
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def main() -> int:
    service = sys.argv[1] if len(sys.argv) > 1 else "proxy"
    port = os.environ.get("DASHBOARD_PORT", "3001") if service == "dashboard" else os.environ.get("PORT", "3000")
    base = f"http://127.0.0.1:{port}"
    try:
        code = status(base + "/health/ready")
        if code == 404:
            code = status(base + "/health")
    except OSError as exc:
        print(f"{service} on port {port}: {exc}", file=sys.stderr)
        return 1
    print(f"{service} on port {port}: HTTP {code}")
    return 0 if code == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
