"""A plugin author's first hour, kept green: ``eventrouter new-plugin`` in a fresh venv.

For each kind, in a virtual environment of its own that sees the project's installed
packages through a ``.pth`` file (``site.addsitedir``, so the project's editable
install of eventrouter is found too): nothing is downloaded, no index is asked. Then,
as a newcomer would: ``eventrouter new-plugin``, ``pip install --no-deps
--no-build-isolation -e`` of the result, its generated tests (pytest, the conformance
kit for a sink), ``eventrouter plugins``, and ``eventrouter serve`` on 127.0.0.1 with
the new plugin configured, events posted, and what arrived read back. Every command is
bounded in time; the server is stopped by its PID (its process group).
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers import HANG_GUARD, ServeProcess
from tests.queue_support import to_toml, unique

pytestmark = pytest.mark.slow

#: Bounds of the steps (seconds): a stuck step fails the test instead of hanging CI.
STEP_TIMEOUT = 300


def run(*argv: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT
    )
    assert result.returncode == 0, (
        f"{argv} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    )
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A fresh venv (python, environment) that sees this project's site-packages."""
    root = tmp_path_factory.mktemp("newcomer")
    path = root / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(path)], check=True, timeout=STEP_TIMEOUT)
    python = path / "bin" / "python"
    own = subprocess.run(
        [str(python), "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=STEP_TIMEOUT,
    ).stdout.strip()
    lines = [f"import site; site.addsitedir({directory!r})" for directory in site.getsitepackages()]
    Path(own, "project-venv.pth").write_text("\n".join(lines) + "\n")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))
    }
    env |= {
        "PIP_NO_INDEX": "1",  # offline: a missing package fails, never downloads
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "HOME": str(root),
        "EVENTROUTER_DATA_DIR": str(root / "data"),
    }
    return python, env


def new_plugin(venv, tmp_path, name: str, kind: str) -> tuple[Path, list[str]]:
    """``new-plugin``, installed editable into the venv; the package and how to run
    ``eventrouter`` there."""
    python, env = venv
    eventrouter = [str(python), "-m", "eventrouter.cli"]
    out = run(*eventrouter, "new-plugin", name, "--kind", kind, cwd=tmp_path, env=env).stdout
    package = tmp_path / f"eventrouter-{name.replace('_', '-')}"
    assert f"created {kind} plugin {name!r}" in out
    install = ["-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e"]
    run(str(python), *install, str(package), cwd=tmp_path, env=env)
    listed = json.loads(run(*eventrouter, "plugins", "--json", cwd=tmp_path, env=env).stdout)
    row = next(row for row in listed if row["name"] == name)
    assert row["distribution"] == package.name
    assert row["version"] == "0.1.0"
    return package, eventrouter


def generated_tests_pass(venv, package: Path) -> str:
    python, env = venv
    result = run(
        str(python), "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", cwd=package, env=env
    )
    assert " passed" in result.stdout and "failed" not in result.stdout, result.stdout
    return result.stdout


def test_a_new_sink_installs_passes_its_tests_and_stores_served_events(venv, tmp_path):
    package, eventrouter = new_plugin(venv, tmp_path, "newcomer_sink", "sink")
    out = generated_tests_pass(venv, package)
    assert "conformance of sink type 'newcomer_sink'" in out
    assert "FAIL" not in out

    directory = tmp_path / "events"
    config = tmp_path / "eventrouter.toml"
    config.write_text(
        to_toml({"sinks": {"archive": {"type": "newcomer_sink", "directory": str(directory)}}})
    )
    _, env = venv
    server = ServeProcess(
        tmp_path, "--config", str(config), env=env, clear_env={}, program=eventrouter
    )
    try:
        server.wait_ready(timeout=60)
        run_id = unique("first-hour")
        batch = [
            {"type": "track", "messageId": f"{run_id}-{n}", "userId": "u1", "event": "Signed Up"}
            for n in range(5)
        ] + [{"type": "identify", "messageId": "../../etc/passwd", "userId": "<b>u2</b>"}]
        response = httpx.post(f"{server.url}/v1/batch", json={"batch": batch}, timeout=HANG_GUARD)
        assert response.status_code == 200, response.text
    finally:
        assert server.stop() == 0, server.log()
    stored = [json.loads(path.read_bytes()) for path in directory.glob("*.json")]
    assert sorted(event["message_id"] for event in stored) == sorted(b["messageId"] for b in batch)
    assert {event["user_id"] for event in stored} == {"u1", "<b>u2</b>"}
    assert all(path.parent == directory for path in directory.iterdir())  # no path escaped


def test_a_new_stage_installs_passes_its_tests_and_drops_served_events(venv, tmp_path):
    package, eventrouter = new_plugin(venv, tmp_path, "newcomer_stage", "stage")
    generated_tests_pass(venv, package)

    path = tmp_path / "events.jsonl"
    config = tmp_path / "eventrouter.toml"
    raw = {
        "plugins": {"options": {"newcomer_stage": {"drop_events": ["Debug Ping"]}}},
        "sinks": {"archive": {"type": "file", "path": str(path)}},
    }
    config.write_text(to_toml(raw))
    _, env = venv
    server = ServeProcess(
        tmp_path, "--config", str(config), env=env, clear_env={}, program=eventrouter
    )
    try:
        server.wait_ready(timeout=60)
        batch = [
            {"type": "track", "userId": "u1", "event": "Signed Up"},
            {"type": "track", "userId": "u1", "event": "Debug Ping"},
            {"type": "track", "userId": "u1", "event": "Paid"},
        ]
        response = httpx.post(f"{server.url}/v1/batch", json={"batch": batch}, timeout=HANG_GUARD)
        assert response.status_code == 200, response.text
    finally:
        assert server.stop() == 0, server.log()
    events = [json.loads(line) for line in path.read_bytes().split(b"\n") if line]
    assert [event["event"] for event in events] == ["Signed Up", "Paid"]


def test_a_bad_stage_option_stops_serve_naming_the_plugin_and_key(venv, tmp_path):
    _, eventrouter = new_plugin(venv, tmp_path, "picky_stage", "stage")
    config = tmp_path / "eventrouter.toml"
    raw = {
        "plugins": {"options": {"picky_stage": {"drop_event": ["typo"]}}},
        "sinks": {"archive": {"type": "file", "path": str(tmp_path / "e.jsonl")}},
    }
    config.write_text(to_toml(raw))
    _, env = venv
    server = ServeProcess(
        tmp_path, "--config", str(config), env=env, clear_env={}, program=eventrouter
    )
    try:
        code = server.process.wait(timeout=STEP_TIMEOUT)
    finally:
        server.stop()
    assert code != 0
    assert "plugins.options.picky_stage.drop_event: unknown key" in server.log()
