"""The queued edge's durability contract, against the real RabbitMQ and Redis.

With ``[queue]`` configured the edge answers ``200`` only once the broker holds the
event. These tests look at what a client and an operator see: ``/health`` reports the
broker (password masked) and its queue depths; group commit joins and splits requests
without losing one; and when the broker is unreachable, hung or drops the connection,
every ingestion path answers ``503`` with ``Retry-After`` (so SDKs retry) and never
``200``, promptly, ``/health`` answers 503 naming the error, and once the broker is back
the publisher reconnects by itself and every event answered ``200`` is stored once.
Those outage tests turn the local spool off (``[queue.spool] enabled = false``): with
it on, an outage is answered ``200`` from the spool instead (tests/integration/test_spool.py).

Outages are staged without touching the shared services: the edge talks to the broker
through :class:`TcpProxy`, a loopback forwarder a test cuts, freezes and restores (on
both transports). A connection closed by RabbitMQ itself is staged by closing only this
process's connection with ``rabbitmqctl close_connection``. Config validation of
``[queue]`` is at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventrouter.config import ConfigError, parse
from tests.helpers import HANG_GUARD, LiveServer, eventually, free_port, make_config
from tests.queue_support import (  # noqa: F401 - fixtures
    DEDUP_URL,
    SERVICE_PORTS,
    QueueEnv,
    WorkerThread,
    amqp_env,
    queue_env,
    unique,
    via,
)
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

# ruff: noqa: F811 - pytest fixtures are parameters


def track() -> dict[str, Any]:
    return {"userId": "u1", "event": "Edge Test", "messageId": unique("m")}


def no_unique_index(env: QueueEnv) -> dict[str, dict[str, Any]]:
    """An SQLite sink without the unique ``message_id`` index: a duplicate shows."""
    return {"local": {"type": "sqlite", "url": f"sqlite:///{env.db_path}", "indexes": []}}


def health(server: LiveServer) -> tuple[int, dict[str, Any]]:
    response = server.health()
    return response.status_code, response.json()


def post_until_accepted(server: LiveServer, body: dict[str, Any]) -> list[int]:
    """Post like an SDK: retry a 503 with the same body. Returns every status seen."""
    statuses: list[int] = []
    deadline = time.monotonic() + HANG_GUARD
    while time.monotonic() < deadline:
        response = server.post("/v1/track", body)
        statuses.append(response.status_code)
        if response.status_code == 200:
            return statuses
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"]
        time.sleep(0.05)
    pytest.fail(f"never accepted after {len(statuses)} attempts: {statuses[-5:]}")


# -- /health with a reachable broker ------------------------------------------------------
def test_health_reports_the_broker_and_queue_depths(queue_env):
    server = LiveServer(queue_env.config(dedup=True)).start()
    try:
        status, body = health(server)
        assert status == 200, body
        assert body["status"] == "ok"
        broker = body["components"]["broker"]
        assert broker["status"] == "up"
        # Not required: while it is down the spool answers (and is required itself).
        assert broker["required"] is False
        spool = body["components"]["spool"]
        assert (spool["status"], spool["required"]) == ("up", True)
        assert spool["stats"]["events"] == 0
        assert spool["detail"].startswith(str(queue_env.tmp_path / "spool"))
        if queue_env.transport == "amqp":
            assert broker["detail"].startswith("amqp://guest:***@127.0.0.1:5672/")
            assert "guest:guest" not in str(body)
        else:
            assert broker["detail"].startswith("redis://127.0.0.1:6379/5")
        stats = broker["stats"]
        assert stats["queue:local"] == 0
        assert stats["dead:local"] == 0
        assert stats["published_messages"] == 0
        dedup = body["components"]["dedup"]
        assert dedup["status"] == "up"
        assert dedup["required"] is False
        assert dedup["detail"].startswith(DEDUP_URL)

        for _ in range(3):
            assert server.post("/v1/track", track()).status_code == 200
        batch = [{"type": "track", **track()} for _ in range(2)]
        assert server.post("/v1/batch", {"batch": batch}).status_code == 200

        status, body = health(server)
        assert status == 200, body
        stats = body["components"]["broker"]["stats"]
        # Each sequential request is its own group commit: one message each, held by the
        # broker (confirmed) before its 200, so the depth is exact.
        assert stats["published_messages"] == 4
        assert stats["published_events"] == 5
        assert stats["failed_messages"] == 0
        assert stats["queue:local"] == 4
        assert stats["dead:local"] == 0
        assert body["components"]["dedup"]["stats"]["checked"] == 5
    finally:
        server.stop()


def test_group_commit_split_by_max_events_per_message_loses_nothing(queue_env):
    """Concurrent requests of 1-12 events are joined and split into messages of at most
    ``max_events_per_message`` (a request is never split); each event arrives once."""
    sinks = no_unique_index(queue_env)
    queue = {"max_events_per_message": 10, "linger": "20ms"}
    server = LiveServer(queue_env.config(sinks=sinks, queue=queue)).start()
    sizes = [1, 12, 3, 9, 1, 5, 10, 2, 7, 4, 11, 6] * 2
    bodies = [{"batch": [{"type": "track", **track()} for _ in range(n)]} for n in sizes]

    async def send_all() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            responses = await asyncio.gather(*(client.post("/v1/batch", json=b) for b in bodies))
        return [r.status_code for r in responses]

    try:
        assert asyncio.run(send_all()) == [200] * len(bodies)
        stats = health(server)[1]["components"]["broker"]["stats"]
        assert stats["published_events"] == sum(sizes)
        # Joined (fewer messages than requests) and split (no message above the limit,
        # save a single larger request).
        assert sum(sizes) / 12 <= stats["published_messages"] < len(bodies)
        assert stats["queue:local"] == stats["published_messages"]
        with WorkerThread(queue_env.config(sinks=sinks)):
            eventually(lambda: len(queue_env.stored_ids()) >= sum(sizes), "all events stored")
        expected = [item["messageId"] for body in bodies for item in body["batch"]]
        assert sorted(queue_env.stored_ids()) == sorted(expected)
    finally:
        server.stop()


# -- the broker unreachable -----------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["amqp", "redis"])
def test_unreachable_broker_answers_503_with_retry_after_never_200(tmp_path, scheme):
    port = free_port()  # nothing listens there: connections are refused
    url = (
        f"amqp://guest:s3cret@127.0.0.1:{port}//"
        if scheme == "amqp"
        else f"redis://:s3cret@127.0.0.1:{port}/5"
    )
    raw = {
        "queue": {"url": url, "prefix": unique("ert"), "spool": {"enabled": False}},
        "sinks": {"local": {"type": "sqlite", "url": f"sqlite:///{tmp_path}/events.db"}},
    }
    server = LiveServer(make_config(tmp_path, raw)).start()
    try:
        requests = [
            ("/v1/track", {"json": track()}),
            ("/v1/track", {"json": track()}),
            ("/v1/batch", {"json": {"batch": [{"type": "track", **track()} for _ in range(3)]}}),
            ("/track", {"json": {"event_type": "page_view", "user_id": "u1"}}),
            (
                "/v1/t",  # analytics-next: text/plain
                {"content": json.dumps(track()), "headers": {"Content-Type": "text/plain"}},
            ),
        ]
        for path, kwargs in requests:
            response = server.client.post(path, **kwargs)
            assert response.status_code == 503, (path, response.status_code, response.text)
            assert response.headers["Retry-After"] == "5"
            assert response.json()["code"] == "unavailable"
            assert "s3cret" not in response.text

        status, body = health(server)
        assert status == 503, body
        assert body["status"] == "down"
        broker = body["components"]["broker"]
        assert broker["status"] == "down"
        assert broker["required"] is True
        masked = "guest:***@" if scheme == "amqp" else ":***@"
        assert broker["detail"].startswith(f"{scheme}://{masked}127.0.0.1:{port}")
        assert "connection refused" in broker["detail"].lower()
        assert "s3cret" not in str(body)
        stats = broker["stats"]
        assert stats["published_messages"] == 0
        assert stats["failed_messages"] == len(requests)
        # Each request had its answer from the publisher's own failure (refused, or
        # "unreachable" until the next attempt is due), none from the dispatch timeout.
        assert stats["failures"] == len(requests) and stats["timeouts"] == 0, stats
        # The error kept for /health does not grow with each failed request.
        assert stats["last_error"].count("broker unreachable") <= 1, stats["last_error"]

        # Still serving: the next request is another clean 503, from the publisher.
        response = server.post("/v1/track", track())
        assert response.status_code == 503
        assert response.json()["code"] == "unavailable"
        assert health(server)[1]["components"]["broker"]["stats"]["timeouts"] == 0
    finally:
        server.stop()


# -- the broker comes back ------------------------------------------------------------------
def test_publisher_reconnects_when_the_broker_comes_back(queue_env):
    """Cut the broker off mid-run: 503s only (never a 200 for an event the broker lacks),
    then a 200 soon after it returns; every event answered 200 is stored exactly once."""
    proxy = TcpProxy(SERVICE_PORTS[queue_env.transport]).start()
    sinks = no_unique_index(queue_env)
    queue = {"url": via(queue_env.url, proxy.port), "spool": {"enabled": False}}
    raw = queue_env.raw(sinks=sinks, queue=queue)
    server = LiveServer(make_config(queue_env.tmp_path, raw)).start()
    try:
        accepted = [track()]
        assert server.post("/v1/track", accepted[0]).status_code == 200

        proxy.stop()
        down = [server.post("/v1/track", track()) for _ in range(4)]
        assert [r.status_code for r in down] == [503] * 4, [r.text for r in down]
        assert all(r.headers["Retry-After"] for r in down)
        status, body = health(server)
        assert status == 503
        assert body["components"]["broker"]["status"] == "down"

        proxy.start()
        accepted.append(track())
        post_until_accepted(server, accepted[-1])  # reconnects, at most every 0.5 s
        accepted.append(track())
        assert server.post("/v1/track", accepted[-1]).status_code == 200
        status, body = health(server)
        assert status == 200, body
        assert body["components"]["broker"]["stats"]["published_events"] == len(accepted)

        with WorkerThread(queue_env.config(sinks=sinks)):
            eventually(lambda: len(queue_env.stored_ids()) >= len(accepted), "events stored")
        assert sorted(queue_env.stored_ids()) == sorted(e["messageId"] for e in accepted)
    finally:
        server.stop()
        proxy.stop()


def test_hung_broker_answers_503_within_the_confirm_timeout(queue_env):
    """A broker that keeps its connections but stops answering: each request gets its
    503 after ``confirm_timeout`` / ``connect_timeout``, not after the request timeout
    (or never), and ingestion recovers once the broker is back."""
    proxy = TcpProxy(SERVICE_PORTS[queue_env.transport]).start()
    queue = {
        "url": via(queue_env.url, proxy.port),
        "confirm_timeout": "500ms",
        "connect_timeout": "500ms",
        "spool": {"enabled": False},
    }
    raw = queue_env.raw(queue=queue, server={"dispatch_timeout": "5s"})
    server = LiveServer(make_config(queue_env.tmp_path, raw)).start()
    try:
        assert server.post("/v1/track", track()).status_code == 200
        proxy.freeze()
        for _ in range(3):
            response = server.post("/v1/track", track())
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"] == "5"
        status, body = health(server)
        assert status == 503
        broker = body["components"]["broker"]
        assert "timeout" in broker["detail"].lower()
        # Each 503 came from the publisher's own confirm or connect timeout (500 ms):
        # the bus's dispatch_timeout (5 s) never fired.
        assert broker["stats"]["failed_messages"] >= 3
        assert broker["stats"]["timeouts"] == 0, broker["stats"]

        proxy.stop()
        proxy.start()
        post_until_accepted(server, track())
        status, body = health(server)
        assert status == 200, body
        assert body["components"]["broker"]["stats"]["queue:local"] == 2
    finally:
        server.stop()
        proxy.stop()


def _local_ports_to(port: int) -> set[int]:
    """Local ports of this process's established TCP connections to loopback ``port``."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        if inode in inodes and state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
            ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def _rabbitmqctl(*args: str) -> str:
    result = subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60
    )
    return result.stdout


def test_publisher_reconnects_after_rabbitmq_closes_its_connection(amqp_env):
    """RabbitMQ closes the publisher's connection (as an operator or a broker shutting
    down does): the next request is a clean 503, the one after it reconnects."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed")
    server = LiveServer(amqp_env.config(queue={"spool": {"enabled": False}})).start()
    try:
        accepted = [track()]
        assert server.post("/v1/track", accepted[0]).status_code == 200
        ours = _local_ports_to(SERVICE_PORTS["amqp"])
        assert ours, "the publisher holds no connection to RabbitMQ"
        closed = 0
        for line in _rabbitmqctl("list_connections", "pid", "peer_port").splitlines():
            pid, _, peer_port = line.rpartition("\t")
            if peer_port.isdigit() and int(peer_port) in ours:
                _rabbitmqctl("close_connection", pid, "eventrouter test: closed by the broker")
                closed += 1
        assert closed >= 1, "no connection of this process found in RabbitMQ"

        accepted.append(track())
        statuses = post_until_accepted(server, accepted[-1])
        # The publisher learns of the close on its next publish (a 503, never a 200 for
        # an event the broker does not hold), and reconnects for the one after.
        assert statuses[0] == 503, statuses
        assert len(statuses) <= 3, statuses
        status, body = health(server)
        assert status == 200, body
        stats = body["components"]["broker"]["stats"]
        assert stats["queue:local"] == len(accepted)
        assert stats["failed_messages"] == len(statuses) - 1
    finally:
        server.stop()


def test_unknown_queue_key_is_rejected_by_name():
    with pytest.raises(ConfigError, match=r"queue\.confirm_timout: unknown key"):
        parse({"queue": {"url": "redis://127.0.0.1:6379/5", "confirm_timout": "1s"}}, "t", {})


def test_a_worker_stops_promptly_while_its_broker_hangs(queue_env):
    """SIGTERM (the stop event) while the broker keeps the connection open but answers
    nothing: closing is bounded by ``connect_timeout``, so the worker still exits."""
    proxy = TcpProxy(SERVICE_PORTS[queue_env.transport]).start()
    queue = {"url": via(queue_env.url, proxy.port), "connect_timeout": "500ms"}
    config = make_config(queue_env.tmp_path, queue_env.raw(queue=queue))
    worker = WorkerThread(config).start()
    try:
        eventually(lambda: proxy_connections(proxy) > 0, "the worker connected")
        time.sleep(0.5)  # consuming
        proxy.freeze()
    finally:
        worker.stop()  # fails the test if the worker is still running after HANG_GUARD
        proxy.stop()


def proxy_connections(proxy: TcpProxy) -> int:
    with proxy._lock:
        return len(proxy._sockets)
