"""Privacy stages fail closed in queue mode, and the suppression list when its store is
out of reach.

On a queued edge a privacy stage that fails publishes nothing (``503`` naming it). In
the worker the write fails unacknowledged and is retried, and held while the stage
reports itself down; a stage that says it is up but keeps refusing the batch sends it to
the dead-letter queue, unwritten. The suppression list of a PostgreSQL store behind a
loopback proxy that a test cuts: never read means every batch refused, read once means
it stays in force.

Against the real RabbitMQ, Redis and PostgreSQL of this machine. The stages themselves,
and the embedded edge: tests/unit/test_fail_closed.py.
"""

from __future__ import annotations

import amqp.exceptions
import pytest

from eventrouter.privacy.suppressions import SuppressionList
from eventrouter.sinks.postgres_store import PostgresStore
from tests.helpers import LiveServer, eventually
from tests.ingest_support import AUTH, uid
from tests.integration.test_worker import ready
from tests.queue_support import (  # noqa: F401 - fixtures
    QueueEnv,
    WorkerThread,
    amqp_env,
    queue_env,
)
from tests.store_support import store_sink
from tests.tcp_proxy import TcpProxy
from tests.unit.test_fail_closed import FAST_RETRY, ConsentStage, assert_refused, track

# ruff: noqa: F811 - pytest fixtures are parameters


def depth(env: QueueEnv, queue_name: str) -> int:
    """Messages in ``queue_name``; 0 when the edge never connected to declare it."""
    try:
        return ready(env, queue_name)
    except amqp.exceptions.NotFound:
        return 0


@pytest.fixture
def postgres_store(tmp_path):
    """An empty PostgreSQL database, and a proxy in front of it that a test cuts."""
    with store_sink("postgres", tmp_path) as sink:
        proxy = TcpProxy(5432)
        try:
            yield sink["url"], sink["url"].replace("127.0.0.1/", f"127.0.0.1:{proxy.port}/"), proxy
        finally:
            proxy.stop()


def pg_edge(env: QueueEnv, proxied_url: str) -> LiveServer:
    """A queued edge whose admin store (the suppression list) is PostgreSQL through the
    proxy. The edge never writes the store; it reads the list from it."""
    config = env.config(
        sinks={"warehouse": {"type": "postgres", "url": proxied_url}},
        admin={"store": "warehouse"},
        privacy={"refresh": "100ms"},
        queue={"spool": {"enabled": False}},
    )
    return LiveServer(config).start()


def published(server: LiveServer) -> int:
    return server.app.bus.publisher.published_events


def test_an_unread_suppression_list_refuses_batches_until_it_is_read(amqp_env, postgres_store):
    """The store is unreachable when the edge starts: it cannot know whom to drop, so it
    publishes nothing (503 naming ``suppress:store``) until the list is read."""
    _, proxied, proxy = postgres_store  # the proxy is not started: the store is unreachable
    server = pg_edge(amqp_env, proxied)
    try:
        suppressor = server.app.bus.pm.get_plugin("suppress:store")
        assert not suppressor.read
        response = server.post("/v1/track", track())
        assert_refused(response, "suppress:store", "the suppression list has not been read yet")
        assert published(server) == 0
        health = server.client.get("/health", headers=AUTH)  # the details, to the token
        component = health.json()["components"]["suppression"]
        assert (component["status"], component["required"]) == ("down", True)
        assert component["detail"].startswith("never read: ")
        assert health.status_code == 503

        proxy.start()
        eventually(lambda: suppressor.read, "the list read once the store answers")
        body = track()
        assert server.post("/v1/track", body).status_code == 200
        assert published(server) == 1
        assert ready(amqp_env, amqp_env.queue_name("warehouse")) == 1
    finally:
        server.stop()


def test_a_suppression_list_read_before_stays_in_force_while_its_store_is_unreachable(
    amqp_env, postgres_store
):
    """A refresh that fails is not a stage failure: the last list read still drops the
    suppressed user, everyone else is still accepted, and nothing answers 503."""
    direct, proxied, proxy = postgres_store
    proxy.start()
    gone = uid("gone")
    with SuppressionList(PostgresStore(direct)) as store:
        store.add("user_id", gone, "test")
    server = pg_edge(amqp_env, proxied)
    try:
        suppressor = server.app.bus.pm.get_plugin("suppress:store")
        eventually(lambda: gone in suppressor.user_ids, "the edge read the list")
        proxy.stop()
        errors = suppressor.errors
        eventually(lambda: suppressor.errors > errors, "a refresh failed")

        assert server.post("/v1/track", track(gone)).status_code == 200  # dropped
        assert published(server) == 0
        assert server.post("/v1/track", track(uid("kept"))).status_code == 200
        assert published(server) == 1
        assert ready(amqp_env, amqp_env.queue_name("warehouse")) == 1
        assert suppressor.dropped == 1
    finally:
        server.stop()


# -- queue mode -------------------------------------------------------------------------------
def test_a_privacy_stage_failing_on_the_edge_publishes_nothing(queue_env):
    stage = ConsentStage("raise")
    server = LiveServer(queue_env.config(), plugins=[stage]).start()
    try:
        name = server.app.bus.pm.get_name(stage)
        assert_refused(server.post("/v1/track", track()), name, "ValueError")
        batch = {"batch": [{"type": "track", **track()} for _ in range(3)]}
        assert_refused(server.post("/v1/batch", batch), name, "ValueError")
        publisher = server.app.bus.publisher
        assert (publisher.published_events, publisher.spool.spooled_events) == (0, 0)
        assert depth(queue_env, queue_env.queue_name()) == 0

        stage.mode = "ok"
        assert server.post("/v1/track", track()).status_code == 200
        assert ready(queue_env, queue_env.queue_name()) == 1
    finally:
        server.stop()


def test_the_worker_holds_a_batch_a_privacy_stage_refuses_while_the_stage_is_down(queue_env):
    """In the worker the stage runs again per sink. While it fails and says it is down,
    the batch is retried, then held, unacknowledged: not written, not dead-lettered."""
    body = track()
    server = LiveServer(queue_env.config()).start()
    try:
        assert server.post("/v1/track", body).status_code == 200
    finally:
        server.stop()

    stage = ConsentStage("raise", where="worker", down=True)
    sinks = {
        "local": {
            "type": "sqlite",
            "url": f"sqlite:///{queue_env.db_path}",
            "indexes": ["message_id"],
            "retry": FAST_RETRY,
        }
    }
    with WorkerThread(queue_env.config(sinks=sinks), plugins=[stage]) as worker:
        consumer = worker.worker.consumers[0]
        eventually(lambda: consumer.held == 1, "retried, then held")
        assert stage.calls == 2  # FAST_RETRY's attempts; none while the stage is down
        assert queue_env.stored_ids() == []
        assert consumer.dead_lettered == 0
        assert "FailedClosed" in consumer.last_error
        stage.mode, stage.down = "ok", False
        eventually(lambda: consumer.written == 1, "written once the stage works")
    assert queue_env.stored_ids() == [body["messageId"]]
    assert consumer.dead_lettered == 0
    assert ready(queue_env, queue_env.dead_queue_name()) == 0


def test_a_batch_a_privacy_stage_keeps_refusing_while_up_is_dead_lettered_not_written(
    amqp_env,
):
    """A stage that says it is up but refuses the batch: the batch is at fault, like a
    poison message, so it goes to the dead-letter queue after the retries, unwritten."""
    body = track()
    server = LiveServer(amqp_env.config()).start()
    try:
        assert server.post("/v1/track", body).status_code == 200
    finally:
        server.stop()
    stage = ConsentStage("raise", where="worker", down=False)
    sinks = {
        "local": {
            "type": "sqlite",
            "url": f"sqlite:///{amqp_env.db_path}",
            "retry": FAST_RETRY,
        }
    }
    with WorkerThread(amqp_env.config(sinks=sinks), plugins=[stage]) as worker:
        consumer = worker.worker.consumers[0]
        eventually(lambda: consumer.dead_lettered == 1, "dead-lettered")
    assert amqp_env.stored_ids() == []
    assert ready(amqp_env, amqp_env.dead_queue_name()) == 1
