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


# The first worker to start fails at once; the others fail a second later, so their
# exits reach the arbiter while it is already halting for the first. gunicorn raised
# HaltServer again from inside that halt, and the operator got its traceback
# (router_core/server.py, HaltingArbiter).
STAGGERED = """
import os, time

from eventrouter.bus.hookspecs import hookimpl

MARK = os.path.join(os.path.dirname(__file__), "first-worker")


@hookimpl
def eventrouter_startup(bus):
    try:
        os.close(os.open(MARK, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        time.sleep(1.0)
    raise RuntimeError("staggered start-up failure")
"""


def test_serve_workers_failing_one_after_another_exit_without_a_traceback(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "staggered.py").write_text(STAGGERED)
    config = tmp_path / "eventrouter.toml"
    config.write_text(f'[sinks.good]\ntype = "sqlite"\nurl = "sqlite:///{tmp_path}/good.db"\n')
    argv = ["serve", "--config", str(config), "--plugins-dir", str(plugins)]
    result = subprocess.run(
        [str(VENV_BIN / "eventrouter"), *argv, "--workers", "3", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 3, log  # gunicorn's WORKER_BOOT_ERROR
    assert "staggered start-up failure" in log
    assert "Reason: Worker failed to boot." in log
    assert "Traceback" not in log, log
    # All three workers started, and the two late ones failed during the halt.
    assert log.count("Application startup failed") == 3, log


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
