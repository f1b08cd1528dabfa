"""What the cyclic garbage collector costs the edge per request, at a given threshold.

Serves ``create_app`` (the embedded default, SQLite in a temporary directory) with
uvicorn on uvloop and the server's protocol (``DrainingHttpProtocol``) in this process,
drives ``POST /v1/track`` with wrk (bench/post.lua, one ~780-byte event), and times
every collection through ``gc.callbacks``. The app's own start-up does ``gc.freeze()``
(router_core/app.py's Lifespan), as under ``eventrouter serve``. One line per
threshold, each in a fresh process, side by side:

    .venv/bin/python bench/gc_pauses.py [--seconds 5] [--connections 64] \\
        [--thresholds 700,10,10 10000,10,10 50000,20,100]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def measure(threshold: tuple[int, ...], seconds: float, connections: int) -> dict:
    import ingest
    import uvicorn

    from eventrouter.app import create_app
    from eventrouter.config import load
    from eventrouter.server import DrainingHttpProtocol

    workdir = Path(tempfile.mkdtemp(prefix="eventrouter-gc-"))
    os.environ["EVENTROUTER_DATA_DIR"] = str(workdir)
    app = create_app(load(None))
    port = ingest.free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            loop="uvloop",
            http=DrainingHttpProtocol,
            lifespan="on",
            log_level="warning",
        )
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    gc.set_threshold(*threshold)
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
        "threshold": threshold,
        "requests_per_s": requests / (result.duration_us / 1e6),
        "server_cpu_us_per_request": cpu / requests * 1e6,
        "p99_ms": result.p99_us / 1000,
        "gc_us_per_request": sum(p[1] for p in pauses.values()) / requests * 1e6,
        "collections": {gen: p[0] for gen, p in pauses.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--thresholds", nargs="+", default=["700,10,10", "10000,10,10"])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        sys.path.insert(0, str(BENCH_DIR))
        threshold = tuple(int(x) for x in args.one.split(","))
        print(json.dumps(measure(threshold, args.seconds, args.connections)))
        return 0
    print(
        "| gc threshold | req/s | server CPU µs/request | GC µs/request | collections "
        "(gen 0 / 1 / 2) | p99 ms |"
    )
    print("| --- | ---: | ---: | ---: | --- | ---: |")
    for threshold in args.thresholds:
        out = (
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    threshold,
                    "--seconds",
                    str(args.seconds),
                    "--connections",
                    str(args.connections),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        r = json.loads(out)
        c = r["collections"]
        print(
            f"| {threshold} | {r['requests_per_s']:,.0f} | {r['server_cpu_us_per_request']:.1f} "
            f"| {r['gc_us_per_request']:.2f} | {c['0']} / {c['1']} / {c['2']} "
            f"| {r['p99_ms']:.1f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
