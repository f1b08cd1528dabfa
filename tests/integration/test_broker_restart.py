"""RabbitMQ restarted while events flow: every event answered 200 is stored, once.

The broker's application is stopped and started again (``rabbitmqctl stop_app`` /
``start_app``: every connection drops, durable queues and persistent messages survive,
exactly as in a broker restart) while clients keep sending. Clients behave like
Segment's SDKs: a 503 or a dropped connection is retried with the same ``messageId``.
The worker runs throughout, with dedup on and an idempotent store, so redeliveries of
batches it committed but could not acknowledge are dropped.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import httpx
import pytest

from tests.helpers import HANG_GUARD, LiveServer, eventually
from tests.queue_support import WorkerThread, amqp_env, unique  # noqa: F401 - fixture

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

# ruff: noqa: F811 - pytest fixtures are parameters

CLIENTS = 4
EVENTS_PER_CLIENT = 150


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


def broker_accepts_connections(env) -> bool:
    try:
        with env.connection() as connection:
            connection.connect()
        return True
    except Exception:
        return False


def spooled_events(server: LiveServer) -> int:
    return server.health().json()["components"]["spool"]["stats"]["spooled_events"]


@pytest.fixture
def restartable_broker(amqp_env):
    """The RabbitMQ of this machine, started again after the test whatever happens."""
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl is needed to restart the broker (apt: rabbitmq-server)")
    yield amqp_env
    if not broker_accepts_connections(amqp_env):
        rabbitmqctl("start_app")


def test_events_acknowledged_across_a_broker_restart_are_all_stored_once(restartable_broker):
    env = restartable_broker
    server = LiveServer(env.config(dedup=True)).start()
    acknowledged: list[str] = []
    lock = threading.Lock()
    answered_503 = 0
    failures: list[str] = []

    def client(number: int) -> None:
        nonlocal answered_503
        with httpx.Client(base_url=server.url, timeout=15) as http:
            for i in range(EVENTS_PER_CLIENT):
                message_id = unique(f"c{number}-{i}-")
                body = {"userId": f"client-{number}", "event": "Tick", "messageId": message_id}
                deadline = time.monotonic() + HANG_GUARD
                while True:  # retry like an SDK: same messageId until a 200
                    try:
                        response = http.post("/v1/track", json=body)
                    except httpx.TransportError:
                        response = None
                    if response is not None and response.status_code == 200:
                        with lock:
                            acknowledged.append(message_id)
                        break
                    if response is not None:
                        if response.status_code != 503:
                            failures.append(f"{response.status_code}: {response.text}")
                            return
                        assert response.headers["Retry-After"]
                        with lock:
                            answered_503 += 1
                    if time.monotonic() > deadline:
                        failures.append(f"{message_id} never acknowledged")
                        return
                    time.sleep(0.05)
                time.sleep(0.005)

    try:
        with WorkerThread(env.config(dedup=True)) as worker:
            threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
            for thread in threads:
                thread.start()
            eventually(lambda: len(acknowledged) >= 100, "100 events acknowledged")
            rabbitmqctl("stop_app")
            # Clients keep sending into a stopped broker, and the spool answers for it.
            eventually(
                lambda: spooled_events(server) > 0,
                "events acknowledged into the spool while the broker is stopped",
            )
            rabbitmqctl("start_app")
            for thread in threads:
                thread.join(HANG_GUARD * 2)
            assert not failures, failures[:5]
            assert len(acknowledged) == CLIENTS * EVENTS_PER_CLIENT
            eventually(
                lambda: set(acknowledged) <= set(env.stored_ids()),
                "every acknowledged event stored",
            )
            consumer = worker.worker.consumers[0]
        stored = env.stored_ids()
        assert len(stored) == len(set(stored)), "an event was stored twice"
        assert set(stored) == set(acknowledged)
        # The restart really interrupted ingestion, and the spool answered meanwhile
        # (spooled events all replayed since: every acknowledged event is stored).
        spool = server.health().json()["components"]["spool"]["stats"]
        assert spool["spooled_events"] > 0, (spool, answered_503)
        assert spool["replayed_events"] == spool["spooled_events"]
        assert spool["events"] == 0
        assert consumer.dead_lettered == 0
    finally:
        server.stop()
