"""Privacy stages fail closed; every other pipeline stage still fails open.

A pipeline stage whose plugin declares ``fail_closed = True`` (the built-in scrub and
suppress stages, or a third party's privacy stage) refuses the whole batch when it
raises or outlives ``server.dispatch_timeout``: the request is answered ``503`` with
``Retry-After``, the message names the stage, and nothing of the batch reaches any
sink, observer or broker. In the worker the write fails unacknowledged and is retried,
and held while the stage reports itself down. A stage without the declaration is
skipped, as before: its batch is stored.

Everything runs through the real ingestion path (a live uvicorn server), the real
RabbitMQ and Redis, and for the suppression list a real PostgreSQL store behind a
loopback proxy that a test cuts.
"""

from __future__ import annotations

import asyncio
import threading
import time
import types
from typing import Any

import amqp.exceptions
import pytest

from eventrouter.bus.hookspecs import hookimpl
from eventrouter.health import ComponentHealth
from eventrouter.privacy.suppressions import SuppressionList
from eventrouter.sinks.postgres_store import PostgresStore
from tests.helpers import ORIGINAL_TRACK, LiveServer, eventually
from tests.ingest_support import AUTH, uid
from tests.queue_support import (  # noqa: F401 - fixtures
    QueueEnv,
    WorkerThread,
    amqp_env,
    queue_env,
    unique,
)
from tests.store_support import store_sink
from tests.tcp_proxy import TcpProxy
from tests.test_worker import ready

# ruff: noqa: F811 - pytest fixtures are parameters

FAST_RETRY = {"attempts": 2, "initial_backoff": "10ms", "max_duration": "5s"}


def track(user_id: str = "u1", **fields: Any) -> dict[str, Any]:
    return {"userId": user_id, "event": "Signed Up", "messageId": unique("m"), **fields}


class ConsentStage:
    """A third party's privacy stage (``fail_closed = True``) that a test breaks.

    ``mode``: ``"ok"`` passes the batch on, ``"raise"`` raises, ``"hang"`` never returns.
    ``where`` limits the breakage to the edge (``"edge"``), the worker (``"worker"``) or
    neither (``"both"``). ``down`` is what its health probe reports.
    """

    fail_closed = True

    def __init__(self, mode: str = "ok", where: str = "both", down: bool = False) -> None:
        self.mode = mode
        self.where = where
        self.down = down
        self.calls = 0

    def broken_here(self, sink: str | None) -> bool:
        return self.where == "both" or (self.where == "edge") == (sink is None)

    @hookimpl
    async def eventrouter_process_batch(self, commands, sink):
        self.calls += 1
        if self.mode == "raise" and self.broken_here(sink):
            raise ValueError("consent service said no (secret-host.internal)")
        if self.mode == "hang" and self.broken_here(sink):
            await asyncio.sleep(3600)
        return None

    @hookimpl
    def eventrouter_health(self):
        return ComponentHealth(name="consent", up=not self.down, detail="consent api down")


class EnrichStage:
    """An ordinary stage (no declaration): its failures are skipped."""

    def __init__(self, mode: str = "raise") -> None:
        self.mode = mode
        self.calls = 0

    @hookimpl
    def eventrouter_process_batch(self, commands):
        self.calls += 1
        if self.mode == "raise":
            raise ValueError("geo service unreachable")
        time.sleep(3)  # "hang": a plain stage runs in a thread of its own
        return None


class RecordingObserver:
    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    def eventrouter_write_batch(self, commands):
        self.seen.extend(c.message_id for c in commands)


def consent_module(broken: threading.Event) -> types.ModuleType:
    """The same declaration on a plugin *module*, as an entry point names one, with a
    plain (threaded) stage function."""
    module = types.ModuleType("eventrouter_consent")
    module.fail_closed = True

    @hookimpl
    def eventrouter_process_batch(commands, sink):
        if broken.is_set():
            raise ConnectionError("consent database unreachable")
        return None

    module.eventrouter_process_batch = eventrouter_process_batch
    return module


def assert_refused(response, stage: str, detail: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "5"
    body = response.json()
    assert body["code"] == "unavailable"
    assert f"pipeline stage {stage} failed ({detail})" in body["message"], body
    assert "no event of this request was stored" in body["message"]
    assert "secret-host" not in body["message"]  # only the type of an unsafe error


def depth(env: QueueEnv, queue_name: str) -> int:
    """Messages in ``queue_name``; 0 when the edge never connected to declare it."""
    try:
        return ready(env, queue_name)
    except amqp.exceptions.NotFound:
        return 0


def all_ids(server: LiveServer) -> list[str]:
    return sorted(e["message_id"] for e in server.events())


# -- embedded mode --------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["async method of an object", "plain function of a module"])
def test_a_privacy_stage_that_raises_answers_503_naming_it_and_stores_nothing(start_server, form):
    observer = RecordingObserver()
    if form.startswith("async"):
        stage = ConsentStage("raise")
        plugin: Any = stage
        detail = "ValueError"
    else:
        broken = threading.Event()
        broken.set()
        plugin = consent_module(broken)
        detail = "ConnectionError"
    server = start_server(plugins=[plugin, observer])
    name = server.app.bus.pm.get_name(plugin)

    assert_refused(server.post("/v1/track", track()), name, detail)
    batch = {"batch": [{"type": "track", **track()}, {"type": "identify", "userId": "u2"}]}
    assert_refused(server.post("/v1/batch", batch), name, detail)
    assert_refused(server.post("/track", ORIGINAL_TRACK), name, detail)
    time.sleep(0.2)  # observers run in the background: give one the time to show
    assert all_ids(server) == []
    assert observer.seen == []
    assert server.app.bus.stats[name].failures == 3

    # The same request once the stage works: stored, so the 503 was the stage's.
    if form.startswith("async"):
        stage.mode = "ok"
    else:
        broken.clear()
    body = track()
    assert server.post("/v1/track", body).status_code == 200
    assert all_ids(server) == [body["messageId"]]


def test_a_privacy_stage_that_hangs_past_its_timeout_answers_503_and_stores_nothing(
    start_server,
):
    stage = ConsentStage("hang")
    observer = RecordingObserver()
    server = start_server({"server": {"dispatch_timeout": "300ms"}}, plugins=[stage, observer])
    name = server.app.bus.pm.get_name(stage)
    started = time.monotonic()
    assert_refused(server.post("/v1/track", track()), name, "timed out after 0.3s")
    assert time.monotonic() - started < 5
    time.sleep(0.2)
    assert all_ids(server) == []
    assert observer.seen == []
    assert server.app.bus.stats[name].timeouts == 1


@pytest.mark.parametrize("mode", ["raise", "hang"])
def test_an_ordinary_stage_that_fails_is_skipped_and_the_event_stored(start_server, mode):
    stage = EnrichStage(mode)
    server = start_server({"server": {"dispatch_timeout": "300ms"}}, plugins=[stage])
    body = track()
    response = server.post("/v1/track", body)
    assert response.status_code == 200, response.text
    assert all_ids(server) == [body["messageId"]]
    assert stage.calls == 1


def test_a_privacy_stage_failure_refuses_the_batch_even_after_an_ordinary_one_failed(
    start_server,
):
    consent = ConsentStage("raise")
    server = start_server(plugins=[consent, EnrichStage("raise")])
    assert server.post("/v1/track", track()).status_code == 503
    assert all_ids(server) == []


# -- the built-in privacy stages ---------------------------------------------------------------
SCRUB = {"drop": ["properties.email"]}


def test_the_scrub_stage_fails_closed(start_server):
    """A scrubber that raises (a bug, an event shaped as nobody foresaw) must not let the
    unscrubbed event through: 503 naming ``scrub:paths``, nothing stored."""
    server = start_server({"privacy": {"scrub": SCRUB}})
    scrubber = server.app.bus.pm.get_plugin("scrub:paths")
    assert scrubber.fail_closed is True

    def broken(command):
        raise RecursionError("maximum recursion depth exceeded")

    scrubber.scrub = broken
    body = track(properties={"email": "bob@example.com", "plan": "pro"})
    assert_refused(server.post("/v1/track", body), "scrub:paths", "RecursionError")
    assert all_ids(server) == []

    del scrubber.scrub  # the class's method again
    assert server.post("/v1/track", body).status_code == 200
    [event] = server.events()
    assert event["properties"] == {"plan": "pro"}


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
