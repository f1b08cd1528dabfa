"""Reading the Kafka log outside the workers' consumer groups: dead letters and replays.

``eventrouter dead-letters list|replay`` (:func:`dead_letters`) reads a sink's
dead-letter topic from where its ``.dead`` group last committed to the end it had when
the command started. ``list`` commits nothing. ``replay`` commits past every record it
read once the pass is over; a record whose replay failed (or that cannot be decoded) is
first produced again at the end of the topic, confirmed, so it is *kept*: a Kafka topic
cannot drop one record from its middle.

``eventrouter replay --sink NAME --from TIME|OFFSET`` (:func:`replay_from`) reads the
events topic from a time or an offset to the end it had when the command started, and
delivers it to one sink through the bus (pipeline stages, then the sink) in batches,
outside every consumer group: the sink's group and its worker are left as they are.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from confluent_kafka import Consumer, TopicPartition

from eventrouter.bus.bus import WORKER, Bus, make_plugin_manager
from eventrouter.config import Config, ConfigError, require_kafka_queue
from eventrouter.queue import broker, kafka_transport

#: Longest a read waits for the next record it knows is there (seconds).
STALL_LIMIT = 30.0


def _read(
    consumer: Consumer, ends: dict[int, int], limit: int | None
) -> Iterator[kafka_transport.Record]:
    """The records of the assigned partitions up to ``ends`` (exclusive), at most ``limit``."""
    remaining = dict(ends)
    taken = 0
    stalled_since = time.monotonic()
    while remaining and (limit is None or taken < limit):
        record = kafka_transport.poll_records(consumer, 0.5)
        if record is None:
            if time.monotonic() - stalled_since > STALL_LIMIT:
                raise TimeoutError(f"no record for {STALL_LIMIT:g}s; the broker stopped answering")
            continue
        stalled_since = time.monotonic()
        partition = record.partition()
        end = remaining.get(partition)
        if end is None or record.offset() >= end:
            continue
        if record.offset() + 1 >= end:
            del remaining[partition]
        taken += 1
        yield kafka_transport.Record(record)


def dead_letters(
    config: Config, sink: str, limit: int | None, *, replaying: bool
) -> Iterator[kafka_transport.Record]:
    """Yield the dead letters of ``sink`` (module docstring); with ``replaying``, the ones
    not acknowledged when the pass ends are produced again, then the pass is committed."""
    queue = config.queue
    topology = kafka_transport.KafkaTopology(queue, config.sinks)
    topology.declare(queue.connect_timeout)
    topic = topology.dead_topic(sink)
    consumer = Consumer(kafka_transport.consumer_config(queue, topology.dead_group(sink)))
    try:
        marks = kafka_transport.watermarks(consumer, topic, queue.connect_timeout)
        committed = consumer.committed(
            [TopicPartition(topic, p) for p in marks], timeout=queue.connect_timeout
        )
        starts = {
            c.partition: c.offset if c.offset >= marks[c.partition][0] else marks[c.partition][0]
            for c in committed
        }
        ends = {p: high for p, (_, high) in marks.items() if starts[p] < high}
        if not ends:
            return
        consumer.assign([TopicPartition(topic, p, starts[p]) for p in ends])
        taken = []
        for record in _read(consumer, ends, limit):
            taken.append(record)
            yield record
        if not replaying or not taken:
            return
        kept = [r for r in taken if not r.acknowledged]
        if kept:
            producer = kafka_transport.KafkaProducer(queue)
            try:
                for r in kept:  # one at a time: in order, each confirmed
                    producer.send(topic, [(r.key, r.body, r.headers)])
            finally:
                producer.close()
        for record in taken:
            record.ack()
        kafka_transport.commit(consumer, kafka_transport.commit_positions(taken))
    finally:
        consumer.close()


class ReplayResult(msgspec.Struct, kw_only=True):
    sink: str
    records: int = 0
    events: int = 0
    #: Records that could not be decoded (not delivered; they stay in the log).
    undecodable: int = 0


def parse_start(value: str) -> int | datetime:
    """``--from``: an offset (every partition from it) or an ISO 8601 time (UTC if it
    names no zone).

    :raises ValueError: naming what was expected.
    """
    text = value.strip()
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--from {value!r}: expected an offset (0, 1500) or an ISO 8601 time "
            "(2026-01-31T12:00:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def replay_from(
    config: Config,
    sink: str,
    start: int | datetime,
    *,
    plugins: Sequence[Any] = (),
    entry_points: bool = True,
) -> ReplayResult:
    """Deliver the events topic from ``start`` to its end now to ``sink`` alone."""
    require_kafka_queue(config)
    if sink not in config.sinks:
        known = ", ".join(config.sinks) or "none"
        raise ConfigError(config.path, "sinks", f"no sink named {sink!r} (configured: {known})")
    pm = make_plugin_manager(config, entry_points=entry_points, plugins=plugins)
    bus = Bus(config, pm, role=WORKER, only=[sink])
    return asyncio.run(_replay(bus, config, sink, start))


async def _replay(bus: Bus, config: Config, sink: str, start: int | datetime) -> ReplayResult:
    await bus.start()
    result = ReplayResult(sink=sink)
    loop = asyncio.get_running_loop()
    batch_events = max(1, config.sinks[sink].batch.max_events)

    def deliver(commands: list) -> None:
        asyncio.run_coroutine_threadsafe(bus.deliver(sink, commands), loop).result()

    def walk() -> None:
        queue = config.queue
        topology = kafka_transport.KafkaTopology(queue, config.sinks)
        topic = topology.events_topic
        group = f"{queue.prefix}.replay.{sink}.{uuid.uuid4().hex[:8]}"  # never committed
        consumer = Consumer(kafka_transport.consumer_config(queue, group))
        try:
            marks = kafka_transport.watermarks(consumer, topic, queue.connect_timeout)
            since_ms = None
            if isinstance(start, datetime):
                since_ms = int(start.timestamp() * 1000)
                found = consumer.offsets_for_times(
                    [TopicPartition(topic, p, since_ms) for p in marks],
                    timeout=queue.connect_timeout,
                )
                # A broker without a time index answers -1 (the end), or 0: the
                # timestamps below are checked record by record either way.
                starts = {
                    f.partition: f.offset if f.offset >= 0 else marks[f.partition][1] for f in found
                }
            else:
                starts = {p: start for p in marks}
            starts = {p: max(starts[p], low) for p, (low, _) in marks.items()}
            ends = {p: high for p, (_, high) in marks.items() if starts[p] < high}
            if not ends:
                return
            consumer.assign([TopicPartition(topic, p, starts[p]) for p in ends])
            pending: list = []
            for record in _read(consumer, ends, None):
                if since_ms is not None and record.record.timestamp()[1] < since_ms:
                    continue
                try:
                    commands = broker.decode(record.body, record.headers)
                except broker.UndecodableMessage:
                    result.undecodable += 1
                    continue
                result.records += 1
                pending.extend(commands)
                if len(pending) >= batch_events:
                    deliver(pending)
                    result.events += len(pending)
                    pending = []
            if pending:
                deliver(pending)
                result.events += len(pending)
        finally:
            consumer.close()

    try:
        await asyncio.to_thread(walk)
    finally:
        await bus.stop()
    return result
