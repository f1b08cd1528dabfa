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

Message format, version 1 (header ``x-eventrouter-format: commands/1``): the body is a
MessagePack array of commands (:func:`router_core.commands.encode_many`), content type
``application/x-msgpack``, persistent; header ``x-eventrouter-events`` holds the count.
A reader that meets another format version dead-letters the message rather than
guessing. Dead-lettered messages keep body and headers and gain
``x-eventrouter-reason``, ``x-eventrouter-sink``, ``x-eventrouter-attempts`` and
``x-eventrouter-dead-lettered-at``.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import amqp.exceptions
import kombu.exceptions
import redis.exceptions
from kombu import Connection, Exchange, Queue, binding

from router_core.commands import Command, decode_many, encode_many
from router_core.config import QueueConfig
from router_core.redis_transport import ReliableTransport

FORMAT_HEADER = "x-eventrouter-format"
FORMAT = "commands/1"
EVENTS_HEADER = "x-eventrouter-events"
REASON_HEADER = "x-eventrouter-reason"
SINK_HEADER = "x-eventrouter-sink"
ATTEMPTS_HEADER = "x-eventrouter-attempts"
DEAD_AT_HEADER = "x-eventrouter-dead-lettered-at"
CONTENT_TYPE = "application/x-msgpack"
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


def open_connection(config: QueueConfig) -> Connection:
    """A kombu connection to the broker, connected with a single attempt
    (``Connection.connect()`` retries once after sleeping 2 s: each attempt on a dead
    broker, and each ``/health`` probe, took 2 s more than the refusal did; callers have
    their own retry policy). Publishes wait for the broker's confirm on AMQP; Redis has
    no confirms: its reply to the push is the acknowledgement.

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
        # from sweeping for five minutes (tests/test_worker.py, killed mid-stream, seen
        # once in CI). No longer than the visibility timeout: a sweep takes milliseconds.
        options["unacked_mutex_expire"] = max(5, math.ceil(config.visibility_timeout))
        options["socket_connect_timeout"] = config.connect_timeout
        # Above the 1 s BRPOP a consuming worker blocks in.
        options["socket_timeout"] = max(config.confirm_timeout, 2.0)
    connection = Connection(
        config.url,
        connect_timeout=config.connect_timeout,
        transport_options=options,
    )
    if config.transport == "redis":
        # Set after the URL was parsed, so that rediss:// keeps meaning TLS.
        connection.transport_cls = ReliableTransport  # redis_transport: no lost message
    try:
        connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)
    except BaseException:
        drop(connection)
        raise
    return connection


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


#: Query parameters that carry a secret (redis-py and libpq read ``?password=``).
_SECRET_PARAM = re.compile(
    r"([?&](?:password|passwd|pass|pwd|secret|token|access_key|secret_key|sslpassword)=)[^&#]*",
    re.IGNORECASE,
)


def describe(url: str) -> str:
    """The URL without its password (in the userinfo or a ``?password=``), for logs,
    /health and ``config check``."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        rest = f"{user}:***@{host}" if ":" in credentials else f"{user}@{host}"
    rest = _SECRET_PARAM.sub(r"\1***", rest)
    return f"{scheme}{sep}{rest}"


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
        return Queue(
            f"{self.config.prefix}.sink.{sink}.dead",
            self.dead_exchange,
            routing_key=sink,
            durable=True,
        )

    def declare(self, channel: Any) -> None:
        """Declare both exchanges and every sink's queue and dead-letter queue."""
        self.exchange(channel).declare()
        self.dead_exchange(channel).declare()
        for sink in self.sinks:
            self.queue(sink)(channel).declare()
            self.dead_queue(sink)(channel).declare()

    def depth(self, channel: Any, queue: Queue) -> int:
        """Messages ready in ``queue`` (a passive declare: creates nothing)."""
        if self.config.transport == "redis":
            return channel.client.llen(queue.name)
        return channel.queue_declare(queue=queue.name, passive=True).message_count


def message_properties(count: int) -> dict[str, Any]:
    """Keyword arguments for ``Producer.publish`` of one batch of ``count`` commands."""
    return {
        "content_type": CONTENT_TYPE,
        "content_encoding": "binary",
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
    if version != FORMAT:
        raise UndecodableMessage(f"unknown message format {version!r} (this reader: {FORMAT})")
    try:
        return decode_many(body)
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
