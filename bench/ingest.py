"""Ingestion benchmark: eventrouter's embedded server against a bare Falcon endpoint.

Starts each server on 127.0.0.1 in turn, all on gunicorn with the same uvicorn worker
class (``eventrouter.server.UvloopWorker``) and worker count, drives them with wrk, counts
the rows eventrouter actually stored in SQLite, and prints a markdown report (also written
to ``bench/results/latest.md``). With ``--queue`` it also measures queue mode (the edge
publishing to RabbitMQ with confirms: the events the broker holds are counted) and how
fast ``eventrouter worker`` drains that queue into SQLite. See bench/README.md for what
the numbers mean. :func:`run` measures and returns every :class:`TargetRun` with the
report (bench/all.py uses it).

    .venv/bin/python bench/ingest.py [--duration S] [--connections N] [--workers N]
                                     [--warmup S] [--wrk-threads 2] [--only single|batch]
                                     [--no-fsync]
                                     [--queue] [--targets T,...] [--broker URL]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from contextlib import closing, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any

import queue_mode
from queue_mode import BenchQueue, Drain, Held

from eventrouter.server import WORKER_CLASS

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
POST_SCRIPT = BENCH_DIR / "post.lua"
WORKER_LOG = RESULTS_DIR / "eventrouter-queue-worker.log"
#: The venv's bin directory (not resolved: the interpreter is a symlink out of the venv).
VENV_BIN = Path(sys.executable).parent

HOST = "127.0.0.1"
WRK_THREADS = 2
BATCH_SIZE = 100
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 40.0  # gunicorn's graceful_timeout is 30 s

#: The targets, for embedded mode on a 2-core machine (bench/README.md).
SINGLE_RATIO_TARGET = 0.45
SINGLE_P99_TARGET_MS = 20.0
BATCH_EVENTS_TARGET = 50_000
#: The targets for queue mode (issue 3): single events/s durably enqueued against the bare
#: endpoint's req/s, batched events/s, and the worker's drain against single ingest.
QUEUE_SINGLE_RATIO_TARGET = 0.60
QUEUE_SINGLE_P99_TARGET_MS = 20.0
QUEUE_BATCH_EVENTS_TARGET = 100_000

TARGETS = ("bare", "eventrouter", "eventrouter-fsync", "eventrouter-queue")
DEFAULT_TARGETS = ("bare", "eventrouter", "eventrouter-fsync")
DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"

#: gunicorn's "[ERROR]" and eventrouter's own "ERROR eventrouter.x:" log lines, tracebacks.
_LOG_PROBLEM = re.compile(
    r"\[(ERROR|CRITICAL)\]| (ERROR|CRITICAL) [\w.]+: |Traceback|WORKER TIMEOUT|Exception in ASGI"
)
#: The worker's retries and reconnections: each one slows the drain being timed.
_WORKER_WARNING = re.compile(r" WARNING eventrouter\.worker: ")


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the report."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


# -- payloads ------------------------------------------------------------------------------
_PRODUCTS = [
    ("sku-48213", "Trail Runner 3", "Shoes", 89.95),
    ("sku-10577", "Merino Crew Socks", "Socks", 14.5),
    ("sku-73302", "Packable Rain Shell", "Jackets", 129.0),
    ("sku-22946", "Insulated Bottle 750 ml", "Accessories", 29.99),
]
_USER_AGENT = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
)


def track_event(index: int, now: datetime) -> dict[str, Any]:
    """A track call as @segment/analytics-next sends it from a shop page, without a
    ``messageId`` so that the server generates one and every request stores new rows."""
    sku, name, category, price = _PRODUCTS[index % len(_PRODUCTS)]
    sent_at = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "type": "track",
        "event": "Product Viewed",
        "userId": f"user-{100_000 + index * 7919 % 900_000}",
        "anonymousId": f"5b3f2c1e-8d4a-4f6b-9c2e-{index:012d}",
        "properties": {
            "product_id": sku,
            "name": name,
            "category": category,
            "price": price,
            "currency": "EUR",
            "position": index % 24 + 1,
        },
        "context": {
            "library": {"name": "analytics.js", "version": "npm:next-1.70.0"},
            "page": {
                "path": f"/products/{sku}",
                "referrer": "https://www.google.com/",
                "search": "?utm_source=newsletter",
                "title": f"{name} | Example Shop",
                "url": f"https://shop.example.com/products/{sku}?utm_source=newsletter",
            },
            "userAgent": _USER_AGENT,
            "locale": "en-US",
        },
        "integrations": {},
        "timestamp": sent_at,
        "sentAt": sent_at,
    }


@dataclass(frozen=True)
class Scenario:
    """One kind of request: where it goes, its body and how many events it carries."""

    name: str
    path: str
    body: bytes
    events_per_request: int


def make_scenarios(now: datetime) -> list[Scenario]:
    """``single``: one track event per request; ``batch``: 100 per ``/v1/batch`` request."""
    single = json.dumps(track_event(0, now), separators=(",", ":")).encode()
    batch = {"batch": [track_event(i, now) for i in range(BATCH_SIZE)]}
    return [
        Scenario("single", "/v1/track", single, 1),
        Scenario("batch", "/v1/batch", json.dumps(batch, separators=(",", ":")).encode(), 100),
    ]


# -- servers -------------------------------------------------------------------------------
def free_port() -> int:
    """A port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def gunicorn_supports(flag: str) -> bool:
    """Whether the installed gunicorn has a command-line flag (they vary by version)."""
    result = subprocess.run(
        [str(VENV_BIN / "gunicorn"), "--help"], capture_output=True, text=True, check=True
    )
    return flag in result.stdout


@dataclass(frozen=True)
class QueueTarget:
    """Queue mode: the run's topology on the broker, the config file that the edge and
    the worker both read, and the SQLite store that only the worker writes."""

    broker: BenchQueue
    config: Path
    store: Path


class Server:
    """A server process in its own session, so that it and its gunicorn workers form one
    process group that is stopped, and measured, as a whole and never touches others."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        port: int,
        cwd: Path,
        env: dict[str, str],
        ready: urllib.request.Request,
        log_path: Path,
        db_path: Path | None = None,
        queue: QueueTarget | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.base_url = f"http://{HOST}:{port}"
        self.cwd = cwd
        self.env = env
        self.ready = ready
        self.log_path = log_path
        #: The SQLite store whose rows are counted; None for a target that stores nothing.
        self.db_path = db_path
        #: Queue mode: the broker holds what the edge acknowledged; None otherwise.
        self.queue = queue
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        log(f"starting {self.name}: {' '.join(self.argv)}")
        self._process = queue_mode.start_process(
            self.argv, cwd=self.cwd, env=self.env, log_path=self.log_path
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self._process is not None, "server not started"
        return self._process.pid

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.ready, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:  # refused while binding, or 503 while a component starts
                pass
            time.sleep(0.2)
        raise RuntimeError(
            f"{self.name} not ready after {STARTUP_TIMEOUT:.0f} s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM to our own process group (gunicorn stops gracefully); SIGKILL if it hangs."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with suppress(ProcessLookupError):  # the group exited meanwhile
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log(f"{self.name} did not stop within {STOP_TIMEOUT:.0f} s; killing it")
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def cpu_by_process(self) -> dict[int, float]:
        """CPU seconds so far of each live process in the group (arbiter and workers),
        including the children each has reaped (a worker gunicorn replaced)."""
        return queue_mode.cpu_seconds_where(lambda _, __, fields: int(fields[2]) == self.pid)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_problems(self) -> list[str]:
        return log_problems(self.log_path)


def log_problems(path: Path, *also: re.Pattern[str]) -> list[str]:
    """Lines of a log that report errors, worker timeouts or tracebacks (or match one of
    the ``also`` patterns)."""
    patterns = (_LOG_PROBLEM, *also)
    text = path.read_text(errors="replace")
    return [line for line in text.splitlines() if any(p.search(line) for p in patterns)]


def eventrouter_server(workdir: Path, workers: int, *, fsync: bool = False) -> Server:
    """``eventrouter serve`` in embedded mode: no config file, a fresh data directory.

    With ``fsync`` the same store runs with ``synchronous = "full"`` (every commit
    fsynced before its 200) instead of the default ``"normal"``, named
    ``eventrouter-fsync`` in the table.
    """
    port = free_port()
    name = "eventrouter-fsync" if fsync else "eventrouter"
    data_dir = workdir / f"{name}-data"
    env = dict(os.environ)
    env.pop("EVENTROUTER_CONFIG", None)
    env.pop("EVENTROUTER_PORT", None)
    env["EVENTROUTER_DATA_DIR"] = str(data_dir)
    env["EVENTROUTER_ADMIN_TOKEN"] = secrets.token_urlsafe(24)
    argv = [str(VENV_BIN / "eventrouter"), "serve", "--host", HOST, "--port", str(port)]
    argv += ["--workers", str(workers)]
    if fsync:
        config = workdir / "fsync.toml"
        config.write_text(
            '[sinks.local]\ntype = "sqlite"\nurl = "sqlite:///${EVENTROUTER_DATA_DIR}/events.db"\n'
            'synchronous = "full"\n'
        )
        argv += ["--config", str(config)]
    return Server(
        name,
        argv,
        port=port,
        cwd=workdir,
        env=env,
        ready=urllib.request.Request(f"http://{HOST}:{port}/health"),
        log_path=RESULTS_DIR / f"{name}.log",
        db_path=data_dir / "events.db",
    )


def eventrouter_queue_server(workdir: Path, workers: int, broker_url: str) -> Server:
    """``eventrouter serve --config F`` in queue mode, named ``eventrouter-queue``: every
    accepted event is published to RabbitMQ (``200`` after the broker's confirm) under a
    prefix unique to this run; ``eventrouter worker --config F`` later drains it into
    SQLite (:func:`queue_mode.drain`)."""
    port = free_port()
    name = "eventrouter-queue"
    data_dir = workdir / f"{name}-data"
    data_dir.mkdir()
    prefix = f"bench-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(3)}"
    config = workdir / "queue.toml"
    store = data_dir / "events.db"
    queue_mode.write_config(config, url=broker_url, prefix=prefix, db_path=store)
    env = dict(os.environ)
    env.pop("EVENTROUTER_CONFIG", None)
    env.pop("EVENTROUTER_PORT", None)
    env["EVENTROUTER_DATA_DIR"] = str(data_dir)
    env["EVENTROUTER_ADMIN_TOKEN"] = secrets.token_urlsafe(24)
    argv = [str(VENV_BIN / "eventrouter"), "serve", "--config", str(config)]
    argv += ["--host", HOST, "--port", str(port), "--workers", str(workers)]
    return Server(
        name,
        argv,
        port=port,
        cwd=workdir,
        env=env,
        # 200 once the broker is reachable: /health declares the topology (idempotent).
        ready=urllib.request.Request(f"http://{HOST}:{port}/health"),
        log_path=RESULTS_DIR / f"{name}.log",
        queue=QueueTarget(BenchQueue(broker_url, prefix), config, store),
    )


def bare_server(workdir: Path, workers: int, probe_body: bytes) -> Server:
    """bench/bare_app.py on gunicorn with eventrouter's worker class and socket settings."""
    port = free_port()
    argv = [
        str(VENV_BIN / "gunicorn"),
        *("-k", WORKER_CLASS, "-w", str(workers), "-b", f"{HOST}:{port}"),
        # As in eventrouter.server.gunicorn_options.
        *("--keep-alive", "5", "--backlog", "2048"),
        *(["--no-control-socket"] if gunicorn_supports("--no-control-socket") else []),
        *("--pythonpath", str(BENCH_DIR), "bare_app:app"),
    ]
    probe = urllib.request.Request(
        f"http://{HOST}:{port}/v1/track",
        data=probe_body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    return Server(
        "bare",
        argv,
        port=port,
        cwd=workdir,
        env=dict(os.environ),
        ready=probe,
        log_path=RESULTS_DIR / "bare.log",
    )


# -- measuring -----------------------------------------------------------------------------
@dataclass(frozen=True)
class WrkResult:
    """What post.lua's done() reports; times in microseconds."""

    duration_us: int
    requests: int
    bytes: int
    connect: int
    read: int
    write: int
    timeout: int
    status: int  # responses with a status >= 400
    p50_us: int
    p99_us: int
    max_us: int

    @property
    def seconds(self) -> float:
        return self.duration_us / 1e6

    @property
    def socket_errors(self) -> int:
        return self.connect + self.read + self.write + self.timeout


def run_wrk(
    url: str, body_file: Path, seconds: float, connections: int, threads: int = WRK_THREADS
) -> tuple[WrkResult, str]:
    """One wrk run with ``threads`` threads (at most one per connection); returns the
    parsed numbers and wrk's full output."""
    threads = min(threads, connections)
    argv = [
        shutil.which("wrk") or "wrk",
        *(f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency"),
        *("-s", str(POST_SCRIPT), url, "--", str(body_file)),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return parse_wrk(done.stdout + done.stderr), done.stdout


def parse_wrk(output: str) -> WrkResult:
    """The numbers of the ``WRK_RESULT`` line that bench/post.lua prints."""
    match = re.search(r"^WRK_RESULT (\{.*\})$", output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no WRK_RESULT line in wrk's output:\n{output}")
    return WrkResult(**json.loads(match.group(1)))


def children_cpu_seconds() -> float:
    """User + system CPU time of every child this process has waited for (wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def idle_cpu_seconds() -> float:
    """Machine-wide idle and I/O-wait time so far, summed over all CPUs (/proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(server: Server) -> tuple[dict[int, float], float, dict[int, float], float]:
    """CPU seconds so far: per server process, of finished wrk runs, per process of the
    RabbitMQ node (empty if it does not run here), idle machine-wide."""
    return (
        server.cpu_by_process(),
        children_cpu_seconds(),
        queue_mode.broker_cpu_seconds(),
        idle_cpu_seconds(),
    )


def count_rows(db_path: Path) -> int:
    with closing(sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True, timeout=30)) as db:
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])


def settled_rows(db_path: Path, timeout: float = 10.0) -> int:
    """The row count once requests still in flight when wrk stopped have been committed."""
    deadline = time.monotonic() + timeout
    previous = count_rows(db_path)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        current = count_rows(db_path)
        if current == previous:
            break
        previous = current
    return previous


@dataclass(frozen=True)
class QueueCheck:
    """Queue mode: what the broker holds after one measured run (the warm-up's messages
    were purged before it)."""

    held: Held
    dead_lettered: int  # messages in the sink's dead-letter queue
    #: Mean publish + confirm time of whichever edge worker answered /health, since its
    #: start (warm-ups included); None if /health did not answer.
    publish_ms_mean: float | None


@dataclass(frozen=True)
class Measurement:
    """One scenario against one target."""

    scenario: Scenario
    target: str
    wrk: WrkResult
    #: Events made durable during the run: rows added to the SQLite store (embedded), or
    #: events the broker holds (queue mode); None for the bare app.
    stored: int | None
    server_cpu: float  # CPU seconds of the server's processes during the run
    wrk_cpu: float
    broker_cpu: float | None  # CPU seconds of the RabbitMQ node (whoever used it)
    idle_cpu: float  # CPU seconds nobody used (idle + I/O wait) during the run
    restarted_workers: int  # server processes that went away during the run
    queue: QueueCheck | None = None

    @property
    def requests_per_s(self) -> float:
        return self.wrk.requests / self.wrk.seconds

    @property
    def stored_per_s(self) -> float | None:
        return None if self.stored is None else self.stored / self.wrk.seconds

    @property
    def acknowledged_events(self) -> int:
        return (self.wrk.requests - self.wrk.status) * self.scenario.events_per_request

    @property
    def durable_per_s(self) -> float | None:
        """Events/s both acknowledged and found durable (stored or held by the broker)."""
        if self.stored is None:
            return None
        return min(self.stored, self.acknowledged_events) / self.wrk.seconds


def health_request(server: Server) -> urllib.request.Request:
    """``GET /health`` with the server's admin token: its components are shown to the
    token only (``server.health_details``)."""
    token = server.env["EVENTROUTER_ADMIN_TOKEN"]
    return urllib.request.Request(
        server.base_url + "/health", headers={"Authorization": f"Bearer {token}"}
    )


def broker_stats(server: Server) -> dict[str, Any]:
    """The ``broker`` component's stats from the edge's ``GET /health`` ({} if it fails)."""
    try:
        with urllib.request.urlopen(health_request(server), timeout=10) as response:
            return json.load(response)["components"]["broker"]["stats"]
    except (OSError, ValueError, KeyError):
        return {}


def queue_check(server: Server) -> QueueCheck:
    """Wait for publishes in flight to be confirmed, then count what the broker holds."""
    assert server.queue is not None
    broker = server.queue.broker
    broker.settled_depth()
    started = time.monotonic()
    held = broker.held()
    log(f"{server.name}: read {held.messages:,} messages in {time.monotonic() - started:.1f} s")
    return QueueCheck(
        held=held,
        dead_lettered=broker.depth(broker.dead_queue),
        publish_ms_mean=broker_stats(server).get("publish_ms_mean"),
    )


def measure(
    server: Server,
    scenario: Scenario,
    body_file: Path,
    args: argparse.Namespace,
) -> tuple[Measurement, str]:
    """Warm up (discarded), then one measured wrk run with rows and CPU counted around it."""
    url = server.base_url + scenario.path
    log(f"{server.name} {scenario.name}: warm-up {args.warmup:g} s")
    run_wrk(url, body_file, args.warmup, args.connections, args.wrk_threads)
    before = settled_rows(server.db_path) if server.db_path else None
    if server.queue is not None:
        server.queue.broker.settled_depth()
        purged = server.queue.broker.purge()
        log(f"{server.name} {scenario.name}: purged the warm-up's {purged:,} messages")
    log(f"{server.name} {scenario.name}: {args.duration:g} s at {args.connections} connections")
    cpu_before, wrk_cpu_before, broker_before, idle_before = cpu_snapshot(server)
    result, output = run_wrk(url, body_file, args.duration, args.connections, args.wrk_threads)
    cpu_after, wrk_cpu_after, broker_after, idle_after = cpu_snapshot(server)
    after = settled_rows(server.db_path) if server.db_path else None
    check = queue_check(server) if server.queue is not None else None
    if check is not None:
        log(
            f"{server.name} {scenario.name}: the broker holds {check.held.events:,} events "
            f"in {check.held.messages:,} messages"
        )
        stored: int | None = check.held.events
    else:
        stored = None if before is None or after is None else after - before
    server_cpu = sum(cpu_after.values()) - sum(
        cpu for pid, cpu in cpu_before.items() if pid in cpu_after
    )
    measurement = Measurement(
        scenario=scenario,
        target=server.name,
        wrk=result,
        stored=stored,
        server_cpu=server_cpu,
        wrk_cpu=wrk_cpu_after - wrk_cpu_before,
        broker_cpu=queue_mode.cpu_used(broker_before, broker_after),
        idle_cpu=idle_after - idle_before,
        restarted_workers=len(cpu_before.keys() - cpu_after.keys()),
        queue=check,
    )
    return measurement, output


@dataclass(frozen=True)
class TargetRun:
    """Every scenario against one server, and what its log and store hold afterwards."""

    target: str
    measurements: list[Measurement]
    log_problems: list[str]
    store_rows: int | None = None
    store_bytes: int | None = None  # database + WAL + shared-memory files
    drain: Drain | None = None  # queue mode, after the single scenario
    worker_log_problems: list[str] = field(default_factory=list)


def drain_queue(server: Server, single: Measurement) -> Drain:
    """Queue mode: ``eventrouter worker`` empties what the single run left in the queue
    into SQLite, timed by polling the store's row count."""
    assert server.queue is not None and single.queue is not None
    result = queue_mode.drain(
        [str(VENV_BIN / "eventrouter"), "worker", "--config", str(server.queue.config)],
        cwd=server.cwd,
        env=server.env,
        log_path=WORKER_LOG,
        db_path=server.queue.store,
        queue=server.queue.broker,
        events=single.queue.held.events,
        progress=log,
    )
    log(
        f"worker drained {result.rows:,} of {result.events:,} events in {result.done_s:.1f} s "
        f"({result.steady_per_s:,.0f} events/s after its first rows)"
    )
    return result


def run_target(
    server: Server, scenarios: Sequence[Scenario], bodies: dict[str, Path], args: argparse.Namespace
) -> TargetRun:
    """Runs every scenario against one server, saving wrk's output per scenario. In queue
    mode the worker drains the single run's events, the queue is purged after each
    scenario, and the run's queues and exchanges are deleted once the edge has stopped
    (its /health would declare them again)."""
    measurements = []
    drain = None
    try:
        with server:
            for scenario in scenarios:
                measurement, output = measure(server, scenario, bodies[scenario.name], args)
                (RESULTS_DIR / f"wrk-{server.name}-{scenario.name}.txt").write_text(output)
                measurements.append(measurement)
                if server.queue is not None:
                    if scenario.name == "single":
                        drain = drain_queue(server, measurement)
                    server.queue.broker.purge()
            if server.db_path is None:
                return TargetRun(
                    server.name,
                    measurements,
                    server.log_problems(),
                    drain=drain,
                    worker_log_problems=log_problems(WORKER_LOG, _WORKER_WARNING) if drain else [],
                )
            rows = count_rows(server.db_path)
            files = server.db_path.parent.glob(f"{server.db_path.name}*")
            size = sum(path.stat().st_size for path in files if not path.name.endswith(".lock"))
        return TargetRun(server.name, measurements, server.log_problems(), rows, size)
    finally:
        if server.queue is not None:
            prefix = server.queue.broker.prefix
            try:
                server.queue.broker.delete()
            except Exception as exc:  # do not hide the error that brought us here
                log(f"could not delete the queues and exchanges {prefix}.*: {exc}")
            else:
                log(f"deleted the queues and exchanges {prefix}.*")


# -- report --------------------------------------------------------------------------------
def _number(value: float) -> str:
    return f"{value:,.0f}"


def _ms(microseconds: int) -> str:
    return f"{microseconds / 1000:.2f}"


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _percent_of_run(seconds: float | None, m: Measurement) -> str:
    return "—" if seconds is None else f"{seconds / m.wrk.seconds:.0%}"


def table(measurements: Sequence[Measurement]) -> list[str]:
    rows = [
        "| scenario | target | req/s | events/s durable | p50 ms | p99 ms | max ms | non-2xx "
        "| socket errors | CPU server / broker / wrk / idle |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in measurements:
        stored = "—" if m.stored_per_s is None else _number(m.stored_per_s)
        cpu = " / ".join(
            _percent_of_run(seconds, m)
            for seconds in (m.server_cpu, m.broker_cpu, m.wrk_cpu, m.idle_cpu)
        )
        rows.append(
            f"| {m.scenario.name} | {m.target} | {_number(m.requests_per_s)} | {stored} "
            f"| {_ms(m.wrk.p50_us)} | {_ms(m.wrk.p99_us)} | {_ms(m.wrk.max_us)} "
            f"| {m.wrk.status} | {m.wrk.socket_errors} | {cpu} |"
        )
    return rows


def verdicts(measurements: Sequence[Measurement]) -> list[str]:
    """The target lines, for the scenarios that ran against both targets."""
    by_key = {(m.scenario.name, m.target): m for m in measurements}
    lines = []
    bare, ours = by_key.get(("single", "bare")), by_key.get(("single", "eventrouter"))
    if bare and ours:
        ratio = ours.requests_per_s / bare.requests_per_s
        p99_ms = ours.wrk.p99_us / 1000
        lines.append(
            f"- single events: eventrouter req/s = {ratio:.0%} of bare "
            f"(target >= {SINGLE_RATIO_TARGET:.0%}: {_met(ratio >= SINGLE_RATIO_TARGET)}), "
            f"p99 = {p99_ms:.1f} ms "
            f"(target <= {SINGLE_P99_TARGET_MS:g} ms: {_met(p99_ms <= SINGLE_P99_TARGET_MS)})"
        )
    batch = by_key.get(("batch", "eventrouter"))
    if batch and batch.stored_per_s is not None:
        lines.append(
            f"- batch: {_number(batch.stored_per_s)} events/s stored "
            f"(target >= {_number(BATCH_EVENTS_TARGET)}: "
            f"{_met(batch.stored_per_s >= BATCH_EVENTS_TARGET)})"
        )
    # The targets are for the default; the fsync row shows what power-loss durability costs.
    fsync_single = by_key.get(("single", "eventrouter-fsync"))
    if bare and fsync_single:
        lines.append(
            f'- with synchronous = "full" (no target): single events '
            f"{fsync_single.requests_per_s / bare.requests_per_s:.0%} of bare, "
            f"p99 {fsync_single.wrk.p99_us / 1000:.1f} ms"
        )
    fsync_batch = by_key.get(("batch", "eventrouter-fsync"))
    if fsync_batch and fsync_batch.stored_per_s is not None:
        lines.append(
            f'- with synchronous = "full" (no target): batch '
            f"{_number(fsync_batch.stored_per_s)} events/s stored"
        )
    return lines


def queue_tables(runs: Sequence[TargetRun]) -> list[str]:
    """Queue mode: what the broker held after each run, and the worker's drain."""
    lines: list[str] = []
    for run in runs:
        checked = [m for m in run.measurements if m.queue is not None]
        if not checked:
            continue
        lines += [
            "",
            f"{run.target}: what RabbitMQ held after each measured run "
            "(the warm-up's messages purged before it):",
            "",
            "| scenario | events acknowledged | events held | messages | events/message "
            "| bytes/event | dead-lettered | broker CPU µs/event | publish+confirm ms |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for m in checked:
            assert m.queue is not None
            held = m.queue.held
            per_event = (
                "—"
                if m.broker_cpu is None or not held.events
                else f"{m.broker_cpu / held.events * 1e6:.1f}"
            )
            publish = "—" if m.queue.publish_ms_mean is None else f"{m.queue.publish_ms_mean:.2f}"
            lines.append(
                f"| {m.scenario.name} | {m.acknowledged_events:,} | {held.events:,} "
                f"| {held.messages:,} | {held.events / max(held.messages, 1):,.1f} "
                f"| {held.body_bytes / max(held.events, 1):,.0f} | {m.queue.dead_lettered:,} "
                f"| {per_event} | {publish} |"
            )
        drain = run.drain
        if drain is None:
            continue
        broker = "—" if drain.broker_cpu is None else f"{drain.broker_cpu / drain.done_s:.0%}"
        lines += [
            "",
            "Worker drain: `eventrouter worker` (one process) from the single run's queue "
            "into SQLite:",
            "",
            "| events queued | rows stored | first rows after s | done after s "
            "| events/s (first rows → done) | events/s (incl. start-up) | CPU worker / broker |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| {drain.events:,} | {drain.rows:,} | {drain.first_row_s:.2f} | {drain.done_s:.2f} "
            f"| {_number(drain.steady_per_s)} | {_number(drain.overall_per_s)} "
            f"| {drain.worker_cpu / drain.done_s:.0%} / {broker} |",
        ]
        if drain.summary:
            lines.append(f"- the worker's own count: {drain.summary}")
    return lines


def queue_verdicts(runs: Sequence[TargetRun], connections: int) -> list[str]:
    """The issue's targets for queue mode, each met or NOT met, from this run alone."""
    by_key = {(m.scenario.name, m.target): m for run in runs for m in run.measurements}
    queue_runs = [run for run in runs if run.target == "eventrouter-queue"]
    if not queue_runs:
        return []
    bare = by_key.get(("single", "bare"))
    single = by_key.get(("single", "eventrouter-queue"))
    batch = by_key.get(("batch", "eventrouter-queue"))
    lines = []
    for m in (single, batch):
        if m is not None and m.stored is not None:
            lines.append(
                f"- queue {m.scenario.name}: the broker holds every acknowledged event "
                f"({m.stored:,} held, {m.acknowledged_events:,} acknowledged): "
                f"{_met(m.stored >= m.acknowledged_events)}"
            )
    single_rate = single.durable_per_s if single is not None else None
    if single is not None and single_rate is not None:
        if bare is None:
            lines.append(
                f"- queue single: {_number(single_rate)} events/s durably enqueued; "
                "ratio to bare not evaluated (bare not in this run)"
            )
        else:
            ratio = single_rate / bare.requests_per_s
            lines.append(
                f"- queue single: {_number(single_rate)} events/s durably enqueued = "
                f"{ratio:.0%} of bare's {_number(bare.requests_per_s)} req/s "
                f"(target >= {QUEUE_SINGLE_RATIO_TARGET:.0%}: "
                f"{_met(ratio >= QUEUE_SINGLE_RATIO_TARGET)})"
            )
        p99_ms = single.wrk.p99_us / 1000
        lines.append(
            f"- queue single: p99 = {p99_ms:.1f} ms at {connections} connections "
            f"(target <= {QUEUE_SINGLE_P99_TARGET_MS:g} ms at 64: "
            f"{_met(p99_ms <= QUEUE_SINGLE_P99_TARGET_MS and connections == 64)})"
        )
    batch_rate = batch.durable_per_s if batch is not None else None
    if batch_rate is not None:
        lines.append(
            f"- queue batch of {BATCH_SIZE}: {_number(batch_rate)} events/s durably enqueued "
            f"(target >= {_number(QUEUE_BATCH_EVENTS_TARGET)}: "
            f"{_met(batch_rate >= QUEUE_BATCH_EVENTS_TARGET)})"
        )
    drain = queue_runs[0].drain
    if drain is not None and single_rate is not None:
        ok = drain.complete and drain.steady_per_s >= single_rate
        incomplete = "" if drain.complete else f", INCOMPLETE: {drain.rows:,}/{drain.events:,}"
        lines.append(
            f"- worker drain: {_number(drain.steady_per_s)} events/s into SQLite vs single "
            f"ingest {_number(single_rate)} events/s{incomplete} "
            f"(target drain >= ingest: {_met(ok)})"
        )
    else:
        lines.append("- worker drain: not measured (it follows the single scenario)")
    return lines


def store_line(runs: Sequence[TargetRun]) -> list[str]:
    """Size of eventrouter's store at the end, warm-ups included."""
    return [
        f"- {run.target} store at the end: {run.store_rows:,} rows, "
        f"{run.store_bytes / 1e6:,.0f} MB on disk "
        f"({run.store_bytes / max(run.store_rows, 1):,.0f} bytes per row)"
        for run in runs
        if run.store_rows is not None and run.store_bytes is not None
    ]


def anomalies(runs: Sequence[TargetRun]) -> list[str]:
    """Everything a reader should not miss: errors, lost events, restarted workers."""
    notes = []
    for m in (m for run in runs for m in run.measurements):
        label = f"{m.scenario.name}/{m.target}"
        w = m.wrk
        if w.status:
            notes.append(f"- {label}: {w.status:,} responses with status >= 400")
        if w.socket_errors:
            notes.append(
                f"- {label}: socket errors: connect {w.connect}, read {w.read}, "
                f"write {w.write}, timeout {w.timeout}"
            )
        if m.stored is not None and m.stored < m.acknowledged_events:
            where = "events held by the broker" if m.queue is not None else "rows stored"
            notes.append(
                f"- {label}: {m.acknowledged_events:,} events acknowledged but only "
                f"{m.stored:,} {where}"
            )
        if m.queue is not None and m.queue.dead_lettered:
            notes.append(f"- {label}: {m.queue.dead_lettered:,} dead-lettered messages")
        if m.restarted_workers:
            notes.append(f"- {label}: {m.restarted_workers} server process(es) exited mid-run")
    for run in runs:
        if run.log_problems:
            notes.append(
                f"- {run.target} log: {len(run.log_problems)} error line(s) in "
                f"bench/results/{run.target}.log, first: `{run.log_problems[0].strip()[:160]}`"
            )
        if run.worker_log_problems:
            notes.append(
                f"- worker log: {len(run.worker_log_problems)} error or retry line(s) in "
                f"bench/results/{WORKER_LOG.name}, "
                f"first: `{run.worker_log_problems[0].strip()[:160]}`"
            )
        drain = run.drain
        if drain is not None:
            if not drain.complete:
                notes.append(
                    f"- worker drain: only {drain.rows:,} of {drain.events:,} events stored "
                    f"after {drain.done_s:.0f} s"
                )
            elif drain.rows > drain.events:
                notes.append(
                    f"- worker drain: {drain.rows:,} rows stored for {drain.events:,} events "
                    "queued (duplicates?)"
                )
            if drain.left_in_queue or drain.dead_lettered:
                notes.append(
                    f"- worker drain: {drain.left_in_queue:,} messages left in the queue, "
                    f"{drain.dead_lettered:,} dead-lettered"
                )
    return notes


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "?"


def rabbitmq_version() -> str:
    """The local RabbitMQ node's version, from ``rabbitmqctl`` ("?" if it cannot say)."""
    try:
        done = subprocess.run(
            ["rabbitmqctl", "version"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return done.stdout.strip() or "?"


def machine_info(args: argparse.Namespace) -> list[str]:
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "?",
    )
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    git = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    packages = ", ".join(
        f"{name} {_version(name)}"
        for name in ("gunicorn", "uvicorn", "uvloop", "httptools", "falcon", "SQLAlchemy")
    )
    if "eventrouter-queue" in args.targets:
        packages += f", kombu {_version('kombu')}, amqp {_version('amqp')}"
        packages += f"; RabbitMQ {rabbitmq_version()}"
    return [
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC",
        f"- nproc: {os.cpu_count()} ({cpu_model}); load average at start: {load}",
        f"- python: {platform.python_version()} ({platform.python_implementation()})",
        f"- {wrk}",
        f"- {packages}",
        f"- eventrouter: {_version('eventrouter')} at {git or '?'}",
    ]


def setup_line(args: argparse.Namespace, scenarios: Sequence[Scenario]) -> str:
    sizes = ", ".join(
        f"{s.name} {len(s.body):,} B ({s.events_per_request} event(s))" for s in scenarios
    )
    return (
        f"wrk: {min(args.wrk_threads, args.connections)} threads, {args.connections} connections, "
        f"{args.duration:g} s per run after a {args.warmup:g} s warm-up; "
        f"servers: {args.workers} gunicorn worker(s) of `{WORKER_CLASS}`; "
        f"targets: {', '.join(args.targets)}; bodies: {sizes}."
    )


# -- main ----------------------------------------------------------------------------------
def add_load_options(parser: argparse.ArgumentParser, duration: float) -> None:
    """The wrk load and server options shared with bench/prototype.py."""
    parser.add_argument(
        "--duration", type=float, default=duration, help=f"seconds per run [{duration:g}]"
    )
    parser.add_argument("--warmup", type=float, default=2, help="discarded seconds first [2]")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections [64]")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="gunicorn workers [nproc]"
    )
    parser.add_argument(
        "--wrk-threads",
        type=int,
        default=WRK_THREADS,
        help=f"wrk threads, at most one per connection [{WRK_THREADS}]",
    )
    parser.add_argument("--only", choices=["single", "batch"], help="run one scenario only")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_options(parser, duration=15)
    parser.add_argument(
        "--no-fsync",
        action="store_true",
        help='skip the eventrouter-fsync target (synchronous = "full")',
    )
    parser.add_argument(
        "--queue",
        action="store_true",
        help="add the eventrouter-queue target (edge -> RabbitMQ) and the worker drain",
    )
    parser.add_argument(
        "--targets",
        metavar="T,...",
        help=f"comma-separated targets from {', '.join(TARGETS)} [{','.join(DEFAULT_TARGETS)}]",
    )
    parser.add_argument(
        "--broker",
        default=DEFAULT_BROKER,
        metavar="URL",
        help=f"RabbitMQ on loopback for eventrouter-queue [{DEFAULT_BROKER}]",
    )
    args = parser.parse_args(argv)
    for name in ("duration", "warmup", "connections", "workers", "wrk_threads"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    chosen = set(args.targets.split(",") if args.targets else DEFAULT_TARGETS)
    unknown = chosen - set(TARGETS)
    if unknown:
        parser.error(f"unknown target(s) {', '.join(sorted(unknown))}; choose from {TARGETS}")
    if args.queue:
        chosen.add("eventrouter-queue")
    if args.no_fsync:
        chosen.discard("eventrouter-fsync")
    if not chosen:
        parser.error("no target left to run")
    args.targets = [name for name in TARGETS if name in chosen]
    if "eventrouter-queue" in args.targets:
        try:
            queue_mode.check_loopback(args.broker)
        except ValueError as exc:
            parser.error(f"--broker: {exc}")
    return args


def missing_prerequisite(args: argparse.Namespace) -> str | None:
    """Why the chosen targets cannot be measured here (no wrk, no broker), or None."""
    if shutil.which("wrk") is None:
        return "wrk not found; `make bench` installs it (apt-get install wrk)"
    if "eventrouter-queue" in args.targets:
        try:
            BenchQueue(args.broker, "check").check()
        except Exception as exc:  # kombu raises several kinds; say which
            return f"RabbitMQ not reachable at {args.broker}: {exc} (make services starts it)"
    return None


def write_bodies(workdir: Path, scenarios: Sequence[Scenario]) -> dict[str, Path]:
    """Each scenario's request body in a file of ``workdir`` (wrk reads it), by name."""
    bodies = {}
    for scenario in scenarios:
        bodies[scenario.name] = workdir / f"{scenario.name}.json"
        bodies[scenario.name].write_bytes(scenario.body)
    return bodies


@dataclass(frozen=True)
class IngestRun:
    """What one invocation measured, target by target, and its markdown report."""

    runs: list[TargetRun]
    report: list[str]


def run(args: argparse.Namespace) -> IngestRun:
    """Every scenario against every target of ``args`` (from :func:`parse_args`), one
    server at a time; the report is also written to ``bench/results/latest.md``. Check
    :func:`missing_prerequisite` first."""
    RESULTS_DIR.mkdir(exist_ok=True)
    info = machine_info(args)
    all_scenarios = make_scenarios(datetime.now(UTC))
    scenarios = [s for s in all_scenarios if args.only in (None, s.name)]
    runs: list[TargetRun] = []
    with tempfile.TemporaryDirectory(prefix="eventrouter-bench-") as tmp:
        workdir = Path(tmp)
        bodies = write_bodies(workdir, scenarios)
        servers = {
            "bare": lambda: bare_server(workdir, args.workers, probe_body=all_scenarios[0].body),
            "eventrouter": lambda: eventrouter_server(workdir, args.workers),
            "eventrouter-fsync": lambda: eventrouter_server(workdir, args.workers, fsync=True),
            "eventrouter-queue": lambda: eventrouter_queue_server(
                workdir, args.workers, args.broker
            ),
        }
        for target in args.targets:
            runs.append(run_target(servers[target](), scenarios, bodies, args))
    measurements = [m for run in runs for m in run.measurements]

    report = [
        setup_line(args, scenarios),
        "",
        *table(measurements),
        "",
        *verdicts(measurements),
        *queue_verdicts(runs, args.connections),
        *store_line(runs),
        *queue_tables(runs),
    ]
    notes = anomalies(runs)
    if notes:
        report += ["", "Anomalies:", *notes]
    latest = RESULTS_DIR / "latest.md"
    latest.write_text("\n".join(["# Ingestion benchmark", "", *info, "", *report, ""]))
    log(f"report written to {latest.relative_to(REPO_ROOT)}")
    return IngestRun(runs, report)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    problem = missing_prerequisite(args)
    if problem:
        log(problem)
        return 2
    # A SIGTERM (a CI timeout) unwinds like Ctrl-C, so the servers are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    print("\n".join(run(args).report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
