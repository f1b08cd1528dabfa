#!/usr/bin/env python3
"""The newcomer path, proven: eventrouter as a stranger installs and first runs it.

A fresh virtual environment outside the repository gets the runtime lock alone
(requirements/runtime.txt: no test extras to hide a missing dependency) and eventrouter's
wheel, built from the working tree and installed non-editable, so that templates, static
files and the snippet must really be inside the wheel. Then, from outside the repository:

1. every module of the installed distribution imports;
2. ``eventrouter serve`` starts on a free loopback port;
3. the README's ``/track`` curl body is posted and read back through ``/api/v1/events``;
4. ``/admin/login`` and ``/snippet/v1/latest/analytics.min.js`` are served;
5. ``eventrouter config check deploy/eventrouter.toml`` (with deploy/.env.example's
   values) and ``eventrouter worker --help`` succeed, and ``eventrouter new-plugin``
   writes a package (its templates are package data);
6. the server is stopped by its PID;
7. ``serve`` with a Parquet sink refuses to start, naming the ``parquet`` extra (the
   runtime lock has no pyarrow).

Standard library only: it runs under the interpreter that creates the venv. `make test`
runs it before the suite; `make smoke` runs it alone. Exit 1 names the failing step.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "smoke-admin-token-0123456789"  # at least 24 characters
START_TIMEOUT = 60.0


class SmokeFailure(Exception):
    pass


def step(title: str) -> None:
    print(f"smoke: {title}", flush=True)


def run(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600):
    result = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise SmokeFailure(
            f"`{shlex.join(cmd)}` exited {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    return result


def working_tree(target: Path) -> Path:
    """The files a clone with this working tree's changes would have: tracked and
    untracked-but-not-ignored ones (no build/, .venv or egg-info to leak into a wheel)."""
    listed = run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO
    ).stdout
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def readme_track_body() -> bytes:
    """The body of the README's first ``curl -X POST localhost:8000/track`` line: the
    smoke posts what a newcomer copies, so the README cannot drift from what works."""
    readme = (REPO / "README.md").read_text()
    match = re.search(r"^curl -X POST localhost:8000/track .*?-d '([^']*)'", readme, re.M)
    if match is None:
        raise SmokeFailure("README.md has no `curl -X POST localhost:8000/track ... -d '...'`")
    return match.group(1).encode()


def wait_healthy(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SmokeFailure(f"eventrouter serve exited {server.returncode}:\n{tail(log)}")
        try:
            status, _, _ = http("GET", f"{url}/health")
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise SmokeFailure(f"GET /health did not answer 200 within {START_TIMEOUT:g}s:\n{tail(log)}")


def tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def stop(server: subprocess.Popen) -> int:
    """SIGTERM to the PID we started, as an operator would; SIGKILL if it will not go."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=40)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
    return server.returncode


def smoke(scratch: Path) -> None:
    venv, home = scratch / "venv", scratch / "home"
    home.mkdir()
    python = venv / "bin" / "python"
    eventrouter = venv / "bin" / "eventrouter"
    locked = ["-m", "pip", "install", "--quiet", "--require-hashes", "-r"]

    step("build eventrouter's wheel from the working tree, in a venv of its own")
    # Apart from the runtime venv: build.txt's wheel needs packaging, which would hide
    # the very dependency whose absence broke `make run` (kombu's Redis transport).
    builder = scratch / "build"
    run([sys.executable, "-m", "venv", str(builder)], cwd=scratch)
    run(
        [str(builder / "bin" / "python"), *locked, str(REPO / "requirements" / "build.txt")],
        cwd=scratch,
    )
    source = working_tree(scratch / "src")
    dist = scratch / "dist"
    wheel = ["-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    run(
        [str(builder / "bin" / "python"), *wheel, "--wheel-dir", str(dist), str(source)],
        cwd=scratch,
    )
    wheels = list(dist.glob("eventrouter-*.whl"))
    if len(wheels) != 1:
        raise SmokeFailure(f"expected one eventrouter wheel, found {wheels}")
    shutil.rmtree(source)  # nothing of the tree is left to import from by accident

    step("a fresh venv with requirements/runtime.txt only; the wheel installed non-editable")
    run([sys.executable, "-m", "venv", str(venv)], cwd=scratch)
    run([str(python), *locked, str(REPO / "requirements" / "runtime.txt")], cwd=scratch)
    run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(wheels[0])], cwd=home)
    run([str(python), "-m", "pip", "check"], cwd=home)

    step("import every module of the installed distribution")
    run([str(python), "-c", IMPORT_ALL], cwd=home)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = scratch / "serve.log"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("EVENTROUTER_", "GUNICORN_", "PYTHON"))
    }
    env |= {
        "HOME": str(home),
        "EVENTROUTER_ADMIN_TOKEN": ADMIN_TOKEN,
        "EVENTROUTER_DATA_DIR": str(scratch / "data"),
    }
    step(f"eventrouter serve on {url}")
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(eventrouter), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=home,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_healthy(url, server, log)
        check_serving(url)
    finally:
        code = stop(server)
    step(f"server (pid {server.pid}) stopped: exit {code}")
    if code != 0:
        raise SmokeFailure(f"eventrouter serve exited {code} on SIGTERM:\n{tail(log)}")

    step("eventrouter config check deploy/eventrouter.toml; eventrouter worker --help")
    check_env = env | dotenv(REPO / "deploy" / ".env.example")
    out = run(
        [str(eventrouter), "config", "check", str(REPO / "deploy" / "eventrouter.toml")],
        cwd=home,
        env=check_env,
    ).stdout
    if ": OK" not in out:
        raise SmokeFailure(f"config check did not say OK:\n{out}")
    out = run([str(eventrouter), "worker", "--help"], cwd=home, env=env).stdout
    if "--sink" not in out:
        raise SmokeFailure(f"worker --help did not list its options:\n{out}")

    step("eventrouter new-plugin: its templates are in the wheel")
    run([str(eventrouter), "new-plugin", "smoke_sink", "--kind", "sink"], cwd=home, env=env)
    generated = home / "eventrouter-smoke-sink"
    for name in ("pyproject.toml", "README.md", "eventrouter_smoke_sink/__init__.py"):
        if not (generated / name).is_file():
            raise SmokeFailure(f"new-plugin wrote no {name} in {generated}")

    step("an s3 sink with format = 'parquet' and no pyarrow: serve refuses, naming the extra")
    parquet = home / "parquet.toml"
    parquet.write_text(
        '[sinks.archive]\ntype = "s3"\nbucket = "smoke-archive"\n'
        'endpoint_url = "http://127.0.0.1:9"\nformat = "parquet"\n'
    )
    options = ["--config", str(parquet), "--port", str(free_port()), "--workers", "1"]
    refused = subprocess.run(
        [str(eventrouter), "serve", *options],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    said = refused.stdout + refused.stderr
    if refused.returncode == 0 or "pip install 'eventrouter[parquet]'" not in said:
        raise SmokeFailure(
            f"serve with parquet and no pyarrow exited {refused.returncode}:\n{said}"
        )


def check_serving(url: str) -> None:
    body = readme_track_body()
    step(f"POST /track with the README's body: {body.decode()}")
    status, _, answer = http("POST", f"{url}/track", body, {"Content-Type": "application/json"})
    if (status, json.loads(answer or b"null")) != (200, {"success": True}):
        raise SmokeFailure(f"POST /track answered {status}: {answer!r}")
    sent = json.loads(body)

    step("GET /api/v1/events reads it back")
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    status, _, answer = http("GET", f"{url}/api/v1/events", headers=auth)
    if status != 200:
        raise SmokeFailure(f"GET /api/v1/events answered {status}: {answer!r}")
    events = json.loads(answer)["events"]
    wanted = {
        "event": sent["event_type"],
        "user_id": sent["user_id"],
        "session_id": sent["session_id"],
        "properties": sent["properties"],
    }
    if not any(all(e.get(k) == v for k, v in wanted.items()) for e in events):
        raise SmokeFailure(f"the posted event is not in /api/v1/events: {events}")

    step("GET /admin/login and the snippet's library")
    status, headers, page = http("GET", f"{url}/admin/login")
    if status != 200 or b"<form" not in page:
        raise SmokeFailure(f"GET /admin/login answered {status}: {page[:300]!r}")
    status, headers, script = http("GET", f"{url}/snippet/v1/latest/analytics.min.js")
    kind = headers.get("Content-Type", "")
    if status != 200 or "javascript" not in kind or len(script) < 1000:
        raise SmokeFailure(
            f"GET /snippet/v1/latest/analytics.min.js answered {status} {kind!r}, "
            f"{len(script)} bytes"
        )


def dotenv(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


#: Run by the smoke venv's python from outside the repository: the wheel installs one
#: top-level import name, ``eventrouter`` (no generic ``admin``, ``plugins``, ``sinks``
#: or ``snippet`` to collide with other distributions in site-packages), and each of its
#: modules imports from there.
IMPORT_ALL = """
import importlib, importlib.metadata as md, pkgutil, sys
dist = md.distribution("eventrouter")
tops = sorted({f.parts[0] for f in dist.files if f.suffix == ".py" and len(f.parts) > 1})
assert tops == ["eventrouter"], f"the wheel installs top-level packages {tops}"
top_level = (dist.read_text("top_level.txt") or "").split()
assert top_level == ["eventrouter"], f"top_level.txt names {top_level}"
for top in tops:
    module = importlib.import_module(top)
    assert "site-packages" in module.__file__, (top, module.__file__)
    for info in pkgutil.walk_packages(module.__path__, top + "."):
        importlib.import_module(info.name)
print("imported", ", ".join(tops))
"""


def main() -> int:
    scratch = Path(tempfile.mkdtemp(prefix="eventrouter-smoke-"))
    started = time.monotonic()
    try:
        smoke(scratch)
    except (SmokeFailure, subprocess.TimeoutExpired) as exc:
        print(f"smoke: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    step(f"passed in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
