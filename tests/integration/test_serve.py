"""A real `eventrouter serve` (gunicorn + uvicorn workers): the embedded default end to
end, several workers, and durability of acknowledged events across SIGTERM and SIGKILL."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.helpers import ADMIN_TOKEN, HANG_GUARD, ORIGINAL_TRACK, ServeProcess, eventually

pytestmark = pytest.mark.slow


@pytest.fixture
def serve(tmp_path):
    processes: list[ServeProcess] = []

    def start(*args: str, **kwargs) -> ServeProcess:
        process = ServeProcess(tmp_path, *args, **kwargs).wait_ready()
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.stop(signal.SIGKILL, timeout=10)


def stored_ids(database: Path) -> set[str]:
    with sqlite3.connect(database) as connection:
        return {row[0] for row in connection.execute("SELECT message_id FROM events")}


def test_embedded_default_end_to_end(serve, tmp_path):
    process = serve(workers=2)
    response = httpx.post(f"{process.url}/track", json=ORIGINAL_TRACK)
    assert response.status_code == 200
    assert response.json() == {"success": True}

    page = httpx.get(
        f"{process.url}/api/v1/events", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ).json()
    [event] = page["events"]
    assert event["event"] == "page_view"
    assert event["user_id"] == "u1"
    assert event["timestamp"] == "2025-05-28T04:17:35.000Z"
    assert (tmp_path / "eventrouter-data" / "events.db").exists()
    assert process.stop() == 0


def test_generated_admin_token_is_printed_once_and_valid_in_every_worker(serve):
    env = {k: v for k, v in os.environ.items() if k != "EVENTROUTER_ADMIN_TOKEN"}
    process = serve(workers=2, clear_env=env)
    log = process.log()
    tokens = re.findall(r"generated for this run: (\S+)", log)
    assert len(tokens) == 1, log
    headers = {"Authorization": f"Bearer {tokens[0]}"}
    with httpx.Client(base_url=process.url) as client:
        # New connections spread over both workers; each must accept the same token.
        statuses = {
            httpx.get(f"{process.url}/api/v1/events", headers=headers).status_code
            for _ in range(20)
        }
        assert statuses == {200}
        assert client.get("/api/v1/events").status_code == 401


class Load:
    """Threads posting uniquely identified events until stopped; remembers every 200."""

    def __init__(self, url: str, threads: int = 8) -> None:
        self.url = url
        self.acknowledged: set[str] = set()
        self.progress = threading.Condition()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run) for _ in range(threads)]

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stopping.is_set():
                message_id = str(uuid.uuid4())
                batch = {
                    "batch": [
                        {"type": "track", "event": "e", "userId": "u", "messageId": message_id},
                        {
                            "type": "track",
                            "event": "e",
                            "userId": "u",
                            "messageId": message_id + "-2",
                        },
                    ]
                }
                try:
                    response = client.post("/v1/batch", json=batch)
                except httpx.HTTPError:
                    if self.stopping.is_set():
                        return
                    time.sleep(0.01)
                    continue
                if response.status_code == 200:
                    with self.progress:
                        self.acknowledged.update({message_id, message_id + "-2"})
                        self.progress.notify_all()

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def wait_for(self, count: int) -> None:
        """Block until ``count`` events are acknowledged (HANG_GUARD: never, fail)."""
        with self.progress:
            if not self.progress.wait_for(lambda: len(self.acknowledged) >= count, HANG_GUARD):
                pytest.fail(f"the server never acknowledged {count} events")

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_no_acknowledged_event_is_lost_when_the_server_stops(serve, tmp_path, sig):
    process = serve(workers=2)
    with Load(process.url) as load:
        load.wait_for(400)
        process.send(sig)  # the whole process group: master and workers
        process.process.wait(timeout=60)
    with load.progress:
        acknowledged = set(load.acknowledged)
    assert len(acknowledged) >= 400
    missing = acknowledged - stored_ids(tmp_path / "eventrouter-data" / "events.db")
    assert not missing, f"{len(missing)} acknowledged events were lost"


def test_several_workers_share_one_store(serve, tmp_path):
    process = serve(workers=2)
    with Load(process.url, threads=6) as load:
        load.wait_for(1000)
    # Every request was answered (the load stopped cleanly), so the store holds exactly
    # the acknowledged events: none lost, none stored twice or without an answer.
    assert stored_ids(tmp_path / "eventrouter-data" / "events.db") == load.acknowledged


def test_a_client_that_connected_before_the_worker_began_to_stop_is_answered(serve, tmp_path):
    """A worker that stops (SIGTERM here; recycled after max_requests alike) answers a
    connection it had accepted whose request arrives after the shutdown began, with
    ``Connection: close``, and stores the event. uvicorn's own shutdown closed such a
    connection unanswered: the client saw a reset for a request nobody read."""
    process = serve(workers=1)
    with socket.create_connection(("127.0.0.1", process.port), timeout=HANG_GUARD) as early:
        # Answered after `early` connected: the one worker's loop has accepted it too.
        assert httpx.get(f"{process.url}/health").status_code == 200
        process.process.send_signal(signal.SIGTERM)  # the master: a graceful stop

        def stopping() -> bool:
            assert process.process.poll() is None, process.log()  # still serving
            return "Waiting for connections to close" in process.log()

        eventually(stopping, "the master began its graceful stop")
        body = b'{"userId":"u-late","event":"Late","messageId":"late-1"}'
        early.sendall(
            b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        answer = b""
        while chunk := early.recv(65536):  # to EOF: the server closes after answering
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer
    assert b"connection: close" in head.lower(), head
    assert payload == b'{"success":true}'
    assert process.process.wait(timeout=HANG_GUARD) == 0
    assert stored_ids(tmp_path / "eventrouter-data" / "events.db") == {"late-1"}


def test_a_recycled_worker_answers_every_request_sent_while_it_stops(tmp_path):
    """Workers recycled after every 5 requests, with a new connection per request:
    every request is answered 200 (uvicorn's own shutdown reset about 1 in 75)."""
    serve = ServeProcess(
        tmp_path,
        env={"GUNICORN_CMD_ARGS": "--workers 2 --max-requests 5 --max-requests-jitter 0"},
    ).wait_ready()
    statuses = []
    try:
        for i in range(300):
            with httpx.Client() as client:  # a new connection each
                statuses.append(
                    client.post(
                        f"{serve.url}/v1/track", json={"userId": f"u{i}", "event": "Recycled"}
                    ).status_code
                )
    finally:
        assert serve.stop() == 0
    assert statuses == [200] * 300
    # Each worker serves a few more than 5: uvicorn checks the limit every 0.1 s.
    assert serve.log().count("Maximum request limit of 5 exceeded") >= 20


def test_gunicorn_cmd_args_override_the_production_settings(tmp_path):
    """``GUNICORN_CMD_ARGS`` sets any gunicorn setting: here three workers, each recycled
    after 5 requests. Workers restart mid-traffic and no accepted event is lost."""
    serve = ServeProcess(
        tmp_path,
        env={"GUNICORN_CMD_ARGS": "--workers 3 --max-requests 5 --max-requests-jitter 0"},
    ).wait_ready()
    try:
        for i in range(30):
            with httpx.Client() as client:  # a new connection each: every worker serves
                response = client.post(
                    f"{serve.url}/v1/track", json={"userId": f"u{i}", "event": "Recycled"}
                )
            assert response.status_code == 200, response.text
        with httpx.Client() as client:
            stored = client.get(
                f"{serve.url}/api/v1/events",
                params={"event": "Recycled", "limit": 100},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
    finally:
        assert serve.stop() == 0
    assert len(stored.json()["events"]) == 30
    log = serve.log()
    assert log.count("Booting worker") > 3  # three at start, then replacements
    assert "Maximum request limit of 5 exceeded" in log
