"""Every throughput figure of the project from one command, in one table.

    .venv/bin/python bench/all.py [--quick]
        [--only ingest,queue,sinks,e2e,dashboard,scaling,quality]
        [--duration 15] [--warmup 2] [--connections 64] [--workers N] [--no-fsync]
        [--sinks sqlite,s3,postgres,clickhouse] [--batches 10] [--batch-events 50000]
        [--stores sqlite,postgres,clickhouse] [--events 10000000] [--requests 20] [--reload]
        [--repeat 1] [--json FILE] [--shards-config FILE --shards-ports 9001,9002]

The areas run one after the other, each through the script that owns it (imported, not
copied), with that script's defaults unless an option here says otherwise:

- **ingest** (bench/ingest.py): wrk against the bare Falcon endpoint, ``eventrouter
  serve`` in embedded mode and with ``synchronous = "full"``, single and batch;
- **queue** (bench/ingest.py's ``eventrouter-queue``): the edge publishing to RabbitMQ,
  then ``eventrouter worker`` draining the single run's queue into SQLite. The bare
  endpoint runs whenever ingest or queue does: every ratio is to the bare run of this
  invocation;
- **sinks** (bench/sinks.py): each storage sink taking worker-sized batches through the
  bus;
- **e2e** (bench/e2e.py): ``/v1/batch`` → RabbitMQ → ``eventrouter worker`` →
  ClickHouse under wrk's load: events/s stored and the queue depth's growth;
- **dashboard** (bench/dashboard.py): every admin dashboard view (explorer, chart,
  breakdown, the user page, active users, funnels, retention) over 10,000,000 events
  spread over 30 days in SQLite, PostgreSQL and ClickHouse (loaded once, then kept
  between runs), each view's median and p95 beside its target;
- **scaling** (bench/scaling.py): the e2e path with 1 against 2 ``eventrouter worker``
  processes side by side, and 1 against 2 ClickHouse shards (the cluster suite's two
  shards, started for the run; ``--shards-config`` for shards of your own,
  ``--no-shards`` to leave them out), and one worker on quorum queues on three
  RabbitMQ nodes (``--no-quorum`` to leave it out): events/s stored and the CPU each
  component spends per event;
- **quality** (bench/quality.py): the JSON Schema validators on the e-commerce tracking
  plan, and the edge's CPU per event with no plan, a plan and the event catalogue.

It prints one markdown table (area, scenario, what was measured, the figure, its ratio
to the bare endpoint, p99, the issue's target and whether it was met), writes it as JSON
(``--json``, default ``bench/results/all-latest.json``) and writes every area's full
report below the table to ``bench/results/all-latest.md``. Exit status: 0 when every
area was measured (a missed target is reported, not an error), 1 when an area failed,
a dashboard response was not 200 or acknowledged events went missing. With
``--repeat N`` the areas run N times over, each run judged on its own (its ratios to its
own bare run), and a last table puts the runs side by side with how many met each
target: on a machine whose pace moves by half from minute to minute, one run's verdict
says little. See bench/README.md, "One command".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
# The scripts import one another by name; a test loads this one by its path.
if str(BENCH_DIR) not in sys.path:
    sys.path.append(str(BENCH_DIR))

import dashboard  # noqa: E402
import e2e as e2e_bench  # noqa: E402
import floor  # noqa: E402
import ingest  # noqa: E402
import quality as quality_bench  # noqa: E402
import scaling as scaling_bench  # noqa: E402

sink_bench = dashboard.sink_bench  # bench/sinks.py, loaded under a name of its own

RESULTS_DIR = BENCH_DIR / "results"
REPO_ROOT = BENCH_DIR.parent
AREAS = ("ingest", "queue", "sinks", "e2e", "dashboard", "scaling", "quality")
SINKS = tuple(sink_bench.TARGETS)  # sqlite, s3, postgres, clickhouse

#: ``--quick``: a smoke run of everything in a few minutes; the figures mean little.
QUICK = {
    "duration": 3.0,
    "warmup": 1.0,
    "batches": 2,
    "batch_events": 10_000,
    "events": 100_000,
    "requests": 5,
}
#: The full run's defaults: each script's own.
FULL = {
    "duration": 15.0,
    "warmup": 2.0,
    "batches": 10,
    "batch_events": 50_000,
    "events": dashboard.DEFAULT_EVENTS,
    "requests": 20,
}

SCENARIOS = {"single": "single: POST /v1/track", "batch": "batch: POST /v1/batch (100 events)"}


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# -- the table ---------------------------------------------------------------------------------
@dataclass
class Row:
    """One figure of the combined table, with the target it is held to (if any)."""

    area: str  # ingest, queue, sinks, e2e, dashboard, scaling, quality
    scenario: str
    subject: str  # what was measured: a server, a sink, a store
    figure: float | None  # None when the measurement failed
    unit: str
    p99_ms: float | None = None
    #: Ratio to the bare endpoint's figure for the same scenario in the same run.
    against_bare: bool = False
    ratio: float | None = None
    at_least: float | None = None
    at_most: float | None = None
    ratio_at_least: float | None = None
    p99_at_most_ms: float | None = None
    target: str = ""  # the target as its issue states it; "" when there is none
    #: False when the measurement itself went wrong (events lost, a drain cut short, a
    #: response that was not 200): the row cannot meet its target.
    valid: bool = True
    note: str = ""
    met: bool | None = None  # None: no target, or not evaluated (see note)


def _checks(row: Row) -> list[bool | None]:
    def check(limit: float | None, value: float | None, ok: Callable[[float], bool]) -> None:
        if limit is not None:
            checks.append(None if value is None else ok(value))

    checks: list[bool | None] = []
    check(row.at_least, row.figure, lambda v: v >= row.at_least)
    check(row.at_most, row.figure, lambda v: v <= row.at_most)
    check(row.ratio_at_least, row.ratio, lambda v: v >= row.ratio_at_least)
    check(row.p99_at_most_ms, row.p99_ms, lambda v: v <= row.p99_at_most_ms)
    return checks


def merge(*groups: Iterable[Row]) -> list[Row]:
    """The areas' rows as one table, in :data:`AREAS` order (stable within an area).
    Each ``against_bare`` row gets its ratio to the bare endpoint's row of the same
    scenario among them (that is, of the same run), and every row with a target is
    judged. A target that needs a missing figure (no bare run, a failed measurement) is
    not evaluated, unless another part of it already failed."""
    rows = [replace(row) for group in groups for row in group]
    rows.sort(key=lambda row: AREAS.index(row.area) if row.area in AREAS else len(AREAS))
    bare = {row.scenario: row.figure for row in rows if row.subject == "bare"}
    for row in rows:
        if row.against_bare and row.figure is not None and bare.get(row.scenario):
            row.ratio = row.figure / bare[row.scenario]
        checks = _checks(row)
        if (not row.valid and row.target) or False in checks:
            row.met = False
        elif None in checks or not checks:
            row.met = None
        else:
            row.met = True
        if checks and row.met is None and not row.note:
            row.note = "not evaluated: " + (
                "no bare run" if row.figure is not None else "no figure"
            )
    return rows


def _figure(row: Row) -> str:
    if row.figure is None:
        return "not built" if row.note == "not built" else "failed"
    return f"{row.figure:,.1f}" if row.unit.startswith(("ms", "µs")) else f"{row.figure:,.0f}"


def markdown(rows: Sequence[Row]) -> list[str]:
    lines = [
        "| area | scenario | measured | figure | unit | vs bare (same run) | p99 ms "
        "| target | met | note |",
        "| --- | --- | --- | ---: | --- | ---: | ---: | --- | --- | --- |",
    ]
    for row in rows:
        ratio = "" if row.ratio is None else f"{row.ratio:.0%}"
        p99 = "" if row.p99_ms is None else f"{row.p99_ms:.1f}"
        met = {None: "" if not row.target else "n/e", True: "yes", False: "**no**"}[row.met]
        cells = [row.area, row.scenario, row.subject, _figure(row), row.unit, ratio, p99]
        cells += [row.target, met, row.note]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# -- rows from each script's results -------------------------------------------------------
def ingest_rows(runs: Sequence[Any], connections: int) -> list[Row]:
    """Rows from bench/ingest.py's ``TargetRun`` list: one per target and scenario, and
    the worker drain after the queue's single run."""
    rows: list[Row] = []
    for run in runs:
        for m in run.measurements:
            rows.append(_measurement_row(m, connections))
            if (cpu := _cpu_row(m)) is not None:
                rows.append(cpu)
        if run.drain is not None:
            single = next((m for m in run.measurements if m.scenario.name == "single"), None)
            rate = single.durable_per_s if single is not None else None
            drain = run.drain
            rows.append(
                Row(
                    area="queue",
                    scenario="worker drain: the single run's queue → SQLite",
                    subject="eventrouter worker (1 process)",
                    figure=drain.steady_per_s,
                    unit="events/s stored",
                    at_least=rate,
                    target="" if rate is None else f"≥ queue single ingest ({rate:,.0f})",
                    valid=drain.complete,
                    note=""
                    if drain.complete
                    else f"INCOMPLETE: {drain.rows:,} of {drain.events:,} stored",
                )
            )
    return rows


def _cpu_row(m: Any) -> Row | None:
    """The server's CPU per event answered 200: what the request path costs, whatever
    share of the machine the server got. On a busy machine req/s swings with the load
    of other processes; this moves far less (bench/README.md, "Before and after")."""
    events = m.acknowledged_events
    if not events or getattr(m, "server_cpu", None) is None:
        return None
    return Row(
        area="queue" if m.target == "eventrouter-queue" else "ingest",
        scenario=SCENARIOS.get(m.scenario.name, m.scenario.name),
        subject=f"{m.target}: server CPU",
        figure=m.server_cpu / events * 1e6,
        unit="µs CPU per event",
    )


def _measurement_row(m: Any, connections: int) -> Row:
    name, target = m.scenario.name, m.target
    row = Row(
        area="queue" if target == "eventrouter-queue" else "ingest",
        scenario=SCENARIOS.get(name, name),
        subject=target,
        figure=None,
        unit="",
        p99_ms=m.wrk.p99_us / 1000,
        against_bare=target != "bare",
    )
    lost = m.stored is not None and m.stored < m.acknowledged_events
    if lost:
        row.valid = False
        row.note = f"LOST: {m.acknowledged_events:,} acknowledged, {m.stored:,} durable"
    if m.wrk.status or m.wrk.socket_errors:
        row.note = (row.note + "; " if row.note else "") + (
            f"{m.wrk.status:,} non-2xx, {m.wrk.socket_errors:,} socket errors"
        )
    if target == "bare":
        row.figure = m.requests_per_s * m.scenario.events_per_request
        row.unit = "req/s" if m.scenario.events_per_request == 1 else "events/s accepted"
    elif target == "eventrouter-queue":
        row.figure = m.durable_per_s
        row.unit = "events/s held by RabbitMQ"
        if name == "single":
            row.ratio_at_least = ingest.QUEUE_SINGLE_RATIO_TARGET
            row.target = (
                f"≥ {ingest.QUEUE_SINGLE_RATIO_TARGET:.0%} of bare, "
                f"p99 ≤ {ingest.QUEUE_SINGLE_P99_TARGET_MS:g} ms"
            )
            row.p99_at_most_ms = _p99_limit(ingest.QUEUE_SINGLE_P99_TARGET_MS, connections)
        elif name == "batch":
            row.at_least = ingest.QUEUE_BATCH_EVENTS_TARGET
            row.target = f"≥ {ingest.QUEUE_BATCH_EVENTS_TARGET:,} events/s"
    elif name == "single":  # embedded: eventrouter, eventrouter-fsync
        row.figure = m.requests_per_s
        row.unit = "req/s"
        if target == "eventrouter":
            row.ratio_at_least = ingest.SINGLE_RATIO_TARGET
            row.target = (
                f"≥ {ingest.SINGLE_RATIO_TARGET:.0%} of bare, "
                f"p99 ≤ {ingest.SINGLE_P99_TARGET_MS:g} ms"
            )
            row.p99_at_most_ms = _p99_limit(ingest.SINGLE_P99_TARGET_MS, connections)
    else:
        row.figure = m.stored_per_s
        row.unit = "events/s stored"
        if target == "eventrouter" and name == "batch":
            row.at_least = ingest.BATCH_EVENTS_TARGET
            row.target = f"≥ {ingest.BATCH_EVENTS_TARGET:,} events/s"
    if target == "eventrouter-fsync" and not row.note:
        row.note = 'synchronous = "full": no target'
    if row.target and row.p99_at_most_ms is None and name == "single":
        row.note = (row.note + "; " if row.note else "") + (
            f"p99 not judged: its target is for 64 connections, not {connections}"
        )
    return row


def _p99_limit(limit_ms: float, connections: int) -> float | None:
    """The p99 targets are stated for 64 connections; at another count only the ratio
    is judged."""
    return limit_ms if connections == 64 else None


def sink_rows(results: Sequence[Any]) -> list[Row]:
    """Rows from bench/sinks.py's ``Result`` list: events/s each sink wrote."""
    return [
        Row(
            area="sinks",
            scenario=f"sink writes: {r.batches} x {r.events // r.batches:,} events via the bus",
            subject=r.name,
            figure=r.rate,
            unit="events/s written",
            at_least=r.target.goal,
            target="" if r.target.goal is None else f"≥ {r.target.goal:,.0f} events/s",
        )
        for r in results
    ]


def dashboard_rows(timings: Sequence[Any], events: int) -> list[Row]:
    """Rows from bench/dashboard.py's ``Timing`` list: the median time of each view,
    held to its target (300 ms; funnels 2,000 ms), the p95 in the note. A view of issue
    24 that this tree has not built (a 404) is "not built": no figure, not a failure."""
    rows = []
    for t in timings:
        target = t.endpoint.target_ms
        if t.not_built:
            note = dashboard.NOT_BUILT
        elif not t.ok:
            note = f"failed: {t.error or 'a response was not 200'}"
        else:
            note = f"p95 {t.p95:,.1f} ms" if t.ms else ""
        rows.append(
            Row(
                area="dashboard",
                scenario=t.endpoint.name,
                subject=f"{t.store}, {(t.rows or events):,} events",
                figure=t.median if t.ms else None,
                unit=f"ms, median of {len(t.ms)}" if t.ms else "ms",
                at_most=target,
                target=f"≤ {target:,.0f} ms",
                valid=t.ok,
                note=note,
            )
        )
    return rows


def e2e_rows(result: Any, workers: int) -> list[Row]:
    """Rows from bench/e2e.py: events/s stored while the load ran, and how fast the
    queue grew meanwhile (not growing: at most 5 % of the ingest rate)."""
    scenario = "/v1/batch → RabbitMQ → worker → ClickHouse"
    subject = f"eventrouter, {workers} worker{'s' if workers > 1 else ''}"
    lost = max(0, result.acknowledged - result.stored)
    note = f"{lost:,} acknowledged events not stored" if lost else ""
    return [
        Row(
            area="e2e",
            scenario=f"{scenario}: stored while {result.acknowledged_per_s:,.0f} events/s "
            "were acknowledged",
            subject=subject,
            figure=result.stored_per_s,
            unit="events/s stored",
            p99_ms=result.p99_ms,
            at_least=e2e_bench.TARGET,
            target=f"≥ {e2e_bench.TARGET:,} events/s sustained",
            valid=not lost,
            note=note,
        ),
        Row(
            area="e2e",
            scenario=f"{scenario}: queue depth growth during the load",
            subject=subject,
            figure=result.depth_slope,
            unit="events/s",
            at_most=0.05 * max(result.acknowledged_per_s, 1),
            target="not growing: ≤ 5 % of the ingest rate",
            valid=not lost,
        ),
    ]


def scaling_rows(results: list[Any]) -> list[Row]:
    """Rows from bench/scaling.py: events/s stored for each scenario (no target: the
    figures are for sizing), the CPU per event of each component in the note."""
    rows = []
    for result in results:
        per = {c: result.cpu_us_per_event(c) for c in scaling_bench.COMPONENTS}
        cpu = ", ".join(f"{c} {v:,.1f}" for c, v in per.items() if v is not None)
        lost = f"; {result.lost:,} acknowledged events not stored" if result.lost else ""
        rows.append(
            Row(
                area="scaling",
                scenario="/v1/batch → RabbitMQ → worker(s) → ClickHouse",
                subject=result.scenario.label,
                figure=result.stored_per_s,
                unit="events/s stored",
                valid=not result.lost and result.drained_after_s is not None,
                note=f"CPU µs/event: {cpu}{lost}",
            )
        )
    return rows


def failure_row(area: str, subject: str, error: str) -> Row:
    """An area (or one sink or store of it) that could not be measured."""
    return Row(area, "—", subject, None, "", valid=False, note=f"failed: {error}")


# -- running -----------------------------------------------------------------------------------
@dataclass
class Outcome:
    rows: list[Row] = field(default_factory=list)
    #: Each area's own full report, for bench/results/all-latest.md.
    reports: list[str] = field(default_factory=list)
    #: Lines a reader must not miss (anomalies of the ingest runs).
    notes: list[str] = field(default_factory=list)


def run_ingest(args: argparse.Namespace, outcome: Outcome) -> None:
    targets = ["bare"]
    if "ingest" in args.only:
        targets += ["eventrouter"] + ([] if args.no_fsync else ["eventrouter-fsync"])
    if "queue" in args.only:
        targets.append("eventrouter-queue")
    argv = ["--broker", args.broker]
    argv += ["--duration", f"{args.duration:g}", "--warmup", f"{args.warmup:g}"]
    argv += ["--connections", str(args.connections), "--workers", str(args.workers)]
    ingest_args = ingest.parse_args([*argv, "--targets", ",".join(targets)])
    problem = ingest.missing_prerequisite(ingest_args)
    if problem and "eventrouter-queue" in targets and "ingest" in args.only:
        # No broker: the queue's row says so, and the embedded targets still run.
        log(f"queue: {problem}")
        outcome.rows.append(failure_row("queue", "eventrouter-queue", _short(problem)))
        targets.remove("eventrouter-queue")
        ingest_args = ingest.parse_args([*argv, "--targets", ",".join(targets)])
        problem = ingest.missing_prerequisite(ingest_args)
    if problem:
        raise RuntimeError(problem)
    result = ingest.run(ingest_args)
    outcome.rows += ingest_rows(result.runs, args.connections)
    outcome.notes += ingest.anomalies(result.runs)
    outcome.reports += ["## Ingestion (bench/ingest.py)", "", *result.report, ""]


def run_sinks(args: argparse.Namespace, outcome: Outcome) -> None:
    measured = []
    for name in args.sinks:  # one at a time: a store that is down costs only its row
        argv = ["--targets", name, "--batches", str(args.batches)]
        argv += ["--batch-events", str(args.batch_events)]
        try:
            results = sink_bench.run(sink_bench.parse_args(argv))
        except Exception as exc:
            log(f"sinks: {name} failed: {exc!r}")
            outcome.rows.append(failure_row("sinks", name, _short(exc)))
            continue
        outcome.rows += sink_rows(results)
        measured += results
    if measured:
        outcome.reports += [sink_bench.report(measured)]


def run_e2e(args: argparse.Namespace, outcome: Outcome) -> None:
    argv = ["--duration", f"{args.duration:g}", "--connections", str(args.connections)]
    argv += ["--server-workers", str(args.workers), "--broker", args.broker]
    e2e_args = e2e_bench.parse_args(argv)
    result = e2e_bench.run(e2e_args)
    outcome.rows += e2e_rows(result, e2e_args.workers)
    outcome.reports += [e2e_bench.report(result, e2e_args)]


def run_scaling(args: argparse.Namespace, outcome: Outcome) -> None:
    argv = ["--duration", f"{args.duration:g}", "--broker", args.broker]
    argv += ["--server-workers", str(args.workers)]
    if args.shards_config:
        argv += ["--shards-config", str(args.shards_config)]
        argv += ["--shards-ports", ",".join(str(p) for p in args.shards_ports)]
    elif not args.no_shards:  # 1 against 2 shards, on the cluster suite's two shards
        argv += ["--shards"]
    if not args.no_quorum:  # quorum queues on the cluster suite's three RabbitMQ nodes
        argv += ["--quorum"]
    scaling_args = scaling_bench.parse_args(argv)
    results = scaling_bench.run(scaling_args)
    outcome.rows += scaling_rows(results)
    outcome.reports += [scaling_bench.report(results, scaling_args)]


def run_quality(args: argparse.Namespace, outcome: Outcome) -> None:
    """bench/quality.py: a tracking plan's cost per event (docs/data-quality.md)."""
    events, rounds = (2_000, 1) if args.quick else (20_000, 3)
    validators, edge = quality_bench.measure(events, rounds)
    batch = SCENARIOS["batch"]
    for variant, micros in edge.items():
        subject = "eventrouter" if variant == "no plan" else f"eventrouter, {variant}"
        outcome.rows.append(Row("quality", batch, subject, round(micros, 1), "µs CPU/event"))
    for name, label, micros in validators:
        scenario = f"validator: {label} event"
        outcome.rows.append(Row("quality", scenario, name, round(micros, 2), "µs/event"))
    outcome.reports += [
        "## Tracking plans (bench/quality.py)",
        "",
        *quality_bench.report(validators, edge),
        "",
    ]


def run_dashboard(args: argparse.Namespace, outcome: Outcome) -> None:
    for name in args.stores:
        argv = ["--stores", name, "--events", str(args.events)]
        argv += ["--requests", str(args.requests)] + (["--reload"] if args.reload else [])
        try:
            result = dashboard.run(dashboard.parse_args(argv))
        except Exception as exc:
            log(f"dashboard: {name} failed: {exc!r}")
            outcome.rows.append(failure_row("dashboard", name, _short(exc)))
            continue
        outcome.rows += dashboard_rows(result.timings, args.events)
        outcome.reports += [result.report]


def _short(error: BaseException | str) -> str:
    """One line for the note column (no ``|``, which would split the cell)."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return (text.splitlines() or [""])[0][:200].replace("|", "/")


def machine() -> dict[str, Any]:
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "?",
    )
    git = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model,
        "python": platform.python_version(),
        "git": git or "?",
    }


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def _options(values: dict[str, float]) -> str:
    return ", ".join(f"--{key.replace('_', '-')} {value:.10g}" for key, value in values.items())


def without_figures(text: str) -> str:
    """``text`` with its measured figures (``51,274``, ``7115``) as ``…``; small
    constants (``/v1``, ``100 events``) are kept."""
    return re.sub(r"\b(?:\d{1,3}(?:,\d{3})+|\d{4,})(?:\.\d+)?\b", "…", text)


def side_by_side(runs: Sequence[Sequence[Row]]) -> list[str]:
    """The rows that have a target, one column per run: the figure (its ratio to that
    run's bare endpoint, its p99 when the target has one; bold when that run met the
    target) and how many runs met it."""
    keys: list[tuple[str, str, str]] = []
    cells: dict[tuple[str, str, str], list[Row | None]] = {}
    for number, rows in enumerate(runs):
        for row in rows:
            if not row.target:
                continue
            # A scenario or target may quote one run's figures ("stored while 51,274
            # events/s were acknowledged"): the runs' rows are matched without them.
            key = (row.area, without_figures(row.scenario), row.subject)
            if key not in cells:
                keys.append(key)
                cells[key] = [None] * len(runs)
            cells[key][number] = row
    head = " | ".join(f"run {n}" for n in range(1, len(runs) + 1))
    lines = [
        f"| area | scenario | measured | target | {head} | met |",
        "| --- | --- | --- | --- | " + " | ".join("---:" for _ in runs) + " | --- |",
    ]
    for key in keys:
        per_run = cells[key]
        texts = []
        for row in per_run:
            if row is None:
                texts.append("")
                continue
            text = _figure(row)
            if row.ratio is not None:
                text += f" ({row.ratio:.0%})"
            if row.p99_at_most_ms is not None and row.p99_ms is not None:
                text += f", p99 {row.p99_ms:.1f} ms"
            texts.append(f"**{text}**" if row.met else text)
        targets = {row.target for row in per_run if row is not None}
        target = targets.pop() if len(targets) == 1 else without_figures(targets.pop())
        met = sum(row is not None and row.met is True for row in per_run)
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {target} | {' | '.join(texts)} "
            f"| {met} of {len(runs)} |"
        )
    return lines


# -- main ------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Without --quick, each option defaults to its script's own default "
        f"({_options(FULL)}); with --quick to "
        f"{_options(QUICK)}. See bench/README.md.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="short runs and small sizes: a smoke run"
    )
    parser.add_argument(
        "--only",
        metavar="AREA[,AREA]",
        help=f"areas to run, from {', '.join(AREAS)} [all]",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="the table as JSON [bench/results/all-latest.json]",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run the areas N times and add a table of the runs side by side [1]",
    )
    group = parser.add_argument_group("ingest and queue (bench/ingest.py)")
    group.add_argument("--duration", type=float, help="seconds per measured wrk run [15]")
    group.add_argument("--warmup", type=float, help="discarded seconds before each [2]")
    group.add_argument("--connections", type=int, default=64, help="wrk connections [64]")
    group.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="gunicorn workers [nproc]"
    )
    group.add_argument(
        "--no-fsync", action="store_true", help='skip eventrouter-fsync (synchronous = "full")'
    )
    group.add_argument(
        "--broker",
        default=ingest.DEFAULT_BROKER,
        metavar="URL",
        help="RabbitMQ on loopback [%(default)s]",
    )
    group = parser.add_argument_group("sinks (bench/sinks.py)")
    group.add_argument(
        "--sinks", default=",".join(SINKS), help=f"comma-separated [{','.join(SINKS)}]"
    )
    group.add_argument("--batches", type=int, help="measured batches per sink [10]")
    group.add_argument("--batch-events", type=int, help="events per batch [50000]")
    group = parser.add_argument_group("dashboard (bench/dashboard.py)")
    stores = ",".join(dashboard.STORES)
    group.add_argument("--stores", default=stores, help=f"comma-separated [{stores}]")
    group.add_argument("--events", type=int, help=f"events stored [{dashboard.DEFAULT_EVENTS}]")
    group.add_argument("--requests", type=int, help="timed requests per endpoint [20]")
    group.add_argument("--reload", action="store_true", help="load the stored events again")
    group = parser.add_argument_group("scaling (bench/scaling.py)")
    group.add_argument(
        "--shards-config",
        metavar="FILE",
        help="a [sinks.warehouse] table for 1 against 2 shards [the cluster suite's two shards, "
        "started and stopped by bench/scaling.py --shards]",
    )
    group.add_argument(
        "--no-shards", action="store_true", help="leave out 1 against 2 shards (no ZooKeeper)"
    )
    group.add_argument(
        "--no-quorum",
        action="store_true",
        help="leave out quorum queues on three RabbitMQ nodes",
    )
    group.add_argument(
        "--shards-ports",
        type=scaling_bench.positive_list,
        default=[9000],
        help="native ports of the sharded config's servers [9000]",
    )
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.only = [a.strip() for a in (args.only or ",".join(AREAS)).split(",") if a.strip()]
    unknown = [a for a in args.only if a not in AREAS]
    if unknown or not args.only:
        parser.error(f"--only: choose from {', '.join(AREAS)}")
    args.sinks = [s.strip() for s in args.sinks.split(",") if s.strip()]
    if unknown := [s for s in args.sinks if s not in SINKS]:
        parser.error(f"--sinks: unknown {', '.join(unknown)}; known: {', '.join(SINKS)}")
    args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if unknown := [s for s in args.stores if s not in dashboard.STORES]:
        parser.error(
            f"--stores: unknown {', '.join(unknown)}; known: {', '.join(dashboard.STORES)}"
        )
    for name in ("duration", "warmup", "connections", "workers", "batches", "batch_events"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.events < 1 or args.requests < 1:
        parser.error("--events and --requests must be at least 1")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # A SIGTERM (a CI timeout) unwinds like Ctrl-C, so every server started is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    RESULTS_DIR.mkdir(exist_ok=True)
    steps: list[tuple[str, Callable[[argparse.Namespace, Outcome], None]]] = []
    if {"ingest", "queue"} & set(args.only):
        steps.append(("ingest", run_ingest))
    if "sinks" in args.only:
        steps.append(("sinks", run_sinks))
    if "e2e" in args.only:
        steps.append(("e2e", run_e2e))
    if "dashboard" in args.only:
        steps.append(("dashboard", run_dashboard))
    if "scaling" in args.only:
        steps.append(("scaling", run_scaling))
    if "quality" in args.only:
        steps.append(("quality", run_quality))
    runs = [run_once(args, steps, number) for number in range(1, args.repeat + 1)]
    tables = [line for run in runs for line in (*run.table, "")]
    if len(runs) > 1:
        tables += [f"Side by side, {len(runs)} runs:", "", *side_by_side([r.rows for r in runs])]
    print("\n".join(tables).rstrip("\n"))
    latest = RESULTS_DIR / "all-latest.md"
    reports = [line for run in runs for line in run.reports]
    latest.write_text("\n".join(["# All benchmarks", "", *tables, "", *reports]) + "\n")
    json_path = args.json or RESULTS_DIR / "all-latest.json"
    documents = [run.document for run in runs]
    document = documents[0] if len(runs) == 1 else {"runs": documents, "args": documents[0]["args"]}
    json_path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    log(f"table written to {json_path}; full reports in {latest.relative_to(REPO_ROOT)}")
    return 1 if any(run.failed for run in runs) else 0


@dataclass
class Run:
    """One run of the areas: its judged rows, its table (header first), the areas' full
    reports and its JSON document."""

    rows: list[Row]
    table: list[str]
    reports: list[str]
    document: dict[str, Any]

    @property
    def failed(self) -> bool:
        return any(not row.valid for row in self.rows)


def run_once(
    args: argparse.Namespace,
    steps: Sequence[tuple[str, Callable[[argparse.Namespace, Outcome], None]]],
    number: int,
) -> Run:
    """Run ``steps`` once (run ``number`` of ``args.repeat``)."""
    started_at, started, load_at_start = datetime.now(UTC), time.monotonic(), _load()
    pace_at_start = floor.edge_pace()
    outcome = Outcome()
    area_seconds = {}
    for area, step in steps:
        log(f"== {area}{f' (run {number} of {args.repeat})' if args.repeat > 1 else ''} ==")
        step_started = time.monotonic()
        try:
            step(args, outcome)
        except Exception as exc:
            log(f"{area} failed: {exc!r}")
            outcome.rows.append(failure_row(area, "—", _short(exc)))
        area_seconds[area] = round(time.monotonic() - step_started, 1)
    rows = merge(outcome.rows)
    pace_at_end = floor.edge_pace()
    seconds = time.monotonic() - started
    info = machine()
    header = (
        f"{f'Run {number} of {args.repeat}: ' if args.repeat > 1 else ''}"
        f"`bench/all.py{' --quick' if args.quick else ''}` on {started_at:%Y-%m-%d %H:%M} UTC, "
        f"{seconds / 60:.1f} min ({', '.join(f'{a} {s:.0f} s' for a, s in area_seconds.items())}); "
        f"nproc {info['nproc']} ({info['cpu']}), load average {load_at_start} at the start, "
        f"{_load()} at the end; the edge's per-event steps alone (bench/floor.py, idle) "
        f"{pace_at_start:.2f} µs at the start, {pace_at_end:.2f} µs at the end; eventrouter at "
        f"{info['git']}. ingest: wrk {args.connections} "
        f"connections, {args.duration:g} s runs after {args.warmup:g} s warm-ups, "
        f"{args.workers} gunicorn workers; sinks: {args.batches} x {args.batch_events:,} "
        f"events; dashboard: {args.events:,} events, {args.requests} requests per endpoint."
    )
    failed = [row for row in rows if not row.valid]
    missed = [row for row in rows if row.met is False and row.valid]
    missed_names = ", ".join(f"{r.area} {r.subject} {r.scenario.split(':')[0]}" for r in missed)
    summary = [
        f"- targets: {sum(row.met is True for row in rows)} met, {len(missed)} missed"
        + (f": {missed_names}" if missed else "")
    ]
    if failed:
        summary.append(f"- **{len(failed)} row(s) failed or lost events**: see the note column")
    table = [header, "", *markdown(rows), "", *summary]
    if outcome.notes:
        table += ["", "Anomalies (bench/ingest.py):", *outcome.notes]
    document = {
        "started": started_at.isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "area_seconds": area_seconds,
        "load_average": {"start": load_at_start, "end": _load()},
        "edge_pace_us": {"start": round(pace_at_start, 3), "end": round(pace_at_end, 3)},
        "machine": info,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": [asdict(row) for row in rows],
    }
    return Run(rows, table, outcome.reports, document)


if __name__ == "__main__":
    sys.exit(main())
