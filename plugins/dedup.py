"""Dedup: a ``messageId`` its source already had stored within ``[dedup] window`` is
dropped (Redis).

SDKs retry a request whose answer they did not see, with the same ``messageId``s; the
broker delivers a message again when a worker died before acknowledging it. Either way
the event must be stored once. Where the storage sinks run (``eventrouter worker``, or
the edge in embedded mode) this plugin:

1. before the sink (``eventrouter_process_batch``): looks the batch's ids up in Redis
   with one ``MGET`` and drops those seen, and repeats within the batch;
2. after the sink committed (``eventrouter_batch_committed``): marks the ids seen, with
   one pipelined ``SET ... EX window``.

An id is marked only once its batch is committed, so an event whose write failed is
stored when it comes again: dedup never loses an event. The cost is a short race (two
copies of an id in flight at once both pass step 1); the stores' own idempotency
(``message_id`` keys) covers it. Keys are per sink, because each sink consumes its own
queue and commits on its own, and per source, because a messageId is unique per source
only: one source must not suppress another's events by reusing their ids
(:meth:`RedisDedup.key`).

On an edge that publishes to ``[queue]`` the workers mark ids; the edge only drops an
id that *every* sink has already marked (an SDK retry of an event stored everywhere),
which spares the broker and the workers, and marks nothing itself.

If Redis is unreachable, batches pass through undeduplicated (logged at most every
``WARN_INTERVAL`` seconds, and shown in ``/health``): an outage of the dedup store must
not stop ingestion.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import redis

from eventrouter import metrics
from eventrouter.bus.hookspecs import hookimpl
from eventrouter.config import DedupConfig
from eventrouter.events.commands import Command
from eventrouter.health import ComponentHealth
from eventrouter.redact import redact_url

log = logging.getLogger("eventrouter.plugins.dedup")

#: Plugin name of the per-process instance registered at start-up.
PLUGIN_NAME = "dedup:redis"
#: Seconds between repeated warnings while Redis is unreachable.
WARN_INTERVAL = 10.0
#: Seconds to skip Redis after a failure, so an outage costs requests nothing.
RETRY_INTERVAL = 1.0


@hookimpl
def eventrouter_startup(bus: Any) -> None:
    """Register a :class:`RedisDedup` on this bus when ``[dedup]`` is configured."""
    if bus.config.dedup is None:
        return
    downstream = list(bus.config.sinks) if bus.queued else None
    bus.add_plugin(RedisDedup(bus.config.dedup, downstream), PLUGIN_NAME)


class RedisDedup:
    """Per-process dedup state: one Redis client (thread-safe connection pool)."""

    #: The first pipeline stage (docs/plugins.md, "Pipeline stages and their order"):
    #: a repeat is dropped before any other stage spends work on it.
    stage_order = 100

    def __init__(self, config: DedupConfig, downstream: list[str] | None = None) -> None:
        """:param downstream: on a queued edge, the sinks the workers feed (an id is
        dropped here only when all of them marked it); ``None`` where sinks run."""
        self.config = config
        self.downstream = downstream
        self.window = max(1, int(config.window))
        self.client = redis.Redis.from_url(
            config.url,
            socket_timeout=config.timeout,
            socket_connect_timeout=config.timeout,
        )
        self.checked = 0
        self.dropped = 0
        self.marked = 0
        self.errors = 0
        self.last_error: str | None = None
        self._skip_until = 0.0
        self._warned_at = 0.0

    def key(self, sink: str | None, source: str, message_id: str) -> str:
        """``{prefix}:{sink}:{len(source)}:{source}:{message_id}`` (``*`` for the sink in
        embedded mode). The source is length-prefixed and the id comes last, so no two
        (source, id) pairs share a key whatever ``:`` either holds (sink names hold
        none)."""
        return f"{self.config.prefix}:{sink or '*'}:{len(source)}:{source}:{message_id}"

    def _available(self) -> bool:
        return time.monotonic() >= self._skip_until

    def _failed(self, exc: Exception, what: str) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        self._skip_until = now + RETRY_INTERVAL
        if now - self._warned_at >= WARN_INTERVAL:
            self._warned_at = now
            log.warning("dedup %s skipped, Redis unavailable: %s", what, self.last_error)

    @hookimpl
    def eventrouter_process_batch(
        self, commands: Sequence[Command], sink: str | None
    ) -> Sequence[Command] | None:
        if not self._available():
            return None
        # Where sinks run, the one sink's marks; on a queued edge, every downstream sink's
        # (an id is dropped there only once all of them stored it).
        scopes = [sink] if self.downstream is None else self.downstream
        if not scopes:
            return None
        keys = [self.key(scope, c.source, c.message_id) for c in commands for scope in scopes]
        try:
            marks = self.client.mget(keys)
        except redis.RedisError as exc:
            self._failed(exc, "check")
            return None
        self.checked += len(commands)
        width = len(scopes)
        kept: list[Command] = []
        taken: set[tuple[str, str]] = set()
        for i, command in enumerate(commands):
            stored = all(mark is not None for mark in marks[i * width : (i + 1) * width])
            event = (command.source, command.message_id)
            if not stored and event not in taken:
                taken.add(event)
                kept.append(command)
        if len(kept) == len(commands):
            return None
        self.dropped += len(commands) - len(kept)
        metrics.get().dedup_dropped.labels(sink or "edge").inc(len(commands) - len(kept))
        return kept

    @hookimpl
    def eventrouter_batch_committed(self, commands: Sequence[Command], sink: str | None) -> None:
        if self.downstream is not None:
            return  # the workers mark, once their sink committed
        if not self._available():
            # Redis just failed: skip the mark as the check is skipped. Trying it anyway
            # cost every committed batch (in embedded mode, every request) the full
            # ``timeout`` while Redis hung. An unmarked id can only be stored again.
            return
        pipeline = self.client.pipeline(transaction=False)
        for command in commands:
            pipeline.set(self.key(sink, command.source, command.message_id), 1, ex=self.window)
        try:
            pipeline.execute()
        except redis.RedisError as exc:
            self._failed(exc, "mark")
            return
        self.marked += len(commands)

    @hookimpl
    def eventrouter_health(self) -> ComponentHealth:
        component = ComponentHealth(
            name="dedup",
            up=False,
            required=False,  # without Redis events pass through; nothing is lost
            stats={
                "checked": self.checked,
                "dropped": self.dropped,
                "marked": self.marked,
                "errors": self.errors,
            },
        )
        where = redact_url(self.config.url)
        try:
            self.client.ping()
        except redis.RedisError as exc:
            component.detail = f"{where}: {type(exc).__name__}: {exc}"
            return component
        component.up = True
        component.detail = where + (f"; last error: {self.last_error}" if self.last_error else "")
        return component

    @hookimpl
    def eventrouter_shutdown(self) -> None:
        self.client.close()
