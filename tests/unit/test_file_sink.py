"""The built-in `file` sink (sinks/file.py) and single-file plugins (`plugins_dir`)."""

from __future__ import annotations

import json

import pytest

from eventrouter import config as config_module
from eventrouter.bus.bus import Bus, make_plugin_manager
from eventrouter.config import ConfigError

NASTY = 'line\nbreak "quoted" \u2028 \u2029 <script>'


def sink_config(tmp_path, **options):
    table = {"type": "file", "path": str(tmp_path / "out" / "events.jsonl"), **options}
    return config_module.parse({"sinks": {"archive": table}})


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_event_is_one_json_line_even_with_nasty_values(start_server, tmp_path):
    server = start_server(
        {"sinks": {"archive": {"type": "file", "path": str(tmp_path / "a" / "e.jsonl")}}}
    )
    batch = [
        {"type": "track", "userId": NASTY, "event": NASTY, "messageId": "m1"},
        {"type": "identify", "userId": "u", "traits": {NASTY: NASTY}, "messageId": "m2"},
    ]
    assert server.post("/v1/batch", {"batch": batch}).status_code == 200
    rows = lines(tmp_path / "a" / "e.jsonl")
    assert [r["message_id"] for r in rows] == ["m1", "m2"]
    assert rows[0]["event"] == NASTY and rows[1]["traits"] == {NASTY: NASTY}
    assert (tmp_path / "a" / "e.jsonl").stat().st_mode & 0o777 == 0o600
    assert server.components()["sink:archive"]["stats"]["written"] == 2


def test_rotation_by_size_keeps_every_line(start_server, tmp_path):
    path = tmp_path / "r" / "events.jsonl"
    table = {"type": "file", "path": str(path), "rotate_bytes": 1}
    server = start_server({"sinks": {"archive": table}})
    for i in range(4):
        assert (
            server.post(
                "/v1/track", {"userId": "u", "event": "E", "messageId": f"m{i}"}
            ).status_code
            == 200
        )
    files = sorted(path.parent.glob("events*.jsonl"))
    assert len(files) == 4  # three rotated, one live
    ids = sorted(row["message_id"] for f in files for row in lines(f))
    assert ids == ["m0", "m1", "m2", "m3"]


def test_rotation_by_time(start_server, tmp_path):
    path = tmp_path / "t" / "events.jsonl"
    server = start_server(
        {"sinks": {"archive": {"type": "file", "path": str(path), "rotate_every": "0s"}}}
    )
    for i in range(3):
        assert (
            server.post(
                "/v1/track", {"userId": "u", "event": "E", "messageId": f"m{i}"}
            ).status_code
            == 200
        )
    assert len(list(path.parent.glob("events.*.jsonl"))) == 2
    assert [r["message_id"] for r in lines(path)] == ["m2"]


def test_unknown_and_bad_keys_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"sinks\.archive\.rotate"):
        config = sink_config(tmp_path, rotate_bytes=0)
        Bus(config, make_plugin_manager(config))
    with pytest.raises(ConfigError, match=r"sinks\.archive\.rotate"):
        config = sink_config(tmp_path, rotate="1h")
        Bus(config, make_plugin_manager(config))


PLUGIN_FILE = """
from eventrouter.bus.hookspecs import hookimpl


@hookimpl
def eventrouter_process_batch(commands, sink):
    return [c for c in commands if not (c.user_id or "").startswith("bot-")]
"""


def test_plugins_dir_loads_each_file_as_a_plugin(start_server, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "drop_bots.py").write_text(PLUGIN_FILE)
    (plugins / "_helper.py").write_text("raise RuntimeError('not a plugin')\n")
    path = tmp_path / "f" / "events.jsonl"
    server = start_server(
        {"plugins_dir": str(plugins), "sinks": {"archive": {"type": "file", "path": str(path)}}}
    )
    assert server.app.bus.pm.get_plugin("drop_bots") is not None
    batch = [
        {"type": "track", "userId": "bot-1", "event": "E", "messageId": "m1"},
        {"type": "track", "userId": "u", "event": "E", "messageId": "m2"},
    ]
    assert server.post("/v1/batch", {"batch": batch}).status_code == 200
    assert [r["message_id"] for r in lines(path)] == ["m2"]


def test_plugins_dir_is_relative_to_the_config_file_and_can_be_disabled(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "drop_bots.py").write_text(PLUGIN_FILE)
    config = config_module.parse({"plugins_dir": "p"}, file=str(tmp_path / "eventrouter.toml"))
    assert make_plugin_manager(config).get_plugin("drop_bots") is not None
    config = config_module.parse(
        {"plugins_dir": "p", "plugins": {"disabled": ["drop_bots"]}},
        file=str(tmp_path / "eventrouter.toml"),
    )
    assert make_plugin_manager(config).get_plugin("drop_bots") is None


def test_plugins_dir_errors_name_the_file(tmp_path):
    (tmp_path / "broken.py").write_text("import no_such_module_here\n")
    config = config_module.parse({"plugins_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"plugins_dir: .*broken\.py: ModuleNotFoundError"):
        make_plugin_manager(config)
    clash = tmp_path / "clash"
    clash.mkdir()
    (clash / "sqlite.py").write_text("")
    with pytest.raises(ConfigError, match="a plugin named 'sqlite' is installed already"):
        make_plugin_manager(config_module.parse({"plugins_dir": str(clash)}))
    with pytest.raises(ConfigError, match="not a directory"):
        make_plugin_manager(config_module.parse({"plugins_dir": str(tmp_path / "missing")}))
