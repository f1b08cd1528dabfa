"""Config loading rules that the CLI tests do not reach."""

from __future__ import annotations

import pytest

from eventrouter import config


def test_no_file_is_the_embedded_default(tmp_path):
    loaded = config.load(env={"EVENTROUTER_DATA_DIR": str(tmp_path)})
    assert list(loaded.sinks) == ["local"]
    assert loaded.sinks["local"].type == "sqlite"
    assert loaded.sinks["local"].options == {"url": f"sqlite:///{tmp_path}/events.db"}
    assert loaded.server.port == 8000


def test_environment_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[admin]\ntoken = 'from-file-0123456789abcdef'\n[server]\nport = 9000\n")
    loaded = config.load(
        env={
            "EVENTROUTER_CONFIG": str(path),
            "EVENTROUTER_ADMIN_TOKEN": "from-env-0123456789abcdef",
            "EVENTROUTER_PORT": "9100",
        }
    )
    assert loaded.path == str(path)
    assert loaded.admin.token == "from-env-0123456789abcdef"
    assert loaded.server.port == 9100


def test_interpolation_defaults_and_escapes():
    raw = {"sinks": {"a": {"type": "sqlite", "url": "${DB:-sqlite:///x.db}", "note": "$$HOME"}}}
    loaded = config.parse(raw, "c.toml", env={})
    assert loaded.sinks["a"].options == {"url": "sqlite:///x.db", "note": "$HOME"}


@pytest.mark.parametrize(
    ("text", "parsed"), [("500ms", 0.5), ("1s", 1), ("5m", 300), ("24h", 86400), (2, 2)]
)
def test_duration_values_are_converted_to_seconds(text, parsed):
    # Unit conversion of config values, not a measurement of time.
    assert config.parse_duration(text) == parsed


def test_duplicate_write_keys_are_rejected():
    raw = {"sources": [{"name": "a", "write_key": "k"}, {"name": "b", "write_key": "k"}]}
    with pytest.raises(config.ConfigError, match=r"sources\[1\]\.write_key: duplicate"):
        config.parse(raw, "c.toml", env={})


@pytest.mark.parametrize(
    ("table", "value", "key"),
    [
        ("queue", {"url": "http://guest:hunter2@127.0.0.1:5672/"}, "queue.url"),
        ("queue", {"url": "guest:hunter2@127.0.0.1:5672"}, "queue.url"),
        ("queue", {"url": "amqp://guest:hunter2@127.0.0.1//", "publisher": 2}, "queue.publisher"),
        ("queue", {"url": "amqp://guest:hunter2@127.0.0.1//", "publishers": 0}, "queue.publishers"),
        ("queue", {"url": "amqp://guest:hunter2@127.0.0.1//", "linger": "soon"}, "queue.linger"),
        ("queue", {"prefix": "x"}, "queue.url"),
        ("dedup", {"url": "amqp://guest:hunter2@127.0.0.1//"}, "dedup.url"),
        ("dedup", {"url": "http://:hunter2@127.0.0.1:6379/6"}, "dedup.url"),
        ("dedup", {"url": "redis://:hunter2@127.0.0.1:6379/6", "window": "a day"}, "dedup.window"),
        ("dedup", {"url": "redis://:hunter2@127.0.0.1:6379/6", "windw": "1h"}, "dedup.windw"),
        ("dedup", {"window": "1h"}, "dedup.url"),
    ],
)
def test_queue_and_dedup_errors_name_the_key_not_the_password(table, value, key):
    with pytest.raises(config.ConfigError, match=rf"^test\.toml: {key}: ") as raised:
        config.parse({table: value}, "test.toml", {})
    assert raised.value.key == key
    assert "hunter2" not in str(raised.value)
