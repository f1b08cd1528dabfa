"""A sink that hangs under sustained load: its buffer holds, clients get 503s, and
nothing answered 200 is lost (``sinks.NAME.buffer``, router_core/bus/outlet.py).

A real server on loopback takes batches from several client threads that send fresh
events as fast as they are answered. Beside the SQLite store it has a sink of type
``hang`` whose ``write`` blocks (in its thread) until the test releases it, and which
records what it wrote once released: the stand-in for a store that stopped answering.
What is asserted is what an operator and a client see: status codes, ``Retry-After``,
the messages, the buffer depth in ``/health`` and ``/metrics``, and the stored events.
How much memory stays flat is measured, not asserted: ``bench/buffer.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from eventrouter.bus.hookspecs import hookimpl
from eventrouter.bus.sink import Sink
from eventrouter.events.commands import Command
from tests.helpers import HANG_GUARD, LiveServer, eventually

#: Events per request, and client threads sending them.
BATCH = 10
CLIENTS = 8
#: The hanging sink's buffer: three requests' worth.
BUFFER = 3 * BATCH


class HangingSinks:
    """Sink type ``hang``: every write waits for :attr:`release`, then records its ids."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.written: list[str] = []
        self.calls = 0
        plugin = self

        class Hang(Sink):
            def write(self, commands: Sequence[Command]) -> None:
                plugin.calls += 1
                if not plugin.release.wait(HANG_GUARD):
                    raise TimeoutError("never released")
                plugin.written.extend(c.message_id for c in commands)

        self.sink_type = Hang

    @hookimpl
    def eventrouter_sink_types(self) -> dict[str, type[Sink]]:
        return {"hang": self.sink_type}


@dataclass
class Load:
    """Client threads posting batches of fresh events until stopped."""

    url: str
    answers: list[tuple[list[str], int, dict[str, str], dict[str, Any]]] = field(
        default_factory=list
    )
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for n in range(CLIENTS):
            thread = threading.Thread(target=self._send, args=(n,), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def _send(self, client: int) -> None:
        with httpx.Client(base_url=self.url, timeout=HANG_GUARD) as http:
            sent = 0
            while not self.stop.is_set():
                ids = [f"c{client}-{sent}-{i}" for i in range(BATCH)]
                sent += 1
                batch = [
                    {"type": "track", "userId": "u", "event": "E", "messageId": m} for m in ids
                ]
                response = http.post("/v1/batch", json={"batch": batch})
                with self.lock:
                    self.answers.append(
                        (ids, response.status_code, dict(response.headers), response.json())
                    )

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(HANG_GUARD)
            assert not thread.is_alive(), "a client never got its answer"

    def with_status(self, status: int) -> list[tuple[list[str], dict[str, str], dict]]:
        with self.lock:
            return [(ids, h, body) for ids, code, h, body in self.answers if code == status]

    def acknowledged(self) -> set[str]:
        return {i for ids, _, _ in self.with_status(200) for i in ids}


def start(start_server, tmp_path, hang: dict[str, Any], **server: str) -> tuple[LiveServer, Any]:
    plugin = HangingSinks()
    raw = {
        "server": server,
        "sinks": {
            "local": {"type": "sqlite", "url": f"sqlite:///{tmp_path}/events.db"},
            "hang": {"type": "hang", **hang},
        },
    }
    return start_server(raw, plugins=[plugin]), plugin


def hang_stats(server: LiveServer) -> dict[str, Any]:
    return server.components()["sink:hang"]["stats"]


def assert_never_above_the_bound(server: LiveServer, samples: int = 20) -> None:
    for _ in range(samples):
        stats = hang_stats(server)
        assert stats["buffer_max_events"] == BUFFER
        assert stats["buffered_events"] <= BUFFER, stats
        assert stats["buffer_peak_events"] <= BUFFER, stats


def stored(server: LiveServer) -> set[str]:
    return {event["message_id"] for event in server.events()}


def test_reject_answers_503_at_once_and_loses_nothing_acknowledged(start_server, tmp_path):
    server, plugin = start(
        start_server,
        tmp_path,
        {"buffer": {"max_events": BUFFER, "when_full": "reject"}},
        dispatch_timeout="60s",  # the requests in the buffer wait for the release
    )
    load = Load(server.url).start()
    try:
        eventually(lambda: len(load.with_status(503)) >= 50, "50 batches refused")
        eventually(lambda: hang_stats(server)["buffered_events"] == BUFFER, "the buffer full")
        assert_never_above_the_bound(server)
        assert load.with_status(200) == []  # the hanging sink acknowledges: nothing yet
    finally:
        plugin.release.set()
        load.finish()

    for _, headers, body in load.with_status(503):
        assert headers["retry-after"] == "5"
        assert body["code"] == "unavailable"
        assert "sink:hang: buffer full" in body["message"], body
        assert f"of {BUFFER} events pending" in body["message"], body
    acknowledged = load.acknowledged()
    assert acknowledged  # the batches that waited in the buffer, answered on release
    assert acknowledged <= set(plugin.written)
    assert acknowledged <= stored(server)
    stats = hang_stats(server)
    assert stats["refused_events"] == BATCH * len(load.with_status(503))
    assert stats["buffer_peak_events"] == BUFFER
    eventually(lambda: hang_stats(server)["buffered_events"] == 0, "the buffer drained")
    assert 'eventrouter_sink_buffer_refused_events_total{sink="sink:hang"}' in (
        server.client.get("/metrics").text
    )


def test_block_waits_for_room_then_answers_503(start_server, tmp_path):
    server, plugin = start(
        start_server,
        tmp_path,
        {"buffer": {"max_events": BUFFER, "when_full": "block"}},
        dispatch_timeout="1s",
    )
    load = Load(server.url).start()
    try:

        def refused_after_waiting() -> list:
            return [
                b for _, _, b in load.with_status(503) if "no room came in time" in b["message"]
            ]

        eventually(lambda: len(refused_after_waiting()) >= 10, "10 batches refused after waiting")
        assert_never_above_the_bound(server)
        assert load.with_status(200) == []
    finally:
        plugin.release.set()
        load.finish()

    refused = load.with_status(503)
    for _, headers, body in refused:
        assert headers["retry-after"] == "5"
        # Either it waited for room, or it got in and its write outlived the timeout.
        assert "sink:hang: buffer full" in body["message"] or (
            "sink:hang: timed out after 1s" in body["message"]
        ), body
    assert any("timed out after 1s" in body["message"] for _, _, body in refused)

    # Released: the sink takes new batches again, and what it acknowledges is stored.
    batch = [{"type": "track", "userId": "u", "event": "E", "messageId": "after"}]
    assert server.post("/v1/batch", {"batch": batch}).status_code == 200
    acknowledged = load.acknowledged() | {"after"}
    assert acknowledged <= set(plugin.written)
    assert acknowledged <= stored(server)


def test_an_observer_that_hangs_never_holds_a_request(start_server, tmp_path):
    server, plugin = start(
        start_server,
        tmp_path,
        {"acknowledgements": False, "buffer": {"max_events": BUFFER}},
    )
    load = Load(server.url).start()
    try:
        eventually(lambda: len(load.with_status(200)) >= 50, "50 batches acknowledged")
        eventually(lambda: hang_stats(server)["skipped_events"] > 0, "batches skipped")
        assert_never_above_the_bound(server)
    finally:
        plugin.release.set()
        load.finish()

    assert [code for _, code, _, _ in load.answers if code != 200] == []
    acknowledged = load.acknowledged()
    assert acknowledged <= stored(server)  # the acknowledging store has every one
    stats = hang_stats(server)
    # What the observer got, it wrote once released; the rest it was never given.
    eventually(lambda: hang_stats(server)["buffered_events"] == 0, "the buffer drained")
    assert len(plugin.written) + hang_stats(server)["skipped_events"] == len(acknowledged)
    assert stats["buffer_peak_events"] <= BUFFER
    metrics = server.client.get("/metrics").text
    assert 'eventrouter_sink_buffer_skipped_events_total{sink="sink:hang"}' in metrics
    assert 'eventrouter_sink_buffer_events{sink="sink:hang"} 0.0' in metrics


@pytest.mark.parametrize(
    ("buffer", "message"),
    [
        ({"when_full": "drop_newest"}, 'sinks.hang.buffer.when_full: "drop_newest" is not'),
        ({"type": "disk"}, "sinks.hang.buffer.type: 'disk' is not a buffer type"),
        ({"max_event": 5}, "sinks.hang.buffer.max_event: unknown key"),
        ({"max_events": 0}, "sinks.hang.buffer.max_events: Expected `int` >= 1"),
    ],
)
def test_bad_buffer_settings_name_the_key(tmp_path, buffer, message):
    from eventrouter import config

    raw = {"sinks": {"hang": {"type": "hang", "buffer": buffer}}}
    with pytest.raises(config.ConfigError, match=r"^test\.toml: ") as raised:
        config.parse(raw, "test.toml", {})
    assert message in str(raised.value)
