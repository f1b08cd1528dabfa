"""The live tail: every newly accepted event, whichever server process accepted it.

One :class:`TailHub` per server process fans events out to that process's WebSocket
subscribers. Its feed is shared, not one process's memory:

* **broker** (``[queue] url = "amqp://..."``): a consumer thread declares an exclusive,
  auto-deleted, length-capped queue bound to the events exchange with the routing key
  every publish carries, so it receives a copy of each group commit from every edge
  process. It exists only while someone watches (the hub starts the feed with the first
  subscriber and stops it with the last), and a capped queue drops its oldest messages
  rather than grow, so a stalled dashboard costs the broker nothing lasting.
* **store** (embedded mode, no broker, and Redis queues): the hub polls the dashboard's
  store every :data:`POLL_INTERVAL` for rows stored since it last looked
  (:meth:`eventrouter.store.query.EventStore.stored_since`).

Subscribers filter for themselves (:func:`matches`), so one feed serves any number of
differently filtered views.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
from kombu import Queue, binding

from eventrouter.columns import shown
from eventrouter.config import Config
from eventrouter.events.commands import Command
from eventrouter.queue import broker
from eventrouter.store.query import FILTER_COLUMNS, EventFilter, EventStore, TailPosition

log = logging.getLogger("eventrouter.admin.tail")

POLL_INTERVAL = 0.25
#: Events a subscriber may fall behind by before the oldest are dropped for it.
SUBSCRIBER_BACKLOG = 2000
#: Messages the broker keeps for a tail queue that nobody reads (drop-head beyond).
TAIL_QUEUE_LENGTH = 10_000

Rows = list[dict[str, Any]]


def command_event(command: Command) -> dict[str, Any]:
    """A command as the query API shows a stored event."""
    return shown(command.row())


def _json_text(value: Any) -> str | None:
    """The text a store compares a JSON value by (see ``eventrouter.store.query.json_text``)."""
    if value is None or isinstance(value, str):
        return value
    return msgspec.json.encode(value).decode()


def matches(where: EventFilter, event: dict[str, Any]) -> bool:
    """Whether ``event`` passes ``where`` (its columns and path conditions; the time
    range is not applied: a live tail shows what arrives now)."""
    for name in FILTER_COLUMNS:
        wanted = getattr(where, name)
        if wanted is not None and event.get(name) != wanted:
            return False
    for condition in where.paths:
        value: Any = event.get(condition.column)
        for segment in condition.path:
            value = value.get(segment) if isinstance(value, dict) else None
        if _json_text(value) != condition.value:
            return False
    return True


class Subscription:
    """One WebSocket's view of the feed: batches of events, oldest first."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Rows] = asyncio.Queue()
        self.backlog = 0

    def put(self, rows: Rows) -> None:
        if self.backlog + len(rows) > SUBSCRIBER_BACKLOG:  # a stalled client: drop oldest
            while not self.queue.empty() and self.backlog + len(rows) > SUBSCRIBER_BACKLOG:
                self.backlog -= len(self.queue.get_nowait())
        self.queue.put_nowait(rows)
        self.backlog += len(rows)

    async def get(self) -> Rows:
        rows = await self.queue.get()
        self.backlog -= len(rows)
        return rows


class TailHub:
    """Fans one feed out to this process's subscribers."""

    def __init__(self, config: Config, store: EventStore | None) -> None:
        self.config = config
        self.store = store
        self.subscribers: set[Subscription] = set()
        self._feed: _Feed | None = None

    @property
    def source(self) -> str:
        """``broker`` or ``store``: where this hub's events come from."""
        queue = self.config.queue
        return "broker" if queue is not None and queue.transport == "amqp" else "store"

    @property
    def available(self) -> bool:
        return self.source == "broker" or self.store is not None

    async def subscribe(self) -> Subscription:
        subscription = Subscription()
        self.subscribers.add(subscription)
        if self._feed is None or self._feed.stopped:  # none, or the last one is stopping
            loop = asyncio.get_running_loop()
            if self.source == "broker":
                self._feed = _BrokerFeed(self.config, self._publish_threadsafe(loop))
            else:
                self._feed = _StoreFeed(self.store, self.publish)
            await self._feed.start()
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        self.subscribers.discard(subscription)
        if not self.subscribers and self._feed is not None:
            feed = self._feed
            await feed.stop()
            if self._feed is feed:  # not replaced by a subscriber that came meanwhile
                self._feed = None

    async def close(self) -> None:
        self.subscribers.clear()
        if self._feed is not None:
            feed, self._feed = self._feed, None
            await feed.stop()

    def publish(self, rows: Rows) -> None:
        for subscription in list(self.subscribers):
            subscription.put(rows)

    def _publish_threadsafe(self, loop: asyncio.AbstractEventLoop) -> Callable[[Rows], None]:
        def publish(rows: Rows) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self.publish, rows)

        return publish


class _Feed:
    #: Set as soon as stopping begins: a new subscriber then starts a new feed.
    stopped = False

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class _StoreFeed(_Feed):
    def __init__(self, store: EventStore, publish: Callable[[Rows], None]) -> None:
        self.store = store
        self.publish = publish
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Returns once the position is taken: an event stored after ``subscribe``
        returned is always shown."""
        try:
            position = await asyncio.to_thread(self.store.tail_position)
        except Exception as exc:  # the store is down: the feed starts when it is back
            log.warning("live tail: reading the store failed: %s", exc)
            position = None
        self._task = asyncio.create_task(self._run(position))

    async def _run(self, position: TailPosition | None) -> None:
        while True:
            try:
                if position is None:
                    position = await asyncio.to_thread(self.store.tail_position)
                rows = await asyncio.to_thread(self.store.stored_since, position)
                if rows:
                    self.publish(rows)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a store that is down: keep trying, quietly
                log.warning("live tail: reading the store failed: %s", exc)
                await asyncio.sleep(2)
            await asyncio.sleep(POLL_INTERVAL)

    async def stop(self) -> None:
        self.stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class _BrokerFeed(_Feed):
    """A consumer thread on an exclusive tail queue (kombu never runs on the loop)."""

    def __init__(self, config: Config, publish: Callable[[Rows], None]) -> None:
        assert config.queue is not None
        self.options = config.queue
        self.topology = broker.Topology(config.queue, config.sinks)
        self.publish = publish
        self._stopping = threading.Event()
        self._consuming = threading.Event()
        self._thread: threading.Thread | None = None
        name = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self.queue = Queue(
            f"{self.options.prefix}.tail.{name}",
            bindings=[binding(self.topology.exchange, routing_key=broker.ALL)],
            durable=False,
            exclusive=True,
            auto_delete=True,
            queue_arguments={"x-max-length": TAIL_QUEUE_LENGTH, "x-overflow": "drop-head"},
        )

    async def start(self) -> None:
        """Returns once the tail queue is bound (or the broker could not be reached in
        time): every event published after ``subscribe`` returned is shown."""
        self._thread = threading.Thread(target=self._run, name="eventrouter-tail", daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._consuming.wait, self.options.connect_timeout + 1)

    async def stop(self) -> None:
        self.stopped = True
        self._stopping.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)

    def _run(self) -> None:
        while not self._stopping.is_set():
            connection = None
            try:
                connection = broker.open_connection(self.options)
                channel = connection.channel()
                self.topology.exchange(channel).declare()
                # on_message: the raw message (callbacks would have kombu decode the body)
                with connection.Consumer(
                    self.queue, on_message=self._on_message, no_ack=True, channel=channel
                ):
                    self._consuming.set()
                    while not self._stopping.is_set():
                        with contextlib.suppress(socket.timeout, TimeoutError):
                            connection.drain_events(timeout=0.5)
            except broker.BROKER_ERRORS as exc:
                log.warning("live tail: broker: %s", exc)
                self._stopping.wait(2)
            except Exception:  # never let the feed die silently: log it, reconnect
                log.exception("live tail: the broker feed failed")
                self._stopping.wait(2)
            finally:
                if connection is not None:
                    broker.close(connection, self.options.connect_timeout)

    def _on_message(self, message: Any) -> None:
        try:
            commands = broker.decode(message.body, message.headers)
        except broker.UndecodableMessage as exc:
            log.warning("live tail: skipped a message: %s", exc)
            return
        self.publish([command_event(c) for c in commands])
