"""The edge's queue publisher: accepted events go to RabbitMQ (or Redis) by group commit.

With ``[queue]`` configured, ``eventrouter serve`` runs this instead of the storage
sinks. The requests of one event-loop turn reach it as one write
(``router_core/edge/coalesce.py``): its commands are encoded on the event loop and handed to
the publisher threads, and the write awaits their futures. A publisher thread takes
everything queued by then, publishes it as one persistent message and waits for the
broker's confirm: only then are the futures resolved and the ``200`` sent. While one
confirm is in flight the next group gathers, so under load one round trip serves many
requests.

kombu and py-amqp are blocking and not thread-safe: they never run on the event loop,
and each publisher thread owns its connection and channel. A publish that fails (broker
down, confirm timed out, message nacked, or *returned*: published mandatory, routed to
no queue because the sink queues were deleted) fails its requests with 503 +
Retry-After; the connection is dropped and the next group reconnects, at most every
``RECONNECT_INTERVAL`` so that a dead broker costs requests nothing but the answer.
The topology (``eventrouter.queue.broker``) is declared on every new connection, which
creates deleted queues again.

While the broker cannot take a group (any of the failures above, a returned message
included), it goes to the process's local spool (``router_core/queue/spool.py``,
``[queue.spool]``): appended and fsynced, then answered ``200``; a replay thread
publishes the spool back, oldest first, once the broker answers (and routes it).
While anything of this process is still spooled, new groups are spooled behind it, so
the spool drains in order. A full spool answers 503 + Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from eventrouter import metrics
from eventrouter.bus.hookspecs import hookimpl
from eventrouter.bus.sink import Sink, resolve_waiters
from eventrouter.config import QueueConfig
from eventrouter.events.commands import Command, encode_many
from eventrouter.health import ComponentHealth
from eventrouter.queue import broker
from eventrouter.queue.spool import Spool, SpoolFull
from eventrouter.redact import redact_urls

log = logging.getLogger("eventrouter.sinks.queue")

_STOP = object()
#: Seconds between reconnection attempts while the broker is unreachable.
RECONNECT_INTERVAL = 0.5
#: Seconds between looks for spools left by processes that are gone.
ORPHAN_INTERVAL = 5.0


def _array_items(encoded_array: bytes) -> bytes:
    """The elements of a JSON array (``[...]``, as msgspec writes it: no whitespace),
    without its brackets: arrays from several requests then join under one pair."""
    return encoded_array[1:-1]


def _messages(group: list, limit: int) -> Iterator[tuple[int, bytes]]:
    """``(event count, body)`` of the messages ``group`` is published as: the writes of
    several writes joined, split to at most ``limit`` events (a write's pieces are at
    most ``limit`` events each: :meth:`QueueSink.write`)."""
    start = 0
    while start < len(group):
        count, items, end = 0, [], start
        while end < len(group) and (count == 0 or count + group[end][0] <= limit):
            count += group[end][0]
            items.append(group[end][1])
            end += 1
        yield count, _json_array(items)
        start = end


def _json_array(items: list[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


class QueueSink(Sink):
    """Publishes every accepted batch to the broker's events exchange, confirmed."""

    Options = QueueConfig

    #: A batch published again (a request retried after a lost confirm, a spool replayed
    #: after a publish whose confirm never came) is queued again: the sinks behind the
    #: queue drop the copy by ``message_id``, or declare themselves at least once too.
    at_least_once = True

    def __new__(cls, name: str, config: Any, options: QueueConfig) -> QueueSink:
        if cls is QueueSink and options.transport == "kafka":
            # Imported only here: confluent-kafka loads with a kafka:// [queue] alone.
            from eventrouter.sinks.kafka_queue import KafkaQueueSink

            cls = KafkaQueueSink
        return super().__new__(cls)

    def __init__(self, name: str, config: Any, options: QueueConfig) -> None:
        super().__init__(name, config, options)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.topology: broker.Topology | None = None
        self.published_messages = 0
        self.published_events = 0
        self.failed_messages = 0
        #: Wall time spent publishing and waiting for confirms (for /health).
        self.publish_seconds = 0.0
        self.last_error: str | None = None
        self.spool: Spool | None = None
        self._replayer: threading.Thread | None = None
        self._replay_wake = threading.Event()
        self._stopping = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self, bus: Any) -> None:
        self._loop = asyncio.get_running_loop()
        self.topology = broker.Topology(self.options, bus.config.sinks)
        if self.options.spool.enabled:
            self.spool = Spool(self.options.spool.root(), self.options.spool.max_bytes)
            self._replayer = threading.Thread(
                target=self._replay_run, name="queue-spool-replay", daemon=True
            )
            self._replayer.start()
        for i in range(self.options.publishers):
            thread = threading.Thread(target=self._run, name=f"queue-publisher-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    async def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            await asyncio.to_thread(thread.join)
        self._threads.clear()
        if self._replayer is not None:
            self._stopping.set()
            self._replay_wake.set()
            await asyncio.to_thread(self._replayer.join)
            self._replayer = None
            self.spool.close()

    # -- the request path --------------------------------------------------------------
    async def write(self, commands: Sequence[Command]) -> None:
        if not self._threads:
            raise RuntimeError("the queue publisher is not running")
        # Encoded here, on the event loop: the publisher thread only joins bytes. A write
        # (the requests of one loop turn, router_core/edge/coalesce.py) is cut into pieces of at
        # most ``max_events_per_message`` events, which no message exceeds; the write is
        # held once every piece is.
        limit = self.options.max_events_per_message
        futures = []
        for start in range(0, len(commands), limit):
            piece = commands[start : start + limit]
            futures.append(future := self._loop.create_future())
            self._queue.put((len(piece), _array_items(encode_many(piece)), future))
        await (futures[0] if len(futures) == 1 else asyncio.gather(*futures))

    # -- the publisher thread ----------------------------------------------------------
    def _publisher(self) -> Any:
        """A publisher thread's own connection to the broker."""
        return _Publisher(self)

    def _records(self, group: list) -> Iterator[tuple[int, bytes]]:
        """``(event count, body)`` of the spool records ``group`` is kept as."""
        return _messages(group, self.options.max_events_per_message)

    def _run(self) -> None:
        publisher = self._publisher()
        try:
            while (group := self._next_group()) is not None:
                error = self._take(publisher, group)
                self._loop.call_soon_threadsafe(resolve_waiters, group, error)
        finally:
            publisher.close()

    def _take(self, publisher: _Publisher, group: list) -> BaseException | None:
        """Publish ``group``, or spool it if the broker did not take it or older events
        of this process are still spooled; the error its requests fail with, if any."""
        spool = self.spool
        if spool is None or spool.empty:
            error = publisher.publish(group)
            if error is None or spool is None:
                return error
        try:
            for count, body in self._records(group):
                spool.append(count, body)
                metrics.get().spool_spooled.inc(count)
        except (SpoolFull, OSError) as exc:
            log.error("spool: %s", exc)
            metrics.get().spool_refused.inc(sum(entry[0] for entry in group))
            return exc
        finally:
            self._spool_gauges()
            self._replay_wake.set()
        return None

    def _replay_run(self) -> None:
        """The replay thread: publishes the spool back whenever the broker answers."""
        publisher = self._publisher()
        try:
            while not self._stopping.is_set():
                self._replay_wake.wait(ORPHAN_INTERVAL if self.spool.empty else None)
                self._replay_wake.clear()
                self._replay_once(publisher)
            if not self.spool.empty:  # stopping: one last try, the broker may be back
                self._replay_once(publisher)
        finally:
            publisher.close()

    def _replay_once(self, publisher: _Publisher) -> None:
        if self.spool.empty and not self.spool.orphans():
            return
        try:
            publisher.connect()  # no sealing of segments while the broker is down
            replayed = self.spool.replay(publisher.publish_body)
        except Exception as exc:
            publisher.close(graceful=False)
            if not self._stopping.is_set():
                log.debug("spool replay waits for the broker: %s", exc)
                self._stopping.wait(RECONNECT_INTERVAL)
                self._replay_wake.set()  # and tries again
            return
        if replayed:
            metrics.get().spool_replayed.inc(replayed)
            log.info("replayed %d spooled events to the broker", replayed)
        self._spool_gauges()
        if not self.spool.empty:
            self._replay_wake.set()  # appended meanwhile: go on

    def _spool_gauges(self) -> None:
        recorded = metrics.get()
        recorded.spool_bytes.set(self.spool.bytes)
        recorded.spool_events.set(self.spool.events)

    def _next_group(self) -> list | None:
        """Block for the next write, then take what else is queued (waiting up to
        ``linger`` for more), up to ``max_events_per_message`` events."""
        item = self._queue.get()
        if item is _STOP:
            return None
        group = [item]
        count = item[0]
        deadline = time.monotonic() + self.options.linger
        while count < self.options.max_events_per_message:
            wait = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                self._queue.put(_STOP)  # publish this group, then stop
                break
            group.append(item)
            count += item[0]
        return group

    # -- health ------------------------------------------------------------------------
    def health(self) -> list[ComponentHealth]:
        """The broker is up when a fresh connection can reach every sink's queue; the
        depth of each queue and dead-letter queue is in the stats."""
        component, components = self._health_components()
        where = redact_urls(self.options.url)
        connection = None
        try:
            connection = broker.open_connection(self.options)
            if len(self.options.urls) > 1:
                where = f"{broker.node_of(connection)} (of {len(self.options.urls)} nodes)"
            channel = connection.channel()
            self.topology.declare(channel)  # idempotent; the first publish may be ahead
            for sink in self.topology.sinks:
                depth = self.topology.depth
                component.stats[f"queue:{sink}"] = depth(channel, self.topology.queue(sink))
                component.stats[f"dead:{sink}"] = depth(channel, self.topology.dead_queue(sink))
        except Exception as exc:
            if connection is not None:
                broker.drop(connection)
            component.detail = f"{where}: {type(exc).__name__}: {exc}"
            return components
        broker.close(connection, self.options.connect_timeout)
        self._reached(component, where)
        return components

    def _health_components(self) -> tuple[ComponentHealth, list[ComponentHealth]]:
        """The broker's component (down until the caller's probe reaches it, with the
        publisher's figures) and what ``/health`` lists: it, and the spool's if any."""
        component = ComponentHealth(
            name="broker",
            up=False,
            # With a spool, requests are answered while the broker is down.
            required=self.spool is None,
            stats={
                "published_messages": self.published_messages,
                "published_events": self.published_events,
                "failed_messages": self.failed_messages,
                "publish_ms_mean": round(
                    1000 * self.publish_seconds / max(1, self.published_messages), 3
                ),
            },
        )
        components = [component] if self.spool is None else [component, self._spool_health()]
        return component, components

    def _reached(self, component: ComponentHealth, where: str) -> None:
        """Mark the broker's component up, reached at ``where`` (redacted)."""
        component.up = True
        component.detail = where + (f"; last error: {self.last_error}" if self.last_error else "")

    def _spool_health(self) -> ComponentHealth:
        """Down once full (an append was refused): requests answer 503 until the
        broker is back and the replay makes room."""
        spool = self.spool
        return ComponentHealth(
            name="spool",
            up=not spool.full,
            required=True,
            detail=f"{spool.directory} ({spool.bytes} of {spool.max_bytes} bytes used)",
            stats={
                "bytes": spool.bytes,
                "max_bytes": spool.max_bytes,
                "events": spool.events,
                "spooled_events": spool.spooled_events,
                "replayed_events": spool.replayed_events,
                "refused_events": spool.refused_events,
                "adopted_events": spool.adopted_events,
                "orphan_bytes": spool.orphan_bytes(),
            },
        )


class _Publisher:
    """One publisher thread's connection, channel and producer."""

    def __init__(self, sink: QueueSink) -> None:
        self.sink = sink
        self.options = sink.options
        self.connection: Any = None
        self.producer: broker.RoutedProducer | None = None
        self.retry_at = 0.0
        self.connect_error: str | None = None

    def connect(self) -> None:
        """Connect now if not connected (raises while the broker is unreachable)."""
        self._producer()

    def _producer(self) -> Any:
        """The producer, connected now if it is not (raises while the broker is
        unreachable, and for ``RECONNECT_INTERVAL`` after each failed attempt)."""
        if self.producer is not None:
            return self.producer
        if time.monotonic() < self.retry_at:
            # Quote the connect error itself, not ``last_error``: that may already be one
            # of these messages, and quoting it nested one more "broker unreachable (...)"
            # per failed group for as long as the broker stayed down.
            raise ConnectionError(f"broker unreachable ({self.connect_error})")
        try:
            self.producer = self._open()
        except Exception as exc:
            self.close(graceful=False)
            self.connect_error = f"{type(exc).__name__}: {exc}"
            self.retry_at = time.monotonic() + RECONNECT_INTERVAL
            raise
        log.info("publisher connected to %s", self._where())
        return self.producer

    def _open(self) -> broker.RoutedProducer:
        """Connect, declare the topology and return a producer (raises if it cannot)."""
        self.connection = broker.open_connection(self.options)
        channel = self.connection.channel()
        self.sink.topology.declare(channel)
        return broker.RoutedProducer(channel, self.sink.topology.exchange)

    def _where(self) -> str:
        """Where the producer is connected, for the log (no password)."""
        return broker.node_of(self.connection)

    def publish(self, group: list) -> BaseException | None:
        """Publish ``group`` (split by ``max_events_per_message``); the error, if any."""
        try:
            for count, body in _messages(group, self.options.max_events_per_message):
                self.publish_body(count, body)
        except Exception as exc:
            return self._failed(exc)
        return None

    def _failed(self, exc: Exception) -> Exception:
        """Count and log a failed publish and start afresh (the channel may hold a
        publish whose confirm never came); ``exc``, which the group's requests fail with."""
        self.sink.failed_messages += 1
        self.sink.last_error = f"{type(exc).__name__}: {exc}"
        log.error("publish failed: %s", self.sink.last_error)
        self.close(graceful=False)
        return exc

    def publish_body(self, count: int, body: bytes) -> None:
        """Publish one message and wait for its confirm (raises if it was not taken, or
        was routed to no queue: :class:`eventrouter.queue.broker.Unroutable`)."""
        producer = self._producer()
        started = time.perf_counter()
        producer.publish(
            body,
            routing_key=broker.ALL,
            timeout=self.options.confirm_timeout,
            **broker.message_properties(count),
        )
        self.sink.publish_seconds += time.perf_counter() - started
        self.sink.published_messages += 1
        self.sink.published_events += count

    def close(self, graceful: bool = True) -> None:
        self.producer = None
        if self.connection is not None:
            if graceful:
                broker.close(self.connection, self.options.connect_timeout)
            else:
                # The channel may hold a publish whose confirm never came, on a broker
                # that may not answer a polite close either.
                broker.drop(self.connection)
            self.connection = None


@hookimpl
def eventrouter_sink_types() -> dict[str, type[Sink]]:
    return {"queue": QueueSink}
