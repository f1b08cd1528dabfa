"""Queue mode for the ingestion benchmark: the broker side of the ``eventrouter-queue``
target (bench/ingest.py) and the worker drain measurement.

The edge publishes every accepted event to RabbitMQ and answers ``200`` only after the
broker's confirm; one AMQP message carries a group commit of many events, its header
``x-eventrouter-events`` the count (router_core/queue/broker.py). So a queue's depth counts
messages, not events: :meth:`BenchQueue.held` reads every message once, without
acknowledging it, to add up the events the broker holds, then closes the channel so
that the broker requeues them all.

Each run declares nothing itself: it gives the edge a fresh ``[queue] prefix``, and the
edge declares the topology. :meth:`BenchQueue.delete` removes it at the end.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack, closing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kombu import Connection

#: The local sink the worker writes (``[sinks.local]``): its queue is ``{prefix}.sink.local``.
SINK = "local"
EVENTS_HEADER = "x-eventrouter-events"
LOOPBACK = ("127.0.0.1", "::1", "localhost")
#: Seconds without a new message after which :meth:`BenchQueue.held` stops reading.
READ_IDLE_TIMEOUT = 5.0
WORKER_STOP_TIMEOUT = 40.0


def check_loopback(url: str) -> None:
    """Benchmarks talk only to this machine (loopback only, by rule)."""
    host = urlsplit(url).hostname
    if host not in LOOPBACK:
        raise ValueError(f"broker {host!r} is not on loopback ({', '.join(LOOPBACK)})")


def write_config(path: Path, *, url: str, prefix: str, db_path: Path) -> None:
    """The queue-mode config: the edge publishes to ``url``, the worker stores in SQLite."""
    path.write_text(
        f'[queue]\nurl = "{url}"\nprefix = "{prefix}"\n\n'
        f'[sinks.{SINK}]\ntype = "sqlite"\nurl = "sqlite:///{db_path}"\n'
    )


@dataclass(frozen=True)
class Held:
    """What one queue holds: messages, the events they carry and their body bytes."""

    messages: int
    events: int
    body_bytes: int


class BenchQueue:
    """The run's queues and exchanges on the broker, named by its unique ``prefix``."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self.queue = f"{prefix}.sink.{SINK}"
        self.dead_queue = f"{prefix}.sink.{SINK}.dead"
        self.exchanges = (f"{prefix}.events", f"{prefix}.dead")

    def _connect(self) -> Connection:
        connection = Connection(self.url, connect_timeout=5)
        connection.connect()
        return connection

    def check(self) -> None:
        """Raise if the broker cannot be reached."""
        with closing(self._connect()):
            pass

    def depth(self, queue: str | None = None) -> int:
        """Messages ready in ``queue`` (default: the sink's queue); 0 if not declared yet."""
        with closing(self._connect()) as connection:
            try:
                result = connection.channel().queue_declare(queue=queue or self.queue, passive=True)
            except connection.channel_errors:  # 404: the edge has not declared it yet
                return 0
            return int(result.message_count)

    def settled_depth(self, timeout: float = 10.0) -> int:
        """The depth once publishes still in flight when wrk stopped have been confirmed."""
        deadline = time.monotonic() + timeout
        previous = self.depth()
        while time.monotonic() < deadline:
            time.sleep(0.3)
            current = self.depth()
            if current == previous:
                break
            previous = current
        return previous

    def purge(self) -> int:
        """Drop every ready message of the sink's queue and its dead-letter queue."""
        purged = 0
        with closing(self._connect()) as connection:
            for queue in (self.queue, self.dead_queue):
                channel = connection.channel()  # a 404 closes the channel it came on
                with suppress(*connection.channel_errors):  # not declared yet
                    purged += channel.queue_purge(queue) or 0
        return purged

    def held(self) -> Held:
        """Count the events in the sink's queue by reading each message's event-count
        header, acknowledging none: closing the connection requeues them all."""
        expected = self.depth()
        messages = events = body_bytes = 0

        def on_message(message: Any) -> None:  # an amqp.Message
            nonlocal messages, events, body_bytes
            count = (message.headers or {}).get(EVENTS_HEADER)
            messages += 1
            events += count if isinstance(count, int) else 1
            body_bytes += len(message.body)

        with closing(self._connect()) as connection:
            channel = connection.channel()
            channel.basic_qos(0, 0, False)  # no prefetch limit: nothing is acknowledged
            channel.basic_consume(self.queue, no_ack=False, callback=on_message)
            while messages < expected:
                try:
                    connection.drain_events(timeout=READ_IDLE_TIMEOUT)
                except TimeoutError:
                    break
        return Held(messages, events, body_bytes)

    def delete(self) -> None:
        """Remove the run's queues and exchanges (with the messages still in them)."""
        with closing(self._connect()) as connection:
            for name in (self.queue, self.dead_queue):
                channel = connection.channel()  # a 404 closes the channel it came on
                with suppress(*connection.channel_errors):
                    channel.queue_delete(name)
            for name in self.exchanges:
                channel = connection.channel()
                with suppress(*connection.channel_errors):
                    channel.exchange_delete(name)


def cpu_seconds_where(select: Callable[[Path, str, list[str]], bool]) -> dict[int, float]:
    """CPU seconds so far (user + system, with reaped children) of every process for
    which ``select(proc_dir, comm, fields)`` is true; ``fields`` are the ``stat`` fields
    after ``(comm)`` (state, ppid, pgrp, ...). Read-only; a process that exits meanwhile
    is skipped."""
    ticks = os.sysconf("SC_CLK_TCK")
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            if not select(entry, comm, fields):
                continue
        except OSError:  # exited meanwhile
            continue
        found[int(entry.name)] = sum(int(f) for f in fields[11:15]) / ticks
    return found


def _is_rabbitmq_node(entry: Path, comm: str, fields: list[str]) -> bool:
    # ``rabbitmqctl`` runs a short-lived ``beam.smp`` of its own: not the node.
    return comm == "beam.smp" and b"\0-s\0rabbit\0boot\0" in (entry / "cmdline").read_bytes()


def broker_cpu_seconds() -> dict[int, float]:
    """CPU seconds so far of each process of the RabbitMQ node (the ``beam.smp`` started
    with ``-s rabbit boot``); empty if none runs here."""
    return cpu_seconds_where(_is_rabbitmq_node)


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float | None:
    """CPU seconds between two :func:`broker_cpu_seconds` snapshots, over the processes in
    both; None if the node was not found."""
    common = before.keys() & after.keys()
    if not common:
        return None
    return sum(after[pid] - before[pid] for pid in common)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process and its reaped children; 0 once gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def sqlite_rows(db_path: Path) -> int:
    """Rows in the store's ``events`` table; 0 before the worker has created it."""
    if not db_path.exists():
        return 0
    with closing(sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True, timeout=30)) as db:
        try:
            return int(db.execute("SELECT count(*) FROM events").fetchone()[0])
        except sqlite3.OperationalError:  # no such table yet
            return 0


@dataclass(frozen=True)
class Drain:
    """One ``eventrouter worker`` emptying the queue into SQLite."""

    events: int  # events the queue held when the worker started
    rows: int  # rows the store gained by the end
    first_row_s: float  # from starting the worker to the first rows seen
    done_s: float  # from starting the worker to the last row (or the timeout)
    rows_at_first: int  # rows already there at first sight (not in the steady rate)
    complete: bool
    worker_cpu: float  # CPU seconds of the worker process over the drain
    broker_cpu: float | None
    left_in_queue: int  # messages still ready in the sink's queue at the end
    dead_lettered: int  # messages in the sink's dead-letter queue at the end
    summary: str  # the worker's own summary log line

    @property
    def steady_per_s(self) -> float:
        """Events/s from the first rows seen to the last: start-up excluded."""
        span = self.done_s - self.first_row_s
        return (self.rows - self.rows_at_first) / span if span > 0 else 0.0

    @property
    def overall_per_s(self) -> float:
        """Events/s from starting the worker process to the last row."""
        return self.rows / self.done_s if self.done_s > 0 else 0.0


def drain(
    argv: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    log_path: Path,
    db_path: Path,
    queue: BenchQueue,
    events: int,
    poll: float = 0.1,
    progress: Callable[[str], None] = lambda message: None,
) -> Drain:
    """Start the worker, poll ``SELECT count(*)`` until the store holds ``events`` more
    rows (or a timeout proportional to them runs out), then stop it with SIGTERM."""
    timeout = max(60.0, events / 500)
    before = sqlite_rows(db_path)
    broker_before = broker_cpu_seconds()
    started = time.monotonic()
    process = start_process(argv, cwd=cwd, env=env, log_path=log_path)
    progress(f"worker pid {process.pid}: draining {events:,} events (timeout {timeout:.0f} s)")
    first_row_s, rows_at_first, rows = 0.0, 0, 0
    worker_cpu = 0.0
    try:
        while True:
            time.sleep(poll)
            now = time.monotonic() - started
            rows = sqlite_rows(db_path) - before
            worker_cpu = process_cpu_seconds(process.pid) or worker_cpu
            if rows and not first_row_s:
                first_row_s, rows_at_first = now, rows
            if rows >= events or now >= timeout or process.poll() is not None:
                done_s = now
                break
        broker_after = broker_cpu_seconds()
    finally:
        stop_worker(process)
    broker_cpu = cpu_used(broker_before, broker_after)
    summary = next(
        (
            line.split("INFO eventrouter.worker: ", 1)[-1]
            for line in log_path.read_text(errors="replace").splitlines()
            if f"sink {SINK}: " in line
        ),
        "",
    )
    return Drain(
        events=events,
        rows=rows,
        first_row_s=first_row_s,
        done_s=done_s,
        rows_at_first=rows_at_first,
        complete=rows >= events,
        worker_cpu=worker_cpu,
        broker_cpu=broker_cpu,
        left_in_queue=queue.depth(),
        dead_lettered=queue.depth(queue.dead_queue),
        summary=summary,
    )


def start_process(
    argv: list[str], *, cwd: Path, env: dict[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """``argv`` in a session of its own (its children form one process group with it),
    its output to ``log_path``: a server or worker the benchmarks start and stop."""
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def start_workers(
    stack: ExitStack, count: int, *, config: Path, cwd: Path, env: dict[str, str], log_name: str
) -> list[subprocess.Popen[bytes]]:
    """``count`` ``eventrouter worker`` processes reading ``config``, each stopped by
    :func:`stop_worker` when ``stack`` closes; logs ``{log_name}-worker-N.log`` in
    RESULTS_DIR."""
    from ingest import RESULTS_DIR, VENV_BIN

    workers = []
    for i in range(count):
        argv = [str(VENV_BIN / "eventrouter"), "worker", "--config", str(config)]
        log_path = RESULTS_DIR / f"{log_name}-worker-{i}.log"
        workers.append(start_process(argv, cwd=cwd, env=env, log_path=log_path))
        stack.callback(stop_worker, workers[-1])
    return workers


def first_count(
    count: Callable[[], int], workers: list[subprocess.Popen[bytes]], timeout: float = 60.0
) -> int:
    """``count()`` once it answers: the workers' sinks create the table it reads when
    they start. Raises if ``timeout`` passes or a worker exits first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return count()
        except Exception:
            if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                raise RuntimeError("the workers did not create the events table") from None
            time.sleep(0.2)


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the worker's PID (it finishes and acknowledges its batch); SIGKILL if
    it has not exited after ``WORKER_STOP_TIMEOUT``."""
    if process.poll() is not None:
        return
    with suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=WORKER_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
