"""``eventrouter worker`` against the real RabbitMQ and Redis of this machine.

What a user of the queue pipeline relies on, each case on both transports unless it needs
RabbitMQ itself: the message format on the wire, group commit at the edge, one queue per
sink, retries with backoff, two workers sharing a queue, a stop (SIGTERM) finishing the
batch in hand and losing or repeating nothing, a SIGKILLed worker losing nothing, and the
command line refusing a bad setup.

Workers run in a thread of the test process (:class:`WorkerThread`: test-only sink types
are passed as plugins) or as real ``eventrouter worker`` subprocesses
(:class:`WorkerProcess`: signals, two processes on one queue). The helpers at the top
(a scripted sink type, raw publishing, queue depths) are shared with
``tests/integration/test_deadletters.py``.
"""

from __future__ import annotations

import asyncio
import gc
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
import pytest
from kombu import Exchange, Producer, Queue

from eventrouter.bus.hookspecs import hookimpl
from eventrouter.bus.sink import Sink
from eventrouter.events.commands import Command, TrackCommand, decode_many
from eventrouter.queue import broker
from eventrouter.queue import worker as worker_module
from eventrouter.queue.worker import gc_paused
from tests.helpers import HANG_GUARD, LiveServer, eventually, run_eventrouter
from tests.queue_support import (  # noqa: F401 - fixtures
    AMQP_URL,
    QueueEnv,
    WorkerProcess,
    WorkerThread,
    amqp_env,
    queue_env,
    to_toml,
    unique,
)

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

# ruff: noqa: F811 - pytest fixtures are parameters

#: Retries fast enough for a test, bounded like production.
FAST_RETRY = {"attempts": 5, "initial_backoff": "10ms", "max_duration": "5s"}


# -- shared helpers ----------------------------------------------------------------------
class ScriptedSinks:
    """A plugin offering sink type ``scripted``: ``fail(commands)`` decides, per write,
    whether it raises (return an error message) or stores in memory (return None).

    A write is all or nothing, like a store's transaction; ``stored`` keeps every stored
    ``message_id`` in order, duplicates included, so a double delivery shows.
    """

    def __init__(self, fail: Callable[[Sequence[Command]], str | None]) -> None:
        self.fail = fail
        self.stored: list[str] = []
        self.writes = 0
        self._lock = threading.Lock()
        plugin = self

        class Scripted(Sink):
            class Options(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
                pass

            def write(self, commands: Sequence[Command]) -> None:
                plugin.write(commands)

        self.sink_type = Scripted

    def write(self, commands: Sequence[Command]) -> None:
        with self._lock:
            self.writes += 1
            error = self.fail(commands)
            if error is not None:
                raise RuntimeError(error)
            self.stored.extend(c.message_id for c in commands)

    @hookimpl
    def eventrouter_sink_types(self) -> dict[str, type[Sink]]:
        return {"scripted": self.sink_type}


def track(message_id: str, event: str = "Signed Up") -> dict[str, Any]:
    return {"userId": "u1", "event": event, "messageId": message_id}


def post_each(server: LiveServer, ids: Sequence[str], event: str = "Signed Up") -> None:
    """One request per event, one after the other: one broker message each."""
    for message_id in ids:
        response = server.post("/v1/track", track(message_id, event))
        assert response.status_code == 200, response.text


def post_batches(server: LiveServer, ids: Sequence[str], size: int) -> None:
    for start in range(0, len(ids), size):
        batch = [{"type": "track", **track(m)} for m in ids[start : start + size]]
        response = server.post("/v1/batch", {"batch": batch})
        assert response.status_code == 200, response.text


def enqueue_batches(config: Any, plugin: Any, ids: Sequence[str], size: int) -> None:
    """Post ``ids`` in batches of ``size`` to an edge of ``config`` (with ``plugin``'s
    sink types) and stop it: the events wait in the queue for a worker."""
    server = LiveServer(config, plugins=[plugin]).start()
    try:
        post_batches(server, ids, size)
    finally:
        server.stop()


def command(message_id: str, event: str = "Signed Up") -> TrackCommand:
    now = datetime.now(UTC)
    return TrackCommand(
        message_id=message_id,
        source="test",
        user_id="u1",
        event=event,
        timestamp=now,
        received_at=now,
    )


def publish_raw(
    env: QueueEnv,
    body: bytes,
    *,
    exchange: str,
    routing_key: str,
    headers: dict[str, Any] | None = None,
    content_type: str | None = broker.CONTENT_TYPE,
) -> None:
    """Publish ``body`` as another producer would, after declaring the topology.

    Without ``content_type`` the message goes out bare, as from a client that is not
    kombu (kombu's ``Producer`` would serialise the bytes as JSON instead)."""
    config = env.config()
    with env.connection() as connection:
        channel = connection.channel()
        broker.Topology(config.queue, config.sinks).declare(channel)
        if content_type is None:
            message = channel.prepare_message(body, headers=headers or {})
            channel.basic_publish(message, exchange=exchange, routing_key=routing_key)
            return
        Producer(channel).publish(
            body,
            exchange=Exchange(exchange, "direct", durable=True),
            routing_key=routing_key,
            headers=headers or {},
            content_type=content_type,
            content_encoding="binary",
            delivery_mode=2,
        )


def ready(env: QueueEnv, queue_name: str) -> int:
    """Messages ready (not delivered to a consumer) in ``queue_name``."""
    with env.connection() as connection:
        channel = connection.channel()
        if env.transport == "redis":
            return channel.client.llen(queue_name)
        return channel.queue_declare(queue=queue_name, passive=True).message_count


def take_all(env: QueueEnv, queue_name: str) -> list[Any]:
    """Every message of ``queue_name``, removed from it (acknowledged)."""
    messages = []
    with env.connection() as connection:
        queue = Queue(queue_name, channel=connection.channel())
        while (message := queue.get(no_ack=False)) is not None:
            message.ack()
            messages.append(message)
    return messages


def log_of(worker: WorkerProcess) -> str:
    """The worker's output so far, also after ``stop()`` (which closes its log file)."""
    return worker.log_path.read_text(errors="replace")


def wait_consuming(worker: WorkerProcess) -> None:
    eventually(lambda: ": consuming " in log_of(worker), "worker consuming")


def summary(log: str, sink: str = "local") -> dict[str, int]:
    """The numbers of a worker's stop-summary line for ``sink``."""
    match = re.search(
        rf"sink {sink}: (\d+) messages, (\d+) events written, (\d+) dropped as duplicates, "
        r"(\d+) retries, (\d+) dead-lettered",
        log,
    )
    assert match, f"no summary line for sink {sink} in:\n{log}"
    keys = ("messages", "written", "dropped", "retries", "dead_lettered")
    return dict(zip(keys, map(int, match.groups()), strict=True))


# -- the edge's side: what goes on the wire ----------------------------------------------
def test_message_format_on_the_wire(queue_env):
    """One request of three events is one persistent message in format commands/2: a
    JSON array of commands whose properties are the client's bytes, as sent."""
    ids = [unique("m") for _ in range(3)]
    server = LiveServer(queue_env.config()).start()
    sent = b'{ "plan" : "pro",\n "note": "caf\\u00e9 \\"q\\"", "n": 1.50 }'
    items = b",".join(
        msgspec.json.encode({"type": "track", **track(m)})[:-1] + b',"properties":' + sent + b"}"
        for m in ids
    )
    try:
        response = server.post(
            "/v1/batch",
            content=b'{"batch":[' + items + b"]}",
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 200, response.text
    finally:
        server.stop()
    [message] = take_all(queue_env, queue_env.queue_name())
    assert message.headers[broker.FORMAT_HEADER] == "commands/2"
    assert message.headers[broker.EVENTS_HEADER] == 3
    assert message.content_type == "application/json"
    assert message.properties["delivery_mode"] == 2  # persistent
    assert message.body.count(b'"properties":' + sent) == 3  # never re-encoded
    commands = decode_many(message.body)
    assert [c.message_id for c in commands] == ids
    assert {c.event for c in commands} == {"Signed Up"}
    assert commands[0].properties == {"plan": "pro", "note": 'caf\u00e9 "q"', "n": 1.5}


def test_worker_reads_the_previous_format(queue_env):
    """A rolling upgrade: messages an edge of the previous release published (format
    commands/1, MessagePack, the free-form fields as maps) are stored by this worker
    with the same columns, as is a commands/1 body under this release's header (a
    previous release's spool, published again by a new edge)."""
    config = queue_env.config()
    exchange, key = f"{queue_env.prefix}.events", "sink.local"
    old, spooled = unique("v1"), unique("v1-spool")
    now = datetime.now(UTC)

    def v1_body(message_id: str) -> bytes:
        # What commands/1 put on the wire: msgspec MessagePack of the command with
        # dict-valued free-form fields (built here as plain maps, as that release had).
        return msgspec.msgpack.encode(
            [
                {
                    "type": "track",
                    "event": "Upgraded",
                    "message_id": message_id,
                    "source": "test",
                    "user_id": "u1",
                    "anonymous_id": None,
                    "session_id": None,
                    "context": {"ip": "203.0.113.0", "library": {"name": "old"}},
                    "integrations": {},
                    "timestamp": now,
                    "original_timestamp": None,
                    "sent_at": None,
                    "received_at": now,
                    "properties": {"plan": "pro", "n": 2},
                }
            ]
        )

    v1 = {broker.FORMAT_HEADER: "commands/1", broker.EVENTS_HEADER: 1}
    v2 = {broker.FORMAT_HEADER: broker.FORMAT, broker.EVENTS_HEADER: 1}
    publish_raw(queue_env, v1_body(old), exchange=exchange, routing_key=key, headers=v1)
    publish_raw(queue_env, v1_body(spooled), exchange=exchange, routing_key=key, headers=v2)
    with WorkerThread(config):
        eventually(lambda: sorted(queue_env.stored_ids()) == sorted([old, spooled]), "stored")
    assert ready(queue_env, queue_env.dead_queue_name()) == 0
    rows = queue_env.stored_rows()
    assert {r["message_id"]: r["properties"] for r in rows} == {
        old: {"plan": "pro", "n": 2},
        spooled: {"plan": "pro", "n": 2},
    }
    assert all(r["context"]["ip"] == "203.0.113.0" for r in rows)


def test_group_commit_shares_messages_between_concurrent_requests(queue_env):
    """200 concurrent single-event requests: every one is published, in fewer messages."""
    ids = [unique("m") for _ in range(200)]
    server = LiveServer(queue_env.config()).start()

    async def send_all() -> list[int]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:
            responses = await asyncio.gather(
                *(client.post("/v1/track", json=track(m)) for m in ids)
            )
        return [r.status_code for r in responses]

    try:
        assert asyncio.run(send_all()) == [200] * 200
        health = server.health().json()
    finally:
        server.stop()
    stats = health["components"]["broker"]["stats"]
    assert stats["published_events"] == 200
    assert stats["published_messages"] < 200
    assert stats["failed_messages"] == 0
    messages = take_all(queue_env, queue_env.queue_name())
    assert len(messages) == stats["published_messages"]
    published = [c.message_id for m in messages for c in decode_many(m.body)]
    assert sorted(published) == sorted(ids)


# -- the worker ------------------------------------------------------------------------
def test_each_sink_has_its_own_queue(queue_env):
    """A worker for sink a leaves sink b's copy of the events in b's queue."""
    db = {name: queue_env.tmp_path / f"{name}.db" for name in "ab"}
    sinks = {
        name: {"type": "sqlite", "url": f"sqlite:///{path}", "indexes": ["message_id"]}
        for name, path in db.items()
    }
    config = queue_env.config(sinks=sinks)
    ids = [unique("m") for _ in range(5)]
    server = LiveServer(config).start()
    try:
        post_each(server, ids)
    finally:
        server.stop()
    with WorkerThread(config, sinks=["a"]) as worker:
        eventually(lambda: len(queue_env.stored_ids(db["a"])) == 5, "5 events stored in a")
        assert [c.sink for c in worker.worker.consumers] == ["a"]
    assert sorted(queue_env.stored_ids(db["a"])) == sorted(ids)
    assert queue_env.stored_ids(db["b"]) == []
    assert ready(queue_env, queue_env.queue_name("b")) == 5
    assert ready(queue_env, queue_env.queue_name("a")) == 0
    with WorkerThread(config, sinks=["b"]):
        eventually(lambda: len(queue_env.stored_ids(db["b"])) == 5, "5 events stored in b")
    assert sorted(queue_env.stored_ids(db["b"])) == sorted(ids)
    assert ready(queue_env, queue_env.queue_name("b")) == 0
    assert len(queue_env.stored_ids(db["a"])) == 5  # a got nothing twice


def test_sink_failing_twice_then_succeeding_stores_every_event_once(queue_env):
    """Retried with backoff, nothing dead-lettered; with dedup on, the failed writes did
    not mark their ids as seen (dedup never causes loss)."""
    plugin = ScriptedSinks(lambda commands: "store is down" if plugin.writes <= 2 else None)
    sinks = {"local": {"type": "scripted", "retry": FAST_RETRY}}
    config = queue_env.config(dedup=True, sinks=sinks)
    ids = [unique("m") for _ in range(12)]
    server = LiveServer(config, plugins=[plugin]).start()
    try:
        post_each(server, ids[:2])
        post_batches(server, ids[2:], 5)
    finally:
        server.stop()
    with WorkerThread(config, plugins=[plugin]) as worker:
        eventually(lambda: len(plugin.stored) >= 12, "12 events stored")
    consumer = worker.worker.consumers[0]
    assert sorted(plugin.stored) == sorted(ids)  # each once: the list keeps duplicates
    assert consumer.retries == 2
    assert (consumer.written, consumer.dropped, consumer.dead_lettered) == (12, 0, 0)
    assert ready(queue_env, queue_env.queue_name()) == 0
    assert ready(queue_env, queue_env.dead_queue_name()) == 0


def test_batches_are_written_with_the_collector_paused_and_it_is_on_again_after(queue_env):
    """worker.gc_paused: the cyclic garbage collector does not run while a batch is
    decoded and written (it would walk the batch's objects again and again and find
    nothing), including the retries of a failed write, and it is on again once the
    batch was written."""
    collector_on: list[bool] = []

    def fail(commands: Sequence[Command]) -> str | None:
        collector_on.append(gc.isenabled())
        return "store is down" if len(collector_on) == 1 else None

    plugin = ScriptedSinks(fail)
    config = queue_env.config(sinks={"local": {"type": "scripted", "retry": FAST_RETRY}})
    ids = [unique("m") for _ in range(6)]
    enqueue_batches(config, plugin, ids, 3)
    assert gc.isenabled()
    with WorkerThread(config, plugins=[plugin]) as worker:
        eventually(lambda: len(plugin.stored) >= 6, "6 events stored")
        eventually(lambda: worker.worker.consumers[0].written == 6, "the write accounted")
        # The count is kept inside the pause (then the acknowledgements): on again just
        # after, with the worker still running.
        eventually(gc.isenabled, "the collector on again after the batch")
    assert sorted(plugin.stored) == sorted(ids)
    assert collector_on and not any(collector_on)  # the failed write and its retry too
    assert gc.isenabled()


def test_gc_paused_counts_the_threads_inside_and_keeps_a_disabled_collector_off():
    """The collector's state is per process: it comes back on when the last of several
    consumer threads leaves, and not at all if it was off before the first came in."""
    entered, release = threading.Barrier(3), threading.Event()
    left = []

    def consumer() -> None:
        with gc_paused():
            entered.wait(HANG_GUARD)
            release.wait(HANG_GUARD)
        left.append(gc.isenabled())

    threads = [threading.Thread(target=consumer) for _ in range(2)]
    for thread in threads:
        thread.start()
    entered.wait(HANG_GUARD)
    assert not gc.isenabled()
    with gc_paused():  # a third, leaving first: the others are still inside
        pass
    assert not gc.isenabled()
    release.set()
    for thread in threads:
        thread.join(HANG_GUARD)
    assert gc.isenabled() and len(left) == 2
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_gc_paused_collects_once_when_overlapping_threads_keep_it_off(monkeypatch):
    """Consumers of several sinks may overlap for as long as the load lasts, so that
    the collector is never enabled again: past MAX_GC_PAUSE, a thread that leaves while
    another is still inside runs one full collection (cyclic garbage must not pile up)."""
    monkeypatch.setattr(worker_module, "MAX_GC_PAUSE", 0.0)
    collections: list[int] = []

    def record(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append(info["generation"])

    inside, release = threading.Event(), threading.Event()

    def long_consumer() -> None:
        with gc_paused():
            inside.set()
            release.wait(HANG_GUARD)

    other = threading.Thread(target=long_consumer)
    other.start()
    inside.wait(HANG_GUARD)
    gc.callbacks.append(record)
    try:
        with gc_paused():
            pass
        assert collections == [2]  # the full collection, the other thread still inside
        assert not gc.isenabled()
    finally:
        gc.callbacks.remove(record)
        release.set()
        other.join(HANG_GUARD)
    assert gc.isenabled()


def test_a_write_that_times_out_is_retried_not_dead_lettered(queue_env):
    """``write_timeout`` here is longer than the retry policy's ``max_duration``, which
    counts from the first failure: the hung write is retried, the batch stored once."""

    def hang_once(commands: Sequence[Command]) -> str | None:
        if plugin.writes == 1:
            # Past write_timeout (the worker gives up on this write at 0.3 s), and over well
            # before the retry's own timeout ends (about 0.61 s): the sink's writes run on
            # one thread, so the retry waits for this one. 0.6 s left 10 ms for it.
            time.sleep(0.4)
            return "hung, then failed"
        return None

    plugin = ScriptedSinks(hang_once)
    retry = {"attempts": 3, "initial_backoff": "10ms", "max_duration": "100ms"}
    config = queue_env.config(
        sinks={"local": {"type": "scripted", "retry": retry}},
        queue={"write_timeout": "300ms"},
    )
    ids = [unique("m") for _ in range(3)]
    enqueue_batches(config, plugin, ids, 3)
    with WorkerThread(config, plugins=[plugin]) as worker:
        eventually(lambda: len(plugin.stored) >= 3, "3 events stored")
    consumer = worker.worker.consumers[0]
    assert sorted(plugin.stored) == sorted(ids)
    assert (consumer.retries, consumer.dead_lettered) == (1, 0)
    assert ready(queue_env, queue_env.dead_queue_name()) == 0


class RefusedForGood(Exception):
    """What a store says of a batch it will never take (a webhook's 400)."""

    retryable = False


def test_an_error_the_sink_calls_permanent_is_dead_lettered_without_retries(queue_env):
    """The framework's retry policy asks the sink (``retryable = False``): no retry, the
    sink is up, so the message goes to the dead-letter queue after one attempt."""

    def refuse(commands: Sequence[Command]) -> None:
        raise RefusedForGood("400 from the store")

    plugin = ScriptedSinks(lambda commands: None)
    plugin.write = refuse  # every write, instead of storing
    config = queue_env.config(sinks={"local": {"type": "scripted", "retry": FAST_RETRY}})
    enqueue_batches(config, plugin, [unique("m")], 1)
    with WorkerThread(config, plugins=[plugin]) as worker:
        consumer = worker.worker.consumers[0]
        eventually(lambda: consumer.dead_lettered == 1, "the message dead-lettered")
    assert consumer.retries == 0
    assert "RefusedForGood: 400 from the store" in consumer.last_error
    assert ready(queue_env, queue_env.dead_queue_name()) == 1


def test_the_sinks_buffer_bounds_what_a_consumer_holds(amqp_env):
    """``buffer.max_events = 3000`` with 1,000-event messages: the broker hands the
    consumer 3 messages at a time. While the sink's write hangs, the other 7 stay ready
    in the broker; once it returns, everything is stored."""
    release = threading.Event()
    plugin = ScriptedSinks(lambda commands: None if release.wait(HANG_GUARD) else "hung")
    sinks = {"local": {"type": "scripted", "buffer": {"max_events": 3000}}}
    config = amqp_env.config(sinks=sinks)
    ids = [unique("m") for _ in range(10)]
    server = LiveServer(config, plugins=[plugin]).start()
    try:
        post_each(server, ids)
    finally:
        server.stop()
    try:
        with WorkerThread(config, plugins=[plugin]) as worker:
            consumer = worker.worker.consumers[0]
            assert consumer.prefetch == 3
            eventually(lambda: plugin.writes == 1, "the first write hanging")
            eventually(lambda: ready(amqp_env, amqp_env.queue_name()) == 7, "7 left ready")
            release.set()
            eventually(lambda: len(plugin.stored) == 10, "every event stored")
    finally:
        release.set()
    assert sorted(plugin.stored) == sorted(ids)


def test_two_worker_processes_share_a_queue_and_store_each_event_once(queue_env):
    """The store here has no unique ``message_id`` index, so an event consumed by both
    workers would show as two rows."""
    raw = queue_env.raw()
    raw["sinks"]["local"]["indexes"] = ["user_id"]
    path = queue_env.write_config(raw)
    workers = [WorkerProcess(path), WorkerProcess(path)]
    ids = [unique("m") for _ in range(2000)]
    try:
        for worker in workers:
            wait_consuming(worker)
        server = LiveServer(queue_env.config(sinks=raw["sinks"])).start()
        try:
            post_batches(server, ids, 20)
            published = server.health().json()["components"]["broker"]["stats"]
        finally:
            server.stop()
        eventually(lambda: len(queue_env.stored_ids()) >= 2000, "2000 events stored")
    finally:
        codes = [worker.stop() for worker in workers]
    assert codes == [0, 0], [log_of(w) for w in workers]
    stored = queue_env.stored_ids()
    assert len(stored) == len(set(stored)) == 2000
    assert set(stored) == set(ids)
    counts = [summary(log_of(worker)) for worker in workers]
    assert all(c["messages"] > 0 for c in counts), counts
    assert sum(c["messages"] for c in counts) == published["published_messages"]
    assert sum(c["written"] for c in counts) == 2000


#: A batch the worker would hold for 30 s more: only a stop makes it write now.
#: A batch the worker would hold for an hour: only a stop makes it write before the
#: hang guard (HANG_GUARD) of WorkerThread.stop / WorkerProcess.stop runs out, so a
#: worker that waited out its batch timeout fails those, with no clock in the test.
HOLD = {"max_events": 100000, "timeout": "1h"}


def test_stop_finishes_the_batch_in_hand(queue_env):
    """What SIGTERM sets (the worker's stop event) while a batch waits out its timeout:
    the batch is written and acknowledged at once, not 30 s later."""
    plugin = ScriptedSinks(lambda commands: None)
    config = queue_env.config(sinks={"local": {"type": "scripted", "batch": HOLD}})
    ids = [unique("m") for _ in range(20)]
    server = LiveServer(config, plugins=[plugin]).start()
    try:
        post_each(server, ids)
    finally:
        server.stop()
    worker = WorkerThread(config, plugins=[plugin]).start()
    try:
        eventually(lambda: ready(queue_env, queue_env.queue_name()) == 0, "messages delivered")
        consumer = worker.worker.consumers[0]
        eventually(lambda: len(consumer.buffer) == 20, "20 messages in hand")
        time.sleep(0.3)
        assert plugin.stored == []
    finally:
        worker.stop()  # fails if the worker is still running after HANG_GUARD
    assert sorted(plugin.stored) == sorted(ids)
    assert (consumer.messages, consumer.written) == (20, 20)
    assert ready(queue_env, queue_env.queue_name()) == 0  # acknowledged, not requeued


def test_sigterm_finishes_the_batch_in_hand(queue_env):
    """``eventrouter worker`` with an SQLite sink holding a batch exits 0 soon after
    SIGTERM, the batch stored and acknowledged. (The SQLite sink used to apply
    ``batch.timeout`` a second time to the batch the worker hands it, waiting for writes
    that cannot come, so the write and the exit took the whole timeout.)"""
    raw = queue_env.raw()
    raw["sinks"]["local"]["batch"] = HOLD
    worker = WorkerProcess(queue_env.write_config(raw))
    ids = [unique("m") for _ in range(20)]
    try:
        wait_consuming(worker)
        server = LiveServer(queue_env.config()).start()
        try:
            post_each(server, ids)
        finally:
            server.stop()
        # Every message delivered to the worker, none written: the batch is in its hand.
        eventually(lambda: ready(queue_env, queue_env.queue_name()) == 0, "messages delivered")
        time.sleep(0.3)
        assert queue_env.stored_ids() == []
    finally:
        # After HANG_GUARD the worker is SIGKILLed: the exit code is then not 0.
        code = worker.stop(signal.SIGTERM)
    assert code == 0, log_of(worker)
    assert sorted(queue_env.stored_ids()) == sorted(ids)
    assert ready(queue_env, queue_env.queue_name()) == 0  # acknowledged, not requeued
    expected = {"messages": 20, "written": 20, "dropped": 0, "retries": 0, "dead_lettered": 0}
    assert summary(log_of(worker)) == expected


def test_stopping_while_events_flow_loses_and_repeats_nothing(queue_env):
    """A worker stopped (what SIGTERM does) while events arrive acknowledges what it wrote
    and leaves the rest to the next worker: the in-memory sink sees each event once."""
    plugin = ScriptedSinks(lambda commands: None)
    batch = {"max_events": 200, "timeout": "50ms"}
    config = queue_env.config(sinks={"local": {"type": "scripted", "batch": batch}})
    ids = [unique("m") for _ in range(2000)]
    server = LiveServer(config, plugins=[plugin]).start()
    try:
        first = WorkerThread(config, plugins=[plugin]).start()
        sender = threading.Thread(target=post_batches, args=(server, ids, 20))
        sender.start()
        eventually(lambda: len(plugin.stored) >= 200, "some events stored")
        first.stop()
        at_stop = len(plugin.stored)
        sender.join(HANG_GUARD)
        assert not sender.is_alive()
    finally:
        server.stop()
    assert at_stop < 2000, "the worker was not stopped mid-stream"
    with WorkerThread(config, plugins=[plugin]):
        eventually(lambda: len(plugin.stored) >= 2000, "2000 events stored")
    assert sorted(plugin.stored) == sorted(ids)
    assert ready(queue_env, queue_env.queue_name()) == 0


def test_worker_killed_mid_stream_loses_nothing(queue_env):
    """SIGKILL while events flow: the unacknowledged messages come back to the next
    worker, and dedup plus the unique ``message_id`` index store each once.

    RabbitMQ requeues them when the connection drops; kombu's Redis transport hands them
    back once ``queue.visibility_timeout`` has passed (shortened here from 300 s).
    """
    queue = {"visibility_timeout": "2s"} if queue_env.transport == "redis" else None
    raw = queue_env.raw(dedup=True, queue=queue)
    # Batches held for up to 200 ms: the killed worker has messages in hand.
    raw["sinks"]["local"]["batch"] = {"max_events": 400, "timeout": "200ms"}
    path = queue_env.write_config(raw)
    ids = [unique("m") for _ in range(3000)]
    server = LiveServer(queue_env.config(dedup=True, queue=queue)).start()
    first = WorkerProcess(path)
    try:
        wait_consuming(first)
        sender = threading.Thread(target=post_batches, args=(server, ids, 50))
        sender.start()
        eventually(lambda: len(queue_env.stored_ids()) >= 300, "some events stored")
        first.stop(signal.SIGKILL)
        at_kill = len(queue_env.stored_ids())
        sender.join(60)
        assert not sender.is_alive()
    finally:
        server.stop()
        first.stop(signal.SIGKILL)
    assert at_kill < 3000, "the worker was not killed mid-stream"
    second = WorkerProcess(path)
    try:
        eventually(lambda: len(queue_env.stored_ids()) >= 3000, "3000 events stored")
    finally:
        assert second.stop() == 0, log_of(second)
    stored = queue_env.stored_ids()
    assert len(stored) == len(set(stored)) == 3000
    assert set(stored) == set(ids)
    if queue_env.transport == "amqp":
        # On Redis, messages the killed worker had committed but not acknowledged may
        # still be waiting out the visibility timeout; the next worker drops them as
        # duplicates (dedup), which the exactly-once assertions above already cover.
        assert ready(queue_env, queue_env.queue_name()) == 0


# -- the command line ------------------------------------------------------------------
def run_worker(config_path, *args: str) -> subprocess.CompletedProcess:
    return run_eventrouter("worker", "--config", str(config_path), *args)


def test_worker_without_queue_table_exits_2_naming_it(tmp_path):
    path = tmp_path / "eventrouter.toml"
    path.write_text(to_toml({"sinks": {"local": {"type": "sqlite", "url": "sqlite:///x.db"}}}))
    result = run_worker(path)
    assert result.returncode == 2, result
    assert "queue" in result.stderr
    assert str(path) in result.stderr


def test_worker_for_unknown_sink_exits_2_naming_it(tmp_path):
    path = tmp_path / "eventrouter.toml"
    raw = {
        "queue": {"url": AMQP_URL, "prefix": unique("ert")},
        "sinks": {"local": {"type": "sqlite", "url": "sqlite:///x.db"}},
    }
    path.write_text(to_toml(raw))
    result = run_worker(path, "--sink", "nosuch")
    assert result.returncode == 2, result
    assert "'nosuch'" in result.stderr
    assert "local" in result.stderr  # the sinks it knows
