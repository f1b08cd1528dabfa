"""The bus: sinks are isolated observers; pipeline stages; acknowledgements and 503."""

from __future__ import annotations

import asyncio
import threading

import msgspec
import pytest

from eventrouter.bus.hookspecs import hookimpl
from eventrouter.bus.sink import Sink
from eventrouter.config import ConfigError
from eventrouter.health import ComponentHealth
from tests.helpers import LiveServer, eventually, make_config

EVENT = {"event": "Signed Up", "userId": "u1"}


class FailingObserver:
    """A third-party observer that always raises."""

    calls = 0

    @hookimpl
    def eventrouter_write_batch(self, commands):
        self.calls += 1
        raise RuntimeError("destination exploded")


class HangingAsyncObserver:
    @hookimpl
    async def eventrouter_write_batch(self, commands):
        await asyncio.sleep(3600)


class HangingSyncObserver:
    def __init__(self) -> None:
        self.release = threading.Event()

    @hookimpl
    def eventrouter_write_batch(self, commands):
        self.release.wait(60)


class RecordingSyncObserver:
    def __init__(self) -> None:
        self.batches: list[list] = []
        self.threads: set[str] = set()

    @hookimpl
    def eventrouter_write_batch(self, commands):
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(commands))


class RecordingAsyncObserver:
    def __init__(self) -> None:
        self.batches: list[list] = []

    @hookimpl
    async def eventrouter_write_batch(self, commands):
        await asyncio.sleep(0)
        self.batches.append(list(commands))


def test_failing_observer_does_not_stop_the_store_or_the_request(start_server):
    failing = FailingObserver()
    recording = RecordingAsyncObserver()
    server = start_server(plugins=[failing, recording])

    response = server.post("/v1/track", EVENT)

    assert response.status_code == 200
    assert [e["event"] for e in server.events()] == ["Signed Up"]
    eventually(
        lambda: failing.calls == 1 and len(recording.batches) == 1, "both observers called once"
    )
    health = server.health()
    assert health.status_code == 200  # observers are not required components
    [failed] = [c for c in health.json()["components"].values() if c["stats"].get("failures")]
    assert failed["stats"]["failures"] == 1
    assert "destination exploded" in failed["detail"]


def test_hanging_observers_neither_block_the_request_nor_other_sinks(start_server):
    sync_hang = HangingSyncObserver()
    recording = RecordingSyncObserver()
    server = start_server(
        {"server": {"observer_timeout": "300ms"}},
        plugins=[HangingAsyncObserver(), sync_hang, recording],
    )
    try:
        for i in range(3):
            assert server.post("/v1/track", {**EVENT, "messageId": f"m{i}"}).status_code == 200
        assert len(server.events()) == 3
        eventually(lambda: len(recording.batches) == 3, "the healthy observer got 3 batches")

        def timed_out() -> list[dict]:
            components = server.health().json()["components"].values()
            return [c["stats"] for c in components if c.get("stats", {}).get("timeouts")]

        # Both hanging observers were handed all 3 events (batches that arrived while a
        # write hung are written together), and every write was cut off by
        # observer_timeout and counted in /health.
        eventually(
            lambda: [s["events"] for s in timed_out()] == [3, 3],
            "3 events per hanging observer, in writes that timed out",
        )
        for stats in timed_out():
            assert stats["timeouts"] == stats["failures"] == stats["batches"] >= 1, stats
    finally:
        sync_hang.release.set()


def test_sync_observers_run_off_the_event_loop_and_async_ones_on_it(start_server):
    sync_observer = RecordingSyncObserver()
    async_observer = RecordingAsyncObserver()
    server = start_server(plugins=[sync_observer, async_observer])
    response = server.post(
        "/v1/batch", {"batch": [{"type": "track", **EVENT}, {"type": "identify", "userId": "u1"}]}
    )
    assert response.status_code == 200
    eventually(lambda: sync_observer.batches and async_observer.batches, "both observers called")
    assert [c.kind for c in sync_observer.batches[0]] == ["track", "identify"]
    assert [c.kind for c in async_observer.batches[0]] == ["track", "identify"]
    assert all(name.startswith("hook-") for name in sync_observer.threads)


class Flaky(Sink):
    """An acknowledging sink type whose behaviour a test controls."""

    class Options(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
        mode: str = "fail"

    async def write(self, commands):
        if self.options.mode == "fail":
            raise ConnectionError("store is down")
        if self.options.mode == "hang":
            await asyncio.sleep(3600)
        if self.options.mode == "own-timeout":  # e.g. a socket's or a confirm's timeout
            raise TimeoutError("confirm not received within 0.5s")

    def health(self) -> ComponentHealth:
        return ComponentHealth(
            name=f"sink:{self.name}", up=self.options.mode == "ok", required=True, detail="probe"
        )


class FlakyPlugin:
    @hookimpl
    def eventrouter_sink_types(self):
        return {"flaky": Flaky}


@pytest.mark.parametrize("mode", ["fail", "hang"])
def test_acknowledging_sink_failure_answers_503_with_retry_after(start_server, tmp_path, mode):
    server = start_server(
        {
            "server": {"dispatch_timeout": "300ms"},
            "sinks": {
                "local": {"type": "sqlite", "url": f"sqlite:///{tmp_path}/a.db"},
                "flaky": {"type": "flaky", "mode": mode},
            },
        },
        plugins=[FlakyPlugin()],
    )
    response = server.post("/v1/track", EVENT)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.json()["code"] == "unavailable"
    assert "sink:flaky" in response.json()["message"]


@pytest.mark.parametrize(
    ("mode", "message", "timeouts"),
    [
        ("hang", "sink:flaky: timed out after 0.3s", 1),  # the bus's own limit ran out
        ("own-timeout", "sink:flaky: TimeoutError", 0),  # the sink's own failure
    ],
)
def test_a_sinks_own_timeout_is_its_failure_not_the_buses(
    start_server, tmp_path, mode, message, timeouts
):
    """Only the bus's ``dispatch_timeout`` counts as a timeout in /health; a
    ``TimeoutError`` the sink raised is reported as that sink's error."""
    server = start_server(
        {
            "server": {"dispatch_timeout": "300ms"},
            "sinks": {"flaky": {"type": "flaky", "mode": mode}},
        },
        plugins=[FlakyPlugin()],
    )
    response = server.post("/v1/track", EVENT)
    assert response.status_code == 503
    assert message in response.json()["message"]
    stats = server.health().json()["components"]["sink:flaky"]["stats"]
    assert (stats["failures"], stats["timeouts"]) == (1, timeouts), stats
    expected = "timed out after 0.3s" if timeouts else "TimeoutError: confirm not received"
    assert stats["last_error"].startswith(expected), stats


def test_unacknowledged_sink_failure_still_answers_200(start_server, tmp_path):
    server = start_server(
        {
            "sinks": {
                "local": {"type": "sqlite", "url": f"sqlite:///{tmp_path}/a.db"},
                "flaky": {"type": "flaky", "mode": "fail", "acknowledgements": False},
            }
        },
        plugins=[FlakyPlugin()],
    )
    assert server.post("/v1/track", EVENT).status_code == 200
    assert len(server.events()) == 1


def test_health_is_503_when_a_required_component_is_down(start_server, tmp_path):
    server = start_server(
        {
            "sinks": {
                "local": {"type": "sqlite", "url": f"sqlite:///{tmp_path}/a.db"},
                "flaky": {"type": "flaky", "mode": "fail"},
            }
        },
        plugins=[FlakyPlugin()],
    )
    response = server.health()
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "down"
    assert body["components"]["sink:flaky"]["status"] == "down"
    assert body["components"]["sink:local"]["status"] == "up"


class DropAndEnrich:
    """A pipeline stage: drops one event name, stamps the others."""

    @hookimpl
    def eventrouter_process_batch(self, commands):
        return [
            msgspec.structs.replace(c, properties={**c.properties, "enriched": True})
            for c in commands
            if c.event != "internal"
        ]


class BrokenStage:
    @hookimpl
    async def eventrouter_process_batch(self, commands):
        raise ValueError("enrichment service unreachable")


def test_pipeline_stages_rewrite_and_drop_before_sinks(start_server):
    server = start_server(plugins=[DropAndEnrich()])
    batch = {
        "batch": [
            {"type": "track", "event": "internal", "userId": "u"},
            {"type": "track", "event": "kept", "userId": "u"},
        ]
    }
    assert server.post("/v1/batch", batch).status_code == 200
    [event] = server.events()
    assert event["event"] == "kept"
    assert event["properties"] == {"enriched": True}


class SwitchableStage:
    """Drops every event, unless ``idle``: then the bus must not call it at all."""

    def __init__(self) -> None:
        self.idle = True
        self.calls = 0

    @hookimpl
    async def eventrouter_process_batch(self, commands):
        self.calls += 1
        return []


def test_an_idle_pipeline_stage_is_not_called(start_server):
    stage = SwitchableStage()
    server = start_server(plugins=[stage])
    assert server.post("/v1/track", {**EVENT, "event": "while idle"}).status_code == 200
    assert stage.calls == 0
    stage.idle = False
    assert server.post("/v1/track", {**EVENT, "event": "while busy"}).status_code == 200
    assert stage.calls == 1
    assert [e["event"] for e in server.events()] == ["while idle"]


def test_failing_pipeline_stage_passes_the_batch_on_unchanged(start_server):
    server = start_server(plugins=[BrokenStage()])
    assert server.post("/v1/track", EVENT).status_code == 200
    assert [e["event"] for e in server.events()] == ["Signed Up"]


def test_sink_options_are_validated_naming_the_key(tmp_path):
    config = make_config(tmp_path, {"sinks": {"x": {"type": "flaky", "mode": 3}}})
    with pytest.raises(ConfigError, match=r"test.toml: sinks\.x\.mode: Expected `str`"):
        LiveServer(config, plugins=[FlakyPlugin()])
    config = make_config(tmp_path, {"sinks": {"x": {"type": "nope"}}})
    with pytest.raises(ConfigError, match=r"sinks\.x\.type: unknown sink type 'nope'"):
        LiveServer(config)


def test_disabled_plugin_is_not_loaded(tmp_path):
    config = make_config(tmp_path, {"plugins": {"disabled": ["sqlite"]}})
    with pytest.raises(ConfigError, match="unknown sink type 'sqlite'"):
        LiveServer(config)


def _indexes(path) -> set[str]:
    import sqlite3

    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        return {name for (name,) in rows if not name.startswith("sqlite_")}


def test_sqlite_indexes_follow_the_config(start_server, tmp_path):
    database = tmp_path / "indexed.db"

    def sink(indexes):
        return {
            "sinks": {
                "local": {"type": "sqlite", "url": f"sqlite:///{database}", "indexes": indexes}
            }
        }

    server = start_server(sink(["message_id", "anonymous_id"]))
    assert _indexes(database) == {
        "ix_events_timestamp",
        "ux_events_message_id_source",
        "ix_events_anonymous_id",
    }
    server.stop()
    server = start_server(sink(["user_id"]))
    assert _indexes(database) == {"ix_events_timestamp", "ix_events_user_id"}
    assert server.post("/v1/track", EVENT).status_code == 200
    assert len(server.events(user_id="u1")) == 1
    server.stop()
    server = start_server(sink(["event_user"]))  # two indexes for one entry
    assert _indexes(database) == {
        "ix_events_timestamp",
        "ix_events_event_user_id",
        "ix_events_event_anonymous_id",
    }
    server.stop()
    server = start_server(sink([]))
    assert _indexes(database) == {"ix_events_timestamp"}
