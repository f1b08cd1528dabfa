"""The edge's local spool (``[queue.spool]``): while the broker is unreachable, accepted
events are fsynced to disk and answered ``200``, then published back in order once the
broker answers; a full spool answers ``503`` + ``Retry-After``; a process that died with
events spooled leaves them to the next process on the directory.

Outages are staged with :class:`TcpProxy` (the shared RabbitMQ and Redis keep running);
the death of a process is a real ``SIGKILL`` of an ``eventrouter serve``.
"""

from __future__ import annotations

import signal
import sqlite3
import struct
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventrouter.config import ConfigError
from eventrouter.queue.spool import HEADER, Spool, SpoolFull, read_records
from tests.helpers import LiveServer, ServeProcess, eventually, make_config
from tests.integration.test_metrics import samples, value
from tests.queue_support import (  # noqa: F401 - fixtures
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


def track(n: int = 0) -> dict[str, Any]:
    return {"userId": "u1", "event": "Spool Test", "messageId": unique(f"m{n:04d}-")}


def spool_stats(server: Any) -> dict[str, Any]:
    response = server.health()
    return response.json()["components"]["spool"]


def metric(server: Any, name: str) -> float:
    """A counter or gauge of ``/metrics`` (in-process servers share one registry: tests
    compare values before and after)."""
    return value(samples(server.client.get("/metrics").text), name)


def stored_in_order(env: QueueEnv) -> list[str]:
    with sqlite3.connect(env.db_path, timeout=30) as connection:
        return [
            row[0] for row in connection.execute("SELECT message_id FROM events ORDER BY rowid")
        ]


# -- the spool on its own ---------------------------------------------------------------------
def test_records_come_back_in_order_and_a_torn_tail_is_ignored(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    for n in range(5):
        spool.append(n + 1, f"body-{n}".encode())
    assert (spool.events, spool.bytes) == (15, sum(HEADER.size + 6 for _ in range(5)))
    segment = next(spool.directory.glob("*.seg"))
    # What a process killed in the middle of an append leaves: half a record.
    with segment.open("ab") as file:
        file.write(struct.pack(">III", 100, zlib.crc32(b"x" * 100), 7) + b"x" * 40)
    assert [(count, body) for _, count, body in read_records(segment)] == [
        (n + 1, f"body-{n}".encode()) for n in range(5)
    ]

    published: list[bytes] = []
    assert spool.replay(lambda count, body: published.append(body)) == 15
    assert published == [f"body-{n}".encode() for n in range(5)]
    assert (spool.events, spool.bytes, spool.replayed_events) == (0, 0, 15)
    assert list(spool.directory.glob("*.seg")) == []
    spool.close()
    assert list((tmp_path / "spool").iterdir()) == []


def test_a_failed_replay_keeps_its_place(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    for n in range(4):
        spool.append(1, f"b{n}".encode())
    published: list[bytes] = []

    def flaky(count: int, body: bytes) -> None:
        if body == b"b2" and b"b2" not in failed:
            failed.append(body)
            raise ConnectionError("broker went away")
        published.append(body)

    failed: list[bytes] = []
    with pytest.raises(ConnectionError):
        spool.replay(flaky)
    assert published == [b"b0", b"b1"]
    assert spool.events == 2
    assert spool.replay(flaky) == 2
    assert published == [b"b0", b"b1", b"b2", b"b3"]  # nothing twice, nothing skipped
    spool.close()


def test_a_full_spool_refuses_the_append_and_keeps_what_it_holds(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=3 * (HEADER.size + 10))
    for _ in range(3):
        spool.append(2, b"0123456789")
    with pytest.raises(SpoolFull, match="spool is full"):
        spool.append(2, b"0123456789")
    assert (spool.events, spool.refused_events) == (6, 2)
    spool.close()  # not empty: its directory stays for the next process
    left = [path for path in (tmp_path / "spool").iterdir()]
    assert len(left) == 1
    assert sum(count for _, count, _ in read_records(next(left[0].glob("*.seg")))) == 6


# -- the edge with the broker cut -------------------------------------------------------------
def test_broker_outage_is_answered_200_from_the_spool_and_replayed_in_order(queue_env):
    proxy = TcpProxy(SERVICE_PORTS[queue_env.transport]).start()
    raw = queue_env.raw(queue={"url": via(queue_env.url, proxy.port)})
    server = LiveServer(make_config(queue_env.tmp_path, raw)).start()
    try:
        sent = [track(0)]
        assert server.post("/v1/track", sent[0]).status_code == 200
        spooled = metric(server, "eventrouter_spool_spooled_events_total")
        replayed = metric(server, "eventrouter_spool_replayed_events_total")

        proxy.stop()
        for n in range(1, 21):
            sent.append(track(n))
            response = server.post("/v1/track", sent[-1])
            assert response.status_code == 200, response.text
        batch = [{"type": "track", **track(n)} for n in range(21, 26)]
        assert server.post("/v1/batch", {"batch": batch}).status_code == 200
        sent += batch
        health = server.health()
        assert health.status_code == 200, health.text  # the spool answers for the broker
        body = health.json()
        assert body["components"]["broker"]["status"] == "down"
        spool = body["components"]["spool"]
        assert spool["status"] == "up"
        assert spool["stats"]["events"] == 25
        assert spool["stats"]["spooled_events"] == 25
        assert metric(server, "eventrouter_spool_spooled_events_total") == spooled + 25
        assert metric(server, "eventrouter_spool_events") == 25

        proxy.start()
        eventually(lambda: spool_stats(server)["stats"]["events"] == 0, "the spool replayed")
        assert spool_stats(server)["stats"]["replayed_events"] == 25
        # New events go straight to the broker again.
        sent.append(track(26))
        assert server.post("/v1/track", sent[-1]).status_code == 200
        assert spool_stats(server)["stats"]["spooled_events"] == 25
        assert metric(server, "eventrouter_spool_replayed_events_total") == replayed + 25
        assert metric(server, "eventrouter_spool_events") == 0

        with WorkerThread(queue_env.config()):
            eventually(lambda: len(queue_env.stored_ids()) >= len(sent), "every event stored")
        # One worker, one consumer: the broker's order, which is the order of the 200s.
        assert stored_in_order(queue_env) == [event["messageId"] for event in sent]
    finally:
        server.stop()
        proxy.stop()


def test_a_hung_broker_spools_after_the_confirm_timeout(amqp_env):
    proxy = TcpProxy(SERVICE_PORTS["amqp"]).start()
    queue = {
        "url": via(amqp_env.url, proxy.port),
        "confirm_timeout": "500ms",
        "connect_timeout": "500ms",
    }
    raw = amqp_env.raw(queue=queue)
    server = LiveServer(make_config(amqp_env.tmp_path, raw)).start()
    try:
        sent = [track(0)]
        assert server.post("/v1/track", sent[0]).status_code == 200
        proxy.freeze()
        for n in range(1, 4):
            sent.append(track(n))
            assert server.post("/v1/track", sent[-1]).status_code == 200
        assert spool_stats(server)["stats"]["spooled_events"] == 3
        proxy.stop()
        proxy.start()
        eventually(lambda: spool_stats(server)["stats"]["events"] == 0, "the spool replayed")
        with WorkerThread(amqp_env.config()):
            eventually(lambda: len(amqp_env.stored_ids()) >= len(sent), "every event stored")
        # A confirm that timed out may still have been stored: then it comes twice, and the
        # store's message_id index keeps one.
        assert sorted(amqp_env.stored_ids()) == sorted(event["messageId"] for event in sent)
    finally:
        server.stop()
        proxy.stop()


def test_a_full_spool_answers_503_with_retry_after_and_health_says_so(amqp_env):
    proxy = TcpProxy(SERVICE_PORTS["amqp"]).start()
    queue = {"url": via(amqp_env.url, proxy.port), "spool": {"max_bytes": 1500}}
    raw = amqp_env.raw(queue=queue)
    server = LiveServer(make_config(amqp_env.tmp_path, raw)).start()
    try:
        refused = metric(server, "eventrouter_spool_refused_events_total")
        proxy.stop()
        statuses = []
        for n in range(30):
            response = server.post("/v1/track", track(n))
            statuses.append(response.status_code)
            if response.status_code != 200:
                break
        assert statuses[0] == 200
        assert statuses[-1] == 503, statuses
        assert response.headers["Retry-After"] == "5"
        assert response.json()["code"] == "unavailable"
        assert "spool is full" in response.json()["message"]
        health = server.health()
        assert health.status_code == 503
        spool = health.json()["components"]["spool"]
        assert spool["status"] == "down"
        assert spool["stats"]["refused_events"] == 1
        assert spool["stats"]["events"] == statuses.count(200)
        assert metric(server, "eventrouter_spool_refused_events_total") == refused + 1

        proxy.start()
        eventually(lambda: spool_stats(server)["stats"]["events"] == 0, "the spool replayed")
        assert server.health().status_code == 200
        assert server.post("/v1/track", track(99)).status_code == 200
    finally:
        server.stop()
        proxy.stop()


def test_a_killed_servers_spool_is_replayed_by_the_next_server(amqp_env):
    """``eventrouter serve`` spools during an outage and is killed with SIGKILL; a new
    server on the same spool directory publishes what the dead one acknowledged."""
    proxy = TcpProxy(SERVICE_PORTS["amqp"]).start()
    raw = amqp_env.raw(queue={"url": via(amqp_env.url, proxy.port)})
    path = amqp_env.write_config(raw)
    first = ServeProcess(amqp_env.tmp_path, "--config", str(path), workers=2)
    try:
        first.wait_ready()
        proxy.stop()
        sent = [track(n) for n in range(40)]
        with httpx.Client(base_url=first.url, timeout=30) as client:
            for event in sent:
                assert client.post("/v1/track", json=event).status_code == 200
    finally:
        first.stop(signal.SIGKILL)
    spool_root = Path(raw["queue"]["spool"]["dir"])
    assert sum(1 for _ in spool_root.glob("*/*.seg")) >= 1  # left on disk by the dead

    proxy.start()
    second = LiveServer(make_config(amqp_env.tmp_path, raw)).start()
    try:
        eventually(lambda: spool_stats(second)["stats"]["adopted_events"] == 40, "adopted")
        assert list(spool_root.glob("*/*.seg")) == []
        with WorkerThread(amqp_env.config()):
            eventually(lambda: len(amqp_env.stored_ids()) >= 40, "every event stored")
        assert sorted(amqp_env.stored_ids()) == sorted(event["messageId"] for event in sent)
    finally:
        second.stop()
        proxy.stop()


def test_spool_keys_are_checked_by_name(tmp_path):
    raw = {"queue": {"url": "amqp://127.0.0.1//", "spool": {"max_byte": 10}}}
    with pytest.raises(ConfigError, match=r"queue\.spool\.max_byte: unknown key"):
        make_config(tmp_path, raw)
