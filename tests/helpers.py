"""Test helpers: real servers on free loopback ports, nothing mocked."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import uvicorn

from eventrouter import config as config_module
from eventrouter.app import create_app
from eventrouter.config import Config
from eventrouter.server import DrainingHttpProtocol

#: At least config.MIN_ADMIN_TOKEN_LENGTH (24) characters: a shorter one cannot start.
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
#: What the query API, the dashboard and /health's components take.
ADMIN_BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

#: The original ``/track`` payload, exactly as the README's curl sends it.
ORIGINAL_TRACK = {
    "event_type": "page_view",
    "properties": {"path": "/home"},
    "timestamp": "2025-05-28T09:47:35+05:30",
    "user_id": "u1",
    "session_id": "s1",
}


def recent(days: float = 2, **fields: int) -> datetime:
    """A moment ``days`` before now, in UTC, with the given fields replaced (``hour=10,
    microsecond=123456``). Stored test data is dated with it, never with a fixed date:
    a ClickHouse TTL, a PostgreSQL retention or a dashboard window measured from today
    would otherwise drop or hide the data once the calendar passes it."""
    return (datetime.now(UTC) - timedelta(days=days)).replace(**fields)


#: A hang guard, not a speed claim: a background effect that has not happened after
#: this long never will, and the test must fail instead of hanging CI.
HANG_GUARD = 60.0
VENV_BIN = Path(sys.executable).parent


def eventually(predicate: Callable[[], object], what: str, guard: float = HANG_GUARD) -> None:
    """Wait for a background effect (an observer called, a counter in /health); fail
    after ``guard`` seconds (a hang guard: give a slow background job a longer one)."""
    deadline = time.monotonic() + guard
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.02)


def health(url: str, **kwargs: Any) -> httpx.Response:
    """``GET {url}/health`` with the admin token: its components are shown to it only
    (``server.health_details``, docs/api.md)."""
    kwargs.setdefault("timeout", HANG_GUARD)
    return httpx.get(f"{url}/health", headers=ADMIN_BEARER, **kwargs)


def unique(prefix: str = "t") -> str:
    """A name no other test uses: a queue prefix, a database, a messageId."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_config(data_dir: Path, raw: dict[str, Any] | None = None, **env: str) -> Config:
    """A validated config whose default SQLite store lives in ``data_dir``."""
    raw = dict(raw or {})
    raw.setdefault("admin", {}).setdefault("token", ADMIN_TOKEN)
    return config_module.parse(raw, "test.toml", {"EVENTROUTER_DATA_DIR": str(data_dir), **env})


class LiveServer:
    """The app under a real uvicorn server in a thread, spoken to over HTTP, with the
    production protocol (``DrainingHttpProtocol`` on uvloop): ingestion requests take the
    fast path (eventrouter.edge.fastpath) as under ``eventrouter serve``."""

    def __init__(self, config: Config, plugins: Sequence[Any] = ()) -> None:
        self.config = config
        self.app = create_app(config, plugins=plugins)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host="127.0.0.1",
                port=self.port,
                loop="uvloop",
                http=DrainingHttpProtocol,
                log_level="warning",
                lifespan="on",
                proxy_headers=False,  # as in production: the app applies trusted_proxies
            )
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def start(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.client.close()
        self._server.should_exit = True
        self._thread.join(timeout=30)

    # -- conveniences ------------------------------------------------------------------
    def health(self) -> httpx.Response:
        """``GET /health`` with the admin token, which its components need."""
        return self.client.get("/health", headers=ADMIN_BEARER)

    def components(self) -> dict[str, Any]:
        """``/health``'s components, by name."""
        return self.health().json()["components"]

    def post(self, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        if body is not None:
            kwargs["json"] = body
        return self.client.post(path, **kwargs)

    def events(self, **params: Any) -> list[dict[str, Any]]:
        """Every stored event matching ``params``, newest first, following cursors."""
        found: list[dict[str, Any]] = []
        cursor = None
        while True:
            query = {**params, "limit": 1000, **({"cursor": cursor} if cursor else {})}
            response = self.client.get("/api/v1/events", params=query, headers=ADMIN_BEARER)
            assert response.status_code == 200, response.text
            page = response.json()
            found.extend(page["events"])
            cursor = page["next_cursor"]
            if not cursor:
                return found


def run_eventrouter(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run one ``eventrouter`` command to completion (output captured as text)."""
    return subprocess.run(
        [str(VENV_BIN / "eventrouter"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=HANG_GUARD,
    )


class CommandProcess:
    """An ``eventrouter`` command in its own subprocess and session, logging to a file;
    stopped by signalling its process group (only what the test started)."""

    def __init__(
        self,
        argv: list[str],
        cwd: Path,
        env: dict[str, str],
        log_path: Path,
        umask: int | None = None,
        program: Sequence[str] | None = None,
    ) -> None:
        """:param program: what runs ``eventrouter`` (default: this venv's script; a
        test of another venv passes ``[python, "-m", "eventrouter.cli"]``)."""
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [*(program or [str(VENV_BIN / "eventrouter")]), *argv],
            cwd=cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # the file-mode tests run a command under a given umask
            preexec_fn=None if umask is None else lambda: os.umask(umask),
        )

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def send(self, sig: int) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = HANG_GUARD) -> int:
        self.send(sig)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            code = self.process.wait()
        self._log.close()
        return code


class ServeProcess(CommandProcess):
    """A real ``eventrouter serve`` (gunicorn + uvicorn workers) in a subprocess."""

    def __init__(
        self,
        cwd: Path,
        *args: str,
        env: dict[str, str] | None = None,
        workers: int = 1,
        port: int | None = None,
        clear_env: dict[str, str] | None = None,
        umask: int | None = None,
        program: Sequence[str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        base = os.environ if clear_env is None else clear_env
        full_env = {**base, **(env or {})}
        if clear_env is None:
            full_env.setdefault("EVENTROUTER_ADMIN_TOKEN", ADMIN_TOKEN)
        argv = ["serve", "--port", str(self.port), "--workers", str(workers), *args]
        log = cwd / f"serve-{self.port}.log"
        super().__init__(argv, cwd, full_env, log, umask=umask, program=program)

    def wait_ready(self, timeout: float = 30) -> ServeProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"eventrouter serve exited:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"eventrouter serve did not become healthy:\n{self.log()}")


BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"


def load_bench_script(name: str) -> ModuleType:
    """``bench/NAME.py`` as a module, for tests of its pure parts. A bench script puts
    bench/ on sys.path for its siblings; that is undone."""
    path = list(sys.path)
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
    return module
