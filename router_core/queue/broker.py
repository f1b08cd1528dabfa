"""The broker between the edge and the workers: topology, message format, connections.

Topology (every name starts with ``[queue] prefix``, ``eventrouter`` by default)::

    exchange  {prefix}.events         direct, durable
      queue   {prefix}.sink.{name}    durable, one per [sinks.NAME]; bound with the
                                      routing keys "all" and "sink.{name}"; its
                                      dead-letter exchange is {prefix}.dead
    exchange  {prefix}.dead           direct, durable
      queue   {prefix}.sink.{name}.dead   bound with the routing key "{name}"

The edge publishes each group commit once with the routing key ``all``; the broker puts
a copy in every sink's queue, so a slow or failing sink never holds the others back.
``sink.{name}`` reaches one sink's queue alone (replays). A direct exchange behaves the
same on RabbitMQ and on kombu's Redis transport (whose fanout is a non-durable PUB/SUB).

Message format, version 2 (header ``x-eventrouter-format: commands/2``): the body is a
JSON array of commands (:func:`eventrouter.events.commands.encode_many`), content type
``application/json``, persistent; header ``x-eventrouter-events`` holds the count. The
free-form fields are in it as the client sent them (raw JSON, never re-encoded on the
way). Version 1 (``commands/1``, the previous release's: a MessagePack array of the
same commands) is still read, so workers can be upgraded before edges; an edge's spool
written by the previous release (MessagePack bodies it publishes with the header of
this one) is read as version 1 too, by its first byte. A reader that meets another
format version dead-letters the message rather than guessing. Dead-lettered messages
keep body and headers and gain
``x-eventrouter-reason``, ``x-eventrouter-sink``, ``x-eventrouter-attempts`` and
``x-eventrouter-dead-lettered-at``.

Every publish is *mandatory* (:class:`RoutedProducer`): a message the exchange routes to
no queue (its queues were deleted) raises :class:`Unroutable` instead of being confirmed
and dropped, so a confirm means the message sits in at least one queue. RabbitMQ returns
such a message (``basic.return``) before it confirms it; kombu's Redis transport would
push it nowhere, silently, and :class:`eventrouter.queue.redis_transport.ReliableChannel`
raises instead.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import random
import secrets
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import amqp.exceptions
import kombu.exceptions
import redis.exceptions
from kombu import Connection, Exchange, Producer, Queue, binding

from eventrouter.config import QueueConfig
from eventrouter.events.commands import Command, decode_many, decode_many_v1, encode_many
from eventrouter.queue.redis_transport import ReliableTransport, Unroutable
from eventrouter.redact import redact_url

log = logging.getLogger("eventrouter.queue")

FORMAT_HEADER = "x-eventrouter-format"
FORMAT = "commands/2"
#: The previous release's format, still read (a rolling upgrade: workers first).
FORMAT_V1 = "commands/1"
EVENTS_HEADER = "x-eventrouter-events"
REASON_HEADER = "x-eventrouter-reason"
SINK_HEADER = "x-eventrouter-sink"
ATTEMPTS_HEADER = "x-eventrouter-attempts"
DEAD_AT_HEADER = "x-eventrouter-dead-lettered-at"
CONTENT_TYPE = "application/json"
#: Routing key that reaches every sink's queue.
ALL = "all"
#: What a broker that is down or unreachable raises, on either transport.
BROKER_ERRORS = (
    OSError,
    kombu.exceptions.OperationalError,
    amqp.exceptions.ConnectionError,
    redis.exceptions.ConnectionError,
)


class UndecodableMessage(ValueError):
    """A message that is not a batch of commands in a format this version reads."""


class RoutedProducer:
    """Publishes to one exchange, every message mandatory: :meth:`publish` returns only
    once the broker holds the message in at least one queue, and raises
    :class:`Unroutable` when the exchange routed it to none (the queues were deleted).

    On AMQP the channel is in confirm mode (:func:`open_connection`) and a publish waits
    for its confirm before the next one is sent on the channel (kombu, py-amqp's
    ``basic_publish_confirm``). RabbitMQ sends the ``basic.return`` of an unroutable
    mandatory message *before* its ``basic.ack``, so the return reaches the channel's
    callback while its own publish is still waiting for the ack: a return that arrives
    during a publish belongs to that publish. Each message carries an id of its own
    (``message_id``) and the return is matched against it as well; a return that names
    another message (none can, while publishes are one at a time) is logged, not blamed
    on this one. The connection is dropped by the caller after any failure, so no
    return or confirm of an abandoned publish is ever read by a later one.

    On Redis, kombu's transport has no returns: ``ReliableChannel`` raises
    :class:`Unroutable` from the publish itself, before pushing anything.

    One producer per channel, used by one thread (kombu is not thread-safe).
    """

    def __init__(self, channel: Any, exchange: Exchange) -> None:
        self.producer = Producer(channel, exchange=exchange)
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(6)
        self._returned: list[tuple[Any, str, str]] = []
        events = getattr(channel, "events", None)  # py-amqp's; kombu's virtual channels have none
        if events is not None:
            events["basic_return"].add(self._on_return)

    def _on_return(self, exc: Any, exchange: str, routing_key: str, message: Any) -> None:
        """py-amqp's ``basic_return`` callback, called on the publishing thread from inside
        the wait for the confirm."""
        properties = getattr(message, "properties", None) or {}
        self._returned.append((properties.get("message_id"), str(exc), routing_key))

    def publish(self, body: bytes, *, routing_key: str, timeout: float, **properties: Any) -> None:
        """Publish ``body``, mandatory, and wait for the broker to hold it.

        :raises Unroutable: the broker routed it to no queue (returned it, on AMQP).
        :raises Exception: anything else kombu raises (nack, confirm timeout, connection).
        """
        message_id = f"{self._prefix}-{next(self._ids)}"
        self._returned.clear()
        self.producer.publish(
            body,
            routing_key=routing_key,
            mandatory=True,
            timeout=timeout,
            message_id=message_id,
            **properties,
        )
        returned, self._returned = self._returned, []
        for returned_id, reason, key in returned:
            if returned_id == message_id:
                raise Unroutable(f"routing key {key!r} reached no queue ({reason})")
            log.error("a message returned after its confirm (%s, routing key %r)", reason, key)


class BrokerUnreachable(ConnectionError):
    """No node of the list answered (one attempt each); ``str()`` names each node, without
    its password, and why it failed."""


class QueueTypeMismatch(Exception):
    """A queue exists with another type than ``[queue] queue_type`` (RabbitMQ cannot
    change the type of a queue): an operator must act, retrying will not help."""


#: Per list of node URLs, the index of the node that answered last (``round-robin``).
_last_good: dict[tuple[str, ...], int] = {}


def node_order(config: QueueConfig) -> list[str]:
    """The order in which a new connection tries the nodes: ``round-robin`` starts at the
    node that answered last in this process and goes round the list; ``shuffle`` takes a
    fresh random order."""
    urls = config.urls
    if config.failover_strategy == "shuffle":
        return random.sample(urls, len(urls))
    start = _last_good.get(tuple(urls), 0)
    return urls[start:] + urls[:start]


def open_connection(config: QueueConfig) -> Connection:
    """A kombu connection to the broker, connected with a single attempt per node: with
    a list of node URLs, each node once, in :func:`node_order`, and the first that
    answers is the connection's (``Connection.connect()`` retries once after sleeping
    2 s: each attempt on a dead broker, and each ``/health`` probe, took 2 s more than
    the refusal did; callers have their own retry policy). When no node answers, one
    node's error is raised as it is, several nodes' as :class:`BrokerUnreachable`.
    Publishes wait for the broker's confirm on AMQP; Redis has no confirms: its reply to
    the push is the acknowledgement.

    Every socket operation is bounded: kombu's Redis transport ignores ``connect_timeout``
    and sets no socket timeout, so a Redis that accepted the connection but stopped
    answering held a publisher, a worker or ``/health`` forever.
    """
    options: dict[str, Any] = {}
    if config.transport == "amqp":
        options["confirm_publish"] = True
    else:
        # kombu's default is an hour: a dead consumer's messages would wait that long.
        options["visibility_timeout"] = config.visibility_timeout
        # The lock around kombu's sweep that hands those messages back expires after
        # 300 s by default: a worker killed during a sweep stopped every other worker
        # from sweeping for five minutes (tests/integration/test_worker.py, killed mid-stream, seen
        # once in CI). No longer than the visibility timeout: a sweep takes milliseconds.
        options["unacked_mutex_expire"] = max(5, math.ceil(config.visibility_timeout))
        options["socket_connect_timeout"] = config.connect_timeout
        # Above the 1 s BRPOP a consuming worker blocks in.
        options["socket_timeout"] = max(config.confirm_timeout, 2.0)
    urls = node_order(config)
    failures: list[tuple[str, Exception]] = []
    for url in urls:
        connection = Connection(
            url, connect_timeout=config.connect_timeout, transport_options=options
        )
        if config.transport == "redis":
            # Set after the URL was parsed, so that rediss:// keeps meaning TLS.
            connection.transport_cls = ReliableTransport  # redis_transport: no lost message
        try:
            connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)
        except Exception as exc:
            drop(connection)
            failures.append((url, exc))
            continue
        except BaseException:
            drop(connection)
            raise
        if len(config.urls) > 1:
            _last_good[tuple(config.urls)] = config.urls.index(url)
            if failures:
                log.info("connected to %s (%s)", redact_url(url), _failed(failures))
        return connection
    if len(failures) == 1:
        raise failures[0][1]
    raise BrokerUnreachable(f"no broker node answered: {_failed(failures)}") from failures[-1][1]


def _failed(failures: list[tuple[str, Exception]]) -> str:
    return "; ".join(f"{redact_url(url)}: {type(exc).__name__}: {exc}" for url, exc in failures)


def node_of(connection: Connection) -> str:
    """The node ``connection`` reached, without its password (for logs and ``/health``)."""
    try:
        return redact_url(connection.as_uri(include_password=False))
    except Exception:  # not connected, or a transport without a URI
        return "?"


def drop(connection: Connection) -> None:
    """Close a failed connection without the close handshake (py-amqp waits for the
    broker's Close-Ok with no timeout: on a hung broker that never returns)."""
    with contextlib.suppress(Exception):  # already broken
        connection.collect(socket_timeout=0.1)


def close(connection: Connection, timeout: float) -> None:
    """Close politely (consumers cancelled, pending acks flushed) within ``timeout``
    seconds, else drop the connection."""
    with contextlib.suppress(Exception):  # not connected, or not AMQP
        connection.connection.sock.settimeout(timeout)
    try:
        connection.release()
    except Exception:
        drop(connection)


class Topology:
    """The exchanges and queues for a set of sinks, declared idempotently."""

    def __init__(self, config: QueueConfig, sinks: Iterable[str]) -> None:
        self.config = config
        self.sinks = list(sinks)
        prefix = config.prefix
        self.exchange = Exchange(f"{prefix}.events", "direct", durable=True)
        self.dead_exchange = Exchange(f"{prefix}.dead", "direct", durable=True)

    def queue(self, sink: str) -> Queue:
        arguments: dict[str, Any] = {
            "x-dead-letter-exchange": self.dead_exchange.name,
            "x-dead-letter-routing-key": sink,
        }
        if self.config.queue_type == "quorum":
            arguments["x-queue-type"] = "quorum"
        return Queue(
            f"{self.config.prefix}.sink.{sink}",
            bindings=[
                binding(self.exchange, routing_key=ALL),
                binding(self.exchange, routing_key=f"sink.{sink}"),
            ],
            durable=True,
            queue_arguments=arguments,
        )

    def dead_queue(self, sink: str) -> Queue:
        arguments: dict[str, Any] = {}
        if self.config.queue_type == "quorum":
            arguments["x-queue-type"] = "quorum"
        return Queue(
            f"{self.config.prefix}.sink.{sink}.dead",
            self.dead_exchange,
            routing_key=sink,
            durable=True,
            queue_arguments=arguments or None,
        )

    def declare(self, channel: Any) -> None:
        """Declare both exchanges and every sink's queue and dead-letter queue.

        :raises QueueTypeMismatch: a queue exists with another type than ``queue_type``.
        """
        self.exchange(channel).declare()
        self.dead_exchange(channel).declare()
        for sink in self.sinks:
            for queue in (self.queue(sink), self.dead_queue(sink)):
                try:
                    queue(channel).declare()
                except amqp.exceptions.PreconditionFailed as exc:
                    if "x-queue-type" not in str(exc):
                        raise
                    raise QueueTypeMismatch(self._mismatch(queue.name)) from exc

    def _mismatch(self, name: str) -> str:
        want = self.config.queue_type
        other = "classic" if want == "quorum" else "quorum"
        return (
            f"queue {name!r} exists as a {other} queue, but [queue] queue_type = "
            f'"{want}": RabbitMQ cannot change the type of a queue. Either set queue_type = '
            f'"{other}" again, or move to {want} queues: stop the edges (their spools '
            f"keep accepting events), let the workers drain the queue, delete it "
            f"(rabbitmqctl delete_queue {name}) and start again; or choose a new "
            f"[queue] prefix (docs/queue.md, A RabbitMQ cluster)"
        )

    def depth(self, channel: Any, queue: Queue) -> int:
        """Messages ready in ``queue`` (a passive declare: creates nothing)."""
        if self.config.transport == "redis":
            return channel.client.llen(queue.name)
        return channel.queue_declare(queue=queue.name, passive=True).message_count


def message_properties(count: int) -> dict[str, Any]:
    """Keyword arguments for ``Producer.publish`` of one batch of ``count`` commands."""
    return {
        "content_type": CONTENT_TYPE,
        "content_encoding": "binary",  # kombu leaves the body as bytes
        "delivery_mode": 2,  # persistent
        "headers": {FORMAT_HEADER: FORMAT, EVENTS_HEADER: count},
    }


def encode(commands: Sequence[Command]) -> bytes:
    return encode_many(list(commands))


def decode(body: bytes, headers: dict[str, Any] | None) -> list[Command]:
    """The commands of one message.

    :raises UndecodableMessage: unknown format version or a body that is not commands.
    """
    version = (headers or {}).get(FORMAT_HEADER)
    if isinstance(version, bytes):
        version = version.decode("utf-8", "replace")
    if version == FORMAT and body[:1] == b"[":
        read = decode_many
    elif version in (FORMAT, FORMAT_V1):
        # commands/1, or a spool record of the previous release (MessagePack, whose
        # arrays never start with "[") published under this release's header.
        read = decode_many_v1
    else:
        raise UndecodableMessage(
            f"unknown message format {version!r} (this reader: {FORMAT} and {FORMAT_V1})"
        )
    try:
        return read(body)
    except Exception as exc:  # msgspec raises DecodeError or ValidationError
        raise UndecodableMessage(f"body is not a batch of commands: {exc}") from None


def dead_letter_headers(
    headers: dict[str, Any] | None, sink: str, reason: str, attempts: int
) -> dict[str, Any]:
    """The original headers plus why, where and when the message was dead-lettered."""
    return {
        **(headers or {}),
        REASON_HEADER: reason[:1000],
        SINK_HEADER: sink,
        ATTEMPTS_HEADER: attempts,
        DEAD_AT_HEADER: datetime.now(UTC).isoformat(timespec="milliseconds"),
    }


def reason_of(headers: dict[str, Any] | None) -> str:
    """Why a dead-lettered message is there: our header, else the broker's ``x-death``."""
    headers = headers or {}
    if reason := headers.get(REASON_HEADER):
        return str(reason)
    deaths = headers.get("x-death") or []
    if deaths:
        death = deaths[0]
        return f"broker: {death.get('reason')} from {death.get('queue')}"
    return "unknown"
