"""The conformance kit's harnesses and readers for the built-in sinks that the kit cannot
read back by itself (``eventrouter.testing``; docs/plugins.md, "Testing a sink with the
conformance kit").

- ``s3``: :func:`s3_reader` lists the bucket with boto3 (moto's server on loopback) and
  decodes every gzip NDJSON object.
- the queue: the edge's queue publisher is built from ``[queue]``, not from
  ``[sinks.NAME]``, so :class:`QueuePublisherConformance` builds it as a queued edge
  does, with two sinks behind it, and reads back by consuming both sinks' queues on the
  real broker: an event counts as held once per copy that *every* sink's queue holds.
  That is the publisher's promise: a confirmed write is in each sink's durable queue.
- the webhook example: the kit's ``read_back`` is the message ids a local HTTP receiver
  took (``tests.integration.test_example_plugin.Receiver``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from eventrouter import config as config_module
from eventrouter.bus.bus import EDGE, Bus, make_plugin_manager
from eventrouter.bus.sink import Sink
from eventrouter.queue import broker
from eventrouter.testing import SinkConformance

#: The sinks behind the harness's queue publisher (never started: a queued edge only
#: publishes); each has a queue of its own on the broker.
QUEUE_SINKS = ("warehouse", "archive")


class QueuePublisherConformance(SinkConformance):
    """The kit on the edge's queue publisher: ``options`` is the ``[queue]`` table."""

    health_name = "broker"

    def __init__(self, sink_type: str, options: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(sink_type, options, **kwargs)
        #: Per sink queue, every message id consumed so far (a copy each time).
        self.consumed: dict[str, list[str]] = {name: [] for name in QUEUE_SINKS}
        self.read_back = self.read_queues

    def build(self) -> Sink:
        sinks = {
            name: {"type": "file", "path": f"/nonexistent/{name}.jsonl"} for name in QUEUE_SINKS
        }
        config = config_module.parse({"queue": self.options, "sinks": sinks})
        self.bus = Bus(config, make_plugin_manager(config, plugins=self.plugins), role=EDGE)
        return self.bus.publisher

    def read_queues(self, sink: Sink) -> list[str]:
        """Consume what every sink's queue holds now (acknowledged: gone from the
        broker, kept here), then list each id as many times as every queue holds it."""
        connection = broker.open_connection(sink.options)
        try:
            channel = connection.channel()
            for name in QUEUE_SINKS:
                queue = sink.topology.queue(name).bind(channel)
                while (message := queue.get(no_ack=False)) is not None:
                    commands = broker.decode(message.body, message.headers)
                    self.consumed[name] += [command.message_id for command in commands]
                    message.ack()
        finally:
            broker.close(connection, sink.options.connect_timeout)
        counts = [Counter(ids) for ids in self.consumed.values()]
        everywhere = counts[0]
        for count in counts[1:]:
            everywhere &= count  # the least number of copies any queue holds
        return list(everywhere.elements())


def s3_reader(s3_env: Any) -> Callable[[Sink], list[str]]:
    """A ``read_back`` for an ``s3`` sink on ``s3_env``'s moto server: every event of
    every NDJSON object under the sink's bucket."""

    def read(sink: Sink) -> list[str]:
        bucket = sink.options.bucket
        return [
            event["message_id"] for events in s3_env.events(bucket).values() for event in events
        ]

    return read
