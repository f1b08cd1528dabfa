"""``eventrouter dead-letters list|replay --sink NAME``: inspect and re-execute dead letters.

A dead-lettered message keeps its commands intact; replaying executes them again
through the same bus a worker uses (pipeline stages such as dedup, then the sink), so a
message dead-lettered while the sink was broken is stored once the sink is fixed. Each
message is acknowledged (removed from the dead-letter queue) only after its replay
succeeded; one that fails again, or cannot be decoded, stays where it is.

Reading a queue takes each message unacknowledged; closing the connection puts back
every message not acknowledged, so ``list`` changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import msgspec

from eventrouter.bus.bus import WORKER, Bus, make_plugin_manager
from eventrouter.config import Config, ConfigError
from eventrouter.queue import broker


class DeadLetter(msgspec.Struct, kw_only=True):
    """One dead-lettered message, as ``list`` shows it."""

    reason: str
    dead_lettered_at: str | None
    attempts: int | None
    events: int | None
    message_ids: list[str]
    #: Set by ``replay``: "replayed", or why the message stayed.
    outcome: str | None = None


def _check(config: Config, sink: str) -> None:
    if config.queue is None:
        raise ConfigError(config.path, "queue", "dead letters live in the broker: no [queue]")
    if sink not in config.sinks:
        known = ", ".join(config.sinks) or "none"
        raise ConfigError(config.path, "sinks", f"no sink named {sink!r} (configured: {known})")


def _dead_letter_of(message: Any) -> tuple[DeadLetter, list | None]:
    headers = message.headers or {}
    try:
        commands = broker.decode(message.body, headers)
    except broker.UndecodableMessage:
        commands = None
    attempts = headers.get(broker.ATTEMPTS_HEADER)
    letter = DeadLetter(
        reason=broker.reason_of(headers),
        dead_lettered_at=headers.get(broker.DEAD_AT_HEADER),
        attempts=attempts if isinstance(attempts, int) else None,
        events=len(commands) if commands is not None else None,
        message_ids=[c.message_id for c in commands or ()],
    )
    return letter, commands


def _messages(config: Config, sink: str, limit: int | None, replaying: bool = False):
    """Yield up to ``limit`` dead letters, unacknowledged (closing the connection puts
    back every one not acknowledged meanwhile; on Kafka, ``eventrouter.queue.kafka_log``)."""
    if config.queue.transport == "kafka":  # confluent-kafka loads only then
        from eventrouter.queue import kafka_log

        yield from kafka_log.dead_letters(config, sink, limit, replaying=replaying)
        return
    topology = broker.Topology(config.queue, config.sinks)
    connection = broker.open_connection(config.queue)
    try:
        channel = connection.channel()
        topology.declare(channel)
        queue = topology.dead_queue(sink)(channel)
        taken = []
        try:
            while limit is None or len(taken) < limit:
                message = queue.get(no_ack=False)
                if message is None:
                    break
                taken.append(message)
                yield message
        finally:
            if config.queue.transport == "redis":
                _put_back_in_order(channel, taken)
    finally:
        broker.close(connection, config.queue.connect_timeout)


def _put_back_in_order(channel: Any, messages: list) -> None:
    """Return the unacknowledged ``messages`` to the head of a Redis queue, oldest first.

    kombu's Redis transport would put them back one by one at the head in the order they
    were taken, which reverses them: each ``list`` turned the dead-letter queue around
    and the next showed it newest first (tests/integration/test_deadletters.py, [redis]). Putting
    them back newest first leaves the oldest at the head again; the close then finds
    nothing left to restore.
    """
    for message in reversed(messages):
        if not message.acknowledged:
            channel.qos.restore_by_tag(message.delivery_tag)


def list_dead_letters(config: Config, sink: str, limit: int | None = None) -> list[DeadLetter]:
    """The dead letters of ``sink``, oldest first; the queue is left as it was."""
    _check(config, sink)
    return [_dead_letter_of(message)[0] for message in _messages(config, sink, limit)]


def replay(
    config: Config,
    sink: str,
    limit: int | None = None,
    *,
    plugins: Sequence[Any] = (),
    entry_points: bool = True,
) -> list[DeadLetter]:
    """Execute the dead-lettered commands of ``sink`` again; remove the ones that succeed."""
    _check(config, sink)
    pm = make_plugin_manager(config, entry_points=entry_points, plugins=plugins)
    bus = Bus(config, pm, role=WORKER, only=[sink])
    return asyncio.run(_replay(bus, config, sink, limit))


async def _replay(bus: Bus, config: Config, sink: str, limit: int | None) -> list[DeadLetter]:
    await bus.start()
    letters = []
    try:
        # The broker connection is blocking: walk the queue in a thread, deliver on the loop.
        loop = asyncio.get_running_loop()

        def walk() -> None:
            for message in _messages(config, sink, limit, replaying=True):
                letter, commands = _dead_letter_of(message)
                letters.append(letter)
                if commands is None:
                    letter.outcome = "kept: undecodable"
                    continue
                future = asyncio.run_coroutine_threadsafe(bus.deliver(sink, commands), loop)
                try:
                    future.result()
                except Exception as exc:
                    letter.outcome = f"kept: {type(exc).__name__}: {exc}"
                    continue
                message.ack()
                letter.outcome = "replayed"

        await asyncio.to_thread(walk)
    finally:
        await bus.stop()
    return letters
