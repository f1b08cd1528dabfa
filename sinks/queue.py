"""The edge's queue publisher: accepted events go to RabbitMQ (or Redis) by group commit.

With ``[queue]`` configured, ``eventrouter serve`` runs this instead of the storage
sinks. A request hands its commands (already encoded, on the event loop) to the
publisher threads and awaits a future. A publisher thread takes everything queued by
then, publishes it as one persistent message and waits for the broker's confirm: only
then are the futures resolved and the ``200`` sent. While one confirm is in flight the
next group gathers, so under load one round trip serves many requests.

kombu and py-amqp are blocking and not thread-safe: they never run on the event loop,
and each publisher thread owns its connection and channel. A publish that fails (broker
down, confirm timed out, message nacked) fails its requests with 503 + Retry-After; the
connection is dropped and the next group reconnects, at most every
``RECONNECT_INTERVAL`` so that a dead broker costs requests nothing but the answer.
The topology (``router_core.queue``) is declared on every new connection.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

from kombu import Producer

from router_core import queue as broker
from router_core.commands import Command, encode_many
from router_core.config import QueueConfig
from router_core.health import ComponentHealth
from router_core.hookspecs import hookimpl
from router_core.sink import Sink, resolve_waiters

log = logging.getLogger("eventrouter.sinks.queue")

_STOP = object()
#: Seconds between reconnection attempts while the broker is unreachable.
RECONNECT_INTERVAL = 0.5


def _msgpack_items(encoded_array: bytes) -> bytes:
    """The elements of a MessagePack array, without its header (fixarray, array16 or
    array32): arrays from several requests then join under one new header."""
    first = encoded_array[0]
    if 0x90 <= first <= 0x9F:
        return encoded_array[1:]
    return encoded_array[3:] if first == 0xDC else encoded_array[5:]


def _msgpack_array(count: int, items: list[bytes]) -> bytes:
    if count < 16:
        header = bytes((0x90 | count,))
    elif count < 0x10000:
        header = b"\xdc" + count.to_bytes(2, "big")
    else:
        header = b"\xdd" + count.to_bytes(4, "big")
    return header + b"".join(items)


class QueueSink(Sink):
    """Publishes every accepted batch to the broker's events exchange, confirmed."""

    Options = QueueConfig

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

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self, bus: Any) -> None:
        self._loop = asyncio.get_running_loop()
        self.topology = broker.Topology(self.options, bus.config.sinks)
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

    # -- the request path --------------------------------------------------------------
    async def write(self, commands: Sequence[Command]) -> None:
        if not self._threads:
            raise RuntimeError("the queue publisher is not running")
        future = self._loop.create_future()
        # Encoded here, in the request's task: the publisher thread only joins bytes.
        self._queue.put((len(commands), _msgpack_items(encode_many(list(commands))), future))
        await future

    # -- the publisher thread ----------------------------------------------------------
    def _run(self) -> None:
        publisher = _Publisher(self)
        try:
            while (group := self._next_group()) is not None:
                error = publisher.publish(group)
                self._loop.call_soon_threadsafe(resolve_waiters, group, error)
        finally:
            publisher.close()

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
    def health(self) -> ComponentHealth:
        """The broker is up when a fresh connection can reach every sink's queue; the
        depth of each queue and dead-letter queue is in the stats."""
        component = ComponentHealth(
            name="broker",
            up=False,
            required=True,
            stats={
                "published_messages": self.published_messages,
                "published_events": self.published_events,
                "failed_messages": self.failed_messages,
                "publish_ms_mean": round(
                    1000 * self.publish_seconds / max(1, self.published_messages), 3
                ),
            },
        )
        where = broker.describe(self.options.url)
        connection = None
        try:
            connection = broker.open_connection(self.options)
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
            return component
        broker.close(connection, self.options.connect_timeout)
        component.up = True
        component.detail = where + (f"; last error: {self.last_error}" if self.last_error else "")
        return component


class _Publisher:
    """One publisher thread's connection, channel and producer."""

    def __init__(self, sink: QueueSink) -> None:
        self.sink = sink
        self.options = sink.options
        self.connection: Any = None
        self.producer: Producer | None = None
        self.retry_at = 0.0
        self.connect_error: str | None = None

    def _producer(self) -> Producer:
        if self.producer is not None:
            return self.producer
        if time.monotonic() < self.retry_at:
            # Quote the connect error itself, not ``last_error``: that may already be one
            # of these messages, and quoting it nested one more "broker unreachable (...)"
            # per failed group for as long as the broker stayed down.
            raise ConnectionError(f"broker unreachable ({self.connect_error})")
        try:
            self.connection = broker.open_connection(self.options)
            channel = self.connection.channel()
            self.sink.topology.declare(channel)
            self.producer = Producer(channel, exchange=self.sink.topology.exchange)
        except Exception as exc:
            self.close(graceful=False)
            self.connect_error = f"{type(exc).__name__}: {exc}"
            self.retry_at = time.monotonic() + RECONNECT_INTERVAL
            raise
        log.info("publisher connected to %s", broker.describe(self.options.url))
        return self.producer

    def publish(self, group: list) -> BaseException | None:
        """Publish ``group`` (split by ``max_events_per_message``); the error, if any."""
        limit = self.options.max_events_per_message
        try:
            producer = self._producer()
            start = 0
            while start < len(group):
                count, items, end = 0, [], start
                while end < len(group) and (count == 0 or count + group[end][0] <= limit):
                    count += group[end][0]
                    items.append(group[end][1])
                    end += 1
                started = time.perf_counter()
                producer.publish(
                    _msgpack_array(count, items),
                    routing_key=broker.ALL,
                    timeout=self.options.confirm_timeout,
                    **broker.message_properties(count),
                )
                self.sink.publish_seconds += time.perf_counter() - started
                self.sink.published_messages += 1
                self.sink.published_events += count
                start = end
        except Exception as exc:
            self.sink.failed_messages += 1
            self.sink.last_error = f"{type(exc).__name__}: {exc}"
            log.error("publish failed: %s", self.sink.last_error)
            # The channel may hold a publish whose confirm never came: start afresh.
            self.close(graceful=False)
            return exc
        return None

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
