"""A confirm means routed: a sink queue deleted under a running edge loses no ``200``.

Every publish is mandatory. A message the broker routes to no queue (RabbitMQ returns
it before confirming it; kombu's Redis transport would push it nowhere) is a failed
publish, as a nack or a lost connection is: spooled and answered ``200`` with the spool
on, answered ``503`` with it off. The failed connection is dropped, and the next one
declares the topology again, which creates the deleted queue again: the spool's replay
and the next requests then reach it. The tests delete a queue under a running edge, on
both transports, and count what is stored; the return's correlation with its own
publish, and the worker's dead-letter publish, are tested on the real brokers too.
"""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Any

import msgspec
import pytest

from eventrouter.bus.hookspecs import hookimpl
from eventrouter.bus.sink import Sink
from eventrouter.queue import broker
from tests.helpers import HANG_GUARD, LiveServer, eventually
from tests.integration.test_worker import ready
from tests.queue_support import (  # noqa: F401 - fixtures
    QueueEnv,
    WorkerThread,
    amqp_env,
    queue_env,
    unique,
)

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

# ruff: noqa: F811 - pytest fixtures are parameters


def track() -> dict[str, Any]:
    return {"userId": "u1", "event": "Routed", "messageId": unique("m")}


def delete_queue(env: QueueEnv, sink: str = "local", *, dead: bool = False) -> None:
    """Delete a sink's queue (or its dead-letter queue) as docs/queue.md tells an
    operator to: declare, then delete (on Redis that removes the bindings too)."""
    topology = broker.Topology(env.config().queue, [sink])
    with env.connection() as connection:
        queue = topology.dead_queue(sink) if dead else topology.queue(sink)
        bound = queue(connection.channel())
        bound.declare()
        bound.delete()


def queue_exists(env: QueueEnv, sink: str = "local") -> bool:
    if env.transport == "redis":
        with env.connection() as connection:
            client = connection.channel().client
            bindings = client.smembers(f"_kombu.binding.{env.prefix}.events")
            return any(env.queue_name(sink).encode() in b for b in bindings)
    try:
        ready(env, env.queue_name(sink))
    except Exception:  # NOT_FOUND from the passive declare
        return False
    return True


def post_like_an_sdk(server: LiveServer, body: dict[str, Any]) -> list[int]:
    """Post, retrying a 503 with the same body; every status seen."""
    statuses: list[int] = []
    deadline = time.monotonic() + HANG_GUARD
    while time.monotonic() < deadline:
        response = server.post("/v1/track", body)
        statuses.append(response.status_code)
        if response.status_code == 200:
            return statuses
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "5"
        assert "reached no queue" in response.json()["message"], response.text
        time.sleep(0.05)
    pytest.fail(f"never accepted: {statuses[-5:]}")


def store_all(env: QueueEnv, count: int) -> None:
    """Run a worker until ``count`` events are stored."""
    with WorkerThread(env.config()) as worker:
        consumer = worker.worker.consumers[0]
        eventually(lambda: consumer.written >= count, f"{count} events stored")


def test_a_deleted_sink_queue_is_answered_503_and_then_recreated(queue_env):
    """Spool off: the group whose message was returned answers 503 (never 200); the
    publisher reconnects, declares the queue again, and the client's retry is stored."""
    server = LiveServer(queue_env.config(queue={"spool": {"enabled": False}})).start()
    try:
        assert server.post("/v1/track", track()).status_code == 200  # connected, declared
        delete_queue(queue_env)
        assert not queue_exists(queue_env)

        accepted = []
        first = track()
        assert post_like_an_sdk(server, first)[0] == 503  # returned, not confirmed and lost
        accepted.append(first["messageId"])
        assert queue_exists(queue_env)  # declared again by the reconnection
        for _ in range(5):
            body = track()
            assert post_like_an_sdk(server, body) == [200]
            accepted.append(body["messageId"])
        publisher = server.app.bus.publisher
        assert publisher.failed_messages == 1
        assert "Unroutable" in publisher.last_error
    finally:
        server.stop()
    store_all(queue_env, len(accepted))
    # The event published before the deletion went with its queue; every 200 after it
    # is stored, once.
    assert sorted(queue_env.stored_ids()) == sorted(accepted)


def test_a_deleted_sink_queue_is_spooled_and_replayed_once_it_exists_again(queue_env):
    """Spool on (the default): the returned group is spooled and answered 200; the
    replay reconnects, which declares the queue again, and publishes it there."""
    server = LiveServer(queue_env.config()).start()
    try:
        assert server.post("/v1/track", track()).status_code == 200
        delete_queue(queue_env)

        accepted = []
        for _ in range(10):
            body = track()
            response = server.post("/v1/track", body)
            assert response.status_code == 200, response.text
            accepted.append(body["messageId"])
        publisher = server.app.bus.publisher
        spool = publisher.spool
        assert spool.spooled_events >= 1  # at least the returned group
        eventually(lambda: spool.empty, "the spool replayed")
        assert queue_exists(queue_env)
        assert publisher.failed_messages >= 1
    finally:
        server.stop()
    store_all(queue_env, len(accepted))
    assert sorted(queue_env.stored_ids()) == sorted(accepted)


def test_a_queue_deleted_under_a_running_worker_and_edge_loses_no_200(amqp_env):
    """``rabbitmqctl delete_queue`` while events flow: the worker's consumer is
    cancelled by the broker and reconnects (declaring its queue again); whatever the
    edge published meanwhile was returned and spooled. Every 200 is stored once."""
    server = LiveServer(amqp_env.config()).start()
    try:
        with WorkerThread(amqp_env.config()) as worker:
            consumer = worker.worker.consumers[0]
            before = track()
            assert server.post("/v1/track", before).status_code == 200
            eventually(lambda: consumer.written == 1, "the first event stored")
            subprocess.run(
                ["rabbitmqctl", "-q", "delete_queue", amqp_env.queue_name()],
                check=True,
                capture_output=True,
                timeout=HANG_GUARD,
            )
            accepted = [before["messageId"]]
            for _ in range(20):
                body = track()
                response = server.post("/v1/track", body)
                assert response.status_code == 200, response.text
                accepted.append(body["messageId"])
                time.sleep(0.02)
            eventually(lambda: server.app.bus.publisher.spool.empty, "the spool replayed")
            eventually(lambda: consumer.written >= len(accepted), "every 200 stored")
    finally:
        server.stop()
    assert sorted(amqp_env.stored_ids()) == sorted(accepted)


def test_a_return_is_matched_to_its_own_publish(queue_env):
    """Routable and unroutable publishes in turn on one channel: exactly the unroutable
    ones raise, every routable one is confirmed into the queue, and a return never
    leaks into the publish after it (the channel stays in step)."""
    config = queue_env.config()
    topology = broker.Topology(config.queue, config.sinks)
    connection = broker.open_connection(config.queue)
    try:
        channel = connection.channel()
        topology.declare(channel)
        producer = broker.RoutedProducer(channel, topology.exchange)
        keys = ["all", "nowhere", "all", "nowhere", "nowhere", "sink.local", "all", "nowhere"]
        outcomes = []
        for key in keys:
            try:
                producer.publish(b"x", routing_key=key, timeout=5, **broker.message_properties(1))
            except broker.Unroutable as exc:
                assert repr(key) in str(exc)
                outcomes.append("returned")
            else:
                outcomes.append("routed")
        assert outcomes == ["returned" if k == "nowhere" else "routed" for k in keys]
        assert ready(queue_env, queue_env.queue_name()) == keys.count("all") + 1
    finally:
        broker.close(connection, 5)


class FailingSinks:
    """Sink type ``failing``: every write raises, so every message is dead-lettered; the
    first write waits for ``release`` (the test deletes the dead-letter queue meanwhile)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        plugin = self

        class Failing(Sink):
            class Options(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
                pass

            def write(self, commands):
                plugin.entered.set()
                plugin.release.wait(HANG_GUARD)
                raise ValueError("refused by the store")

        self.sink_type = Failing

    @hookimpl
    def eventrouter_sink_types(self):
        return {"failing": self.sink_type}


def test_a_dead_letter_queue_deleted_under_the_worker_loses_no_message(queue_env, caplog):
    """The worker's move to the dead-letter queue is mandatory too: with that queue
    deleted, the move fails, the message stays unacknowledged, the reconnection declares
    the queue again, and the message is dead-lettered there, not acknowledged into
    nowhere."""
    plugin = FailingSinks()
    sinks = {
        "local": {
            "type": "failing",
            "retry": {"attempts": 1, "initial_backoff": "10ms", "max_duration": "1s"},
        }
    }
    config = queue_env.config(sinks=sinks)
    server = LiveServer(config, plugins=[plugin]).start()
    try:
        assert server.post("/v1/track", track()).status_code == 200
    finally:
        server.stop()
    with WorkerThread(config, plugins=[plugin]) as worker:
        consumer = worker.worker.consumers[0]
        assert plugin.entered.wait(HANG_GUARD), "the worker took the message"
        delete_queue(queue_env, dead=True)
        plugin.release.set()
        eventually(lambda: consumer.dead_lettered == 1, "dead-lettered after a reconnection")
    assert "broker connection lost (Unroutable: routing key 'local' reached no queue" in (
        caplog.text
    )
    assert ready(queue_env, queue_env.dead_queue_name()) == 1
    assert ready(queue_env, queue_env.queue_name()) == 0
