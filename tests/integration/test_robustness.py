"""Misconfigurations that must fail loudly, hung or flaky plugins that must not stall or
stick, and the small contract fixes found in review."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

from eventrouter.bus.hookspecs import hookimpl
from eventrouter.bus.sink import Sink
from eventrouter.config import ConfigError
from tests.helpers import LiveServer, eventually, make_config, run_eventrouter

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

EVENT = {"event": "Signed Up", "userId": "u1"}


eventrouter = run_eventrouter


SINK_MODULE = """\
from eventrouter.bus.hookspecs import hookimpl
from eventrouter.bus.sink import Sink


class {cls}(Sink):
    def write(self, commands):
        pass


@hookimpl
def eventrouter_sink_types():
    return {{"{type}": {cls}}}
"""


def install_sink_plugin(site: Path, name: str, sink_type: str) -> None:
    """A minimal installed distribution ``name`` whose entry point provides ``sink_type``."""
    site.mkdir(exist_ok=True)
    module = f"{name}_plugin"
    (site / f"{module}.py").write_text(
        SINK_MODULE.format(cls=f"{name.title()}Sink", type=sink_type)
    )
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[eventrouter]\n{name} = {module}\n")


class Archive(Sink):
    """A sink type that is not an SQL store."""

    async def write(self, commands):
        pass


class ArchivePlugin:
    @hookimpl
    def eventrouter_sink_types(self):
        return {"archive": Archive}


# -- 1. [admin] store naming a sink that is not queryable --------------------------------


def test_admin_store_naming_a_non_queryable_sink_is_a_config_error(tmp_path):
    raw = {
        "admin": {"store": "arch"},
        "sinks": {
            "local": {"type": "sqlite", "url": f"sqlite:///{tmp_path}/a.db"},
            "arch": {"type": "archive"},
        },
    }
    config = make_config(tmp_path, raw)
    with pytest.raises(ConfigError, match=r"test.toml: admin\.store: .*not queryable"):
        LiveServer(config, plugins=[ArchivePlugin()])


def test_config_check_reports_a_non_queryable_admin_store(tmp_path):
    install_sink_plugin(tmp_path / "site", "archiver", "archive")
    config = tmp_path / "store.toml"
    config.write_text(
        "[admin]\nstore = 'arch'\n"
        "[sinks.local]\ntype = 'sqlite'\nurl = 'sqlite:///x.db'\n"
        "[sinks.arch]\ntype = 'archive'\n"
    )
    result = eventrouter("config", "check", str(config), env={"PYTHONPATH": str(tmp_path / "site")})
    assert result.returncode == 2, result.stdout
    assert f"{config}: admin.store: sink 'arch' has type 'archive', which is not queryable" in (
        result.stderr
    )


# -- 2. a configured sink blocked by [plugins] disabled ----------------------------------


def test_configured_sink_blocked_by_plugins_disabled_is_a_config_error(tmp_path):
    config = make_config(tmp_path, {"plugins": {"disabled": ["sink:local"]}})
    with pytest.raises(
        ConfigError,
        match=r"plugins\.disabled: sink 'local' is configured but blocked by plugins\.disabled",
    ):
        LiveServer(config)


def test_config_check_reports_a_blocked_sink(tmp_path):
    config = tmp_path / "blocked.toml"
    config.write_text("[plugins]\ndisabled = ['sink:local']\n")
    result = eventrouter("config", "check", str(config))
    assert result.returncode == 2, result.stdout
    assert f"{config}: plugins.disabled: sink 'local' is configured but blocked" in result.stderr


# -- 3. writeKey in the original /track payload ------------------------------------------


def test_original_track_payload_accepts_camel_case_write_key(start_server):
    server = start_server({"sources": [{"name": "web", "write_key": "k-web"}]})
    body = {"event_type": "page_view", "user_id": "u1", "writeKey": "k-web"}
    response = server.post("/track", body)
    assert response.status_code == 200, response.text
    [event] = server.events()
    assert event["source"] == "web"


def test_original_track_payload_still_accepts_snake_case_write_key(start_server):
    server = start_server({"sources": [{"name": "web", "write_key": "k-web"}]})
    body = {"event_type": "page_view", "user_id": "u1", "write_key": "k-web"}
    assert server.post("/track", body).status_code == 200
    assert server.events()[0]["source"] == "web"


# -- 4. a sink's default health is required when it acknowledges -------------------------


class Probed(Sink):
    """A third-party sink that reports its state through the base class's health."""

    async def write(self, commands):
        pass

    def health(self):
        component = super().health()
        component.up = False
        component.detail = "connection refused"
        return component


class ProbedPlugin:
    @hookimpl
    def eventrouter_sink_types(self):
        return {"probed": Probed}


@pytest.mark.parametrize(("acknowledgements", "status"), [(True, 503), (False, 200)])
def test_acknowledging_sink_is_required_in_health_by_default(
    start_server, tmp_path, acknowledgements, status
):
    sinks = {
        "local": {"type": "sqlite", "url": f"sqlite:///{tmp_path}/a.db"},
        "remote": {"type": "probed", "acknowledgements": acknowledgements},
    }
    server = start_server({"sinks": sinks}, plugins=[ProbedPlugin()])
    response = server.health()
    assert response.status_code == status
    component = response.json()["components"]["sink:remote"]
    assert component["status"] == "down"
    assert component["required"] is acknowledgements


# -- 5. pipeline stages are bounded by server.dispatch_timeout ---------------------------


class HangingAsyncStage:
    @hookimpl
    async def eventrouter_process_batch(self, commands):
        await asyncio.sleep(3600)


class HangingSyncStage:
    def __init__(self) -> None:
        self.release = threading.Event()

    @hookimpl
    def eventrouter_process_batch(self, commands):
        self.release.wait(60)


@pytest.mark.parametrize("stage_type", [HangingAsyncStage, HangingSyncStage])
def test_hung_pipeline_stage_times_out_and_the_batch_passes_on(start_server, stage_type):
    stage = stage_type()
    server = start_server({"server": {"dispatch_timeout": "300ms"}}, plugins=[stage])
    try:
        response = server.post("/v1/track", EVENT)
        assert response.status_code == 200, response.text
        assert [e["event"] for e in server.events()] == ["Signed Up"]
        name = server.app.bus.pm.get_name(stage)
        component = server.health().json()["components"][name]
        assert component["status"] == "down"
        assert component["required"] is False
        assert component["stats"]["timeouts"] == 1
        assert component["detail"] == "timed out after 0.3s"
    finally:
        if isinstance(stage, HangingSyncStage):
            stage.release.set()


# -- 6. the 503 message is true after a timeout too --------------------------------------


class Hanging(Sink):
    async def write(self, commands):
        await asyncio.sleep(3600)


class HangingPlugin:
    @hookimpl
    def eventrouter_sink_types(self):
        return {"hanging": Hanging}


def test_timeout_503_does_not_claim_the_events_were_not_stored(start_server, tmp_path):
    sinks = {
        "local": {"type": "sqlite", "url": f"sqlite:///{tmp_path}/a.db"},
        "slow": {"type": "hanging"},
    }
    server = start_server(
        {"server": {"dispatch_timeout": "300ms"}, "sinks": sinks}, plugins=[HangingPlugin()]
    )
    response = server.post("/v1/track", EVENT)
    assert response.status_code == 503
    message = response.json()["message"]
    assert message.startswith("events may not have been stored, retry later: sink:slow")


# -- 7. an observer that recovers shows up in /health again ------------------------------


class FailsOnce:
    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    async def eventrouter_write_batch(self, commands):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("first call fails")


def test_observer_is_up_again_after_a_success(start_server):
    observer = FailsOnce()
    server = start_server(plugins=[observer])
    name = server.app.bus.pm.get_name(observer)

    def component() -> dict:
        return server.health().json()["components"].get(name, {})

    assert server.post("/v1/track", {**EVENT, "messageId": "m1"}).status_code == 200
    eventually(lambda: component().get("stats", {}).get("failures") == 1, "the failure counted")
    assert component()["status"] == "down"

    assert server.post("/v1/track", {**EVENT, "messageId": "m2"}).status_code == 200
    eventually(
        lambda: component().get("stats", {}).get("last_success_at") is not None,
        "the later success recorded",
    )
    state = component()
    assert state["status"] == "up"
    assert state["stats"]["failures"] == 1
    assert state["stats"]["batches"] == 2
    assert server.health().status_code == 200


# -- 8. configuration -------------------------------------------------------------------


def test_interpolation_default_applies_to_an_empty_variable(tmp_path):
    config = tmp_path / "empty.toml"
    config.write_text("[[sources]]\nname = 'web'\nwrite_key = '${WEB_KEY:-dev-key}'\n")
    result = eventrouter("config", "check", str(config), env={"WEB_KEY": ""})
    assert result.returncode == 0, result.stderr
    assert "sources: web" in result.stdout


@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_eventrouter_port_is_range_checked(tmp_path, port):
    config = tmp_path / "ok.toml"
    config.write_text("[server]\nport = 9000\n")
    result = eventrouter("config", "check", str(config), env={"EVENTROUTER_PORT": port})
    assert result.returncode == 2
    assert f"{config}: EVENTROUTER_PORT: {port!r} is not a port number (0-65535)" in result.stderr


def test_top_level_path_is_an_unknown_key(tmp_path):
    config = tmp_path / "path.toml"
    config.write_text("path = 'elsewhere.toml'\n")
    result = eventrouter("config", "check", str(config))
    assert result.returncode == 2
    assert f"{config}: path: unknown key" in result.stderr


def test_two_plugins_providing_one_sink_type_are_named_in_a_warning(tmp_path):
    site = tmp_path / "site"
    install_sink_plugin(site, "alpha", "webhook")
    install_sink_plugin(site, "beta", "webhook")
    config = tmp_path / "dup.toml"
    config.write_text("[sinks.hooks]\ntype = 'webhook'\n")
    result = eventrouter("config", "check", str(config), env={"PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stderr
    [warning] = [line for line in result.stderr.splitlines() if "sink type 'webhook'" in line]
    assert "WARNING" in warning
    assert "'alpha'" in warning
    assert "'beta'" in warning


# -- 9. `eventrouter plugins` marks disabled plugins -------------------------------------


def test_plugins_marks_a_disabled_plugin(tmp_path):
    config = tmp_path / "disabled.toml"
    config.write_text("[plugins]\ndisabled = ['sqlite']\n")
    result = eventrouter("plugins", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["sqlite"]["disabled"] is True
    assert plugins["sqlite"]["distribution"] == "eventrouter"
    assert plugins["sqlite"]["hooks"] == []

    result = eventrouter("plugins", "--config", str(config))
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("sqlite")]
    assert "(disabled)" in line


def test_plugins_json_marks_loaded_plugins_as_enabled():
    result = eventrouter("plugins", "--json")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["sqlite"]["disabled"] is False


# -- the Archive type is a valid sink where it is not the store --------------------------


def test_non_queryable_sink_is_fine_when_not_the_store(start_server, tmp_path):
    sinks = {
        "local": {"type": "sqlite", "url": f"sqlite:///{tmp_path}/a.db"},
        "arch": {"type": "archive"},
    }
    server = start_server({"sinks": sinks}, plugins=[ArchivePlugin()])
    assert server.post("/v1/track", EVENT).status_code == 200
    assert len(server.events()) == 1
