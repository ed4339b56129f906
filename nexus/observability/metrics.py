"""Prometheus metrics (`GET /metrics`), shared by every proxy worker, cheap on the request path.

Why the request path never calls prometheus_client: with several workers the library's multiprocess
mode keeps every value in a memory-mapped file, and each `inc()` or `observe()` takes a lock and writes
that file (0.9-2 us each here, ~10 us for the dozen updates one request makes: 6% of the proxy's own
Python per request). So a worker adds its requests into plain dicts and counters owned by its event
loop (`RequestMetrics`, a fraction of a microsecond each), and once a second (and right before it
answers a scrape) folds the sums into prometheus_client. Another worker's numbers are at most that
second old; totals are exact.

Multi-process: the command that starts the proxy points `PROMETHEUS_MULTIPROC_DIR` at a directory
(`prepare_multiprocess_dir`) before any worker exists, so every worker writes there and whichever
worker is scraped reads them all. Without it (tests, benchmarks, one in-process app) the values live
in this process.

Label values the client chooses (model, project) are capped per worker (`LabelCap`): the first
`METRICS_LABEL_LIMIT` distinct values are kept, later ones are counted as `other`, so a client
inventing names cannot grow the series without bound.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER = "other"
#: A label value longer than this is cut (a model name is ~30 characters).
MAX_LABEL_CHARS = 100

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
#: Routes reported as they are; any other `/v1/*` path is `/v1/other` (paths carry ids).
KNOWN_ROUTES = frozenset(
    {"/v1/messages", "/v1/messages/count_tokens", "/v1/models", "/v1/messages/batches", "/v1/complete", "/v1/files"}
)


def route_label(path: str) -> str:
    """A bounded route name for a request path."""
    if path in KNOWN_ROUTES:
        return path
    if path.startswith("/v1/"):
        for prefix in ("/v1/models/", "/v1/messages/batches/", "/v1/files/"):
            if path.startswith(prefix):
                return prefix + "{id}"
        return "/v1/other"
    return "unmatched"


class LabelCap:
    """The first `limit` distinct values pass; any later one is `other`. Only the event loop calls it."""

    __slots__ = ("limit", "seen")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        if not value:
            return "none"
        if value in self.seen:
            return value
        if len(self.seen) >= self.limit:
            return OTHER
        value = value[:MAX_LABEL_CHARS]
        self.seen.add(value)
        return value


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
        self.in_flight = Gauge(
            "nexus_requests_in_flight", "Proxied requests being served.", registry=r, multiprocess_mode="livesum"
        )

        # the bounded label values exist from the start, so a rate over them starts at 0, not at the first event
        for result in ("success", "failure"):
            self.oauth_refreshes.labels(result)
        for result in ("written", "spooled", "replayed", "last_resort", "quarantined", "dropped"):
            self.storage_rows.labels(result)
        for reason in RETRY_REASONS:
            self.retries.labels(reason)
        for kind in ERROR_KINDS:
            self.upstream_errors.labels(kind)
        for evidence in EVIDENCE:
            self.link_decisions.labels(evidence)

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


# --- the request path ------------------------------------------------------------------------------


class _Hist:
    """Bucket counts and a sum, added to a prometheus_client histogram child at flush."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1


def _add_histogram(child: Any, hist: _Hist) -> None:
    """Fold `hist` into a prometheus_client histogram child: its sum and per-bucket values (the
    library's own buckets are non-cumulative, as ours are; exposition makes them cumulative)."""
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if buckets is None or total is None or len(buckets) != len(hist.counts):  # another layout: one by one
        for i, n in enumerate(hist.counts):
            value = hist.bounds[i] if i < len(hist.bounds) else hist.bounds[-1] * 2
            for _ in range(n):
                child.observe(value)
        return
    for i, n in enumerate(hist.counts):
        if n:
            buckets[i].inc(n)
    total.inc(hist.total)


@dataclass(slots=True)
class Finished:
    """What one proxied request reports (filled by the proxy, consumed by `RequestMetrics.finished`)."""

    route: str
    status: int
    model: str | None
    project: str
    streaming: bool
    duration_s: float
    overhead_s: float | None = None
    ttft_s: float | None = None
    tokens: tuple[int, int, int, int] | None = None  # input, output, cache_read, cache_creation
    error_kind: str | None = None
    evidence: str | None = None


class RequestMetrics:
    """One per worker, touched only by its event loop: plain sums, folded into prometheus_client by
    `flush()` (once a second, before a scrape, at exit)."""

    def __init__(self, label_limit: int) -> None:
        self.models = LabelCap(label_limit)
        self.projects = LabelCap(label_limit)
        self._requests: dict[tuple[str, str, str, str], int] = {}
        self._duration: dict[tuple[str, str], _Hist] = {}
        self._ttft: dict[str, _Hist] = {}
        self._overhead: dict[str, _Hist] = {}
        self._tokens: dict[tuple[str, str, str], int] = {}
        self._counts: dict[tuple[str, str], int] = {}  # (family, label) for the one-label counters
        self.in_flight = 0
        self._storage_seen: dict[str, int] = {}

    def finished(self, f: Finished) -> None:
        model, project = self.models(f.model), self.projects(f.project)
        key = (f.route, str(f.status), model, project)
        self._requests[key] = self._requests.get(key, 0) + 1
        dkey = (f.route, "true" if f.streaming else "false")
        hist = self._duration.get(dkey)
        if hist is None:
            hist = self._duration[dkey] = _Hist(LATENCY_BUCKETS)
        hist.observe(f.duration_s)
        if f.overhead_s is not None:
            hist = self._overhead.get(f.route)
            if hist is None:
                hist = self._overhead[f.route] = _Hist(OVERHEAD_BUCKETS)
            hist.observe(f.overhead_s)
        if f.ttft_s is not None:
            hist = self._ttft.get(model)
            if hist is None:
                hist = self._ttft[model] = _Hist(TTFT_BUCKETS)
            hist.observe(f.ttft_s)
        if f.tokens is not None:
            for kind, n in zip(TOKEN_TYPES, f.tokens, strict=True):
                if n:
                    tkey = (kind, model, project)
                    self._tokens[tkey] = self._tokens.get(tkey, 0) + n
        if f.error_kind is not None:
            self.count("upstream_errors", f.error_kind)
        if f.evidence is not None:
            self.count("link_decisions", f.evidence)

    def count(self, family: str, label: str) -> None:
        """One event of a one-label counter family (`retries`, `upstream_errors`, `link_decisions`)."""
        key = (family, label)
        self._counts[key] = self._counts.get(key, 0) + 1

    def flush(self, writer: Any = None, ready: bool | None = None) -> None:
        """Fold the sums into prometheus_client and sample the gauges of `writer` (a StorageWriter)."""
        fam = families()
        requests, self._requests = self._requests, {}
        for labels, n in requests.items():
            fam.requests.labels(*labels).inc(n)
        for source, family in ((self._duration, fam.duration), (self._overhead, fam.overhead), (self._ttft, fam.ttft)):
            items = list(source.items())
            source.clear()
            for label, hist in items:
                child = family.labels(*label) if isinstance(label, tuple) else family.labels(label)
                _add_histogram(child, hist)
        tokens, self._tokens = self._tokens, {}
        for token_labels, n in tokens.items():
            fam.tokens.labels(*token_labels).inc(n)
        counts, self._counts = self._counts, {}
        for (family_name, label), n in counts.items():
            getattr(fam, family_name).labels(label).inc(n)
        fam.in_flight.set(self.in_flight)
        if ready is not None:
            fam.ready.set(1 if ready else 0)
        if writer is not None:
            self._sample_storage(fam, writer)

    def _sample_storage(self, fam: Families, writer: Any) -> None:
        m = writer.metrics
        fam.queue_depth.set(writer.queue_depth())
        fam.spool_bytes.set(writer.spool.size())
        fam.quarantine_rows.set(m.quarantine_rows + m.quarantine_file_rows)
        fam.database_up.set(1 if m.database_ok else 0)
        for result, now in storage_counts(m):
            delta = now - self._storage_seen.get(result, 0)
            if delta > 0:
                fam.storage_rows.labels(result).inc(delta)
            self._storage_seen[result] = now


def storage_counts(m: Any) -> Iterable[tuple[str, int]]:
    """The writer's running totals, by the `result` label they are reported under."""
    yield "written", m.rows_written
    yield "spooled", m.spooled_rows
    yield "replayed", m.replayed_rows
    yield "last_resort", m.rows_last_resort
    yield "quarantined", m.rows_quarantined
    yield "dropped", m.dropped_rows


def upstream_error_kind(status: int | None, handled: str | None, error: str | None, stream_error: bool) -> str | None:
    """The kind of upstream failure a finished request had, or None when it had none.

    `handled` is the record's outcome when the proxy answered itself (`proxy_error`, `timeout`),
    `error` the relay's (`stream_idle_timeout`, `upstream_disconnected: ...`), `stream_error` whether
    the stream carried an `error` event."""
    if handled in ("proxy_error", "timeout"):  # the proxy answered itself: only upstream failures count
        return {502: "connection", 504: "timeout"}.get(status or 0)
    if error:
        if error.startswith("stream_idle_timeout"):
            return "stream_idle_timeout"
        if error.startswith("upstream_disconnected"):
            return "disconnected"
        return None  # the client left, or the shutdown ended it: not the upstream's doing
    if stream_error:
        return "stream_error_event"
    if status is None or status < 400:
        return None
    if status == 429:
        return "rate_limited"
    if status == 529:
        return "overloaded"
    if status >= 500:
        return "server_error"
    return "client_error"
