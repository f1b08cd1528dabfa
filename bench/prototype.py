"""eventrouter's queue mode beside a plain prototype of durable ingestion, in one run.

Issue 3 measures the edge against "a plain prototype of group commit with kombu
confirms". This script serves that prototype (bench/prototype_app.py: msgspec
validation, raw bodies group-committed to RabbitMQ with confirms, nothing else), the
bare endpoint (bench/bare_app.py) and ``eventrouter serve`` in queue mode with the same
gunicorn worker class and worker count, one after the other, and drives each with
bench/ingest.py's wrk scenarios (``single``: one track event per ``/v1/track``
request; ``batch``: 100 per ``/v1/batch``). The table gives requests/s, events/s, the
ratio to the bare endpoint's requests/s, wrk's p99, and the servers' CPU per event:
what eventrouter's own work (normalisation, commands, limits, metrics, the spool)
costs on top of a durable publish. Everything binds to 127.0.0.1; the prototype's
queue and eventrouter's topology are deleted at the end.

    .venv/bin/python bench/prototype.py [--duration 10] [--warmup 2] [--connections 64]
                                        [--workers $(nproc)] [--broker URL] [--only batch]
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from contextlib import closing, suppress
from datetime import UTC, datetime
from pathlib import Path

import ingest
import queue_mode
from kombu import Connection

TARGETS = ("bare", "prototype", "eventrouter-queue")


def prototype_server(workdir: Path, workers: int, broker: str, prefix: str) -> ingest.Server:
    """bench/prototype_app.py on gunicorn, as :func:`ingest.bare_server` serves the bare app."""
    port = ingest.free_port()
    argv = [
        str(ingest.VENV_BIN / "gunicorn"),
        *("-k", ingest.WORKER_CLASS, "-w", str(workers), "-b", f"{ingest.HOST}:{port}"),
        *("--keep-alive", "5", "--backlog", "2048"),
        *(["--no-control-socket"] if ingest.gunicorn_supports("--no-control-socket") else []),
        *("--pythonpath", f"{ingest.BENCH_DIR},{ingest.REPO_ROOT}", "prototype_app:app"),
    ]
    probe = urllib.request.Request(
        f"http://{ingest.HOST}:{port}/v1/track",
        data=b'{"userId":"u","event":"probe"}',
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    return ingest.Server(
        "prototype",
        argv,
        port=port,
        cwd=workdir,
        env={**os.environ, "PROTOTYPE_BROKER": broker, "PROTOTYPE_PREFIX": prefix},
        ready=probe,
        log_path=ingest.RESULTS_DIR / "prototype.log",
    )


def delete_prototype_queue(broker: str, prefix: str) -> None:
    with closing(Connection(broker)) as connection:
        for delete, name in (("queue_delete", f"{prefix}.events"), ("exchange_delete", prefix)):
            channel = connection.channel()  # a 404 closes the channel it came on
            with suppress(*connection.channel_errors):
                getattr(channel, delete)(name)


def purge_prototype_queue(broker: str, prefix: str) -> None:
    """Empty the prototype's queue: nothing consumes it, and a batch run leaves gigabytes."""
    with closing(Connection(broker)) as connection:
        channel = connection.channel()
        with suppress(*connection.channel_errors):  # not declared yet: nothing to purge
            channel.queue_purge(f"{prefix}.events")


def table(rows: Sequence[ingest.Measurement]) -> list[str]:
    bare = {m.scenario.name: m.requests_per_s for m in rows if m.target == "bare"}
    lines = [
        "| scenario | target | req/s | events/s | vs bare (req/s) | p99 ms | non-2xx "
        "| server CPU µs/event | broker CPU µs/event |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in rows:
        events = m.acknowledged_events
        ratio = m.requests_per_s / bare[m.scenario.name] if m.scenario.name in bare else None
        per_event = 1e6 / max(1, events)
        broker = (
            "—" if m.target == "bare" or m.broker_cpu is None else f"{m.broker_cpu * per_event:.1f}"
        )
        lines.append(
            f"| {m.scenario.name} | {m.target} | {m.requests_per_s:,.0f} "
            f"| {events / m.wrk.seconds:,.0f} "
            f"| {'' if ratio is None or m.target == 'bare' else f'{ratio:.0%}'} "
            f"| {m.wrk.p99_us / 1000:.1f} | {m.wrk.status} "
            f"| {m.server_cpu * per_event:.1f} | {broker} |"
        )
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ingest.add_load_options(parser, duration=10)
    parser.add_argument("--broker", default=ingest.DEFAULT_BROKER, help="RabbitMQ on loopback")
    args = parser.parse_args(argv)
    queue_mode.check_loopback(args.broker)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ingest.RESULTS_DIR.mkdir(exist_ok=True)
    all_scenarios = ingest.make_scenarios(datetime.now(UTC))
    scenarios = [s for s in all_scenarios if args.only in (None, s.name)]
    prefix = f"bench-prototype-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(3)}"
    rows: list[ingest.Measurement] = []
    with tempfile.TemporaryDirectory(prefix="eventrouter-prototype-") as tmp:
        workdir = Path(tmp)
        bodies = ingest.write_bodies(workdir, scenarios)
        servers = {
            # Its readiness probe posts to /v1/track: the single event's body.
            "bare": lambda: ingest.bare_server(workdir, args.workers, all_scenarios[0].body),
            "prototype": lambda: prototype_server(workdir, args.workers, args.broker, prefix),
            "eventrouter-queue": lambda: ingest.eventrouter_queue_server(
                workdir, args.workers, args.broker
            ),
        }
        for name in TARGETS:
            server = servers[name]()
            try:
                with server:
                    for scenario in scenarios:
                        measurement, _ = ingest.measure(
                            server, scenario, bodies[scenario.name], args
                        )
                        rows.append(measurement)
                        if server.queue is not None:
                            server.queue.broker.purge()
                        if name == "prototype":
                            purge_prototype_queue(args.broker, prefix)
            finally:
                if server.queue is not None:
                    server.queue.broker.delete()
                if name == "prototype":
                    delete_prototype_queue(args.broker, prefix)
    report = [
        f"`bench/prototype.py` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: wrk {args.connections} "
        f"connections, {args.duration:g} s runs after {args.warmup:g} s warm-ups, "
        f"{args.workers} gunicorn workers each; nproc {os.cpu_count()}.",
        "",
        *table(rows),
    ]
    (ingest.RESULTS_DIR / "prototype-latest.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
