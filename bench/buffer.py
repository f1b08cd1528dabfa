"""A sink that hangs under sustained load: the edge's memory with bounded buffers, and
without a bound.

Each scenario starts ``eventrouter``'s app under uvicorn in a process of its own on
loopback, whose only sink is of type ``hang``: its ``write`` never returns, a store that
stopped answering. (No other store: a store's own page cache would grow in the same
figures while it fills.) Client tasks in this process
post ``/v1/batch`` bodies of bench/ingest.py's ``track_event()`` as fast as they are
answered, for ``--duration`` seconds; every ``--interval`` the server's resident memory
(``VmRSS``) and the hanging sink's ``buffered_events`` (``/health``) are sampled. The
scenarios differ only in the hanging sink's settings:

- ``observer``: ``acknowledgements = false``, ``buffer.max_events = --buffer``: batches
  that do not fit are skipped; every request is answered 200 (no sink acknowledges);
- ``unbounded``: the same with ``buffer.max_events`` at 10^9, which nothing reaches: the
  baseline, what an unbounded queue in front of a stalled sink does;
- ``reject``: acknowledging, ``buffer.max_events = --ack-buffer``, ``when_full =
  "reject"``: 503 at once while full (an acknowledging sink holds its clients' requests,
  so its buffer fills only when more events are in flight than it holds: hence a
  smaller bound than the observer's);
- ``block``: the same with ``when_full = "block"`` and ``server.dispatch_timeout = 2s``.

A scenario whose server passes ``--max-rss-mb`` is stopped there (the baseline would
otherwise take the machine's memory). Prints a markdown report (also written to
``bench/results/buffer-latest.md``).

    .venv/bin/python bench/buffer.py [--duration 20] [--interval 2] [--clients 16]
                                     [--batch 50] [--buffer 10000] [--ack-buffer 400]
                                     [--max-rss-mb 1500]
                                     [--only observer,unbounded,reject,block]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
HOST = "127.0.0.1"
TOKEN = "bench-admin-token-0123456789abcdef"
STARTUP_TIMEOUT = 60.0

#: name → (what it shows, the hanging sink's table, extra [server] keys)
SCENARIOS: dict[str, tuple[str, Any, dict[str, Any]]] = {
    "observer": (
        "observer, buffer.max_events = N",
        lambda n: {"acknowledgements": False, "buffer": {"max_events": n}},
        {},
    ),
    "unbounded": (
        "observer, buffer.max_events = 10^9 (baseline: no bound)",
        lambda n: {"acknowledgements": False, "buffer": {"max_events": 10**9}},
        {},
    ),
    "reject": (
        'acknowledging, buffer.max_events = A, when_full = "reject"',
        lambda n: {"buffer": {"max_events": n, "when_full": "reject"}},
        {},
    ),
    "block": (
        'acknowledging, buffer.max_events = A, when_full = "block", dispatch_timeout = 2s',
        lambda n: {"buffer": {"max_events": n, "when_full": "block"}},
        {"dispatch_timeout": "2s"},
    ),
}


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# -- the server process ----------------------------------------------------------------------
def serve(raw_config: str, port: int) -> None:
    """``--serve``: the app with the ``hang`` sink type, under uvicorn, until killed."""
    import uvicorn

    from eventrouter import config as config_module
    from eventrouter.app import create_app
    from eventrouter.bus.hookspecs import hookimpl
    from eventrouter.bus.sink import Sink

    never = threading.Event()

    class Hang(Sink):
        def write(self, commands: Any) -> None:
            never.wait()  # a store that stopped answering

    class HangPlugin:
        @hookimpl
        def eventrouter_sink_types(self) -> dict[str, type[Sink]]:
            return {"hang": Hang}

    config = config_module.parse(json.loads(raw_config), "bench:buffer", dict(os.environ))
    app = create_app(config, plugins=[HangPlugin()])
    uvicorn.run(app, host=HOST, port=port, log_level="warning", lifespan="on")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- one scenario ----------------------------------------------------------------------------
@dataclass
class Sample:
    seconds: float
    rss_mb: float
    buffered: int | None
    ok: int
    refused: int


@dataclass
class Run:
    name: str
    what: str
    samples: list[Sample] = field(default_factory=list)
    ok: int = 0
    refused: int = 0
    other: int = 0
    stopped_early: bool = False
    stats: dict[str, Any] = field(default_factory=dict)


async def drive(url: str, pid: int, body: bytes, run: Run, args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    headers = {"Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=args.clients + 2)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def post_forever() -> None:
            while not stop.is_set():
                try:
                    response = await client.post("/v1/batch", content=body, headers=headers)
                except httpx.HTTPError:
                    run.other += 1
                    continue
                if response.status_code == 200:
                    run.ok += 1
                elif response.status_code == 503:
                    run.refused += 1
                else:
                    run.other += 1

        async def health() -> dict[str, Any]:
            response = await client.get("/health", headers={"Authorization": f"Bearer {TOKEN}"})
            return response.json().get("components", {}).get("sink:hang", {}).get("stats", {})

        tasks = [asyncio.create_task(post_forever()) for _ in range(args.clients)]
        started = time.monotonic()
        try:
            while (elapsed := time.monotonic() - started) < args.duration:
                await asyncio.sleep(min(args.interval, args.duration - elapsed))
                stats = await health()
                sample = Sample(
                    time.monotonic() - started,
                    rss_mb(pid),
                    stats.get("buffered_events"),
                    run.ok,
                    run.refused,
                )
                run.samples.append(sample)
                log(
                    f"{run.name}: {sample.seconds:5.1f}s RSS {sample.rss_mb:7.1f} MB, "
                    f"buffered {sample.buffered}, 200s {run.ok}, 503s {run.refused}"
                )
                if sample.rss_mb > args.max_rss_mb:
                    run.stopped_early = True
                    break
            run.stats = await health()
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def measure(name: str, args: argparse.Namespace, body: bytes) -> Run:
    what, sink, server = SCENARIOS[name]
    bound = args.ack_buffer if "= A" in what else args.buffer
    run = Run(name, what.replace("= N", f"= {bound:,}").replace("= A", f"= {bound:,}"))
    with tempfile.TemporaryDirectory(prefix="bench-buffer-") as workdir:
        raw = {
            "admin": {"token": TOKEN},
            "server": server,
            "sinks": {"hang": {"type": "hang", **sink(bound)}},
        }
        port = free_port()
        log_path = RESULTS_DIR / f"buffer-{name}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, __file__, "--serve", json.dumps(raw), "--port", str(port)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "EVENTROUTER_DATA_DIR": workdir},
            )
            try:
                url = f"http://{HOST}:{port}"
                wait_ready(url, process, log_path)
                run.samples.append(Sample(0.0, rss_mb(process.pid), 0, 0, 0))
                asyncio.run(drive(url, process.pid, body, run, args))
            finally:
                # The hanging write never returns: the process is killed, by its group.
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return run


def wait_ready(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log_path.read_text(errors='replace')}")
        try:
            httpx.get(f"{url}/health", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not answer within {STARTUP_TIMEOUT:g}s")


# -- the report ------------------------------------------------------------------------------
def growth(run: Run) -> float:
    """MB per second over the second half of the run (0 when flat)."""
    half = [s for s in run.samples if s.seconds >= run.samples[-1].seconds / 2]
    if len(half) < 2 or half[-1].seconds == half[0].seconds:
        return 0.0
    return (half[-1].rss_mb - half[0].rss_mb) / (half[-1].seconds - half[0].seconds)


def report(runs: Sequence[Run], args: argparse.Namespace, event_bytes: int) -> str:
    lines = [
        "## A sink that hangs under sustained load",
        "",
        "| scenario | seconds | RSS start / max / end MB | growth, 2nd half MB/s | "
        "buffered max (bound) | 200s | 503s | other | skipped / refused events |",
        "| --- | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        rss = [s.rss_mb for s in run.samples]
        buffered = [s.buffered for s in run.samples if s.buffered is not None]
        bound = run.stats.get("buffer_max_events", "?")
        dropped = run.stats.get("skipped_events", run.stats.get("refused_events", 0))
        lines.append(
            f"| {run.name}: {run.what}{' (stopped at --max-rss-mb)' if run.stopped_early else ''} "
            f"| {run.samples[-1].seconds:.0f} | {rss[0]:.0f} / {max(rss):.0f} / {rss[-1]:.0f} "
            f"| {growth(run):+.1f} | {max(buffered, default=0):,} ({bound:,}) "
            f"| {run.ok:,} | {run.refused:,} | {run.other:,} | {dropped:,} |"
        )
    lines += ["", "Samples (seconds: RSS MB, buffered events):", ""]
    for run in runs:
        samples = ", ".join(
            f"{s.seconds:.0f}: {s.rss_mb:.0f} MB, {s.buffered if s.buffered is not None else '-'}"
            for s in run.samples
        )
        lines.append(f"- {run.name}: {samples}")
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    lines += [
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC; nproc {os.cpu_count()}; "
        f"load average at the end: {load}; python {platform.python_version()}",
        f"- load: {args.clients} client tasks, /v1/batch of {args.batch} events of "
        f"{event_bytes} bytes each, as fast as answered; one uvicorn process",
        f"- command: .venv/bin/python bench/buffer.py {' '.join(sys.argv[1:])}",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per scenario [20]")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between samples [2]")
    parser.add_argument("--clients", type=int, default=16, help="concurrent client tasks [16]")
    parser.add_argument("--batch", type=int, default=50, help="events per request [50]")
    parser.add_argument(
        "--buffer", type=int, default=10_000, help="observers' buffer.max_events [10000]"
    )
    parser.add_argument(
        "--ack-buffer", type=int, default=400, help="acknowledging buffer.max_events [400]"
    )
    parser.add_argument(
        "--max-rss-mb", type=float, default=1500.0, help="stop a scenario past this RSS [1500]"
    )
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return 0
    sys.path.append(str(BENCH_DIR))
    from ingest import track_event

    RESULTS_DIR.mkdir(exist_ok=True)
    now = datetime.now(UTC)
    events = [track_event(i, now) for i in range(args.batch)]
    body = msgspec.json.encode({"batch": events})
    runs = [measure(name, args, body) for name in args.only.split(",")]
    text = report(runs, args, len(msgspec.json.encode(events[0])))
    (RESULTS_DIR / "buffer-latest.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
