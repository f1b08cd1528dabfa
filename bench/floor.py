"""Where an event's CPU goes: each step of the write path, timed in this process alone.

The throughput benchmarks (ingest.py, sinks.py, e2e.py) measure whole servers sharing
this machine's cores with wrk, RabbitMQ and the stores. This script times the steps the
edge, the worker and the ClickHouse sink run for every event, one after the other on one
core with nothing else to do, on the ingest benchmark's ``/v1/batch`` body (100
``Product Viewed`` events of ~800 bytes). Its figures are an upper bound of what the
servers can reach: the sum of the steps a process runs, in µs per event, caps that
process at ``1e6 / sum`` events/s per core, before HTTP, the broker, the store and
contention for the cores are counted. The CPU time the hypervisor took from this
machine during the run (``steal`` in /proc/stat) is printed beside the table.

    .venv/bin/python bench/floor.py [--rounds 300] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent

from ingest import BATCH_SIZE, make_scenarios  # noqa: E402

from eventrouter import scan  # noqa: E402
from eventrouter.edge import limits  # noqa: E402
from eventrouter.events import model  # noqa: E402
from eventrouter.events.commands import encode_many  # noqa: E402
from eventrouter.events.normalise import Arrival, to_command  # noqa: E402
from eventrouter.queue import broker  # noqa: E402
from eventrouter.queue.worker import gc_paused  # noqa: E402
from eventrouter.sinks import clickhouse  # noqa: E402

#: The rows that time a whole worker batch, with and without the collector.
BATCH = "worker batch"
#: server.max_json_depth and server.max_json_keys, their defaults.
MAX_DEPTH, MAX_KEYS = 64, 10_000


def steal_ticks() -> tuple[int, int]:
    """(steal, total) CPU ticks of the machine so far, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[7], sum(fields[:8])


def per_event(step: Callable[[], object], rounds: int, events: int) -> float:
    """µs of CPU per event for ``step`` (which handles ``events`` events), best of 3."""
    step()
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for _ in range(rounds):
            step()
        best = min(best, (time.process_time() - started) / rounds / events * 1e6)
    return best


def steps() -> list[tuple[str, str, Callable[[], object], int]]:
    """Each step as ``(process, name, a call that runs it, events per call)``, set up on
    the ingest benchmark's batch body (bench/steps_callgrind.py counts the same calls'
    instructions)."""
    body = make_scenarios(datetime.now(UTC))[1].body
    envelope = model.BATCH_DECODER.decode(body)
    items = envelope.batch
    messages = [model.ANY_DECODER.decode(raw) for raw in items]
    env = Arrival(received_at=datetime.now(UTC), source="default", ip="127.0.0.1")
    commands = [to_command(message, env) for message in messages]
    wire = encode_many(commands)
    # The worker's batch: what 500 edge messages of 100 events hold.
    batch = commands * 500
    # ... as the worker receives it: 50 messages of 1,000 events (max_events_per_message).
    big_wire = encode_many(commands * 10)
    headers = broker.message_properties(10 * BATCH_SIZE)["headers"]

    def scans() -> bool:
        # As BatchResource does: one pass over the whole body (compiled where it was
        # built) for the structure limits and numbers no float holds, then the exact
        # check when the pass is not certain.
        within, overflow = scan.scan_body(body, MAX_DEPTH, MAX_KEYS)
        if not within:
            limits.check_batch_structure(body, items, MAX_DEPTH, MAX_KEYS)
        return overflow

    checked = not scans()

    def decode_items() -> list:
        return [model.ANY_DECODER.decode(raw, numbers_checked=checked) for raw in items]

    def decode_batch() -> None:
        decoded = [broker.decode(big_wire, headers) for _ in range(50)]
        del decoded  # freed here: the worker frees each batch once it is written

    def decode_batch_paused() -> None:
        with gc_paused():
            decode_batch()

    return [
        ("edge", "structure limits and overflow scan (scan.scan_body, one pass)",
         scans, BATCH_SIZE),
        ("edge", "decode the envelope (items left raw)",
         lambda: model.BATCH_DECODER.decode(body), BATCH_SIZE),
        ("edge", "decode each item (msgspec, typed)",
         decode_items, BATCH_SIZE),
        ("edge", "normalise (normalise.to_command)",
         lambda: [to_command(message, env) for message in messages], BATCH_SIZE),
        ("edge", "encode for the broker (JSON, the free-form fields copied as sent)",
         lambda: encode_many(commands), BATCH_SIZE),
        ("worker", "decode a broker message",
         lambda: broker.decode(wire, broker.message_properties(BATCH_SIZE)["headers"]), BATCH_SIZE),
        ("worker", "ClickHouse: the Native block's columns",
         lambda: list(clickhouse.native_columns(batch, datetime64=True)), len(batch)),
        (BATCH, "decode 50 messages of 1,000 events and free them, collector on",
         decode_batch, 50_000),
        (BATCH, "the same inside worker.gc_paused(), as the worker decodes",
         decode_batch_paused, 50_000),
    ]  # fmt: skip


def measure(
    rounds: int, sides: tuple[str, ...] = ("edge", "worker", BATCH)
) -> list[tuple[str, str, float]]:
    return [
        (side, name, per_event(step, max(1, rounds * BATCH_SIZE // events), events))
        for side, name, step, events in steps()
        if side in sides
    ]


def edge_pace(rounds: int = 30) -> float:
    """The edge's steps summed (µs per event): how fast this machine runs the same
    Python right now. The same code measured 5.7 and 9.5 within minutes on one VM, so
    bench/all.py prints it before and after its runs, beside figures that have no
    same-run baseline (events/s and rows/s targets)."""
    return sum(us for _, _, us in measure(rounds, ("edge",)))


def report(rows: list[tuple[str, str, float]], steal: float) -> list[str]:
    lines = [
        "| process | step | µs per event | events/s on one core |",
        "| --- | --- | ---: | ---: |",
    ]
    for side in ("edge", "worker", BATCH):
        mine = [row for row in rows if row[0] == side]
        for _, name, us in mine:
            lines.append(f"| {side} | {name} | {us:.2f} | {1e6 / us:,.0f} |")
        if side == BATCH:  # two ways of one step: no sum
            continue
        total = sum(us for _, _, us in mine)
        lines.append(
            f"| {side} | **all of the above** | **{total:.2f}** | **{1e6 / total:,.0f}** |"
        )
    lines.append("")
    lines.append(f"CPU time stolen by the hypervisor during the run: {steal:.1f} %")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300, help="batches per timing [300]")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    steal0, total0 = steal_ticks()
    rows = measure(args.rounds)
    steal1, total1 = steal_ticks()
    steal = 100 * (steal1 - steal0) / max(1, total1 - total0)
    print("\n".join(report(rows, steal)))
    if args.json:
        args.json.write_text(
            json.dumps({"steal_percent": steal, "rows": [list(row) for row in rows]}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
