"""``eventrouter worker`` on a ``kafka://`` queue: each sink's consumer group feeds it.

:class:`KafkaSinkConsumer` is :class:`~eventrouter.queue.worker.SinkConsumer` with a
Kafka consumer as its source of messages: the batching (``_pump``), the delivery with
the sink's ``retry`` policy, holding a batch while the sink is down, and dead-lettering
are the worker's own code. What is Kafka's:

- the consumer joins the sink's group (``{prefix}.sink.{name}``) on the events topic;
  several workers share the partitions, each partition read by one of them;
- a batch's offsets are committed only after the sink's write (or dead-lettering) of
  every record before them (:func:`~eventrouter.queue.kafka_transport.commit_positions`);
  a worker killed before that leaves them uncommitted, and the group reads them again;
- a dead letter is produced to the sink's dead-letter topic and confirmed before its
  offset may be committed;
- partitions taken away by a rebalance while a batch is in hand: the batch is written
  and committed first (``on_revoke``), so the next owner starts after it.
"""

from __future__ import annotations

import logging
from typing import Any

from eventrouter.queue import kafka_transport
from eventrouter.queue.worker import SinkConsumer

log = logging.getLogger("eventrouter.worker")


class _DeadLetterProducer:
    """The worker's ``dead_producer`` on Kafka: confirmed produce to the dead topic."""

    def __init__(self, producer: kafka_transport.KafkaProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    def publish(self, body: bytes, *, headers: dict[str, Any], **_ignored: Any) -> None:
        self.producer.send(self.topic, [(None, body, headers)])


class _Source:
    """What ``SinkConsumer._pump`` drains: delivers the next record to ``_buffer``, or
    raises ``TimeoutError`` when none came within the timeout."""

    def __init__(self, consumer: Any, sink_consumer: KafkaSinkConsumer) -> None:
        self.consumer = consumer
        self.sink_consumer = sink_consumer

    def drain_events(self, timeout: float) -> None:
        self.sink_consumer.polling = True
        try:
            record = kafka_transport.poll_records(self.consumer, timeout)
        finally:
            self.sink_consumer.polling = False
        if record is None:
            raise TimeoutError
        self.sink_consumer._buffer(kafka_transport.Record(record))


class KafkaSinkConsumer(SinkConsumer):
    """Feeds one sink from its consumer group (module docstring)."""

    def __init__(self, worker: Any, sink: str) -> None:
        super().__init__(worker, sink)
        self.kafka_topology = kafka_transport.KafkaTopology(self.options, worker.config.sinks)
        self.consumer: Any = None
        #: True inside the consumer's poll, where a rebalance runs ``_on_revoke``.
        self.polling = False
        #: Partitions paused while a batch is held (``_keep_membership``).
        self.paused = False

    def _consume(self) -> None:
        from confluent_kafka import Consumer

        topology = self.kafka_topology
        self.paused = False  # a new consumer: nothing of the last one's is paused
        topology.declare(self.options.connect_timeout)
        producer = kafka_transport.KafkaProducer(self.options)
        self.consumer = Consumer(
            kafka_transport.consumer_config(self.options, topology.group(self.sink))
        )
        try:
            self.dead_producer = _DeadLetterProducer(producer, topology.dead_topic(self.sink))
            self.consumer.subscribe([topology.events_topic], on_revoke=self._on_revoke)
            log.info(
                "%s: consuming %s as group %s",
                self.sink,
                topology.events_topic,
                topology.group(self.sink),
            )
            source = _Source(self.consumer, self)
            while not self.worker.stopping.is_set():
                self._pump(source)
            if self.buffer:
                self._flush()
        finally:
            consumer, self.consumer = self.consumer, None
            try:
                consumer.close()  # leaves the group: its partitions go to the others now
            finally:
                producer.close()

    def _on_revoke(self, _consumer: Any, _partitions: Any) -> None:
        """A rebalance takes partitions away: write and commit the batch in hand first.
        Not when the consumer closes after a failure or a stop in the middle of retries:
        the batch in hand is left uncommitted, for the group to read again."""
        if self.buffer and self.polling and not self.worker.stopping.is_set():
            self._flush()

    def _flush(self) -> None:
        batch = list(self.buffer)
        try:
            super()._flush()
        finally:
            self._resume()
        # Every record of the batch is written, dead-lettered or (on Abandoned or an
        # error, raised past here) not acknowledged; commit up to the first one that is not.
        kafka_transport.commit(self.consumer, kafka_transport.commit_positions(batch))

    def _unavailable(self, error: BaseException) -> str | None:
        """Asked after a failed write and every ``SINK_DOWN_POLL`` while a batch is held:
        the moment to tell the group this consumer is alive (``_keep_membership``)."""
        self._keep_membership()
        return super()._unavailable(error)

    def _keep_membership(self) -> None:
        """Poll with every partition paused: no new records come, but the group sees the
        consumer poll, so a batch held for longer than ``max.poll.interval.ms`` (a store
        down for an hour) does not get the consumer removed and its partitions read by
        another. A record fetched before the pause joins the next batch."""
        consumer = self.consumer
        if consumer is None:
            return
        assignment = consumer.assignment()
        if assignment:
            consumer.pause(assignment)
            self.paused = True
        record = kafka_transport.poll_records(consumer, 0)
        if record is not None:
            self._buffer(kafka_transport.Record(record))

    def _resume(self) -> None:
        if self.paused and self.consumer is not None:
            self.paused = False
            self.consumer.resume(self.consumer.assignment())
