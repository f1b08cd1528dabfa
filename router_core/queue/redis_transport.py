"""kombu's Redis transport, with a consumer that cannot lose the message it is taking.

kombu's Redis consumer takes a message with ``BRPOP`` and, in a second round trip,
records it as unacknowledged (``HSET unacked`` + ``ZADD unacked_index``), the records
from which ``visibility_timeout`` later hands unacknowledged messages back. Between the
two, the message exists only in the consumer's socket buffer and memory: a worker killed
there (SIGKILL, OOM, power) loses it for good. ``tests/integration/test_worker.py`` saw that once in
CI; a busy worker spends a good part of its time in that window.

:class:`ReliableChannel` closes the window. It waits for a message with
``BLMOVE key key RIGHT RIGHT``, which blocks like ``BRPOP`` but, source and destination
being the same list, leaves the list as it was (Redis ≥ 6.2). Once the wait says a
message is there, one Lua script pops it and records it as unacknowledged, atomically:
at every instant the message is in the queue or in the unacknowledged records. Another
consumer may take the message between the wait and the script; the script then returns
nothing and the consumer waits again.

The message is recorded exactly as kombu's own ``QoS.append`` records it (the delivery
tag from the message's properties, the JSON ``[message, exchange, routing_key]``, the
time as score), so kombu's acknowledgement, rejection and ``visibility_timeout`` sweep
work unchanged; kombu then records it a second time on delivery, which changes nothing.

It also refuses to drop a message. kombu routes a publish to a named exchange through
the bindings kept in Redis (``_kombu.binding.{exchange}``); when none matches (the
queues were deleted with kombu, which removes their bindings), kombu pushes the message
nowhere, silently (no ``deadletter_queue`` is set), and the publish returns as if it
had succeeded. A mandatory publish through
:class:`ReliableChannel` raises :class:`Unroutable` there instead, before anything is
pushed, as RabbitMQ returns such a message (:class:`eventrouter.queue.broker.RoutedProducer`).
A queue's list deleted *without* kombu (``DEL``) keeps its bindings: the next push
creates the list again, and nothing published after the deletion is lost.

Only what eventrouter needs is supported: a consumer reads one queue (each
:class:`eventrouter.queue.worker.SinkConsumer` has its own connection), no message priorities
and no ``global_keyprefix``. :func:`eventrouter.queue.broker.open_connection` uses this
transport for every ``redis://`` and ``rediss://`` URL.
"""

from __future__ import annotations

from time import monotonic
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.json import loads

#: KEYS: queue, unacked hash, unacked index. Pops the oldest message (kombu pushes on the
#: left and pops on the right) and records it as unacknowledged, or returns nil.
TAKE = """
local item = redis.call('RPOP', KEYS[1])
if not item then
  return false
end
local ok, message = pcall(cjson.decode, item)
if not ok then
  return item  -- not a kombu message: the consumer fails on it, as kombu's own does
end
local properties = message['properties']
local info = properties['delivery_info']
local now = redis.call('TIME')
redis.call('HSET', KEYS[2], properties['delivery_tag'],
  '[' .. item .. ',' .. cjson.encode(info['exchange']) .. ','
  .. cjson.encode(info['routing_key']) .. ']')
redis.call('ZADD', KEYS[3], now[1] + now[2] / 1000000, properties['delivery_tag'])
return item
"""


class Unroutable(Exception):
    """The broker routed a mandatory message to no queue: nothing holds it.

    Raised by a publish on both transports (:class:`eventrouter.queue.broker.RoutedProducer`).
    """

    #: Quoted in the 503 (eventrouter.bus.bus.NotDurable): it names a routing key, no host.
    client_safe = True


class ReliableChannel(kombu_redis.Channel):
    """A kombu Redis channel whose consumer takes messages atomically, and whose
    mandatory publishes raise :class:`Unroutable` rather than go nowhere (module
    docstring)."""

    #: One list per queue: a message published with a priority would sit in another.
    priority_steps = [0]
    _take_script: Any = None
    #: True during a mandatory publish: :meth:`_lookup` then raises when nothing matches.
    _mandatory = False

    def basic_publish(self, message: Any, exchange: str, routing_key: str, **kwargs: Any) -> Any:
        self._mandatory = bool(kwargs.get("mandatory"))
        try:
            return super().basic_publish(message, exchange, routing_key, **kwargs)
        finally:
            self._mandatory = False

    def _lookup(self, exchange: str, routing_key: str, default: Any = None) -> Any:
        """The queues ``exchange`` routes ``routing_key`` to; during a mandatory publish,
        :class:`Unroutable` when there are none (kombu would push the message nowhere).
        Restoring unacknowledged messages (kombu's sweep) looks up as before."""
        queues = super()._lookup(exchange, routing_key, default)
        if self._mandatory and exchange and not queues:
            raise Unroutable(f"routing key {routing_key!r} reached no queue of {exchange!r}")
        return queues

    def _take(self, queue: str) -> bytes | None:
        """Pop the oldest message of ``queue`` and record it as unacknowledged."""
        if self._take_script is None:
            self._take_script = self.client.register_script(TAKE)  # no I/O: just a SHA
        keys = [self._q_for_pri(queue, 0), self.unacked_key, self.unacked_index_key]
        with self.conn_or_acquire() as client:
            return self._take_script(keys=keys, client=client)

    def _brpop_start(self, timeout: float | None = None) -> None:
        """Wait, on the poller's connection, until the next queue in turn has a message."""
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(1)
        if not queues:
            return
        self._waiting_on = queues[0]
        key = self._q_for_pri(queues[0], 0)
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        self.client.connection.send_command("BLMOVE", key, key, "RIGHT", "RIGHT", timeout or 0)

    def _brpop_read(self, **options: Any) -> bool:
        """The wait ended: take the message (if still there) and deliver it."""
        try:
            try:
                ready = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()  # kombu's: the connection is idle again
        queue = self._waiting_on
        self._queue_cycle.rotate(queue)
        item = self._take(queue) if ready is not None else None
        if item is None:
            raise kombu_redis.Empty()
        self.connection._deliver(loads(item), queue)
        return True

    def _get(self, queue: str) -> dict[str, Any]:
        """``basic_get``: the same atomic take, without waiting."""
        item = self._take(queue)
        if item is None:
            raise kombu_redis.Empty()
        return loads(item)


class ReliableTransport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`ReliableChannel`."""

    Channel = ReliableChannel
