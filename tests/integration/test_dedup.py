"""Redis dedup (``[dedup]``): an SDK retry is stored once, and dedup never loses an event.

Against the real Redis and RabbitMQ of this machine. The stores here deliberately lack
the unique ``message_id`` index (which would hide a duplicate by itself), so every
"stored once" below is dedup's doing, and a duplicate would show.

- Embedded mode (no ``[queue]``): repeats across requests and within a batch are
  dropped, distinct ids all stored, an id is stored again once ``window`` has passed.
- Never loses: an id is marked seen only after its sink committed, so a write that
  failed (a 503 at the edge, or a retry in the worker) is stored on the next attempt.
- Through the queue: the worker drops a repeat; the queued edge drops, before
  publishing, only an id that every sink has stored.
- Redis down or hung: ingestion goes on undeduplicated, ``/health`` stays 200 with the
  ``dedup`` component down, and requests are not held up.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import redis

from eventrouter.bus.hookspecs import hookimpl
from eventrouter.bus.sink import Sink
from tests.helpers import LiveServer, eventually, free_port
from tests.queue_support import (  # noqa: F401 - fixtures
    DEDUP_URL,
    QueueEnv,
    WorkerThread,
    amqp_env,
    queue_env,
    unique,
)

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

# ruff: noqa: F811 - pytest fixtures are parameters


class FailingSink(Sink):
    """An acknowledging in-memory store whose first ``failures`` writes raise.

    ``stored`` keeps every stored ``message_id``, duplicates included."""

    class Options(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
        failures: int = 1

    def __init__(self, name: str, config: Any, options: Any) -> None:
        super().__init__(name, config, options)
        self.attempts = 0
        self.stored: list[str] = []

    def write(self, commands):
        self.attempts += 1
        if self.attempts <= self.options.failures:
            raise ConnectionError("store is down")
        self.stored.extend(command.message_id for command in commands)


class FailingSinkPlugin:
    @hookimpl
    def eventrouter_sink_types(self):
        return {"failing": FailingSink}


@pytest.fixture
def dedup_prefix() -> Iterator[str]:
    """A Redis key prefix of this test's own, deleted afterwards."""
    prefix = unique("dedup")
    yield prefix
    client = redis.Redis.from_url(DEDUP_URL)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()


def embedded(tmp_path, prefix: str, url: str = DEDUP_URL, **dedup: Any) -> dict[str, Any]:
    """An embedded-mode config: ``[dedup]`` and an SQLite store without a unique index."""
    return {
        "dedup": {"url": url, "prefix": prefix, **dedup},
        "sinks": {
            "local": {
                "type": "sqlite",
                "url": f"sqlite:///{tmp_path}/events.db",
                "indexes": ["user_id"],
            }
        },
    }


def track(message_id: str) -> dict[str, Any]:
    return {"type": "track", "userId": "u1", "event": "Dedup Test", "messageId": message_id}


def stored(server: LiveServer) -> Counter[str]:
    return Counter(event["message_id"] for event in server.events())


def component(server: LiveServer, name: str) -> dict[str, Any]:
    return server.health().json()["components"][name]


def no_unique_index(env: QueueEnv, name: str = "local") -> dict[str, Any]:
    return {"type": "sqlite", "url": f"sqlite:///{env.tmp_path}/{name}.db", "indexes": []}


# -- embedded mode ------------------------------------------------------------------------
def test_same_message_id_in_two_requests_is_stored_once(start_server, tmp_path, dedup_prefix):
    server = start_server(embedded(tmp_path, dedup_prefix))
    message_id = unique("m")
    for _ in range(2):
        response = server.post("/v1/track", track(message_id))
        assert response.status_code == 200, response.text  # the SDK sees success both times
    assert stored(server) == {message_id: 1}
    stats = component(server, "dedup")["stats"]
    assert stats["dropped"] == 1
    assert stats["marked"] == 1


def test_repeat_within_one_batch_is_stored_once(start_server, tmp_path, dedup_prefix):
    server = start_server(embedded(tmp_path, dedup_prefix))
    a, b = unique("a"), unique("b")
    response = server.post("/v1/batch", {"batch": [track(a), track(b), track(a)]})
    assert response.status_code == 200, response.text
    assert stored(server) == {a: 1, b: 1}


def test_distinct_ids_are_all_stored(start_server, tmp_path, dedup_prefix):
    server = start_server(embedded(tmp_path, dedup_prefix))
    ids = [unique("m") for _ in range(25)]
    assert server.post("/v1/batch", {"batch": [track(m) for m in ids[:20]]}).status_code == 200
    for message_id in ids[20:]:
        assert server.post("/v1/track", track(message_id)).status_code == 200
    assert stored(server) == dict.fromkeys(ids, 1)
    assert component(server, "dedup")["stats"]["dropped"] == 0


def test_id_is_stored_again_once_the_window_has_passed(start_server, tmp_path, dedup_prefix):
    server = start_server(embedded(tmp_path, dedup_prefix, window="1s"))
    message_id = unique("m")
    assert server.post("/v1/track", track(message_id)).status_code == 200
    assert server.post("/v1/track", track(message_id)).status_code == 200  # within: dropped
    assert stored(server) == {message_id: 1}
    client = redis.Redis.from_url(DEDUP_URL)
    try:
        eventually(lambda: not list(client.scan_iter(f"{dedup_prefix}:*")), "the mark expired")
    finally:
        client.close()
    assert server.post("/v1/track", track(message_id)).status_code == 200
    assert stored(server) == {message_id: 2}


# -- dedup never loses --------------------------------------------------------------------
def test_failed_write_is_not_marked_so_the_sdk_retry_is_stored(
    start_server, tmp_path, dedup_prefix
):
    """Had the id been marked before the write, the retry would be dropped: 200, lost."""
    raw = embedded(tmp_path, dedup_prefix)
    # One attempt per write: the edge would otherwise retry the failed write itself.
    raw["sinks"] = {"store": {"type": "failing", "retry": {"attempts": 1}}}
    server = start_server(raw, plugins=[FailingSinkPlugin()])
    sink = server.app.bus.sinks["store"]
    message_id = unique("m")

    first = server.post("/v1/track", track(message_id))
    assert first.status_code == 503, first.text
    assert first.headers["Retry-After"]
    assert first.json()["code"] == "unavailable"
    assert sink.stored == []

    assert server.post("/v1/track", track(message_id)).status_code == 200
    assert sink.stored == [message_id]
    # Marked now: a further retry is dropped before the sink.
    assert server.post("/v1/track", track(message_id)).status_code == 200
    assert sink.stored == [message_id]
    assert sink.attempts == 2
    assert component(server, "dedup")["stats"]["dropped"] == 1


def test_worker_retry_after_a_failed_write_stores_once(amqp_env):
    """The worker's retry runs dedup again: an id marked before the write would be
    dropped on the retry and acknowledged unstored."""
    raw = amqp_env.raw(
        dedup=True,
        sinks={"store": {"type": "failing", "retry": {"initial_backoff": "20ms"}}},
    )
    plugins = [FailingSinkPlugin()]
    config = amqp_env.config(dedup=True, sinks=raw["sinks"])
    server = LiveServer(config, plugins=plugins).start()
    try:
        message_id = unique("m")
        assert server.post("/v1/track", track(message_id)).status_code == 200
        with WorkerThread(amqp_env.config(dedup=True, sinks=raw["sinks"]), plugins=plugins) as w:
            sink = w.worker.bus.sinks["store"]
            consumer = w.worker.consumers[0]
            eventually(lambda: consumer.written == 1, "the event written after one retry")
            assert sink.stored == [message_id]
            assert sink.attempts == 2
            assert consumer.retries == 1
            assert consumer.dropped == 0
            assert consumer.dead_lettered == 0
    finally:
        server.stop()


# -- through the queue --------------------------------------------------------------------
def test_worker_drops_a_repeat_and_the_edge_drops_a_stored_id(queue_env):
    sinks = {"local": no_unique_index(queue_env)}
    db_path = queue_env.tmp_path / "local.db"
    server = LiveServer(queue_env.config(dedup=True, sinks=sinks)).start()
    try:
        message_id = unique("m")
        for _ in range(2):  # nothing is stored yet: the edge publishes both
            assert server.post("/v1/track", track(message_id)).status_code == 200
        assert component(server, "broker")["stats"]["published_events"] == 2

        with WorkerThread(queue_env.config(dedup=True, sinks=sinks)) as worker:
            consumer = worker.worker.consumers[0]
            eventually(lambda: consumer.written + consumer.dropped == 2, "both copies handled")
            assert queue_env.stored_ids(db_path) == [message_id]
            assert (consumer.written, consumer.dropped) == (1, 1)

            # An SDK retry once it is stored: the edge drops it, nothing is published.
            assert server.post("/v1/track", track(message_id)).status_code == 200
            edge = server.health().json()["components"]
            assert edge["broker"]["stats"]["published_events"] == 2
            assert edge["dedup"]["stats"]["dropped"] == 1
            assert edge["dedup"]["stats"]["marked"] == 0  # only the workers mark

            other = unique("m")  # a new id still flows
            assert server.post("/v1/track", track(other)).status_code == 200
            eventually(lambda: len(queue_env.stored_ids(db_path)) == 2, "the new id stored")
        assert sorted(queue_env.stored_ids(db_path)) == sorted([message_id, other])
    finally:
        server.stop()


def test_edge_publishes_an_id_that_one_sink_has_not_stored(amqp_env):
    """Two sinks: the edge may drop an id only once both stored it."""
    sinks = {"a": no_unique_index(amqp_env, "a"), "b": no_unique_index(amqp_env, "b")}
    config = amqp_env.config(dedup=True, sinks=sinks)
    server = LiveServer(config).start()
    try:
        message_id = unique("m")

        def published() -> int:
            return component(server, "broker")["stats"]["published_events"]

        assert server.post("/v1/track", track(message_id)).status_code == 200
        with WorkerThread(amqp_env.config(dedup=True, sinks=sinks), sinks=["a"]) as worker:
            eventually(lambda: worker.worker.consumers[0].written == 1, "stored in a")
        # Stored in a only: the retry must still go out, or b would never have it.
        assert server.post("/v1/track", track(message_id)).status_code == 200
        assert published() == 2

        with WorkerThread(amqp_env.config(dedup=True, sinks=sinks)) as worker:
            consumers = {c.sink: c for c in worker.worker.consumers}
            eventually(
                lambda: consumers["a"].dropped == 1 and consumers["b"].written == 1,
                "a dropped its second copy, b stored one",
            )
            eventually(lambda: consumers["b"].dropped == 1, "b dropped its second copy")
        for name in ("a", "b"):
            assert amqp_env.stored_ids(amqp_env.tmp_path / f"{name}.db") == [message_id]
        # Stored everywhere now: the edge drops a further retry.
        assert server.post("/v1/track", track(message_id)).status_code == 200
        assert published() == 2
    finally:
        server.stop()


# -- Redis unavailable ----------------------------------------------------------------------
def test_redis_down_events_pass_through_and_health_stays_200(start_server, tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/6"  # nothing listens: refused
    server = start_server(embedded(tmp_path, unique("dedup"), url=url))
    ids = [unique("m") for _ in range(5)]
    for message_id in [*ids, ids[0]]:
        assert server.post("/v1/track", track(message_id)).status_code == 200
    assert server.post("/v1/batch", {"batch": [track(ids[1])]}).status_code == 200
    # Nothing lost; undeduplicated, the repeats are stored again.
    assert stored(server) == {**dict.fromkeys(ids, 1), ids[0]: 2, ids[1]: 2}

    response = server.health()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    dedup = body["components"]["dedup"]
    assert dedup["status"] == "down"
    assert dedup["required"] is False
    assert url in dedup["detail"]
    assert "refused" in dedup["detail"].lower()
    assert dedup["stats"]["errors"] >= 1
    assert dedup["stats"]["dropped"] == 0


def test_hung_redis_does_not_hold_requests_up(start_server, tmp_path):
    """Redis accepts connections but never answers: each Redis call costs ``timeout``.
    A check that timed out skips dedup for a second; so must the mark after commit."""
    hung = socket.socket()  # listens (the kernel completes connects) but never reads
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)
    try:
        url = f"redis://127.0.0.1:{hung.getsockname()[1]}/6"
        server = start_server(embedded(tmp_path, unique("dedup"), url=url, timeout="300ms"))
        ids = [unique("m") for _ in range(12)]
        for message_id in ids:
            assert server.post("/v1/track", track(message_id)).status_code == 200
        assert stored(server) == dict.fromkeys(ids, 1)
        # A timed-out call skips Redis for a second: far fewer timed-out calls than the
        # 24 that a check and a mark per request would have cost (each one 300 ms).
        errors = component(server, "dedup")["stats"]["errors"]
        assert 1 <= errors < len(ids), errors
    finally:
        hung.close()
