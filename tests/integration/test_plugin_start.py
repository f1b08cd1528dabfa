"""A sink that cannot start is named in one line, by `serve`, `worker` and
`config check --connect` (docs/plugins.md, "When a plugin cannot start")."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import VENV_BIN, free_port, run_eventrouter
from tests.queue_support import AMQP_URL

pytestmark = pytest.mark.slow

LINE = "sink 'archive' (type sqlite) failed to start: NotADirectoryError"


def write_config(tmp_path: Path, queue: bool = False) -> Path:
    """Two sinks: `good` can start; `archive` cannot (its file's directory is a file)."""
    (tmp_path / "not-a-dir").write_text("")
    text = (
        f'[sinks.good]\ntype = "sqlite"\nurl = "sqlite:///{tmp_path}/good.db"\n\n'
        f'[sinks.archive]\ntype = "sqlite"\nurl = "sqlite:///{tmp_path}/not-a-dir/events.db"\n'
        '\n[admin]\nstore = "good"\n'
    )
    if queue:
        text += f'\n[queue]\nurl = "{AMQP_URL}"\nprefix = "start-{free_port()}"\n'
    path = tmp_path / "eventrouter.toml"
    path.write_text(text)
    return path


def test_serve_exits_non_zero_with_one_line_naming_the_sink(tmp_path):
    config = write_config(tmp_path)
    argv = ["serve", "--config", str(config), "--workers", "2", "--port", str(free_port())]
    result = subprocess.run(
        [str(VENV_BIN / "eventrouter"), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    log = result.stdout + result.stderr
    lines = [line for line in log.splitlines() if LINE in line]
    assert lines, log
    assert "Traceback" not in log, log


def test_worker_exits_non_zero_with_one_line_naming_the_sink(tmp_path):
    config = write_config(tmp_path, queue=True)
    result = run_eventrouter("worker", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert f"eventrouter: {LINE}" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_config_check_connect_tries_each_sink(tmp_path):
    config = write_config(tmp_path)
    # Without --connect: no I/O, so the file is valid.
    assert run_eventrouter("config", "check", str(config)).returncode == 0
    result = run_eventrouter("config", "check", "--connect", str(config))
    assert result.returncode == 1, result.stderr
    assert "  connect: sink 'good' (type sqlite): started and stopped" in result.stdout
    assert f"  connect: {LINE}" in result.stdout
    assert (tmp_path / "good.db").exists()
