"""Shared pieces of the CDN suites: Debian's nginx running the shipped edge config, and a
static website on loopback.

The edge runs ``deploy/nginx/eventrouter-edge.conf`` itself: the test's copy differs only
in the lines an operator edits (the upstream servers and ``listen``), and nginx runs in
the foreground with its own prefix, stopped by its PID.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.helpers import HANG_GUARD, free_port

ROOT = Path(__file__).resolve().parent.parent
EDGE_CONF = ROOT / "deploy" / "nginx" / "eventrouter-edge.conf"
PURGE = ROOT / "deploy" / "nginx" / "eventrouter-edge-purge"
#: The lines of the shipped config that an operator edits, and so the tests substitute.
SHIPPED_ORIGIN = "server 127.0.0.1:8000 max_fails=3 fail_timeout=10s;"
SHIPPED_LISTEN = "listen 80;"


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )
    if not found:
        pytest.fail("nginx is not installed: run .ci/services (apt-get install -y nginx)")
    return found


def make_prefix() -> Path:
    """A fresh nginx prefix. Not under pytest's tmp_path: nginx's workers run as
    ``nobody`` when the tests run as root, and must reach their cache directory."""
    prefix = Path(tempfile.mkdtemp(prefix="eventrouter-edge-"))
    prefix.chmod(0o755)
    (prefix / "logs").mkdir()
    return prefix


def edge_config(origins: Sequence[str], port: int) -> str:
    """The shipped config with ``origins`` (``host:port``) as the upstream servers and
    ``127.0.0.1:port`` as the listening address; nothing else changes."""
    text = EDGE_CONF.read_text()
    for line in (SHIPPED_ORIGIN, SHIPPED_LISTEN):
        assert text.count(line) == 1, f"{EDGE_CONF}: expected one {line!r}"
    servers = "\n        ".join(SHIPPED_ORIGIN.replace("127.0.0.1:8000", o) for o in origins)
    text = text.replace(SHIPPED_ORIGIN, servers)
    return text.replace(SHIPPED_LISTEN, f"listen 127.0.0.1:{port};")


def nginx_test(conf: Path, prefix: Path) -> subprocess.CompletedProcess:
    """``nginx -t`` of ``conf`` with ``prefix``; ``-e stderr`` keeps nginx away from the
    distribution's log directory before it has read the file."""
    return subprocess.run(
        [nginx_binary(), "-t", "-e", "stderr", "-p", f"{prefix}/", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )


class Edge:
    """nginx in the foreground (``daemon off``) on a free loopback port."""

    def __init__(self, origins: Sequence[str]) -> None:
        self.prefix = make_prefix()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = self.prefix / "eventrouter-edge.conf"
        self.conf.write_text(edge_config(origins, self.port))
        self.process: subprocess.Popen | None = None

    @property
    def pinned(self) -> Path:
        """Where the config looks for versions pinned on the edge's disk."""
        return self.prefix / "pinned"

    def start(self) -> Edge:
        checked = nginx_test(self.conf, self.prefix)
        assert checked.returncode == 0, checked.stderr
        stderr = open(self.prefix / "logs" / "stderr.log", "wb")  # noqa: SIM115
        with stderr:
            self.process = subprocess.Popen(
                [
                    nginx_binary(),
                    "-e",
                    "stderr",
                    "-p",
                    f"{self.prefix}/",
                    "-c",
                    str(self.conf),
                    "-g",
                    "daemon off;",
                ],
                stdout=stderr,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while not _accepts(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nginx did not start:\n{self.log()}")
            time.sleep(0.02)
        return self

    def log(self) -> str:
        logs = self.prefix / "logs"
        return "\n".join(
            f"--- {name}\n{(logs / name).read_text(errors='replace')}"
            for name in ("stderr.log", "error.log")
            if (logs / name).exists()
        )

    def access_log(self) -> str:
        path = self.prefix / "logs" / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # nginx's fast shutdown
            try:
                self.process.wait(timeout=HANG_GUARD / 2)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # its own session
                self.process.wait()

    def remove(self) -> None:
        shutil.rmtree(self.prefix, ignore_errors=True)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:
        pass


class StaticSite:
    """A directory served over HTTP on a free loopback port (a website)."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> StaticSite:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
