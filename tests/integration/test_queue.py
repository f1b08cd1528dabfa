"""The queue pipeline end to end: edge → broker → ``eventrouter worker`` → SQLite."""

from __future__ import annotations

import contextlib
import sqlite3

import pytest
import redis

from eventrouter.bus.bus import Bus, make_plugin_manager
from eventrouter.config import ConfigError
from tests.helpers import LiveServer, eventually, free_port, make_config, run_eventrouter
from tests.ingest_support import AUTH
from tests.queue_support import (  # noqa: F401 - fixtures
    AMQP_URL,
    REDIS_QUEUE_URL,
    WorkerThread,
    amqp_env,
    queue_env,
    unique,
)

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

# ruff: noqa: F811 - pytest fixtures are parameters


def test_accepted_events_reach_the_store_through_the_worker(queue_env):
    server = LiveServer(queue_env.config()).start()
    try:
        ids = [unique("m") for _ in range(30)]
        for message_id in ids[:10]:
            response = server.post(
                "/v1/track", {"userId": "u1", "event": "Signed Up", "messageId": message_id}
            )
            assert response.status_code == 200, response.text
        batch = [{"type": "track", "userId": "u1", "event": "x", "messageId": m} for m in ids[10:]]
        response = server.post("/v1/batch", {"batch": batch})
        assert response.status_code == 200, response.text
        assert queue_env.stored_ids() == []  # nothing is stored until a worker runs
        with WorkerThread(queue_env.config()):
            eventually(lambda: len(queue_env.stored_ids()) == 30, "30 events stored")
        assert sorted(queue_env.stored_ids()) == sorted(ids)
        stored = server.events(user_id="u1")
        assert {e["message_id"] for e in stored} == set(ids)
    finally:
        server.stop()


def test_a_queued_edge_answers_queries_before_any_worker_ran(queue_env):
    """The sinks run in workers; the query API still reads the store (empty so far)."""
    server = LiveServer(queue_env.config()).start()
    try:
        assert server.post("/v1/track", {"userId": "u1", "event": "x"}).status_code == 200
        assert server.events() == []
    finally:
        server.stop()


def test_a_store_that_cannot_be_read_answers_503_not_500(amqp_env):
    server = LiveServer(amqp_env.config()).start()
    try:
        with sqlite3.connect(amqp_env.db_path) as connection:
            connection.execute("DROP TABLE events")
        response = server.client.get("/api/v1/events", headers=AUTH)
        assert response.status_code == 503
        assert response.json()["code"] == "store_unavailable"
        assert response.headers["Retry-After"]
        response = server.client.get("/api/v1/events/some-id", headers=AUTH)
        assert response.status_code == 503
    finally:
        server.stop()


def test_the_queue_is_not_a_sink_type(tmp_path):
    raw = {
        "queue": {"url": AMQP_URL},
        "sinks": {"q": {"type": "queue", "url": AMQP_URL}},
    }
    with pytest.raises(ConfigError, match=r"sinks\.q\.type: the queue is configured in the"):
        Bus(make_config(tmp_path, raw), make_plugin_manager(make_config(tmp_path, raw)))


def test_config_check_shows_the_queue_without_its_password(queue_env):
    path = queue_env.write_config(queue_env.raw(dedup=True))
    result = run_eventrouter("config", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert "queue:" in result.stdout and "eventrouter worker" in result.stdout
    assert "dedup:   redis://127.0.0.1:6379/6, window 86400s" in result.stdout
    if queue_env.transport == "amqp":
        assert "amqp://guest:***@127.0.0.1:5672//" in result.stdout
        assert "guest:guest" not in result.stdout


def test_dead_letters_against_an_unreachable_broker_is_a_clean_error(tmp_path):
    path = tmp_path / "down.toml"
    path.write_text(
        f'[queue]\nurl = "amqp://guest:secret@127.0.0.1:{free_port()}//"\n'
        f'[sinks.local]\ntype = "sqlite"\nurl = "sqlite:///{tmp_path}/e.db"\n'
    )
    result = run_eventrouter("dead-letters", "list", "--sink", "local", "--config", str(path))
    assert result.returncode == 3, result.stderr
    assert "broker unreachable at amqp://guest:***@127.0.0.1:" in result.stderr
    assert "secret" not in result.stderr
    assert "Traceback" not in result.stderr


def test_a_killed_workers_redelivery_lock_lasts_no_longer_than_the_visibility_timeout(tmp_path):
    """kombu's Redis transport hands a dead consumer's messages back in a sweep guarded by
    a lock that, by default, outlives a killed holder by five minutes. A worker killed
    mid-sweep must not stop the others from sweeping for longer than the messages are
    invisible anyway. (A kill at that instant cannot be forced: this checks the lock's
    lifetime on a real connection, and that a lock left behind expires on its own.)"""
    import time

    import redis as redis_client
    from kombu.transport.redis import Mutex, MutexHeld

    from eventrouter.queue import broker

    config = make_config(
        tmp_path, {"queue": {"url": "redis://127.0.0.1:6379/0", "visibility_timeout": "2s"}}
    )
    connection = broker.open_connection(config.queue)
    try:
        channel = connection.channel()
        assert channel.unacked_mutex_expire == 5
        client = redis_client.Redis.from_url("redis://127.0.0.1:6379/0")
        key = f"test-unacked-mutex-{tmp_path.name}"
        # what a worker killed inside its sweep leaves behind: the lock, never released
        client.set(key, "killed-worker", nx=True, ex=channel.unacked_mutex_expire)
        with pytest.raises(MutexHeld), Mutex(client, key, channel.unacked_mutex_expire):
            pass
        time.sleep(channel.unacked_mutex_expire + 0.5)
        with Mutex(client, key, channel.unacked_mutex_expire):  # expired: sweeps go on
            pass
        client.close()
    finally:
        broker.close(connection, 2)


def test_a_redis_consumer_killed_as_it_takes_a_message_loses_nothing(tmp_path):
    """kombu's own Redis consumer pops a message (``BRPOP``) and records it as
    unacknowledged in a second round trip: a worker killed in between lost the message
    for good. eventrouter's consumer (``router_core/queue/redis_transport.py``) takes it with
    one atomic script, so a consumer that dies right after Redis handed it the message,
    before any code of its own ran, still leaves it to the next worker once
    ``visibility_timeout`` has passed."""
    from kombu import Consumer, Producer

    from eventrouter.queue import broker

    raw = {"queue": {"url": REDIS_QUEUE_URL, "prefix": unique("ert"), "visibility_timeout": "1s"}}
    config = make_config(tmp_path, raw).queue
    topology = broker.Topology(config, ["local"])
    queue = topology.queue("local")
    first = broker.open_connection(config)
    try:
        topology.declare(first.channel())
        Producer(first.channel()).publish(
            b"one batch", exchange=topology.exchange, routing_key=broker.ALL
        )
        # Everything Redis does for a consumer that is then killed: the take itself.
        assert first.default_channel._take(queue.name) is not None
        assert topology.depth(first.channel(), queue) == 0
    finally:
        broker.drop(first)  # gone without acknowledging, as a SIGKILL leaves it

    received: list[bytes] = []
    second = broker.open_connection(config)
    try:
        channel = second.channel()
        with Consumer(channel, queues=[queue], on_message=received.append):

            def handed_back() -> bool:
                with contextlib.suppress(TimeoutError, OSError):
                    second.drain_events(timeout=1)
                return bool(received)

            eventually(handed_back, "the dead consumer's message handed to the next one")
        assert received[0].body == b"one batch"
        received[0].ack()
        assert topology.depth(channel, queue) == 0
        assert channel.client.hlen(channel.unacked_key) == 0 or all(
            queue.name not in str(value) for value in channel.client.hvals(channel.unacked_key)
        )
    finally:
        broker.close(second, 2)
        client = redis.Redis.from_url(REDIS_QUEUE_URL)
        for key in client.scan_iter(f"*{config.prefix}*"):
            client.delete(key)
        client.close()
