"""``eventrouter worker``: consume each sink's queue and deliver its batches to the sink.

One consumer thread per sink, each with its own broker connection (kombu is blocking and
not thread-safe), feeds the bus running on this process's event loop. A consumer
gathers messages by the sink's :class:`~eventrouter.bus.batcher.BatchPolicy` (the one
the edge's group commit uses): until they hold ``batch.max_events`` events or
``batch.max_bytes`` bytes, or the first has waited ``batch.timeout`` (at least 1 ms),
or it holds its prefetch of messages; then it decodes them, hands the commands to
:meth:`Bus.deliver` (pipeline stages such as dedup, then the sink) and acknowledges the
messages only once the sink has committed them.

The sink's ``buffer`` bounds what a consumer holds: the broker hands it at most
``buffer.max_events / queue.max_events_per_message`` messages at a time (and never more
than ``queue.prefetch``), and a batch never outgrows ``buffer.max_events`` or
``buffer.max_bytes``. The rest waits in the broker, so ``when_full`` has nothing to
refuse here: the consumer simply takes no more until its batch is written.

Failures:

- a message that cannot be decoded goes straight to the sink's dead-letter queue;
- a failed write is retried per the sink's ``retry`` block, by the framework's
  :class:`~eventrouter.bus.retry.RetryPolicy` (exponential backoff with jitter; an
  error the sink calls permanent, :meth:`~eventrouter.bus.sink.Sink.is_retryable`, is
  not retried); when the retries are spent
  and the sink's own health probe says it is unreachable (a database down, a network
  cut), the batch is not at fault: it is held, unacknowledged, and written again once the
  probe answers (an outage of any length dead-letters nothing); when the sink is up,
  each message of the batch is tried once on its own, and those that still fail are
  dead-lettered with the reason in their headers, the rest acknowledged;
- a fail-closed (privacy) pipeline stage that refused the batch
  (:class:`eventrouter.bus.bus.FailedClosed`: nothing was written) is treated the same way,
  with the stage's own ``eventrouter_health`` as the probe: while it reports itself down
  (the suppression list not read yet) the batch is held, unacknowledged;
- a lost broker connection drops the batch in hand unacknowledged (the broker delivers
  it again) and the consumer reconnects with backoff.

SIGTERM or SIGINT: the consumers stop taking messages, finish and acknowledge the batch
in hand (a write still being retried is abandoned unacknowledged, for redelivery), close
their connections, and the process exits. Several workers on one queue share its load:
the broker hands each message to one consumer.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from kombu import Consumer

from eventrouter import metrics
from eventrouter.bus.batcher import BatchPolicy
from eventrouter.bus.bus import WORKER, Bus, FailedClosed, StartFailed, make_plugin_manager
from eventrouter.bus.retry import RetryPolicy
from eventrouter.config import Config, ConfigError, QueueConfig, SinkConfig
from eventrouter.events.commands import Command
from eventrouter.queue import broker
from eventrouter.redact import redact_urls

log = logging.getLogger("eventrouter.worker")

#: Shortest wait for more messages before a batch is delivered (seconds).
MIN_LINGER = 0.001
#: Seconds between checks of the stop flag while the queue is idle.
IDLE_POLL = 0.25
#: Reconnection backoff bounds (seconds).
RECONNECT_MIN, RECONNECT_MAX = 0.5, 5.0
#: Seconds between health probes of a sink that is down, while its batch is held.
SINK_DOWN_POLL = 1.0


class Abandoned(Exception):
    """The worker is stopping in the middle of retries: leave the batch unacknowledged."""


#: Longest the collector stays off while consumer threads (one per sink) keep
#: overlapping, so that it never comes back on: then a thread leaving runs one full
#: collection (seconds). Cyclic garbage (an exception's traceback, asyncio's futures)
#: must not pile up for as long as the load lasts.
MAX_GC_PAUSE = 10.0

_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = False
_gc_off_since = 0.0


@contextmanager
def gc_paused() -> Iterator[None]:
    """No automatic cyclic garbage collection while any consumer thread is inside.

    A batch is tens of thousands of commands, about fifty objects each, all alive until
    the write ends and all freed by reference counting right after (commands hold no
    reference cycles). Meanwhile the collector would run a young collection every 700
    allocations, promote the batch from generation to generation and walk all of it
    again in each older collection, finding nothing: ``bench/floor.py``'s "worker
    batch" rows (50 messages of 1,000 events decoded and freed) take about twice as
    long with it. Collection is enabled again once the last thread leaves (the state is
    per process, hence the count), after the batch was freed, so the collector's
    allocation count is back where it was; and if threads have kept it off for
    :data:`MAX_GC_PAUSE`, the next one to leave collects once.
    """
    global _gc_pausers, _gc_was_enabled, _gc_off_since
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            _gc_off_since = time.monotonic()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        collect = False
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0:
                if _gc_was_enabled:
                    gc.enable()
            elif _gc_was_enabled and time.monotonic() - _gc_off_since > MAX_GC_PAUSE:
                collect = True
                _gc_off_since = time.monotonic()
        if collect:
            gc.collect()


class Worker:
    """Consumes the queues of ``sinks`` (default: every configured sink)."""

    def __init__(
        self,
        config: Config,
        *,
        sinks: Sequence[str] | None = None,
        plugins: Sequence[Any] = (),
        entry_points: bool = True,
    ) -> None:
        if config.queue is None:
            raise ConfigError(
                config.path, "queue", "eventrouter worker needs a [queue] table (its broker)"
            )
        self.config = config
        pm = make_plugin_manager(config, entry_points=entry_points, plugins=plugins)
        self.bus = Bus(config, pm, role=WORKER, only=sinks)
        self.topology = broker.Topology(config.queue, config.sinks)
        self.stopping = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        consumer_class = SinkConsumer
        if config.queue.transport == "kafka":  # confluent-kafka loads only then
            from eventrouter.queue.kafka_worker import KafkaSinkConsumer as consumer_class
        self.consumers = [consumer_class(self, name) for name in self.bus.running]
        #: Why the worker stopped by itself: a broker problem no retry mends.
        self.fatal: Exception | None = None
        self._stop: asyncio.Event | None = None

    def fail(self, error: Exception) -> None:
        """From a consumer thread: stop the worker; :meth:`run` then raises ``error``."""
        if self.fatal is None:
            self.fatal = error
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)

    async def run(self, stop: asyncio.Event) -> None:
        """Start the bus and the consumers; return after ``stop`` is set and they drained.

        :raises StartFailed: the broker's queues cannot be used as configured (a queue of
            another type than ``queue_type``), after the consumers stopped.
        """
        self.loop = asyncio.get_running_loop()
        self._stop = stop
        await self.bus.start()
        try:
            for consumer in self.consumers:
                consumer.start()
            log.info(
                "worker consuming %s from %s",
                ", ".join(self.topology.queue(c.sink).name for c in self.consumers),
                redact_urls(self.config.queue.url),
            )
            await stop.wait()
        finally:
            self.stopping.set()
            for consumer in self.consumers:
                if consumer.is_alive():
                    await asyncio.to_thread(consumer.join)
            await self.bus.stop()
        for consumer in self.consumers:
            log.info("%s", consumer.summary())
        log.info("worker stopped")
        if self.fatal is not None:
            raise StartFailed(str(self.fatal), "queue") from self.fatal

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT (the ``eventrouter worker`` command)."""

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            await self.run(stop)

        asyncio.run(main())

    def deliver(self, sink: str, commands: Sequence[Command]) -> Sequence[Command]:
        """From a consumer thread: deliver on the loop and wait for the outcome."""
        future = asyncio.run_coroutine_threadsafe(self.bus.deliver(sink, commands), self.loop)
        return future.result()

    def stage_down(self, stage: str) -> str | None:
        """From a consumer thread: why pipeline stage ``stage`` says it is down, or None."""
        return asyncio.run_coroutine_threadsafe(self.bus.stage_down(stage), self.loop).result()


class SinkConsumer(threading.Thread):
    """Feeds one sink from its queue."""

    def __init__(self, worker: Worker, sink: str) -> None:
        super().__init__(name=f"consumer-{sink}", daemon=True)
        self.worker = worker
        self.sink = sink
        self.options = worker.config.queue
        self.sink_config = worker.config.sinks[sink]
        self.queue = worker.topology.queue(sink)
        self.retry = RetryPolicy(self.sink_config.retry, self._retryable)
        self.policy = consumer_policy(self.sink_config)
        #: Unacknowledged messages the broker hands this consumer at a time.
        self.prefetch = consumer_prefetch(self.sink_config, self.options)
        self.buffer: list[Any] = []
        self.buffered_events = 0
        self.buffered_bytes = 0
        self.deadline = 0.0
        self.dead_producer: broker.RoutedProducer | None = None
        self.messages = 0
        self.written = 0
        self.dropped = 0
        self.retries = 0
        self.dead_lettered = 0
        #: Batches held while the sink was unreachable, rather than dead-lettered.
        self.held = 0
        self.last_error: str | None = None

    def _retryable(self, error: BaseException) -> bool:
        """A refusal of a fail-closed stage may pass once the stage works again; any
        other error is the sink's to classify."""
        return isinstance(error, FailedClosed) or self.worker.bus.sinks[self.sink].is_retryable(
            error
        )

    def summary(self) -> str:
        return (
            f"sink {self.sink}: {self.messages} messages, {self.written} events written, "
            f"{self.dropped} dropped as duplicates, {self.retries} retries, "
            f"{self.dead_lettered} dead-lettered, {self.held} batches held while it was down"
        )

    # -- connection loop ---------------------------------------------------------------
    def run(self) -> None:
        backoff = RECONNECT_MIN
        while not self.worker.stopping.is_set():
            try:
                self._consume()
                backoff = RECONNECT_MIN
            except Abandoned:
                return
            except broker.QueueTypeMismatch as exc:
                self.last_error = str(exc)
                log.error("%s: %s", self.sink, exc)
                self.worker.fail(exc)
                return
            except Exception as exc:
                self.buffer.clear()  # unacknowledged: the broker delivers them again
                self.buffered_events = self.buffered_bytes = 0
                self._gauge()
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "%s: broker connection lost (%s); reconnecting in %.1fs",
                    self.sink,
                    self.last_error,
                    backoff,
                )
                self.worker.stopping.wait(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX)

    def _consume(self) -> None:
        connection = broker.open_connection(self.options)
        try:
            channel = connection.channel()
            self.worker.topology.declare(channel)
            channel.basic_qos(0, self.prefetch, False)
            # Mandatory: a dead-letter queue deleted under the worker fails the move
            # (the message stays unacknowledged; the reconnection declares the queue
            # again) instead of confirming it into nowhere and acknowledging it.
            self.dead_producer = broker.RoutedProducer(
                connection.channel(), self.worker.topology.dead_exchange
            )
            consumer = Consumer(channel, queues=[self.queue], on_message=self._buffer)
            consumer.consume()
            log.info(
                "%s: consuming %s on %s", self.sink, self.queue.name, broker.node_of(connection)
            )
            while not self.worker.stopping.is_set():
                self._pump(connection)
            # Stopping: finish the batch in hand. Messages delivered after it stay
            # unacknowledged and go back to the queue when the connection closes.
            if self.buffer:
                self._flush()
        finally:
            # Bounded: a hung broker must not keep SIGTERM from ending the worker.
            broker.close(connection, self.options.connect_timeout)

    def _buffer(self, message: Any) -> None:
        if not self.buffer:
            self.deadline = time.monotonic() + max(self.policy.timeout, MIN_LINGER)
        self.buffer.append(message)
        count = (message.headers or {}).get(broker.EVENTS_HEADER)
        self.buffered_events += count if isinstance(count, int) else 1
        self.buffered_bytes += len(message.body)
        self._gauge()

    def _gauge(self) -> None:
        metrics.get().child(metrics.get().sink_buffer_events, f"sink:{self.sink}").set(
            self.buffered_events
        )

    def _pump(self, connection: Any) -> None:
        """Wait for one delivery (or the batch deadline) and deliver a full batch."""
        timeout = IDLE_POLL
        if self.buffer:
            # Capped at IDLE_POLL so that the stop flag is seen: waiting out a long
            # ``batch.timeout`` here kept SIGTERM from finishing the batch in hand until
            # the deadline (tests/integration/test_worker.py::test_stop_finishes_the_batch_in_hand).
            timeout = min(max(self.deadline - time.monotonic(), 0.0005), IDLE_POLL)
        try:
            connection.drain_events(timeout=timeout)
        except TimeoutError:  # socket.timeout is TimeoutError
            if self.buffer and time.monotonic() >= self.deadline:
                self._flush()
            return
        if self.buffer and (
            self.policy.full(self.buffered_events, self.buffered_bytes)
            or len(self.buffer) >= self.prefetch
            or time.monotonic() >= self.deadline
        ):
            self._flush()

    # -- delivering a batch ------------------------------------------------------------
    def _flush(self) -> None:
        messages, self.buffer = self.buffer, []
        self.messages += len(messages)
        try:
            self._deliver_messages(messages)
        finally:
            # Held until written, acknowledged, held back or dead-lettered.
            self.buffered_events = self.buffered_bytes = 0
            self._gauge()

    def _deliver_messages(self, messages: list[Any]) -> None:
        with gc_paused():
            # On success everything the write allocated is freed when _write returns,
            # still inside the pause; the failure paths below run with the collector on.
            failed = self._write(messages)
        if failed is None:
            return
        decoded, commands, error, attempts = failed
        if (down := self._unavailable(error)) is not None:
            error, attempts = self._hold(commands, error, down, attempts)
            if error is None:
                for message, _ in decoded:
                    message.ack()
                return
        if len(decoded) == 1:
            self._dead_letter(decoded[0][0], _error_text(error), attempts)
            return
        # Retries spent: find the messages that fail on their own; keep the rest.
        for message, batch in decoded:
            single_error, _ = self._deliver(batch, retry=False)
            if single_error is None:
                message.ack()
            else:
                self._dead_letter(message, _error_text(single_error), attempts + 1)

    def _write(self, messages: list[Any]) -> tuple | None:
        """Decode ``messages`` (dead-lettering the undecodable), deliver their commands
        with retries and acknowledge them; None when that succeeded (or nothing was left
        to deliver), else ``(decoded, commands, error, attempts)`` for :meth:`_flush`."""
        decoded: list[tuple[Any, list[Command]]] = []
        for message in messages:
            try:
                decoded.append((message, broker.decode(message.body, message.headers)))
            except broker.UndecodableMessage as exc:
                self._dead_letter(message, f"undecodable: {exc}", attempts=0)
        if not decoded:
            return None
        commands = [command for _, batch in decoded for command in batch]
        error, attempts = self._deliver(commands, retry=True)
        if error is not None:
            return decoded, commands, error, attempts
        for message, _ in decoded:
            message.ack()
        return None

    def _sink_down(self) -> str | None:
        """Why the sink is unreachable, by its own health probe; None if it is up."""
        try:
            component = self.worker.bus.sinks[self.sink].health()
        except Exception as exc:  # a probe that raises: down
            return _error_text(exc)
        return None if component.up else (component.detail or "down")

    def _unavailable(self, error: BaseException) -> str | None:
        """Why the batch that failed with ``error`` cannot be written now through no fault
        of its own, by the probe of what refused it: the fail-closed stage's health,
        else the sink's; None when that is up (the batch itself is at fault)."""
        if isinstance(error, FailedClosed):
            try:
                down = self.worker.stage_down(error.stage)
            except Exception as exc:  # the probe itself failed: down
                down = _error_text(exc)
            return None if down is None else f"pipeline stage {error.stage} down ({down})"
        down = self._sink_down()
        return None if down is None else f"sink unreachable ({down})"

    def _hold(
        self, commands: list[Command], error: BaseException, down: str, attempts: int
    ) -> tuple:
        """The retries are spent while the sink (or the fail-closed stage that refused
        the batch) is unavailable: keep the batch (unacknowledged) and write it again
        whenever the probe answers, until a write succeeds or fails with what refused it
        up (then the caller dead-letters as usual)."""
        self.held += 1
        log.error("%s: %s; holding %d events", self.sink, down, len(commands))
        while True:
            while down is not None:
                if self.worker.stopping.wait(SINK_DOWN_POLL):
                    raise Abandoned  # unacknowledged: delivered again after the restart
                down = self._unavailable(error)
            log.info("%s: available again; writing the held batch", self.sink)
            error, more = self._deliver(commands, retry=True)
            attempts += more
            if error is None or (down := self._unavailable(error)) is None:
                return error, attempts

    def _deliver(self, commands: list[Command], *, retry: bool) -> tuple[BaseException | None, int]:
        """Deliver, retrying per the sink's policy: ``(error or None, attempts made)``."""
        backoff = self.retry.backoff()
        while True:
            try:
                written = self.worker.deliver(self.sink, commands)
            except Exception as exc:
                error = exc
                self.last_error = _error_text(exc)
            else:
                self.written += len(written)
                self.dropped += len(commands) - len(written)
                return None, backoff.attempts + 1
            pause = backoff.failed(error)
            if pause is None or not retry:
                return error, backoff.attempts
            self.retries += 1
            metrics.get().sink_retries.labels(self.sink).inc()
            log.warning(
                "%s: write of %d events failed (%s); retry %d in %.2fs",
                self.sink,
                len(commands),
                self.last_error,
                backoff.attempts,
                pause,
            )
            if self.worker.stopping.wait(pause):
                raise Abandoned

    def _dead_letter(self, message: Any, reason: str, attempts: int) -> None:
        """Move ``message`` to the sink's dead-letter queue with ``reason``, then ack it."""
        self.dead_producer.publish(
            message.body,
            routing_key=self.sink,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            delivery_mode=2,
            headers=broker.dead_letter_headers(message.headers, self.sink, reason, attempts),
            timeout=self.options.confirm_timeout,
        )
        message.ack()
        self.dead_lettered += 1
        events = (message.headers or {}).get(broker.EVENTS_HEADER)
        metrics.get().sink_dead_lettered.labels(self.sink).inc(
            events if isinstance(events, int) else 1
        )
        log.error("%s: message dead-lettered after %d attempts: %s", self.sink, attempts, reason)


def _error_text(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "sink write timed out"
    return f"{type(error).__name__}: {error}"


def consumer_policy(sink: SinkConfig) -> BatchPolicy:
    """How a consumer cuts its batches: the sink's ``batch``, never past its ``buffer``."""
    batch, buffer = sink.batch, sink.buffer
    limits = [b for b in (batch.max_bytes, buffer.max_bytes) if b is not None]
    return BatchPolicy(
        max_events=min(batch.max_events, buffer.max_events),
        max_bytes=min(limits) if limits else None,
        timeout=float(batch.timeout),
    )


def consumer_prefetch(sink: SinkConfig, queue: QueueConfig) -> int:
    """Messages the broker may hand one consumer: ``queue.prefetch``, fewer when the
    sink's ``buffer.max_events`` holds fewer full messages (at least one)."""
    return max(1, min(queue.prefetch, sink.buffer.max_events // queue.max_events_per_message))
