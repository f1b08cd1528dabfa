"""``eventrouter.client.client.Client``: batching, gzip, retries, rejections, the queueing helpers.

What the server received is observed two ways: a real eventrouter (``LiveServer``) for
what gets stored and how per-item rejections map back to input indexes, and
``RecordingServer`` for what travels on the wire and for scripted failures.
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from eventrouter.client.client import (
    MAX_BATCH_BYTES,
    AuthenticationError,
    Client,
    ServerUnavailable,
)
from tests.helpers import LiveServer, free_port, make_config

WRITE_KEY = "client-key"
SOURCES = {"sources": [{"name": "backend", "write_key": WRITE_KEY}]}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    wire_bytes: int
    json_bytes: int
    events: list[dict]


class RecordingServer:
    """A small real HTTP server on loopback that records each request and answers like
    eventrouter's ``/v1/import`` (``200 {"success":true}``), or with the scripted
    responses first. This is the one fake in the client tests: it lets a test see the
    bytes on the wire and make the server fail on cue."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.script: list[tuple[int, dict[str, str], dict]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                body = gzip.decompress(raw) if self.headers.get("Content-Encoding") else raw
                recorder.received.append(
                    Received(
                        self.path,
                        dict(self.headers),
                        len(raw),
                        len(body),
                        json.loads(body)["batch"],
                    )
                )
                status, headers, answer = (
                    recorder.script.pop(0) if recorder.script else (200, {}, {"success": True})
                )
                data = json.dumps(answer).encode()
                self.send_response(status)
                for name, value in {**headers, "Content-Type": "application/json"}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def message_ids(self) -> list[str]:
        return [e["messageId"] for r in self.received for e in r.events]


@pytest.fixture
def recorder() -> Iterator[RecordingServer]:
    server = RecordingServer()
    yield server
    server.stop()


@pytest.fixture
def keyed_server(tmp_path) -> Iterator[LiveServer]:
    server = LiveServer(make_config(tmp_path, SOURCES)).start()
    yield server
    server.stop()


def tracks(count: int, user: str = "u1", **properties: object) -> list[dict]:
    return [
        {"type": "track", "userId": user, "event": "e", "properties": {"n": n, **properties}}
        for n in range(count)
    ]


# -- on the wire -----------------------------------------------------------------------


def test_batches_hold_at_most_2500_events_gzipped_with_basic_auth(recorder):
    events = tracks(6000)
    with Client(recorder.url, WRITE_KEY) as client:
        result = client.upload(events)
    assert (result.accepted, result.rejected) == (6000, 0)
    assert [len(r.events) for r in recorder.received] == [2500, 2500, 1000]
    for request in recorder.received:
        assert request.path == "/v1/import"
        assert request.headers["Content-Encoding"] == "gzip"
        assert request.wire_bytes < request.json_bytes
        expected = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
        assert request.headers["Authorization"] == f"Basic {expected}"
    sent = [e for r in recorder.received for e in r.events]
    assert [e["properties"]["n"] for e in sent] == list(range(6000))
    assert len(set(recorder.message_ids())) == 6000
    assert all("messageId" not in e for e in events)  # the caller's dicts are untouched


def test_batches_stay_under_500_kb_and_an_oversized_event_is_rejected_locally(recorder):
    events = tracks(120, pad="x" * 20_000)  # ~20 KB each: 2.4 MB in all
    events.insert(
        50, {"type": "track", "userId": "u1", "event": "big", "properties": {"x": "y" * 40_000}}
    )
    result = Client(recorder.url, gzip=False).upload(events)
    assert result.accepted == 120
    assert [(r.index, r.code) for r in result.rejections] == [(50, "event_too_large")]
    assert len(recorder.received) >= 5
    assert all(r.json_bytes <= MAX_BATCH_BYTES for r in recorder.received)
    assert all("Content-Encoding" not in r.headers for r in recorder.received)
    assert sum(len(r.events) for r in recorder.received) == 120
    assert "big" not in {e["event"] for r in recorder.received for e in r.events}


def test_429_with_retry_after_then_503_then_success_resends_the_same_message_ids(recorder):
    recorder.script = [
        (429, {"Retry-After": "1"}, {"code": "rate_limited", "message": "slow down"}),
        (503, {}, {"code": "unavailable", "message": "sink down"}),
    ]
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # the waits the client chose, still waited
        waits.append(seconds)
        time.sleep(seconds)

    result = Client(recorder.url, backoff=0.01, sleep=sleep).upload(tracks(10))
    assert (result.accepted, result.rejected) == (10, 0)
    assert len(recorder.received) == 3
    first, second, third = ([e["messageId"] for e in r.events] for r in recorder.received)
    assert first == second == third
    assert waits[0] == 1.0  # Retry-After, not the 10 ms backoff
    assert waits[1] < 1.0  # no Retry-After on the 503: the backoff


def test_gives_up_after_max_retries_naming_what_failed(recorder):
    recorder.script = [(503, {}, {"code": "unavailable", "message": "sink down"})] * 10
    client = Client(recorder.url, max_retries=2, backoff=0.01, batch_events=5)
    with pytest.raises(ServerUnavailable) as failure:
        client.upload(tracks(5) + tracks(5))
    assert len(recorder.received) == 3  # one batch, tried 3 times; the second never sent
    message = str(failure.value)
    assert f"POST {recorder.url}/v1/import failed after 3 attempt(s)" in message
    assert "HTTP 503: unavailable: sink down" in message
    assert failure.value.index == 0
    assert failure.value.result.accepted == 0


def test_unreachable_host_raises_after_retries():
    client = Client(f"127.0.0.1:{free_port()}", max_retries=1, backoff=0.01)
    with pytest.raises(ServerUnavailable, match="ConnectError"):
        client.upload(tracks(1))


def test_400_rejects_the_whole_batch_without_retry(recorder):
    recorder.script = [(400, {}, {"code": "invalid_json", "message": "body: not valid JSON"})]
    result = Client(recorder.url, batch_events=2, backoff=0.01).upload(tracks(4))
    assert len(recorder.received) == 2  # the failed batch was not retried
    assert result.accepted == 2
    assert [(r.index, r.code, r.message) for r in result.rejections] == [
        (0, "invalid_json", "body: not valid JSON"),
        (1, "invalid_json", "body: not valid JSON"),
    ]
    assert [r.message_id for r in result.rejections] == recorder.message_ids()[:2]


def test_a_refused_write_key_stops_the_upload(keyed_server):
    with pytest.raises(AuthenticationError, match="HTTP 401"):
        Client(keyed_server.url, "wrong", batch_events=2).upload(tracks(6))
    assert keyed_server.events() == []


# -- against eventrouter ---------------------------------------------------------------


def test_server_rejections_map_back_to_input_indexes(keyed_server):
    events = tracks(35, user="mapper")
    events[3] = {"type": "track", "userId": "mapper"}  # no event
    events[17] = {"type": "group", "userId": "mapper"}  # no groupId
    events[34] = {"type": "track", "event": "anonymous"}  # no userId/anonymousId
    events[20] = {
        "type": "track",
        "userId": "mapper",
        "event": "big",
        "properties": {"x": "y" * 40_000},
    }
    result = Client(keyed_server.url, WRITE_KEY, batch_events=10).upload(events)
    assert [(r.index, r.code) for r in result.rejections] == [
        (3, "missing_field"),
        (17, "missing_field"),
        (20, "event_too_large"),
        (34, "missing_field"),
    ]
    assert "groupId" in result.rejections[1].message
    assert result.accepted == 31
    stored = keyed_server.events(user_id="mapper")
    assert sorted(e["properties"]["n"] for e in stored) == sorted(
        n for n in range(35) if n not in (3, 17, 20, 34)
    )


def test_a_batch_with_no_valid_item_reports_each_reason(keyed_server):
    events = [{"type": "track", "userId": "x"}, {"type": "alias", "userId": "x"}]
    result = Client(keyed_server.url, WRITE_KEY).upload(events)
    assert result.accepted == 0
    assert [(r.index, r.code) for r in result.rejections] == [
        (0, "missing_field"),
        (1, "missing_field"),
    ]
    assert "previousId" in result.rejections[1].message


def test_megabytes_of_events_are_split_under_the_servers_body_limit(keyed_server):
    events = tracks(80, user="heavy", pad="z" * 20_000)  # 1.6 MB: one request would be a 413
    result = Client(keyed_server.url, WRITE_KEY).upload(events)
    assert (result.accepted, result.rejected) == (80, 0)
    assert len(keyed_server.events(user_id="heavy")) == 80


def test_helpers_queue_until_flush_and_land_in_the_store(keyed_server):
    client = Client(keyed_server.url, WRITE_KEY)
    message_id = client.track("ada", "Signed Up", {"plan": "pro"}, context={"app": {"name": "b"}})
    client.identify("ada", {"email": "ada@example.com"})
    client.page(anonymous_id="anon-1", name="Home", properties={"path": "/"})
    client.screen("ada", "Settings")
    client.group("ada", "acme", {"name": "Acme"})
    client.alias("ada", "anon-1")
    assert keyed_server.events() == []  # queued, not sent
    result = client.flush()
    assert (result.accepted, result.rejected) == (6, 0)
    by_type = {e["type"]: e for e in keyed_server.events()}
    assert set(by_type) == {"track", "identify", "page", "screen", "group", "alias"}
    track = by_type["track"]
    assert track["message_id"] == message_id
    assert (track["event"], track["properties"], track["source"]) == (
        "Signed Up",
        {"plan": "pro"},
        "backend",
    )
    assert track["context"]["app"] == {"name": "b"}
    assert track["context"]["library"]["name"] == "eventrouter-python"
    assert by_type["identify"]["traits"] == {"email": "ada@example.com"}
    assert (by_type["page"]["anonymous_id"], by_type["page"]["name"]) == ("anon-1", "Home")
    assert by_type["group"]["group_id"] == "acme"
    assert by_type["alias"]["previous_id"] == "anon-1"

    with client:  # leaving the block flushes what is queued, then closes
        client.track(anonymous_id="anon-2", event="Closed")
    assert [e["event"] for e in keyed_server.events(anonymous_id="anon-2")] == ["Closed"]


def test_helpers_refuse_events_the_server_would_reject(recorder):
    client = Client(recorder.url)
    with pytest.raises(ValueError, match="user_id or anonymous_id"):
        client.track(event="x")
    with pytest.raises(ValueError, match="event is required"):
        client.track("u1")
    assert client.flush().accepted == 0
    assert recorder.received == []
