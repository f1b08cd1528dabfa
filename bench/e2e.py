"""End-to-end benchmark: ``/v1/batch`` → RabbitMQ → ``eventrouter worker`` → ClickHouse.

Issue 4 asks for this path "sustained ≥ 50,000 events/s with a flat queue depth". The
script starts ``eventrouter serve`` in queue mode (2 gunicorn workers by default) and
``--workers`` ``eventrouter worker`` processes feeding the ``clickhouse`` sink of a
database of its own (``bench_e2e``, dropped and created afresh), drives ``/v1/batch``
(100 events a request, the ingest benchmark's body) with wrk for ``--duration`` seconds,
and samples the sink's queue depth and the rows stored once a second meanwhile. Then it
waits until every acknowledged event is stored (or ``--drain-timeout`` runs out) and
prints a markdown report (also written to ``bench/results/e2e-latest.md``).

The figures: events/s acknowledged by the edge; events/s stored while the load ran; the
queue depth at the start and end of the load and its slope (events/s it grew by: flat
means the workers keep up); how long the rest took to drain; lost events (acknowledged,
never stored: must be 0). Everything runs on 127.0.0.1 and is stopped by its own PID.

    .venv/bin/python bench/e2e.py [--duration 20] [--connections 64] [--server-workers 2]
                                  [--workers 1] [--drain-timeout 300]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import ingest
import queue_mode
from clickhouse_driver import Client
from queue_mode import BenchQueue

RESULTS = ingest.RESULTS_DIR / "e2e-latest.md"
DATABASE = "bench_e2e"
SINK = "warehouse"
#: Issue 4's target for this path.
TARGET = 50_000


@dataclass
class Sample:
    """One second of the run: when (s after the load began), queue depth, rows stored."""

    at: float
    depth_messages: int
    rows: int


@dataclass
class Result:
    acknowledged: int = 0
    load_seconds: float = 0.0
    non_2xx: int = 0
    socket_errors: int = 0
    p99_ms: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    stored_during_load: int = 0
    stored: int = 0
    drained_after_s: float | None = None
    events_per_message: float = 0.0

    @property
    def acknowledged_per_s(self) -> float:
        return self.acknowledged / self.load_seconds if self.load_seconds else 0.0

    @property
    def stored_per_s(self) -> float:
        return self.stored_during_load / self.load_seconds if self.load_seconds else 0.0

    @property
    def depth_slope(self) -> float:
        """Events per second the queue grew by during the load (least squares)."""
        points = [(s.at, s.depth_messages * self.events_per_message) for s in self.samples]
        if len(points) < 2:
            return 0.0
        mean_t = sum(t for t, _ in points) / len(points)
        mean_d = sum(d for _, d in points) / len(points)
        spread = sum((t - mean_t) ** 2 for t, _ in points)
        return sum((t - mean_t) * (d - mean_d) for t, d in points) / spread if spread else 0.0


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def rows(client: Client) -> int:
    return client.execute(f"SELECT count() FROM {DATABASE}.events")[0][0]


def write_config(path: Path, broker: str, prefix: str) -> None:
    url = f"clickhouse+native://default:@{ingest.HOST}:9000/{DATABASE}"
    path.write_text(
        f'[queue]\nurl = "{broker}"\nprefix = "{prefix}"\n\n'
        f'[sinks.{SINK}]\ntype = "clickhouse"\nurl = "{url}"\n'
        'batch = { max_events = 50000, timeout = "1s" }\n'
    )


def run(args: argparse.Namespace) -> Result:
    queue_mode.check_loopback(args.broker)
    client = Client(ingest.HOST)
    client.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
    client.execute(f"CREATE DATABASE {DATABASE}")
    workdir = Path(tempfile.mkdtemp(prefix="eventrouter-bench-e2e-"))
    prefix = f"bench-e2e-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(3)}"
    config = workdir / "e2e.toml"
    write_config(config, args.broker, prefix)
    env = dict(os.environ)
    env.pop("EVENTROUTER_CONFIG", None)
    env["EVENTROUTER_DATA_DIR"] = str(workdir / "data")
    env["EVENTROUTER_ADMIN_TOKEN"] = secrets.token_urlsafe(24)
    bench_queue = BenchQueue(args.broker, prefix)
    bench_queue.queue = f"{prefix}.sink.{SINK}"  # this run's sink, not queue_mode's
    bench_queue.dead_queue = f"{bench_queue.queue}.dead"
    port = ingest.free_port()
    bin_dir = ingest.VENV_BIN
    server = ingest.Server(
        "eventrouter-e2e",
        [str(bin_dir / "eventrouter"), "serve", "--config", str(config), "--host",
         ingest.HOST, "--port", str(port), "--workers", str(args.server_workers)],
        port=port,
        cwd=workdir,
        env=env,
        ready=urllib.request.Request(f"http://{ingest.HOST}:{port}/health"),
        log_path=ingest.RESULTS_DIR / "e2e-server.log",
    )  # fmt: skip
    body = workdir / "batch.json"
    batch = next(s for s in ingest.make_scenarios(datetime.now(UTC)) if s.name == "batch")
    body.write_bytes(batch.body)
    result = Result()
    with ExitStack() as stack:
        stack.callback(bench_queue.delete)
        stack.enter_context(server)
        # The worker's sink creates the table; wait for it before counting rows.
        workers = queue_mode.start_workers(
            stack, args.workers, config=config, cwd=workdir, env=env, log_name="e2e"
        )
        before = queue_mode.first_count(lambda: rows(client), workers)
        log(f"load: wrk -c{args.connections} -d{args.duration:g}s POST /v1/batch")
        wrk = subprocess.Popen(
            [
                "wrk", f"-t{ingest.WRK_THREADS}", f"-c{args.connections}",
                f"-d{args.duration:g}s", "--latency", "-s", str(ingest.POST_SCRIPT),
                f"{server.base_url}/v1/batch", "--", str(body),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        started = time.monotonic()
        while wrk.poll() is None:
            time.sleep(1.0)
            result.samples.append(
                Sample(
                    time.monotonic() - started,
                    bench_queue.depth(),
                    rows(client) - before,
                )
            )
        load_end = time.monotonic()
        output = wrk.stdout.read() if wrk.stdout else ""
        parsed = ingest.parse_wrk(output)
        result.load_seconds = parsed.seconds or load_end - started
        result.non_2xx = parsed.status
        result.socket_errors = parsed.socket_errors
        result.p99_ms = parsed.p99_us / 1000
        result.acknowledged = (parsed.requests - parsed.status) * batch.events_per_request
        stored_at_end = rows(client) - before
        result.stored_during_load = stored_at_end
        # Events per message, from the publisher stats of the edge process that answers.
        with urllib.request.urlopen(ingest.health_request(server), timeout=10) as response:
            stats = json.load(response)["components"]["broker"]["stats"]
        messages = stats.get("published_messages") or 0
        result.events_per_message = (
            stats["published_events"] / messages if messages else batch.events_per_request
        )
        log(f"acknowledged {result.acknowledged:,}; draining the rest")
        drain_deadline = load_end + args.drain_timeout
        while True:
            result.stored = rows(client) - before
            if result.stored >= result.acknowledged:
                result.drained_after_s = time.monotonic() - load_end
                break
            if time.monotonic() > drain_deadline:
                break
            time.sleep(0.5)
    return result


def report(result: Result, args: argparse.Namespace) -> str:
    lost = max(0, result.acknowledged - result.stored)
    samples = result.samples
    first, last = (samples[0], samples[-1]) if samples else (None, None)
    flat = abs(result.depth_slope) <= 0.05 * max(result.acknowledged_per_s, 1)
    met = result.stored_per_s >= TARGET and flat and lost == 0
    drained = f"{result.drained_after_s:.1f} s" if result.drained_after_s is not None else "no"
    lines = [
        "# End to end: /v1/batch → RabbitMQ → eventrouter worker → ClickHouse",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; nproc {os.cpu_count()} "
        f"({platform.processor() or platform.machine()}); load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end; wrk "
        f"{args.connections} connections for {args.duration:g} s; "
        f"{args.server_workers} gunicorn workers; {args.workers} eventrouter worker(s).",
        "",
        "| figure | value |",
        "| --- | ---: |",
        f"| events acknowledged (200) | {result.acknowledged:,} |",
        f"| events/s acknowledged by the edge | {result.acknowledged_per_s:,.0f} |",
        f"| events/s stored in ClickHouse during the load | {result.stored_per_s:,.0f} |",
        f"| queue depth at the first / last second (events) | "
        f"{(first.depth_messages if first else 0) * result.events_per_message:,.0f} / "
        f"{(last.depth_messages if last else 0) * result.events_per_message:,.0f} |",
        f"| queue depth slope (events/s; flat: within 5 % of the ingest rate) | "
        f"{result.depth_slope:,.0f} |",
        f"| the rest drained after the load | {drained} |",
        f"| lost (acknowledged, not stored) | {lost:,} |",
        f"| non-2xx / socket errors / p99 ms | {result.non_2xx} / {result.socket_errors} / "
        f"{result.p99_ms:.1f} |",
        "",
        f"Target (issue 4): ≥ {TARGET:,} events/s sustained with a flat queue depth: "
        f"**{'met' if met else 'not met'}**.",
        "",
        "| s | queue depth (messages) | rows stored |",
        "| ---: | ---: | ---: |",
        *(f"| {s.at:.0f} | {s.depth_messages:,} | {s.rows:,} |" for s in samples),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20, help="seconds of load [20]")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections [64]")
    parser.add_argument("--server-workers", type=int, default=2, help="gunicorn workers [2]")
    parser.add_argument("--workers", type=int, default=1, help="eventrouter workers [1]")
    parser.add_argument("--drain-timeout", type=float, default=300, help="seconds [300]")
    parser.add_argument("--broker", default=ingest.DEFAULT_BROKER, help="RabbitMQ URL")
    args = parser.parse_args(argv)
    for name in ("duration", "connections", "server_workers", "workers", "drain_timeout"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ingest.RESULTS_DIR.mkdir(exist_ok=True)
    result = run(args)
    text = report(result, args)
    RESULTS.write_text(text)
    print(text)
    return 1 if result.acknowledged > result.stored else 0


if __name__ == "__main__":
    sys.exit(main())
