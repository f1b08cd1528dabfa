"""Kafka as the queue: a ``kafka://host:port[,host:port]`` ``[queue] url``.

Built on confluent-kafka (librdkafka); imported only when such a URL is configured.

Topology (every name starts with ``[queue] prefix``, ``eventrouter`` by default)::

    topic   {prefix}.events               [queue.kafka] partitions, retention.ms from
                                          [queue.kafka] retention
      group {prefix}.sink.{name}          one consumer group per [sinks.NAME]: each sink
                                          reads every event at its own pace
    topic   {prefix}.sink.{name}.dead     one per sink, one partition, no time limit
      group {prefix}.sink.{name}.dead     how far ``dead-letters replay`` has got

A record is one message of queue mode's format (``eventrouter.queue.broker``: a JSON
array of commands, headers ``x-eventrouter-format`` and ``x-eventrouter-events``); its
key is the ``anonymousId`` of its commands, or their ``userId`` when they have none
(:func:`record_key`). The edge cuts each group commit by key, so one user's events share
a partition and stay in order. The producer is idempotent with ``acks=all``; the edge
answers 200 once every record of the group has its delivery report.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from eventrouter.config import QueueConfig, kafka_servers
from eventrouter.events.commands import Command
from eventrouter.queue import broker

log = logging.getLogger("eventrouter.queue.kafka")

#: Headers whose value is a count: read back as int.
_INT_HEADERS = frozenset({broker.EVENTS_HEADER, broker.ATTEMPTS_HEADER})
#: What a broker that is down or unreachable raises here.
KAFKA_ERRORS = (KafkaException, BufferError, ConnectionError, TimeoutError)


class KafkaDeliveryError(Exception):
    """The broker did not confirm a record (delivery report with an error, or none)."""


def client_config(queue: QueueConfig) -> dict[str, Any]:
    """librdkafka properties shared by producers, consumers and the admin client."""
    kafka = queue.kafka
    config: dict[str, Any] = {
        "bootstrap.servers": ",".join(kafka_servers(queue.url)),
        "security.protocol": kafka.security_protocol,
        "socket.connection.setup.timeout.ms": max(1000, int(queue.connect_timeout * 1000)),
        # librdkafka logs through Python's logging rather than to stderr.
        "logger": logging.getLogger("eventrouter.queue.librdkafka"),
    }
    optional = {
        "sasl.mechanism": kafka.sasl_mechanism,
        "sasl.username": kafka.sasl_username,
        "sasl.password": kafka.sasl_password,
        "ssl.ca.location": kafka.ssl_ca_location,
        "ssl.certificate.location": kafka.ssl_certificate_location,
        "ssl.key.location": kafka.ssl_key_location,
        "ssl.key.password": kafka.ssl_key_password,
    }
    config.update({key: value for key, value in optional.items() if value is not None})
    return config


def producer_config(queue: QueueConfig, **extra: Any) -> dict[str, Any]:
    timeout_ms = max(1000, int(queue.confirm_timeout * 1000))
    return {
        **client_config(queue),
        **queue.kafka.producer,
        # The promises: every in-sync replica holds a record before its delivery report,
        # and retries neither duplicate nor reorder records of a partition.
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": min(int(queue.linger * 1000), timeout_ms - 1),
        "message.timeout.ms": timeout_ms,
        # Room for the largest record eventrouter makes (a value of at most
        # max_record_bytes, plus key and headers).
        "message.max.bytes": max(1_000_000, queue.kafka.max_record_bytes + 65536),
        **extra,
    }


def consumer_config(queue: QueueConfig, group: str, **extra: Any) -> dict[str, Any]:
    return {
        "auto.offset.reset": "earliest",
        **client_config(queue),
        **queue.kafka.consumer,
        "group.id": group,
        # Offsets are committed by hand, after the sink's write.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        **extra,
    }


class KafkaTopology:
    """Topic and group names for a set of sinks; :meth:`declare` creates the topics."""

    def __init__(self, queue: QueueConfig, sinks: Iterable[str]) -> None:
        self.queue = queue
        self.sinks = list(sinks)
        self.events_topic = f"{queue.prefix}.events"

    def group(self, sink: str) -> str:
        return f"{self.queue.prefix}.sink.{sink}"

    def dead_topic(self, sink: str) -> str:
        return f"{self.queue.prefix}.sink.{sink}.dead"

    def dead_group(self, sink: str) -> str:
        return f"{self.queue.prefix}.sink.{sink}.dead"

    def topics(self) -> dict[str, tuple[int, dict[str, str]]]:
        """Every topic: ``{name: (partitions, topic config)}``."""
        kafka = self.queue.kafka
        topics = {
            self.events_topic: (
                kafka.partitions,
                {"retention.ms": str(int(kafka.retention * 1000))},
            )
        }
        for sink in self.sinks:
            topics[self.dead_topic(sink)] = (1, {"retention.ms": "-1"})
        return topics

    def declare(self, timeout: float) -> None:
        """Create the topics that are missing (``create_topics``), or raise naming one."""
        admin = AdminClient(client_config(self.queue))
        present = set(admin.list_topics(timeout=timeout).topics)
        missing = {name: spec for name, spec in self.topics().items() if name not in present}
        if not missing:
            return
        if not self.queue.kafka.create_topics:
            raise KafkaDeliveryError(
                f"topic {sorted(missing)[0]!r} does not exist and "
                "[queue.kafka] create_topics is off"
            )
        replicas = self.queue.kafka.replication_factor or -1
        futures = admin.create_topics(
            [
                NewTopic(name, num_partitions=partitions, replication_factor=replicas, config=cfg)
                for name, (partitions, cfg) in missing.items()
            ],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        for name, future in futures.items():
            try:
                future.result(timeout)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
            else:
                log.info("created topic %s", name)


def record_key(command: Command) -> bytes | None:
    """The partition key of ``command``: its anonymousId, else its userId (one of them
    is required), as UTF-8."""
    key = command.anonymous_id or command.user_id
    return key.encode("utf-8", "replace") if key is not None else None


def to_headers(headers: dict[str, Any]) -> list[tuple[str, bytes]]:
    return [(str(name), str(value).encode("utf-8", "replace")) for name, value in headers.items()]


def headers_of(record: Any) -> dict[str, Any]:
    """A record's headers as queue mode's dict: text values, counts as int. A header
    that is not UTF-8 is kept with replacement characters, never trusted as a count."""
    headers: dict[str, Any] = {}
    for name, value in record.headers() or ():
        text = (value or b"").decode("utf-8", "replace")
        if name in _INT_HEADERS:
            try:
                headers[name] = int(text)
                continue
            except ValueError:
                pass
        headers[name] = text
    return headers


class Record:
    """A consumed record as the worker's and ``dead-letters``' code expects a message:
    ``body``, ``headers``, ``ack()``."""

    content_type = broker.CONTENT_TYPE
    content_encoding = "binary"

    def __init__(self, record: Any) -> None:
        self.record = record
        self.body: bytes = record.value() or b""
        self.key: bytes | None = record.key()
        self.headers = headers_of(record)
        self.acknowledged = False

    @property
    def partition(self) -> tuple[str, int]:
        return self.record.topic(), self.record.partition()

    @property
    def offset(self) -> int:
        return self.record.offset()

    def ack(self) -> None:
        self.acknowledged = True


def commit_positions(records: Sequence[Record]) -> dict[tuple[str, int], int]:
    """The offset to commit per partition: past the acknowledged records up to the first
    one that is not (a partition's offset covers every record before it)."""
    positions: dict[tuple[str, int], int] = {}
    blocked: set[tuple[str, int]] = set()
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        partition = record.partition
        if partition in blocked:
            continue
        if record.acknowledged:
            positions[partition] = record.offset + 1
        else:
            blocked.add(partition)
    return positions


def commit(consumer: Consumer, positions: dict[tuple[str, int], int]) -> None:
    """Commit ``positions`` synchronously (raises :class:`KafkaException`)."""
    if positions:
        consumer.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in positions.items()],
            asynchronous=False,
        )


def poll_records(consumer: Consumer, timeout: float) -> Any | None:
    """One record, or None after ``timeout``; raises on a consumer error that is not a
    passing condition (end of partition, a transport hiccup librdkafka retries)."""
    record = consumer.poll(timeout)
    if record is None:
        return None
    error = record.error()
    if error is None:
        return record
    if error.code() == KafkaError._PARTITION_EOF or error.retriable():
        return None
    if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
        log.debug("consumer: %s", error.str())
        return None
    raise KafkaException(error)


class KafkaProducer:
    """One thread's idempotent producer: :meth:`send` returns once the broker confirmed
    every record, or raises."""

    def __init__(self, queue: QueueConfig) -> None:
        self.queue = queue
        self.down: str | None = None
        self._errors: list[str] = []
        self.producer = Producer(producer_config(queue, error_cb=self._on_error))

    def _on_error(self, error: Any) -> None:
        """librdkafka's error callback (called on this thread from poll/flush)."""
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self.down = error.str()
        elif error.fatal():
            self.down = f"fatal: {error.str()}"
        log.debug("producer: %s", error.str())

    def check(self, timeout: float) -> None:
        """A metadata round trip: raises while no broker answers."""
        self.producer.list_topics(timeout=timeout)
        self.down = None

    def send(self, topic: str, records: Iterable[tuple[bytes | None, bytes, dict]]) -> int:
        """Produce ``(key, value, headers)`` records to ``topic`` and wait for every
        delivery report (at most ``confirm_timeout``); the count sent.

        :raises KafkaDeliveryError: a record was refused, or not confirmed in time.
        """
        failures: list[str] = []

        def delivered(error: Any, _record: Any) -> None:
            if error is not None:
                failures.append(error.str())

        sent = 0
        for key, value, headers in records:
            self.producer.produce(
                topic, value=value, key=key, headers=to_headers(headers), on_delivery=delivered
            )
            sent += 1
        deadline = time.monotonic() + self.queue.confirm_timeout
        remaining = self.producer.flush(0)
        while remaining and not failures:
            left = deadline - time.monotonic()
            if left <= 0 or self.down is not None:
                break
            remaining = self.producer.flush(min(left, 0.1))
        if failures:
            raise KafkaDeliveryError(f"record not delivered: {failures[0]}")
        if remaining:
            why = f"; {self.down}" if self.down else ""
            raise KafkaDeliveryError(
                f"{remaining} record(s) not confirmed within {self.queue.confirm_timeout:g}s{why}"
            )
        return sent

    def close(self, graceful: bool = True) -> None:
        """Flush what is in flight (graceful), else drop it: a caller that gave up on a
        group has answered its requests already (503, or spooled them)."""
        with contextlib.suppress(Exception):
            if graceful:
                self.producer.flush(self.queue.connect_timeout)
            else:
                self.producer.purge(in_queue=True, in_flight=False, blocking=False)
                self.producer.flush(0)


def keyed(
    items: Iterable[tuple[int, bytes, bytes | None]], limit: int, max_bytes: int
) -> Iterator[tuple]:
    """``(key, count, body)`` of the records ``items`` (``(count, array items, key)``
    in arrival order) are produced as: one key's items joined in order, up to ``limit``
    events and ``max_bytes`` bytes a record (an item is never cut: :func:`pieces` made
    each one small enough)."""
    by_key: dict[bytes | None, list[tuple[int, bytes]]] = {}
    for count, body, key in items:
        by_key.setdefault(key, []).append((count, body))
    for key, parts_of_key in by_key.items():
        start = 0
        while start < len(parts_of_key):
            count, size, parts, end = 0, 2, [], start
            while end < len(parts_of_key):
                more, body = parts_of_key[end]
                if parts and (count + more > limit or size + 1 + len(body) > max_bytes):
                    break
                count += more
                size += len(body) + 1
                parts.append(body)
                end += 1
            yield key, count, b"[" + b",".join(parts) + b"]"
            start = end


def pieces(
    commands: Sequence[Command], limit: int, max_bytes: int, encode: Any
) -> Iterator[tuple[int, bytes]]:
    """One key's ``commands`` as ``(count, array items)`` pieces of at most ``limit``
    events whose JSON array fits ``max_bytes`` (halved until it does; one event is at
    most 32 KB, so a single one always fits)."""
    for start in range(0, len(commands), limit):
        pending = [commands[start : start + limit]]
        while pending:
            piece = pending.pop(0)
            encoded = encode(piece)
            if len(encoded) > max_bytes and len(piece) > 1:
                half = len(piece) // 2
                pending[:0] = [piece[:half], piece[half:]]
                continue
            yield len(piece), encoded[1:-1]


def key_of_body(body: bytes, headers: dict[str, Any]) -> bytes | None:
    """The key of a record whose body is known but not its key (the spool keeps none):
    that of its first command."""
    try:
        commands = broker.decode(body, headers)
    except broker.UndecodableMessage:
        return None
    return record_key(commands[0]) if commands else None


def watermarks(consumer: Consumer, topic: str, timeout: float) -> dict[int, tuple[int, int]]:
    """``{partition: (low, high)}`` of ``topic``."""
    metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise KafkaDeliveryError(f"topic {topic!r} not found")
    return {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
        for p in sorted(metadata.partitions)
    }


_lag_lock = threading.Lock()


def group_lag(queue: QueueConfig, topic: str, group: str) -> int:
    """Records of ``topic`` that ``group`` has not committed yet (the queue's depth)."""
    with _lag_lock:  # librdkafka instances are heavy: one probe at a time
        consumer = Consumer(consumer_config(queue, group))
        try:
            marks = watermarks(consumer, topic, queue.connect_timeout)
            committed = consumer.committed(
                [TopicPartition(topic, p) for p in marks], timeout=queue.connect_timeout
            )
        finally:
            consumer.close()
    lag = 0
    for position in committed:
        low, high = marks[position.partition]
        start = position.offset if position.offset >= 0 else low
        lag += max(0, high - start)
    return lag
