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
loopback proxy that a test cuts. This module holds the embedded edge, in this process;
the services' part is tests/integration/test_fail_closed_queue.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
import types
from typing import Any

import pytest

from eventrouter.bus.hookspecs import hookimpl
from eventrouter.health import ComponentHealth
from tests.helpers import ORIGINAL_TRACK, LiveServer, unique

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
    # The stage sleeps for an hour: an answer at all means the timeout ended the request.
    assert_refused(server.post("/v1/track", track()), name, "timed out after 0.3s")
    assert stage.calls == 1
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
