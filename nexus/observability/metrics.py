"""Prometheus metrics (`GET /metrics`): the families, where they are kept, and the exposition.

Multi-process: the command that starts the proxy points `PROMETHEUS_MULTIPROC_DIR` at a directory
(`prepare_multiprocess_dir`) before any worker exists, so every worker writes its values there and
whichever worker is scraped reads them all. Without it (tests, benchmarks, one in-process app) the
values live in this process. The request path does not call prometheus_client itself: it adds into
plain sums (`nexus.observability.recorder`) that are folded in here once a second.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0)

TOKEN_TYPES = ("input", "output", "cache_read", "cache_creation")
RETRY_REASONS = ("overloaded", "server_error", "connect_timeout", "connection")
ERROR_KINDS = (
    "connection",
    "timeout",
    "stream_idle_timeout",
    "disconnected",
    "stream_error_event",
    "rate_limited",
    "overloaded",
    "server_error",
    "client_error",
)
EVIDENCE = ("retry", "subtask", "compaction", "prefix", "new", "none")
#: Integrations (nexus/integrations) and what became of each finished request handed to them.
INTEGRATION_SINKS = ("slack", "telemetry", "samples")
INTEGRATION_RESULTS = ("sent", "dropped", "failed", "skipped")


# --- process setup ---------------------------------------------------------------------------------


def prepare_multiprocess_dir(configured: Path | None) -> tuple[Path, bool]:
    """Before the workers start: the shared directory, emptied of an earlier run's files (whose counters
    would otherwise be added to ours and whose gauges would linger), and exported to the workers.
    Returns the directory and whether it is ours to remove at exit (a private temporary one)."""
    if configured is not None:
        configured.mkdir(parents=True, exist_ok=True)
        for stale in configured.glob("*.db"):
            stale.unlink(missing_ok=True)
        path, owned = configured, False
    else:
        _remove_orphans(Path(tempfile.gettempdir()))
        path, owned = Path(tempfile.mkdtemp(prefix=f"nexus-metrics-{os.getpid()}-")), True
    os.environ[MULTIPROC_ENV] = str(path)
    _use_multiprocess_values()
    return path, owned


def _remove_orphans(tmp: Path) -> None:
    """Private directories left by a proxy that was killed (`kill -9`): their owner's PID is gone."""
    for old in tmp.glob("nexus-metrics-*-*"):
        try:
            pid = int(old.name.split("-")[2])
        except (IndexError, ValueError):
            continue
        if not _alive(pid):
            shutil.rmtree(old, ignore_errors=True)


def remove_multiprocess_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _use_multiprocess_values() -> None:
    """prometheus_client picks its value class when first imported; if something imported it before
    the directory was set, pick again (metrics made from now on use the shared files)."""
    from prometheus_client import values

    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.get_value_class()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def multiprocess_dir() -> str | None:
    path = os.environ.get(MULTIPROC_ENV)
    return path if path and os.path.isdir(path) else None


# --- the families ----------------------------------------------------------------------------------


#: The `result` label values of nexus_storage_rows_total (docs/operations.md).
STORAGE_RESULTS = (
    "written",
    "spooled",
    "encoded_early",
    "overflowed",
    "replayed",
    "last_resort",
    "quarantined",
    "dropped",
)


class Families:
    """Every metric Nexus exports; created once per process (`families()`)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = multiprocess_dir() is not None
        if self.multiprocess:
            _use_multiprocess_values()
        # In multiprocess mode values are collected from the files, not from a registry.
        self.registry = None if self.multiprocess else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "nexus_requests",
            "Requests through the proxy (including those it refused), by route, status, model and project.",
            ["route", "status", "model", "project"],
            registry=r,
        )
        self.duration = Histogram(
            "nexus_request_duration_seconds",
            "Time from a request's arrival to the end of its response.",
            ["route", "streaming"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "nexus_time_to_first_token_seconds",
            "Streams: time from a request's arrival to the first event relayed to the client.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "nexus_proxy_overhead_seconds",
            "The proxy's own time per request: before the request goes upstream (client upload excluded) "
            "and after the response ended.",
            ["route"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "nexus_tokens", "Tokens in /v1/messages responses, by type.", ["type", "model", "project"], registry=r
        )
        self.retries = Counter(
            "nexus_upstream_retries", "Upstream attempts retried, by what went wrong.", ["reason"], registry=r
        )
        self.upstream_errors = Counter(
            "nexus_upstream_errors", "Requests that ended in an upstream error, by kind.", ["kind"], registry=r
        )
        self.link_decisions = Counter(
            "nexus_link_decisions", "Conversation linking decisions, by the evidence used.", ["evidence"], registry=r
        )
        self.oauth_refreshes = Counter(
            "nexus_oauth_refreshes", "OAuth token refreshes by this gateway, by result.", ["result"], registry=r
        )
        self.storage_rows = Counter(
            "nexus_storage_rows",
            "Rows handled by the storage writer: written, spooled (database away), replayed from the spool, "
            "stored in last-resort form, quarantined, dropped.",
            ["result"],
            registry=r,
        )
        self.batch_duration = Histogram(
            "nexus_storage_batch_duration_seconds",
            "Time to write one batch to PostgreSQL.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "nexus_storage_queue_depth",
            "Rows waiting in memory to be written (all workers).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.spool_bytes = Gauge(
            "nexus_storage_spool_bytes",
            "Bytes waiting in the spool for the database.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.quarantine_rows = Gauge(
            "nexus_storage_quarantine_rows",
            "Rows in the quarantine (`nexus storage quarantine`).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.database_up = Gauge(
            "nexus_database_up",
            "1 when every worker's storage writer reaches the database.",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.ready = Gauge(
            "nexus_ready", "1 when every worker is ready (GET /health/ready).", registry=r, multiprocess_mode="livemin"
        )
        self.integration_events = Counter(
            "nexus_integration_events",
            "Finished requests handed to an integration, by what became of them: sent (delivered or written), "
            "dropped (its queue was full, or the rate limit left no room), failed (delivery failed; given up "
            "after a bounded retry), skipped (filtered out, or over a size or count bound).",
            ["sink", "result"],
            registry=r,
        )
        self.in_flight = Gauge(
            "nexus_requests_in_flight", "Proxied requests being served.", registry=r, multiprocess_mode="livesum"
        )

        # the bounded label values exist from the start, so a rate over them starts at 0, not at the first event
        for result in ("success", "failure"):
            self.oauth_refreshes.labels(result)
        for result in STORAGE_RESULTS:
            self.storage_rows.labels(result)
        for reason in RETRY_REASONS:
            self.retries.labels(reason)
        for kind in ERROR_KINDS:
            self.upstream_errors.labels(kind)
        for evidence in EVIDENCE:
            self.link_decisions.labels(evidence)
        for sink in INTEGRATION_SINKS:
            for result in INTEGRATION_RESULTS:
                self.integration_events.labels(sink, result)

    def render(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        if not self.multiprocess:
            assert self.registry is not None
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        path = multiprocess_dir()
        if path is None:
            return b""
        _forget_dead_workers(path)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path)
        return generate_latest(registry)


def _forget_dead_workers(path: str) -> None:
    """A worker that died without its shutdown (killed, crashed) would keep its gauges: drop them."""
    from prometheus_client import multiprocess

    pids = set()
    for name in os.listdir(path):
        if name.startswith("gauge_live") and name.endswith(".db"):
            with contextlib.suppress(ValueError):
                pids.add(int(name.rsplit("_", 1)[1][:-3]))
    for pid in pids:
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, path)


_families: Families | None = None
_families_lock = threading.Lock()


def families() -> Families:
    global _families
    if _families is None:
        with _families_lock:
            if _families is None:
                _families = Families()
    return _families


def worker_exit() -> None:
    """A worker's clean exit: its live gauges stop counting at once."""
    path = multiprocess_dir()
    if path is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid(), path)


# --- what other threads report directly (rare events) ----------------------------------------------


def oauth_refresh(result: str) -> None:
    """One OAuth refresh, `success` or `failure` (a thread or the loop: the library locks)."""
    families().oauth_refreshes.labels(result).inc()


def storage_batch(seconds: float) -> None:
    """One batch written (the writer's thread)."""
    families().batch_duration.observe(seconds)


def integration_events(sink: str, result: str, n: int) -> None:
    """`n` finished requests an integration dealt with (its background task: a few calls per batch)."""
    if n:
        families().integration_events.labels(sink, result).inc(n)
