"""The edge's publisher on a ``kafka://`` queue: :class:`~eventrouter.sinks.queue.QueueSink`
with records keyed by user.

Everything else is the queue sink's: the group commit, the publisher threads, the
spool while the broker is down and its replay (``sinks/queue.py``). What differs:

- a write is cut by partition key (:func:`eventrouter.queue.kafka_transport.record_key`,
  the anonymousId, else the userId) before it is queued, so one record holds one user's
  events, in the order they came;
- a publisher produces a group's records with an idempotent ``acks=all`` producer and
  returns once every delivery report is in (the requests' 200), or fails the group
  (spooled, or 503) after ``confirm_timeout`` or as soon as librdkafka reports every
  broker down;
- the spool keeps one record per key too, and its replay keys each by its first command.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from typing import Any

from eventrouter.events.commands import Command, encode_many
from eventrouter.health import ComponentHealth
from eventrouter.queue import broker, kafka_transport
from eventrouter.redact import redact_url
from eventrouter.sinks.queue import QueueSink, _Publisher


class KafkaQueueSink(QueueSink):
    """Publishes every accepted batch to the events topic, keyed, confirmed."""

    async def start(self, bus: Any) -> None:
        self.kafka_topology = kafka_transport.KafkaTopology(self.options, bus.config.sinks)
        await super().start(bus)

    async def write(self, commands: Sequence[Command]) -> None:
        if not self._threads:
            raise RuntimeError("the queue publisher is not running")
        by_key: dict[bytes | None, list[Command]] = {}
        for command in commands:
            by_key.setdefault(kafka_transport.record_key(command), []).append(command)
        limit = self.options.max_events_per_message
        max_bytes = self.options.kafka.max_record_bytes
        futures = []
        for key, of_key in by_key.items():
            for count, items in kafka_transport.pieces(of_key, limit, max_bytes, encode_many):
                futures.append(future := self._loop.create_future())
                self._queue.put((count, items, key, future))
        await (futures[0] if len(futures) == 1 else asyncio.gather(*futures))

    def _publisher(self) -> _KafkaPublisher:
        return _KafkaPublisher(self)

    def _records(self, group: list) -> Iterator[tuple[int, bytes]]:
        limit, max_bytes = self.options.max_events_per_message, self.options.kafka.max_record_bytes
        for _key, count, body in kafka_transport.keyed((e[:3] for e in group), limit, max_bytes):
            yield count, body

    def health(self) -> list[ComponentHealth]:
        """The broker is up when it answers a metadata request and holds the topics;
        the stats give each sink's lag (records its group has not committed) and the
        records of its dead-letter topic not replayed yet."""
        component, components = self._health_components()
        where = redact_url(self.options.url)
        topology = self.kafka_topology
        try:
            topology.declare(self.options.connect_timeout)
            for sink in topology.sinks:
                component.stats[f"queue:{sink}"] = kafka_transport.group_lag(
                    self.options, topology.events_topic, topology.group(sink)
                )
                component.stats[f"dead:{sink}"] = kafka_transport.group_lag(
                    self.options, topology.dead_topic(sink), topology.dead_group(sink)
                )
        except Exception as exc:
            component.detail = f"{where}: {type(exc).__name__}: {exc}"
            return components
        self._reached(component, where)
        return components


def _headers(count: int) -> dict[str, Any]:
    return broker.message_properties(count)["headers"]


class _KafkaPublisher(_Publisher):
    """One publisher thread's producer: ``sinks.queue._Publisher``'s connection and
    failure bookkeeping, with Kafka's producer and records."""

    def _open(self) -> kafka_transport.KafkaProducer:
        producer = kafka_transport.KafkaProducer(self.options)
        try:
            producer.check(self.options.connect_timeout)
            self.sink.kafka_topology.declare(self.options.connect_timeout)
        except Exception:
            producer.close(graceful=False)
            raise
        return producer

    def _where(self) -> str:
        return redact_url(self.options.url)

    def publish(self, group: list) -> BaseException | None:
        """Produce ``group`` as one record per key and wait for every delivery report."""
        limit, max_bytes = self.options.max_events_per_message, self.options.kafka.max_record_bytes
        records = list(kafka_transport.keyed((entry[:3] for entry in group), limit, max_bytes))
        try:
            self._send([(key, body, _headers(n)) for key, n, body in records])
        except Exception as exc:
            return self._failed(exc)
        self.sink.published_messages += len(records)
        self.sink.published_events += sum(n for _, n, _ in records)
        return None

    def publish_body(self, count: int, body: bytes) -> None:
        """Produce one spooled record (keyed by its first command) and wait for it."""
        headers = _headers(count)
        try:
            self._send([(kafka_transport.key_of_body(body, headers), body, headers)])
        except Exception:
            self.close(graceful=False)
            raise
        self.sink.published_messages += 1
        self.sink.published_events += count

    def _send(self, records: list[tuple[bytes | None, bytes, dict]]) -> None:
        producer = self._producer()
        if producer.down is not None:
            # librdkafka said every broker was down (maybe only an idle connection the
            # broker closed): one metadata round trip says whether to fail now rather
            # than after confirm_timeout.
            try:
                producer.check(self.options.connect_timeout)
            except Exception as exc:
                raise ConnectionError(f"broker unreachable ({producer.down})") from exc
        started = time.perf_counter()
        producer.send(self.sink.kafka_topology.events_topic, records)
        self.sink.publish_seconds += time.perf_counter() - started

    def close(self, graceful: bool = True) -> None:
        if self.producer is not None:
            self.producer.close(graceful)
            self.producer = None
