"""Prometheus metrics: what is counted, and how ``GET /metrics`` serves it.

Under ``eventrouter serve`` every gunicorn worker counts for itself and
prometheus-client's multiprocess mode adds them up at scrape time: the values live in
files under ``PROMETHEUS_MULTIPROC_DIR``, which ``serve`` creates (or empties, if the
operator set it) before the workers fork. prometheus-client picks the mode when it is
first imported, so nothing imports it before :func:`prepare_multiprocess` has run: the
metrics are built on first use (:func:`get`), never at import time.

A process that is not under ``serve`` (tests, ``uvicorn eventrouter.asgi:app``, the
worker) counts in memory and serves its own values.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from eventrouter.files import private_dir

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds: request latency from sub-millisecond to the dispatch timeout.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
BATCH_BUCKETS = (1, 5, 10, 50, 100, 500, 1000, 2500, 5000, 10_000, 50_000)
#: Seconds: how long the per-request counts of a server worker may wait in its memory
#: before they reach the multiprocess files (docs/metrics.md, "How current a scrape is").
FLUSH_INTERVAL = 0.5

_lock = threading.Lock()
_metrics: Metrics | None = None


def prepare_multiprocess() -> Path:
    """Before gunicorn forks: a fresh directory for the workers' metric files."""
    configured = os.environ.get(MULTIPROC_ENV)
    if configured:
        # 0700 (mkdtemp's mode below): the workers' metric files take the umask.
        directory = private_dir(Path(configured))
        for stale in directory.glob("*.db"):  # a previous run's counts are not ours
            stale.unlink()
    else:
        directory = Path(tempfile.mkdtemp(prefix="eventrouter-metrics-"))
        os.environ[MULTIPROC_ENV] = str(directory)
    return directory


def remove_multiprocess_dir(directory: Path, owner: int) -> None:
    """At ``serve``'s exit, in the process that made the directory (``owner``) only:
    gunicorn's forked workers unwind through the same ``finally`` when they exit (a
    worker recycled after ``max_requests`` removed its siblings' files)."""
    if os.getpid() == owner and not os.environ.get("EVENTROUTER_KEEP_METRICS_DIR"):
        shutil.rmtree(directory, ignore_errors=True)


def mark_process_dead(pid: int) -> None:
    """gunicorn's ``child_exit`` hook: a dead worker's live gauges stop counting."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


class _Tallies:
    """The per-request observations of one event-loop thread, held in process memory
    until :meth:`Metrics.flush` adds them to the metrics in one go.

    In multiprocess mode every ``inc``/``observe`` takes a lock and writes a memory-mapped
    file (a histogram: two values), about 3.6 µs per request for the four the request
    path makes; adding up here costs a dict lookup and an addition.
    """

    def __init__(self) -> None:
        #: (route, method, status) → [sum of seconds, count per bucket (+Inf last)]
        self.durations: dict[tuple[str, str, str], list[Any]] = {}
        self.accepted: Tally[tuple[str, str]] = Tally()
        self.rejected: Tally[str] = Tally()
        self.received = 0
        self.scheduled = False  #: a flush is due on the event loop

    def __bool__(self) -> bool:
        return bool(self.received or self.durations)


class Metrics:
    """Every metric eventrouter records (names and labels are in docs/metrics.md).

    ``buffered`` (the default under ``eventrouter serve``, where the values live in
    multiprocess files): the request path's counts (:meth:`request_done`,
    :meth:`accepted`, :meth:`rejected`) add up in memory and reach the metrics at most
    :data:`FLUSH_INTERVAL` seconds later, on the event loop, on a scrape this process
    answers, and when the app shuts down (:meth:`flush`). Calls made outside an event
    loop, and every other metric, are written at once.
    """

    def __init__(self, *, buffered: bool | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple, Any] = {}
        if buffered is None:
            buffered = bool(os.environ.get(MULTIPROC_ENV))
        self._tallies = _Tallies() if buffered else None
        self._loop_thread: int | None = None  #: the thread whose loop the tallies are on
        #: the duration histogram's bucket bounds, +Inf last (prometheus-client's order)
        self._bounds = (*LATENCY_BUCKETS, float("inf"))
        r = self.registry
        self.events_received = Counter(
            "eventrouter_events_received",
            "Events that arrived at an ingestion endpoint, accepted or not.",
            registry=r,
        )
        self.events_accepted = Counter(
            "eventrouter_events_accepted",
            "Events accepted (durable before the 200), by type and source.",
            ["type", "source"],
            registry=r,
        )
        self.events_rejected = Counter(
            "eventrouter_events_rejected",
            "Events rejected with a 4xx or 503, by the error code; a request rejected as "
            "a whole (bad body, bad writeKey) counts once.",
            ["reason"],
            registry=r,
        )
        self.request_duration = Histogram(
            "eventrouter_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template, method and status class.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.sink_written = Counter(
            "eventrouter_sink_events_written",
            "Events a sink (or the broker publisher) took, per sink.",
            ["sink"],
            registry=r,
        )
        self.sink_failed = Counter(
            "eventrouter_sink_batches_failed",
            "Batches a sink failed to take (error or timeout), per sink.",
            ["sink"],
            registry=r,
        )
        self.sink_batch_events = Histogram(
            "eventrouter_sink_batch_events",
            "Events per batch handed to a sink.",
            ["sink"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.sink_write_duration = Histogram(
            "eventrouter_sink_write_duration_seconds",
            "Time for a sink to take one batch (for the broker: publish and confirm).",
            ["sink"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

        self.sink_retries = Counter(
            "eventrouter_sink_retries",
            "Retries of a failed batch write (the edge's outlet or `eventrouter worker`), "
            "per sink.",
            ["sink"],
            registry=r,
        )
        self.sink_buffer_events = Gauge(
            "eventrouter_sink_buffer_events",
            "Events a sink holds accepted but not yet written (its buffer), per sink "
            "(all live processes).",
            ["sink"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.sink_buffer_bytes = Gauge(
            "eventrouter_sink_buffer_bytes",
            "Bytes (MessagePack) of those events, when buffer.max_bytes or batch.max_bytes "
            "is set, per sink (all live processes).",
            ["sink"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.sink_buffer_refused = Counter(
            "eventrouter_sink_buffer_refused_events",
            "Events answered 503 because an acknowledging sink's buffer was full, per sink.",
            ["sink"],
            registry=r,
        )
        self.sink_buffer_skipped = Counter(
            "eventrouter_sink_buffer_skipped_events",
            "Events not given to an observer (acknowledgements = false) because its "
            "buffer was full, per sink.",
            ["sink"],
            registry=r,
        )
        self.sink_dead_lettered = Counter(
            "eventrouter_sink_events_dead_lettered",
            "Events moved to a sink's dead-letter queue by `eventrouter worker`.",
            ["sink"],
            registry=r,
        )
        self.dedup_dropped = Counter(
            "eventrouter_dedup_dropped",
            "Events dropped as already seen by the Redis dedup plugin, per sink.",
            ["sink"],
            registry=r,
        )
        self.suppressed_dropped = Counter(
            "eventrouter_suppressed_dropped",
            "Events of suppressed user or anonymous ids dropped before any sink, per sink "
            "(edge: on the server, before the broker).",
            ["sink"],
            registry=r,
        )
        self.rate_limited = Counter(
            "eventrouter_rate_limited_events",
            "Events refused with 429 by their source's rate limit, per source.",
            ["source"],
            registry=r,
        )
        self.admin_auth_failures = Counter(
            "eventrouter_admin_auth_failures",
            "Attempts at the admin token (sign-in form, bearer tokens) that failed "
            "(refused) or were answered 429 by the sign-in throttle (throttled).",
            ["outcome"],
            registry=r,
        )

        self.spool_bytes = Gauge(
            "eventrouter_spool_bytes",
            "Bytes in the edge's local spool, waiting for the broker (all live processes).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.spool_events = Gauge(
            "eventrouter_spool_events",
            "Events in the edge's local spool, waiting for the broker (all live processes).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.spool_spooled = Counter(
            "eventrouter_spool_spooled_events",
            "Events the edge wrote to its local spool because the broker did not take them.",
            registry=r,
        )
        self.spool_replayed = Counter(
            "eventrouter_spool_replayed_events",
            "Spooled events published to the broker once it answered again.",
            registry=r,
        )
        self.spool_refused = Counter(
            "eventrouter_spool_refused_events",
            "Events answered 503 because the broker was down and the spool full.",
            registry=r,
        )

    def accepted(self, commands: Sequence[Any]) -> None:
        tallies = self._buffer()
        if tallies is not None:
            for command in commands:
                tallies.accepted[command.kind, command.source] += 1
            tallies.received += len(commands)
            return
        if len(commands) == 1:  # the single-event endpoints: skip the tally
            command = commands[0]
            self.child(self.events_accepted, command.kind, command.source).inc()
            self.events_received.inc()
            return
        tally = Tally((command.kind, command.source) for command in commands)
        for (kind, source), n in tally.items():
            self.child(self.events_accepted, kind, source).inc(n)
        self.events_received.inc(len(commands))

    def request_done(self, route: str, method: str, status: str, seconds: float) -> None:
        tallies = self._buffer()
        if tallies is None:
            self.child(self.request_duration, route, method, status).observe(seconds)
            return
        key = (route, method, status)
        held = tallies.durations.get(key)
        if held is None:
            held = tallies.durations[key] = [0.0, [0] * len(self._bounds)]
        held[0] += seconds
        held[1][bisect_left(self._bounds, seconds)] += 1  # first bound >= seconds

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: the lookup validates and locks on
        every call, and the request path calls this a few times per request."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def rejected(self, reason: str, n: int = 1) -> None:
        tallies = self._buffer()
        if tallies is not None:
            tallies.rejected[reason] += n
            tallies.received += n
            return
        self.events_rejected.labels(reason).inc(n)
        self.events_received.inc(n)

    def _buffer(self) -> _Tallies | None:
        """The tallies to add to, with a flush scheduled on this thread's event loop; None
        (write at once) when unbuffered or called from another thread than the loop's."""
        tallies = self._tallies
        if tallies is None:
            return None
        if tallies.scheduled:
            return tallies if threading.get_ident() == self._loop_thread else None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        if self._loop_thread is None:
            self._loop_thread = threading.get_ident()
        elif self._loop_thread != threading.get_ident():
            return None
        tallies.scheduled = True
        loop.call_later(FLUSH_INTERVAL, self.flush)
        return tallies

    def flush(self) -> None:
        """Add the held request counts to the metrics (their multiprocess files). Runs on
        the event loop: on its timer, before a scrape's exposition, at shutdown."""
        tallies = self._tallies
        if tallies is None:
            return
        if self._loop_thread is not None and threading.get_ident() != self._loop_thread:
            return  # another thread's scrape (a test's, a worker's): the loop flushes soon
        self._tallies = _Tallies()  # requests from here on start a new tally
        for (route, method, status), (total, counts) in tallies.durations.items():
            histogram = self.child(self.request_duration, route, method, status)
            # prometheus-client has no public "observe n values": add to the sum and to
            # each bucket, as n observe() calls would (its cumulative counts come at
            # collection time, from these per-bucket values).
            histogram._sum.inc(total)
            for bucket, n in zip(histogram._buckets, counts, strict=True):
                if n:
                    bucket.inc(n)
        for (kind, source), n in tallies.accepted.items():
            self.child(self.events_accepted, kind, source).inc(n)
        for reason, n in tallies.rejected.items():
            self.child(self.events_rejected, reason).inc(n)
        if tallies.received:
            self.events_received.inc(tallies.received)


def serve_worker_metrics(port: int, host: str = "127.0.0.1") -> None:
    """``eventrouter worker --metrics-port``: this process's metrics over HTTP (a worker
    serves no other HTTP), on a thread of its own."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=host, registry=get().registry)


def get() -> Metrics:
    """This process's metrics, built on first use."""
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                _metrics = Metrics()
    return _metrics


#: Gauges read at scrape time: ``kind`` → (name, help).
QUEUE_GAUGES = {
    "queue": ("eventrouter_queue_depth", "Messages ready in a sink's queue (broker)."),
    "dead": ("eventrouter_dead_letters", "Messages in a sink's dead-letter queue (broker)."),
}


class _ScrapeGauges:
    """A collector for values read at scrape time (queue depths), per sink."""

    def __init__(self, gauges: dict[str, dict[str, float]]) -> None:
        self.gauges = gauges

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        for kind, (name, documentation) in QUEUE_GAUGES.items():
            family = GaugeMetricFamily(name, documentation, labels=["sink"])
            for sink, value in sorted(self.gauges.get(kind, {}).items()):
                family.add_metric([sink], value)
            yield family


def exposition(gauges: dict[str, dict[str, float]] | None = None) -> tuple[bytes, str]:
    """The body and content type of ``GET /metrics``: every worker's counts (multiprocess)
    or this process's, plus ``gauges`` read at scrape time (``{"queue": {sink: n}}``)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    get().flush()  # this process's held request counts are current in what it serves
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        body = generate_latest(get().registry)
    if gauges:
        extra = CollectorRegistry()
        extra.register(_ScrapeGauges(gauges))
        body += generate_latest(extra)
    return body, CONTENT_TYPE_LATEST
