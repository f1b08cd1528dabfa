"""Several ``eventrouter serve`` edges and ``eventrouter worker`` processes behind nginx,
on loopback: the topology of ``deploy/several-edges/`` run as shipped.

nginx runs ``deploy/several-edges/nginx.conf`` with only the lines an operator edits
replaced (the upstream's servers and ``listen``); every edge and worker reads
``deploy/several-edges/eventrouter.toml`` unchanged, its addresses given by environment
variables: the system RabbitMQ with a queue prefix of the test's own, Redis for dedup
with a key prefix of its own, and a PostgreSQL database of its own (dropped after).

Every process is started in a session of its own and stopped by its PID (the process
group it leads), by the fixture's finaliser, and by an ``atexit`` fallback should the
test process itself be interrupted.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from tests.cdn_support import Edge, make_prefix
from tests.faults.support import SETTLE_GUARD, Load
from tests.helpers import ADMIN_TOKEN, HANG_GUARD, CommandProcess, ServeProcess, free_port
from tests.queue_support import AMQP_URL, DEDUP_URL, QueueEnv
from tests.store_support import store_sink

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "several-edges"
BALANCER_CONF = DEPLOY / "nginx.conf"
EDGES_CONFIG = DEPLOY / "eventrouter.toml"
#: The lines of the shipped nginx config an operator edits, and so the tests substitute.
SHIPPED_EDGE = "server 127.0.0.1:8000 max_fails=2 fail_timeout=10s;"
SHIPPED_LISTEN = "listen 80;"
#: What nginx itself answers when no edge took a request: ``502`` (every edge refused or
#: reset it), ``504`` (every edge timed out). An edge's own refusal is ``503``.
RETRYABLE = {502, 503, 504}

# -- stopping what was started, whatever happens -----------------------------------------
_RUNNING: set[subprocess.Popen] = set()
_RUNNING_LOCK = threading.Lock()


def _track(process: subprocess.Popen) -> None:
    with _RUNNING_LOCK:
        _RUNNING.add(process)


@atexit.register
def _kill_leftovers() -> None:
    """The fallback: SIGKILL to the process group of whatever is still running."""
    with _RUNNING_LOCK:
        for process in list(_RUNNING):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        _RUNNING.clear()


# -- nginx -------------------------------------------------------------------------------
def balancer_config(edges: list[str], port: int) -> str:
    """The shipped balancer config with ``edges`` (``host:port``) as the upstream's servers
    and ``127.0.0.1:port`` as the listening address; nothing else changes."""
    text = BALANCER_CONF.read_text()
    for line in (SHIPPED_EDGE, SHIPPED_LISTEN):
        assert text.count(line) == 1, f"{BALANCER_CONF}: expected one {line!r}"
    servers = "\n        ".join(SHIPPED_EDGE.replace("127.0.0.1:8000", e) for e in edges)
    text = text.replace(SHIPPED_EDGE, servers)
    return text.replace(SHIPPED_LISTEN, f"listen 127.0.0.1:{port};")


class Balancer(Edge):
    """nginx in the foreground running the shipped balancer config (tests.cdn_support's
    :class:`Edge` with another file)."""

    def __init__(self, edges: list[str]) -> None:
        self.prefix = make_prefix()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = self.prefix / "eventrouter-balancer.conf"
        self.conf.write_text(balancer_config(edges, self.port))
        self.process = None

    def start(self) -> Balancer:
        super().start()
        _track(self.process)
        return self

    def requests(self) -> list[tuple[list[str], list[str], str]]:
        """Each request of the access log: the edges it was tried on in order, what each
        answered (nginx's ``502`` for a reset connection), and the client's status."""
        found = []
        for line in self.access_log().splitlines():
            match = _ACCESS.search(line)
            if match:
                status, addresses, statuses = match.groups()
                found.append((_listed(addresses), _listed(statuses), status))
        return found


_ACCESS = re.compile(r'" (\d{3}) upstream=(.*) upstream_status=(.*) rt=')


def _listed(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip() not in ("", "-")]


# -- the edges and the workers -------------------------------------------------------------
@dataclass
class Topology:
    """What one test runs: its namespaces, its edges, its workers, its balancer."""

    tmp_path: Path
    queue: QueueEnv
    sink: dict[str, Any]
    edges: list[ServeProcess] = field(default_factory=list)
    workers: list[CommandProcess] = field(default_factory=list)
    balancer: Balancer | None = None

    def env(self, name: str) -> dict[str, str]:
        """The environment of one process: the shipped config's variables, and a data
        directory (the spool's) of its own."""
        data = self.tmp_path / name
        data.mkdir(exist_ok=True)
        return {
            **os.environ,
            "EVENTROUTER_CONFIG": str(EDGES_CONFIG),
            "EVENTROUTER_DATA_DIR": str(data),
            "EVENTROUTER_ADMIN_TOKEN": ADMIN_TOKEN,
            "BALANCER_ADDRESS": "127.0.0.1",
            "RABBITMQ_URL": AMQP_URL,
            "QUEUE_PREFIX": self.queue.prefix,
            "DEDUP_REDIS_URL": DEDUP_URL,
            "DEDUP_PREFIX": self.queue.dedup_prefix,
            "POSTGRES_URL": self.sink["url"],
        }

    def start_worker(self) -> CommandProcess:
        name = f"worker{len(self.workers) + 1}"
        worker = CommandProcess(
            ["worker"], self.tmp_path, self.env(name), self.tmp_path / f"{name}.log"
        )
        _track(worker.process)
        self.workers.append(worker)
        return worker

    def start_edge(self) -> ServeProcess:
        name = f"edge{len(self.edges) + 1}"
        edge = ServeProcess(self.tmp_path, "--host", "127.0.0.1", env=self.env(name), workers=1)
        _track(edge.process)
        self.edges.append(edge)
        return edge

    def start(self, edges: int, workers: int, balancer: bool = True) -> Topology:
        for _ in range(workers):
            self.start_worker()
        for _ in range(edges):
            self.start_edge()
        for edge in self.edges:
            edge.wait_ready(timeout=HANG_GUARD)
        if balancer:
            self.balancer = Balancer([f"127.0.0.1:{e.port}" for e in self.edges]).start()
        return self

    def stop(self) -> None:
        if self.balancer is not None:
            self.balancer.stop()
        for process in [*self.edges, *self.workers]:
            if not process._log.closed:
                process.send(signal.SIGCONT)  # a test may have frozen it (SIGSTOP)
                process.stop()
        with _RUNNING_LOCK:
            _RUNNING.difference_update(p.process for p in [*self.edges, *self.workers])
            if self.balancer is not None:
                _RUNNING.discard(self.balancer.process)
        if self.balancer is not None:
            self.balancer.remove()

    def consumers(self) -> int:
        """Consumers of the sink's queue, as RabbitMQ counts them (0: not declared yet)."""
        with self.queue.connection() as connection:
            channel = connection.channel()
            try:
                declared = channel.queue_declare(self.queue.queue_name("events"), passive=True)
            except connection.channel_errors:
                return 0
            return declared.consumer_count

    def logs(self) -> str:
        parts = [f"--- {p.log_path.name}\n{p.log()[-3000:]}" for p in [*self.edges, *self.workers]]
        if self.balancer is not None:
            parts.append(self.balancer.log()[-3000:])
        return "\n".join(parts)


@contextlib.contextmanager
def topology(tmp_path: Path) -> Iterator[Topology]:
    """A test's namespaces (queue prefix, dedup prefix, PostgreSQL database), and the
    processes it starts in them, all gone afterwards."""
    queue = QueueEnv(AMQP_URL, tmp_path)
    queue.sinks = {"events"}
    with store_sink("postgres", tmp_path) as sink:
        running = Topology(tmp_path, queue, sink)
        try:
            yield running
        finally:
            running.stop()
            queue.cleanup()


# -- the load --------------------------------------------------------------------------------
class BalancedLoad(Load):
    """:class:`tests.faults.support.Load` through the balancer: a ``502``, ``503`` or
    ``504`` (nginx's own answers have no ``Retry-After``) is retried with the same body,
    as the Segment SDKs do; any other non-200 is a failure. Every answer is counted in
    ``statuses``."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        #: When each client thread's request in flight was sent (monotonic seconds).
        self.sending: dict[int, float] = {}

    def waiting(self, seconds: float) -> int:
        """Client threads whose request has been unanswered for ``seconds`` or more."""
        now = time.monotonic()
        with self._lock:
            return sum(1 for since in self.sending.values() if now - since >= seconds)

    def _send(self, http: httpx.Client, body: dict[str, Any]) -> bool:
        # Each event's own time, set once, so that a batch sent again is the very same
        # events. Without it the edge dates each copy by its own receivedAt, and two
        # copies written at once by two workers are both kept by PostgreSQL, whose key
        # holds the timestamp (docs/scaling.md, "Two copies in flight at once").
        stamp = datetime.now(UTC).isoformat()
        for item in body["batch"]:
            item.setdefault("timestamp", stamp)
        me = threading.get_ident()
        started = time.monotonic()
        while time.monotonic() - started < SETTLE_GUARD:
            with self._lock:
                self.sending[me] = time.monotonic()
            try:
                response = http.post("/v1/batch", json=body)
            except httpx.TransportError:
                with self._lock:
                    self.transport_errors += 1
                time.sleep(0.1)
                continue
            finally:
                with self._lock:
                    self.sending.pop(me, None)
            with self._lock:
                self.statuses[response.status_code] += 1
            if response.status_code == 200:
                self.slowest = max(self.slowest, time.monotonic() - started)
                return True
            if response.status_code not in RETRYABLE:
                self.failures.append(f"{response.status_code}: {response.text[:200]}")
                return False
            time.sleep(0.1)
        self.failures.append("a batch was never acknowledged")
        return False
