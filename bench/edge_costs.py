"""The edge's per-request costs, each switched on and off: the HTTP protocol (one write
per response or uvicorn's two), the cyclic GC's threshold, the metrics (multiprocess
files written per request, or held in memory), the ingestion fast path (``POST`` answered
from the protocol without ASGI and Falcon: eventrouter.edge.fastpath).

Serves ``create_app`` (the embedded default, SQLite in a temporary directory) with
uvicorn on uvloop in one process, with ``PROMETHEUS_MULTIPROC_DIR`` set as under
``eventrouter serve``; drives ``POST /v1/track`` with wrk (bench/post.lua, one ~780-byte
event, 64 connections) and measures the server process's CPU per request and the time
spent in GC collections (``gc.callbacks``). Each variant runs in a fresh process, the
variants alternate for ``--rounds`` rounds, so a machine that slows down slows them all:

    .venv/bin/python bench/edge_costs.py [--seconds 4] [--rounds 3] [--connections 64] \\
        [--variants before:http=uvicorn,gc=700,metrics=direct after:http=ours,gc=10000,metrics=held]

A variant is ``name:http=uvicorn|ours,gc=N,metrics=direct|held[,fast=on|off]`` (``fast``:
``server.fast_path``, off unless given; only ``http=ours`` can take it). To weigh the fast
path alone: ``--variants falcon:http=ours,gc=10000,metrics=held
fast:http=ours,gc=10000,metrics=held,fast=on``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


DEFAULT_VARIANTS = [
    "before:http=uvicorn,gc=700,metrics=direct",
    "protocol:http=ours,gc=700,metrics=direct",
    "gc:http=uvicorn,gc=10000,metrics=direct",
    "metrics:http=uvicorn,gc=700,metrics=held",
    "after:http=ours,gc=10000,metrics=held",
    "fast:http=ours,gc=10000,metrics=held,fast=on",
]


def measure(variant: dict[str, str], seconds: float, connections: int) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="eventrouter-edge-costs-"))
    os.environ["EVENTROUTER_DATA_DIR"] = str(workdir)
    (workdir / "metrics").mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(workdir / "metrics")
    import ingest
    import uvicorn

    from eventrouter import metrics
    from eventrouter.app import create_app
    from eventrouter.config import load
    from eventrouter.server import DrainingHttpProtocol

    metrics._metrics = metrics.Metrics(buffered=variant["metrics"] == "held")
    config = load(None)
    config.server.fast_path = variant.get("fast", "off") == "on"
    app = create_app(config)
    port = ingest.free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            loop="uvloop",
            http=DrainingHttpProtocol if variant["http"] == "ours" else "httptools",
            lifespan="on",
            log_level="warning",
        )
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    gc.set_threshold(int(variant["gc"]), 10, 10)
    pauses = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
    started = [0.0]

    def timed(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            entry = pauses[info["generation"]]
            entry[0] += 1
            entry[1] += time.perf_counter() - started[0]

    url = f"http://127.0.0.1:{port}/v1/track"
    body = workdir / "single.json"
    body.write_bytes(ingest.make_scenarios(datetime.now(UTC))[0].body)
    ingest.run_wrk(url, body, 1, connections)  # warm-up
    gc.callbacks.append(timed)
    cpu_before = time.process_time()
    result, _ = ingest.run_wrk(url, body, seconds, connections)
    cpu = time.process_time() - cpu_before
    gc.callbacks.remove(timed)
    server.should_exit = True
    requests = result.requests
    return {
        "requests_per_s": requests / (result.duration_us / 1e6),
        "server_cpu_us_per_request": cpu / requests * 1e6,
        "p99_ms": result.p99_us / 1000,
        "gc_us_per_request": sum(p[1] for p in pauses.values()) / requests * 1e6,
        "collections": {gen: p[0] for gen, p in pauses.items()},
        "requests": requests,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        sys.path.insert(0, str(BENCH_DIR))
        variant = dict(part.split("=") for part in args.one.split(","))
        print(json.dumps(measure(variant, args.seconds, args.connections)), flush=True)
        # The server's threads (uvicorn's, the SQLite writer) are still running: leave
        # without the interpreter's teardown, which crashed once under them (SIGSEGV).
        os._exit(0)
    results: dict[str, list[dict]] = {v.split(":")[0]: [] for v in args.variants}
    for _ in range(args.rounds):
        for spec in args.variants:
            name, _, settings = spec.partition(":")
            argv = [sys.executable, __file__, "--one", settings, "--seconds", str(args.seconds)]
            argv += ["--connections", str(args.connections)]
            done = subprocess.run(argv, check=True, capture_output=True, text=True)
            results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{name}: {results[name][-1]}", file=sys.stderr, flush=True)
    print(
        "| variant | settings | server CPU µs/request (median; each round) | GC µs/request "
        "| young collections / 10k requests | req/s (median) | p99 ms (median) |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for spec in args.variants:
        name, _, settings = spec.partition(":")
        runs = results[name]
        cpu = [r["server_cpu_us_per_request"] for r in runs]
        young = statistics.median(r["collections"]["0"] / r["requests"] * 10_000 for r in runs)
        print(
            f"| {name} | {settings} | {statistics.median(cpu):.1f}; "
            + " / ".join(f"{c:.1f}" for c in cpu)
            + f" | {statistics.median(r['gc_us_per_request'] for r in runs):.2f} "
            f"| {young:.1f} | {statistics.median(r['requests_per_s'] for r in runs):,.0f} "
            f"| {statistics.median(r['p99_ms'] for r in runs):.1f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
