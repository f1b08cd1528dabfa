"""Sink write throughput: how fast each storage sink takes worker-sized batches.

Each target is one sink type, written to through the real bus exactly as
``eventrouter worker`` writes to it (role ``worker``: ``Bus.deliver``, one batch at a
time, each write returning once the batch is durable), with realistic events: the
``Product Viewed`` track call of ``bench/ingest.py`` (about 800 bytes of JSON as
posted), normalised by ``eventrouter.events.normalise.to_command``. Only the writes are timed;
the commands of each batch are built before its clock starts. Prints a markdown table
(also written to ``bench/results/sinks-latest.md``).

    .venv/bin/python bench/sinks.py [--targets s3] [--batches 10] [--batch-events 50000]
                                    [--set s3.compression_level=6 ...]

Targets register themselves in ``TARGETS`` with :func:`target`: a factory that starts
(or checks) the store on loopback and returns the ``[sinks.NAME]`` table to write to, the
issue's goal in events/s (if it has one) and the extra columns it can report.
:func:`run` measures and returns the results (bench/all.py uses it); :func:`report`
writes them out. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec

BENCH_DIR = Path(__file__).resolve().parent

from ingest import track_event  # noqa: E402
from queue_mode import process_cpu_seconds  # noqa: E402

from eventrouter import config as config_module  # noqa: E402
from eventrouter.bus.bus import WORKER, Bus, make_plugin_manager  # noqa: E402
from eventrouter.bus.sink import Sink  # noqa: E402
from eventrouter.events import model  # noqa: E402
from eventrouter.events.commands import Command  # noqa: E402
from eventrouter.events.normalise import Arrival, to_command  # noqa: E402
from eventrouter.queue.worker import gc_paused  # noqa: E402

RESULTS_DIR = BENCH_DIR / "results"
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
SINK_NAME = "bench"


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the report."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# -- targets ---------------------------------------------------------------------------------
@dataclass
class Target:
    """One sink to measure."""

    #: The ``[sinks.NAME]`` table (``type`` and the sink's own keys).
    sink: dict[str, Any]
    #: The issue's goal, events/s; None for a sink without one.
    goal: float | None
    #: Extra report columns from the running sink after the run (e.g. objects, MB).
    columns: Callable[[Sink], dict[str, str]] = lambda sink: {}
    #: The store's processes on this machine, whose CPU time the report shows: called
    #: before and after each batch, so that processes started meanwhile count too
    #: (PostgreSQL starts a backend for each connection the sink opens).
    store_pids: Callable[[], list[int]] = lambda: []
    #: What the store is, for the report.
    store: str = ""


TargetFactory = Callable[[argparse.Namespace, ExitStack], Target]
#: Every measurable sink, by name; add PostgreSQL or ClickHouse with :func:`target`.
TARGETS: dict[str, TargetFactory] = {}


def target(name: str) -> Callable[[TargetFactory], TargetFactory]:
    def register(factory: TargetFactory) -> TargetFactory:
        TARGETS[name] = factory
        return factory

    return register


@target("sqlite")
def sqlite_target(args: argparse.Namespace, stack: ExitStack) -> Target:
    """The embedded store (the sink's defaults, ``synchronous = "normal"``) in a new file
    under a temporary directory, removed afterwards. No issue sets a goal for it."""
    import sqlite3

    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-sqlite-")))
    return Target(
        sink={"type": "sqlite", "url": f"sqlite:///{workdir / 'events.db'}"},
        goal=None,
        columns=lambda sink: {"commits": f"{sink.commits:,}"},
        store=f"SQLite {sqlite3.sqlite_version} (in this process; a file under {workdir.parent})",
    )


@target("s3")
def s3_target(args: argparse.Namespace, stack: ExitStack) -> Target:
    """moto's S3 server in a process of its own on loopback (so that it does not share
    this process's GIL), a new bucket, dummy credentials for this process only."""
    import boto3

    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_CONFIG_FILE="/nonexistent",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
        AWS_EC2_METADATA_DISABLED="true",
    )
    port = free_port()
    log_path = RESULTS_DIR / "moto.log"
    log_file = stack.enter_context(open(log_path, "wb"))  # noqa: SIM115 - closed by the stack
    process = subprocess.Popen(
        [str(VENV_BIN / "moto_server"), "-H", HOST, "-p", str(port)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    stack.callback(_stop, process)
    endpoint = f"http://{HOST}:{port}"
    _wait_http(endpoint, process, log_path)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="bench")
    stack.callback(client.close)

    def columns(sink: Sink) -> dict[str, str]:
        return {
            "objects": f"{sink.objects:,}",
            "MB uploaded": f"{sink.uploaded_bytes / 1e6:,.1f}",
        }

    return Target(
        sink={"type": "s3", "bucket": "bench", "endpoint_url": endpoint},
        goal=100_000,
        columns=columns,
        store_pids=lambda: [process.pid],
        store=f"moto_server {_version('moto')} (one process, loopback)",
    )


@target("postgres")
def postgres_target(args: argparse.Namespace, stack: ExitStack) -> Target:
    """This machine's PostgreSQL (127.0.0.1:5432, trust auth) and a new database, dropped
    afterwards; the sink migrates it at start (partitions, indexes, identity tables)."""
    import psycopg

    database = f"bench_{os.getpid()}"
    admin = "postgresql://postgres@127.0.0.1:5432/test"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {database}")
        version = connection.execute("SHOW server_version").fetchone()[0]

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")

    stack.callback(drop)
    return Target(
        sink={"type": "postgres", "url": f"postgresql+psycopg://postgres@{HOST}/{database}"},
        goal=50_000,
        columns=lambda sink: {"rows written": f"{sink.written:,}"},
        store_pids=lambda: _postgres_processes(database),
        store=f"PostgreSQL {version} (this machine's server), psycopg {_version('psycopg')}",
    )


@target("clickhouse")
def clickhouse_target(args: argparse.Namespace, stack: ExitStack) -> Target:
    """This machine's ClickHouse server (native protocol on loopback; ``.ci/services``
    installs and starts it) and a new database, dropped afterwards."""
    from clickhouse_driver import Client

    database = f"bench_{os.getpid()}"
    admin = Client(HOST)
    stack.callback(admin.disconnect)
    stack.callback(admin.execute, f"DROP DATABASE IF EXISTS {database}")
    version = admin.execute("SELECT version()")[0][0]
    return Target(
        sink={"type": "clickhouse", "url": f"clickhouse+native://default:@{HOST}:9000/{database}"},
        goal=400_000,  # issue 20, item 5
        columns=lambda sink: {"inserts": f"{sink.inserts:,}"},
        store_pids=lambda: _processes("clickhouse-serv"),  # comm holds 15 characters
        store=f"ClickHouse {version} (this machine's server), "
        f"clickhouse-driver {_version('clickhouse-driver')}",
    )


#: PostgreSQL's processes that work for every database (the WAL they write, the pages
#: they flush): counted with the benchmark's own backends.
POSTGRES_SHARED = ("walwriter", "checkpointer", "background writer")


def _postgres_processes(database: str) -> list[int]:
    """The PIDs of the PostgreSQL processes working for ``database``: its backends
    (whose title names the database) and the server's shared writers
    (:data:`POSTGRES_SHARED`), not the backends of other databases, which on a shared
    machine are other programs' (tests, other benchmarks)."""
    pids = []
    for pid in _processes("postgres"):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        words = title.split()
        if database in words or any(name in title for name in POSTGRES_SHARED):
            pids.append(pid)
    return pids


def _processes(comm: str) -> list[int]:
    """The PIDs of this machine's processes named ``comm`` (as ``/proc/PID/comm`` has it)."""
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _comm(p) == comm]


def store_cpu(pids: Callable[[], list[int]]) -> dict[int, float]:
    """CPU seconds so far of each of the store's processes, by PID."""
    return {pid: process_cpu_seconds(pid) for pid in pids()}


def _comm(proc: Path) -> str:
    try:
        return (proc / "comm").read_text().strip()
    except OSError:
        return ""


def _wait_http(url: str, process: subprocess.Popen, log_path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited:\n{log_path.read_text(errors='replace')}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:g}s")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process group this script started, SIGKILL if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, 15)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


# -- events ----------------------------------------------------------------------------------
def base_commands(count: int) -> list[Command]:
    """``count`` realistic track commands, as the edge builds them from posted JSON."""
    now = datetime.now(UTC)
    decoder = model.ANY_DECODER  # the edge's own
    envelope = Arrival(received_at=now, source="web", ip="203.0.113.7")
    return [
        to_command(decoder.decode(msgspec.json.encode(track_event(i, now))), envelope)
        for i in range(count)
    ]


def batch_of(base: Sequence[Command], number: int) -> list[Command]:
    """``base`` with message ids of their own (a new batch, not a redelivery)."""
    return [
        msgspec.structs.replace(command, message_id=f"b{number:04d}-{i:07d}")
        for i, command in enumerate(base)
    ]


# -- measuring -------------------------------------------------------------------------------
@dataclass
class Result:
    name: str
    target: Target
    events: int
    batches: int
    seconds: float
    batch_seconds: list[float]
    columns: dict[str, str]
    cpu_self: float
    cpu_store: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def met(self) -> bool | None:
        """Whether the goal was met; None when the sink has none."""
        return None if self.target.goal is None else self.rate >= self.target.goal


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(name: str, spec: Target, args: argparse.Namespace) -> Result:
    raw = {"sinks": {SINK_NAME: spec.sink}, "server": {"dispatch_timeout": "10m"}}
    config = config_module.parse(raw, f"bench:{name}", dict(os.environ))
    bus = Bus(config, make_plugin_manager(config), role=WORKER, only=[SINK_NAME])
    await bus.start()
    try:
        sink = bus.sinks[SINK_NAME]
        base = base_commands(args.batch_events)
        await bus.deliver(SINK_NAME, batch_of(base[:1000], 0))  # warm-up: connections
        columns_before = spec.columns(sink)
        batch_seconds = []
        cpu_self = cpu_store = 0.0
        for number in range(1, args.batches + 1):
            # As the worker handles a batch (router_core/queue/worker.py): built, written and
            # freed with the cyclic garbage collector paused.
            with gc_paused():
                batch = batch_of(base, number)
                self_before = _cpu_self()
                store_before = store_cpu(spec.store_pids)
                started = time.perf_counter()
                await bus.deliver(SINK_NAME, batch)
                batch_seconds.append(time.perf_counter() - started)
                cpu_self += _cpu_self() - self_before
                store_after = store_cpu(spec.store_pids)
                # A process started during the batch counts from 0 (one that ended is
                # in its parent's reaped children's time: PostgreSQL's postmaster).
                cpu_store += sum(
                    seconds - store_before.get(pid, 0.0) for pid, seconds in store_after.items()
                )
                del batch
            log(f"{name}: batch {number}/{args.batches}: {batch_seconds[-1]:.3f}s")
        columns = _minus(spec.columns(sink), columns_before)
    finally:
        await bus.stop()
    return Result(
        name=name,
        target=spec,
        events=args.batches * args.batch_events,
        batches=args.batches,
        seconds=sum(batch_seconds),
        batch_seconds=batch_seconds,
        columns=columns,
        cpu_self=cpu_self,
        cpu_store=cpu_store,
    )


def _minus(after: dict[str, str], before: dict[str, str]) -> dict[str, str]:
    """Counters of the measured batches only (the warm-up's taken off)."""
    out = {}
    for key, value in after.items():
        try:
            a, b = float(value.replace(",", "")), float(before[key].replace(",", ""))
        except (KeyError, ValueError):
            out[key] = value
            continue
        decimals = len(value.split(".")[1]) if "." in value else 0
        out[key] = f"{a - b:,.{decimals}f}"
    return out


# -- the report ------------------------------------------------------------------------------
def table(results: Sequence[Result]) -> list[str]:
    extra = list(dict.fromkeys(key for r in results for key in r.columns))
    head = ["sink", "events", "batches", *extra, "seconds", "events/s", "goal", "met"]
    head += ["batch s p50 / max", "CPU bench / store"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in results:
        cells = [
            r.name,
            f"{r.events:,}",
            f"{r.batches} x {r.events // r.batches:,}",
            *(r.columns.get(key, "-") for key in extra),
            f"{r.seconds:.2f}",
            f"{r.rate:,.0f}",
            "-" if r.target.goal is None else f"≥ {r.target.goal:,.0f}",
            {None: "-", True: "yes", False: "**no**"}[r.met],
            f"{statistics.median(r.batch_seconds):.3f} / {max(r.batch_seconds):.3f}",
            f"{100 * r.cpu_self / r.seconds:.0f}% / {100 * r.cpu_store / r.seconds:.0f}%",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "?"


def machine_info(results: Sequence[Result]) -> list[str]:
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "?",
    )
    git = ""
    if shutil.which("git"):
        git = subprocess.run(
            ["git", "-C", str(BENCH_DIR), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    packages = ", ".join(
        f"{name} {_version(name)}" for name in ("msgspec", "boto3", "botocore", "pyarrow", "isal")
    )
    posted = len(msgspec.json.encode(track_event(0, datetime.now(UTC))))
    lines = [
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC",
        f"- events: bench/ingest.py's `track_event()`, {posted} bytes of JSON as posted, "
        "one source, one hour (one partition)",
        f"- nproc: {os.cpu_count()} ({cpu_model}); load average at the end: {load}",
        f"- python: {platform.python_version()}; {packages}",
        f"- eventrouter: {_version('eventrouter')} at {git or '?'}",
    ]
    for r in results:
        options = ", ".join(
            f"{k} = {v!r}" for k, v in r.target.sink.items() if k not in ("type", "endpoint_url")
        )
        lines.append(f"- {r.name}: {r.target.store}; sink options: {options}")
    return lines


# -- main ------------------------------------------------------------------------------------
def _override(text: str) -> tuple[str, str, Any]:
    """``TARGET.KEY=VALUE`` with a TOML value (bare words are taken as strings)."""
    where, _, value = text.partition("=")
    name, _, key = where.partition(".")
    if not key or not value:
        raise argparse.ArgumentTypeError(f"expected TARGET.KEY=VALUE, not {text!r}")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return name, key, parsed


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--targets",
        default="s3",
        help=f"comma-separated, from: {', '.join(TARGETS)} [s3]",
    )
    parser.add_argument("--batches", type=int, default=10, help="measured batches [10]")
    parser.add_argument("--batch-events", type=int, default=50_000, help="events per batch [50000]")
    parser.add_argument(
        "--set",
        dest="overrides",
        type=_override,
        action="append",
        default=[],
        metavar="TARGET.KEY=VALUE",
        help="a sink option for one target, e.g. s3.compression_level=6 (repeatable)",
    )
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    return args


def run(args: argparse.Namespace) -> list[Result]:
    """Measure each of ``args.targets`` in turn, each store started and cleaned up
    around its own measurement."""
    RESULTS_DIR.mkdir(exist_ok=True)
    results = []
    for name in args.targets:
        with ExitStack() as stack:
            spec = TARGETS[name](args, stack)
            for target_name, key, value in args.overrides:
                if target_name == name:
                    spec.sink[key] = value
            log(f"{name}: {args.batches} batches of {args.batch_events:,} events")
            results.append(asyncio.run(measure(name, spec, args)))
    return results


def report(results: Sequence[Result]) -> str:
    """The markdown report, also written to ``bench/results/sinks-latest.md``."""
    lines = ["## Sink write throughput", "", *table(results), "", *machine_info(results)]
    text = "\n".join(lines) + "\n"
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "sinks-latest.md").write_text(text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    results = run(parse_args(argv))
    print(report(results), end="")
    return 1 if any(r.met is False for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
