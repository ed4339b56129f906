"""The request path's side of the metrics: plain sums, folded into prometheus_client once a second.

Why the request path never calls prometheus_client: with several workers the library's multiprocess
mode keeps every value in a memory-mapped file, and each `inc()` or `observe()` takes a lock and writes
that file (0.9-2 us each here, ~10 us for the dozen updates one request makes: 6% of the proxy's own
Python per request). So a worker adds its requests into dicts and counters owned by its event loop
(`RequestMetrics`, a fraction of a microsecond each), and once a second (and right before it answers a
scrape, and at exit) folds the sums in. Another worker's numbers are at most that second old; totals
are exact.

Label values the client chooses (model, project) are capped per worker (`LabelCap`): the first
`METRICS_LABEL_LIMIT` distinct values are kept, later ones are counted as `other`, so a client
inventing names cannot grow the series without bound. Routes are bounded by `route_label`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from nexus.observability.metrics import (
    LATENCY_BUCKETS,
    OVERHEAD_BUCKETS,
    TOKEN_TYPES,
    TTFT_BUCKETS,
    Families,
    families,
)

OTHER = "other"
#: A label value longer than this is cut (a model name is ~30 characters).
MAX_LABEL_CHARS = 100
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
    """Fold `hist` into a prometheus_client histogram child, then zero it: its sum and per-bucket
    values (the library's own buckets are non-cumulative, as ours are; exposition makes them
    cumulative)."""
    if not hist.count:
        return
    try:
        _fold(child, hist)
    finally:
        hist.counts[:] = [0] * len(hist.counts)
        hist.total = 0.0
        hist.count = 0


def _fold(child: Any, hist: _Hist) -> None:
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


class RequestMetrics:
    """One per worker, touched only by its event loop: plain sums, folded into prometheus_client by
    `flush()` (once a second, before a scrape, at exit)."""

    def __init__(self, label_limit: int) -> None:
        self.models = LabelCap(label_limit)
        self.projects = LabelCap(label_limit)
        self._requests: dict[tuple[str, int, str, str], int] = {}
        # histograms and token sums are kept between flushes (zeroed in place): no allocation per request
        self._duration: dict[tuple[str, bool], _Hist] = {}
        self._ttft: dict[str, _Hist] = {}
        self._overhead: dict[str, _Hist] = {}
        self._tokens: dict[tuple[str, str], list[int]] = {}  # (model, project) -> TOKEN_TYPES order
        self._counts: dict[tuple[str, str], int] = {}  # (family, label) for the one-label counters
        self.in_flight = 0
        self._storage_seen: dict[str, int] = {}

    def finished(
        self,
        route: str,
        status: int,
        model: str | None,
        project: str,
        streaming: bool,
        duration_s: float,
        overhead_s: float | None = None,
        ttft_s: float | None = None,
        tokens: tuple[int, int, int, int] | None = None,
        error_kind: str | None = None,
    ) -> None:
        """One finished request: `tokens` are input, output, cache read, cache creation."""
        capped_model, capped_project = self.models(model), self.projects(project)
        key = (route, status, capped_model, capped_project)
        self._requests[key] = self._requests.get(key, 0) + 1
        hist = self._duration.get((route, streaming))
        if hist is None:
            hist = self._duration[(route, streaming)] = _Hist(LATENCY_BUCKETS)
        hist.observe(duration_s)
        if overhead_s is not None:
            hist = self._overhead.get(route)
            if hist is None:
                hist = self._overhead[route] = _Hist(OVERHEAD_BUCKETS)
            hist.observe(overhead_s)
        if ttft_s is not None:
            hist = self._ttft.get(capped_model)
            if hist is None:
                hist = self._ttft[capped_model] = _Hist(TTFT_BUCKETS)
            hist.observe(ttft_s)
        if tokens is not None:
            sums = self._tokens.get((capped_model, capped_project))
            if sums is None:
                sums = self._tokens[(capped_model, capped_project)] = [0, 0, 0, 0]
            sums[0] += tokens[0]
            sums[1] += tokens[1]
            sums[2] += tokens[2]
            sums[3] += tokens[3]
        if error_kind is not None:
            self.count("upstream_errors", error_kind)

    def count(self, family: str, label: str) -> None:
        """One event of a one-label counter family (`retries`, `upstream_errors`, `link_decisions`)."""
        key = (family, label)
        self._counts[key] = self._counts.get(key, 0) + 1

    def flush(self, writer: Any = None, ready: bool | None = None) -> None:
        """Fold the sums into prometheus_client and sample the gauges of `writer` (a StorageWriter)."""
        fam = families()
        requests, self._requests = self._requests, {}
        for (route, status, model, project), n in requests.items():
            fam.requests.labels(route, str(status), model, project).inc(n)
        for (route, streaming), hist in self._duration.items():
            _add_histogram(fam.duration.labels(route, "true" if streaming else "false"), hist)
        for route, hist in self._overhead.items():
            _add_histogram(fam.overhead.labels(route), hist)
        for model, hist in self._ttft.items():
            _add_histogram(fam.ttft.labels(model), hist)
        for (model, project), sums in self._tokens.items():
            for kind, n in zip(TOKEN_TYPES, sums, strict=True):
                if n:
                    fam.tokens.labels(kind, model, project).inc(n)
            sums[:] = [0, 0, 0, 0]
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
    yield "encoded_early", m.overflow_encoded_rows  # encoded ahead of the writer: the queue was over its byte bound
    yield "overflowed", m.overflow_rows  # spooled because even the encoded payloads were over it
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
