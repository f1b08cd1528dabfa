"""The example third-party package, ``examples/eventrouter-webhook``, as a user runs it.

The package is pip-installed (from a copy, so no build files land in the source tree)
into a directory of its own that only this module's subprocesses see on ``PYTHONPATH``,
and every case goes through its ``eventrouter`` entry point in real ``eventrouter``
processes: nothing imports it here. The webhook endpoint is a real HTTP server in a
thread of the test, whose answers each test scripts.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventrouter.events.commands import STORED_COLUMNS
from tests.helpers import (
    ADMIN_TOKEN,
    HANG_GUARD,
    ServeProcess,
    eventually,
    health,
    run_eventrouter,
)
from tests.queue_support import WorkerProcess, amqp_env, to_toml, unique  # noqa: F401

# ruff: noqa: F811 - pytest fixtures are parameters

pytestmark = pytest.mark.slow

PACKAGE = Path(__file__).resolve().parents[2] / "examples" / "eventrouter-webhook"
SECRET = "s3cret-for-tests"


@pytest.fixture(scope="module")
def webhook_site(tmp_path_factory) -> Path:
    """The example package, built and installed by pip into a target directory."""
    root = tmp_path_factory.mktemp("webhook-plugin")
    source = root / "src"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = root / "site"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"),
            *("--no-deps", "--no-index", "--no-build-isolation", "--target", str(site)),
            str(source),
        ],
        check=True,
        timeout=120,
    )
    assert (site / "eventrouter_webhook" / "__init__.py").exists()
    return site


@pytest.fixture(autouse=True)
def plugin_on_path(webhook_site, monkeypatch) -> None:
    """Every ``eventrouter`` process this module starts sees the installed package."""
    paths = [str(webhook_site), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))


class Receiver:
    """A webhook endpoint: records every request, answers with the scripted statuses in
    turn, then with ``default``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: list[int] = []
        self.default = 200
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    receiver.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body}
                    )
                    status = receiver.script.pop(0) if receiver.script else receiver.default
                answer = b'{"ok": true}' if status < 300 else b'{"error": "refused by test"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def expect(self, *statuses: int, default: int = 200) -> None:
        with self._lock:
            self.requests.clear()
            self.script = list(statuses)
            self.default = default

    def batches(self) -> list[list[dict[str, Any]]]:
        with self._lock:
            return [json.loads(r["body"])["batch"] for r in self.requests]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


def hook_table(url: str, **options: Any) -> dict[str, Any]:
    return {"type": "webhook", "url": url, **options}


def sqlite_table(path: Path) -> dict[str, Any]:
    return {"type": "sqlite", "url": f"sqlite:///{path}"}


def events(count: int, prefix: str = "m") -> list[dict[str, Any]]:
    """``count`` track events with known message ids (ids of all tests are distinct)."""
    run = unique(prefix)
    return [
        {
            "type": "track",
            "messageId": f"{run}-{n}",
            "userId": "u1",
            "event": "Signed Up",
            "properties": {"n": n},
        }
        for n in range(count)
    ]


def ids(batch: list[dict[str, Any]]) -> list[str]:
    return [item.get("messageId") or item["message_id"] for item in batch]


def stored_ids(server: ServeProcess) -> set[str]:
    response = httpx.get(
        f"{server.url}/api/v1/events",
        params={"limit": 1000},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return {event["message_id"] for event in response.json()["events"]}


# -- discovery and validation --------------------------------------------------------------
def test_plugins_lists_webhook_with_its_distribution_and_version():
    result = run_eventrouter("plugins", "--json")
    assert result.returncode == 0, result.stderr
    plugins = {row["name"]: row for row in json.loads(result.stdout)}
    webhook = plugins["webhook"]
    assert webhook["distribution"] == "eventrouter-webhook"
    assert webhook["version"] == "0.1.0"
    assert webhook["sink_types"] == ["webhook"]
    assert webhook["hooks"] == ["eventrouter_sink_types"]
    assert webhook["disabled"] is False


def test_config_check_accepts_a_webhook_sink(tmp_path):
    path = tmp_path / "eventrouter.toml"
    sinks = {
        "local": sqlite_table(tmp_path / "events.db"),
        "hook": hook_table(
            "https://example.invalid/hook",
            headers={"Authorization": "Bearer x"},
            timeout="2s",
            secret=SECRET,
            max_events_per_request=100,
            retry={"attempts": 3},
        ),
    }
    path.write_text(to_toml({"sinks": sinks}))
    result = run_eventrouter("config", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert "hook (webhook)" in result.stdout


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"url": "http://127.0.0.1:9/hook", "timout": "1s"}, "sinks.hook.timout: unknown key"),
        ({}, "sinks.hook.url: required key is missing"),
        ({"url": "ftp://example.invalid/"}, "sinks.hook.url: Expected `str` matching regex"),
        (
            {"url": "http://127.0.0.1:9/", "max_events_per_request": 0},
            "sinks.hook.max_events_per_request: Expected `int` >= 1",
        ),
    ],
    ids=["misspelled-key", "missing-url", "not-http", "zero-events-per-request"],
)
def test_config_check_names_a_bad_webhook_key(tmp_path, options, expected):
    path = tmp_path / "eventrouter.toml"
    path.write_text(to_toml({"sinks": {"hook": {"type": "webhook", **options}}}))
    result = run_eventrouter("config", "check", str(path))
    assert result.returncode == 2, result
    assert f"{path}: {expected}" in result.stderr


# -- embedded mode: one real `eventrouter serve` for the cases below ----------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory, receiver, webhook_site) -> Iterator[ServeProcess]:
    """``eventrouter serve`` with the SQLite store and an acknowledging, signing webhook
    that sends at most 3 events per request and retries quickly."""
    root = tmp_path_factory.mktemp("webhook-serve")
    sinks = {
        "local": sqlite_table(root / "events.db"),
        "hook": hook_table(
            receiver.url,
            secret=SECRET,
            headers={"Authorization": "Bearer hook-token"},
            max_events_per_request=3,
            retry={"attempts": 3, "initial_backoff": "50ms", "max_duration": "5s"},
        ),
    }
    path = root / "eventrouter.toml"
    path.write_text(to_toml({"sinks": sinks}))
    paths = [str(webhook_site), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {"PYTHONPATH": os.pathsep.join(paths)}
    process = ServeProcess(root, "--config", str(path), env=env)
    try:
        yield process.wait_ready()
    finally:
        process.stop()


def test_serve_posts_signed_batches_of_stored_columns(server, receiver):
    receiver.expect()
    sent = events(5, "signed")
    response = httpx.post(f"{server.url}/v1/batch", json={"batch": sent}, timeout=HANG_GUARD)
    assert response.status_code == 200, response.text

    # Acknowledging: the 200 came after the endpoint took every request.
    assert [len(batch) for batch in receiver.batches()] == [3, 2]
    assert [i for batch in receiver.batches() for i in ids(batch)] == ids(sent)
    for request in receiver.requests:
        headers = {k.lower(): v for k, v in request["headers"].items()}
        assert request["path"] == "/hook"
        assert headers["content-type"] == "application/json"
        assert headers["authorization"] == "Bearer hook-token"
        assert headers["user-agent"] == "eventrouter-webhook/0.1.0"
        digest = hmac.new(SECRET.encode(), request["body"], hashlib.sha256).hexdigest()
        assert headers["x-eventrouter-signature"] == f"sha256={digest}"
    row = receiver.batches()[0][0]
    assert list(row) == list(STORED_COLUMNS)
    assert row["type"] == "track"
    assert row["event"] == "Signed Up"
    assert row["properties"] == {"n": 0}
    assert row["user_id"] == "u1"
    assert row["received_at"].endswith("Z")
    assert set(ids(sent)) <= stored_ids(server)


def test_serve_retries_5xx_then_delivers_the_same_batch(server, receiver):
    receiver.expect(503, 503)
    sent = events(2, "retried")
    response = httpx.post(f"{server.url}/v1/batch", json={"batch": sent}, timeout=HANG_GUARD)
    assert response.status_code == 200, response.text

    assert len(receiver.requests) == 3  # 503, 503, then 200
    assert [ids(batch) for batch in receiver.batches()] == [ids(sent)] * 3
    bodies = {request["body"] for request in receiver.requests}
    assert len(bodies) == 1  # the very same bytes each time
    batch_ids = {request["headers"]["X-Eventrouter-Batch-Id"] for request in receiver.requests}
    assert len(batch_ids) == 1
    stats = health(server.url).json()["components"]["sink:hook"]
    assert stats["stats"]["last_status"] == 200
    assert stats["stats"]["retries"] >= 2


def test_serve_reports_a_rejected_batch_in_health(server, receiver):
    receiver.expect(default=400)
    sent = events(2, "rejected")
    response = httpx.post(f"{server.url}/v1/batch", json={"batch": sent}, timeout=HANG_GUARD)
    # The webhook acknowledges: its failure answers 503, so the client sends again.
    assert response.status_code == 503, response.text
    assert len(receiver.requests) == 1  # a 400 is not retried
    # The other sink is isolated from the failure: the store holds the events.
    assert set(ids(sent)) <= stored_ids(server)

    components = health(server.url).json()["components"]
    hook = components["sink:hook"]
    assert hook["status"] == "up"
    assert hook["detail"].startswith(f"last error: HTTP 400 from {receiver.url}")
    assert "refused by test" in hook["detail"]
    assert hook["stats"]["last_status"] == 400
    assert hook["stats"]["failures"] >= 1  # the bus's own count of failed writes
    assert "WebhookRejected: HTTP 400" in hook["stats"]["last_error"]
    assert components["sink:local"]["status"] == "up"


# -- queue mode: edge + worker over RabbitMQ ----------------------------------------------
@pytest.mark.parametrize(
    ("status", "attempts", "reason"),
    [(503, 2, "WebhookUnavailable: HTTP 503"), (400, 1, "WebhookRejected: HTTP 400")],
    ids=["unavailable-retried", "rejected-not-retried"],
)
def test_worker_dead_letters_what_the_webhook_never_takes(
    amqp_env, receiver, status, attempts, reason
):
    """The worker makes the retries (the sink one attempt per write, so they are not
    multiplied), then dead-letters the batch; a 4xx the sink calls permanent is not
    retried at all. The SQLite sink's queue is unaffected."""
    receiver.expect(default=status)
    sinks = {
        "local": {**sqlite_table(amqp_env.db_path), "indexes": ["message_id"]},
        "hook": hook_table(
            receiver.url, retry={"attempts": 2, "initial_backoff": "10ms", "max_duration": "5s"}
        ),
    }
    path = amqp_env.write_config(amqp_env.raw(sinks=sinks))
    edge = ServeProcess(amqp_env.tmp_path, "--config", str(path))
    worker = WorkerProcess(path)
    try:
        edge.wait_ready()
        sent = events(3, "queued")
        response = httpx.post(f"{edge.url}/v1/batch", json={"batch": sent}, timeout=HANG_GUARD)
        assert response.status_code == 200, response.text

        def dead_letters() -> list[dict[str, Any]]:
            listed = run_eventrouter(
                "dead-letters", "list", "--sink", "hook", "--json", "--config", str(path)
            )
            assert listed.returncode == 0, listed.stderr
            return json.loads(listed.stdout)

        eventually(lambda: sorted(amqp_env.stored_ids()) == sorted(ids(sent)), "events stored")
        eventually(dead_letters, f"a dead letter for sink 'hook'\n{worker.log()}")
        [letter] = dead_letters()
        assert letter["message_ids"] == ids(sent)
        assert letter["attempts"] == attempts
        assert reason in letter["reason"]
        assert [ids(batch) for batch in receiver.batches()] == [ids(sent)] * attempts
    finally:
        worker.stop()
        edge.stop()
