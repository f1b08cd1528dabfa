"""Issue 20's targets, each measured on this machine and judged, in one table.

    make bench-targets [BASE=REF] [BENCH_ARGS="--quick"]
    .venv/bin/python bench/targets.py [--quick] [--base REF | --no-ab] [--ab-rounds 2]
        [--only ingest,ab,sinks,e2e] [--duration 15] [--warmup 2] [--connections 64]
        [--workers 1] [--wrk-threads 1] [--broker URL] [--batches 10]
        [--batch-events 50000] [--e2e-duration 180] [--e2e-server-workers 2]
        [--e2e-workers 1] [--json FILE]

Each figure comes from the script that owns it, imported and run in this process:

- **ingest** (bench/ingest.py, bench/prototype.py): the bare endpoint, the confirmed
  minimal prototype (bench/prototype_app.py), ``eventrouter serve`` in queue mode
  (RabbitMQ with publisher confirms: the events the broker holds are counted) and in
  embedded mode (the rows SQLite gained are counted), one server after the other on the
  same gunicorn + uvicorn stack with the same worker count, each driven by wrk with one
  track event per ``/v1/track`` request and 100 per ``/v1/batch`` request;
- **ab** (bench/compare.py): bench/all.py ``--only queue`` of ``--base`` and of this
  tree, interleaved round by round: this tree's ``/v1/batch`` events/s held by RabbitMQ
  over the base's, medians of the rounds;
- **sinks** (bench/sinks.py): ClickHouse, PostgreSQL and S3 (``format = "ndjson"``, on
  moto), worker-sized batches through the bus;
- **e2e** (bench/e2e.py): ``/v1/batch`` → RabbitMQ → ``eventrouter worker`` → ClickHouse
  under wrk's load for ``--e2e-duration`` seconds (180: "sustained for 3 minutes").

The table (:data:`TARGETS`, one row per target of issue 20, item 5) gives the figure, the
figures it was computed from, and ``met``: ``yes``, **no**, or ``n/e`` (not evaluated:
the figure is missing, or the run was not the one the target is stated for, such as
fewer than 64 connections or a shorter e2e load). Every ratio is between figures of this
run. The table is printed, and written with the areas' full reports to
``bench/results/targets-latest.md`` and as JSON to ``--json`` (default
``bench/results/targets-latest.json``). Exit status: 2 for a bad option or an unknown
``--base``; 1 when an area failed or acknowledged events went missing; 0 otherwise. A
missed target is reported in the table, never an error. See bench/README.md, "Targets
(issue 20)".
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
# The scripts import one another by name; a test loads this one by its path.
if str(BENCH_DIR) not in sys.path:
    sys.path.append(str(BENCH_DIR))

import all as bench_all  # noqa: E402
import compare  # noqa: E402
import prototype  # noqa: E402

ingest = bench_all.ingest
floor = bench_all.floor
sink_bench = bench_all.sink_bench  # bench/sinks.py, loaded under a name of its own
e2e_bench = bench_all.e2e_bench

RESULTS_DIR = BENCH_DIR / "results"
REPO_ROOT = BENCH_DIR.parent
AREAS = ("ingest", "ab", "sinks", "e2e")
#: The A/B's base when ``--base`` is not given: main when issue 20's work began.
ISSUE_20_BASE = "42ed56e"
#: "Sustained for 3 minutes": the e2e load of a full run, and what its target needs.
E2E_SECONDS = 180.0
#: The servers of the ingest area, in the order they run, and the name of their figures.
SERVERS = {
    "bare": "bare",
    "prototype": "prototype",
    "eventrouter-queue": "queue",
    "eventrouter": "embedded",
}
#: The sinks issue 20 sets a target for, and the unit of their figure.
SINKS = {"clickhouse": "rows_s", "postgres": "rows_s", "s3": "events_s"}

#: ``--quick``: a smoke run of every area in a few minutes; the figures mean little.
QUICK = {
    "duration": 3.0,
    "warmup": 1.0,
    "batches": 2,
    "batch_events": 10_000,
    "e2e_duration": 10.0,
    "ab_rounds": 1,
}
#: A full run: the scripts' own sizes, and the e2e load the target is stated for.
FULL = {
    "duration": 15.0,
    "warmup": 2.0,
    "batches": 10,
    "batch_events": 50_000,
    "e2e_duration": E2E_SECONDS,
    "ab_rounds": 2,
}


def log(message: str) -> None:
    print(f"targets: {message}", file=sys.stderr, flush=True)


# -- the targets -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Requirement:
    """A condition of the run under which a target is stated (64 connections, 180 s of
    load): when a figure of the run falls outside it, the target is not evaluated."""

    figure: str
    at_least: float | None = None
    at_most: float | None = None
    why: str = ""


@dataclass(frozen=True)
class Target:
    """One target of issue 20, item 5, and the figure of the run it is held to:
    ``figure`` alone, or ``figure / per`` (a ratio of two figures of the same run)."""

    key: str
    area: str
    goal: str  # as the issue states it
    measured: str  # what the figure is
    figure: str
    per: str | None = None
    at_least: float | None = None
    at_most: float | None = None
    unit: str = ""  # of the value judged: "x" for a ratio, "%" for a share
    requires: tuple[Requirement, ...] = ()


AT_64 = Requirement("ingest.connections", 64, 64, "stated for 64 connections")
SUSTAINED = Requirement("e2e.seconds", E2E_SECONDS * 0.99, None, "stated for 180 s of load")

TARGETS: tuple[Target, ...] = (
    Target(
        "queue.batch.rate",
        "queue mode, /v1/batch",
        "≥ 150,000 events/s confirmed by RabbitMQ",
        "eventrouter-queue: events acknowledged and held by RabbitMQ, per s",
        "queue.batch.events_s",
        at_least=150_000,
        unit="events/s",
    ),
    Target(
        "queue.batch.ab",
        "queue mode, /v1/batch",
        "≥ 1.5x the commit before this work (A/B, same run)",
        "the same figure, this tree / the base (bench/compare.py, medians of the rounds)",
        "ab.head.queue.batch.events_s",
        per="ab.base.queue.batch.events_s",
        at_least=1.5,
        unit="x",
    ),
    Target(
        "queue.single.bare",
        "queue mode, single events",
        "≥ 0.5x the bare endpoint",
        "eventrouter-queue events/s held by RabbitMQ / bare req/s",
        "queue.single.events_s",
        per="bare.single.req_s",
        at_least=0.5,
        unit="x",
    ),
    Target(
        "queue.single.prototype",
        "queue mode, single events",
        "≥ 1.0x the confirmed minimal prototype",
        "eventrouter-queue events/s held / the prototype's events/s confirmed",
        "queue.single.events_s",
        per="prototype.single.events_s",
        at_least=1.0,
        unit="x",
    ),
    Target(
        "queue.single.p99",
        "queue mode, single events",
        "p99 ≤ 20 ms at 64 connections",
        "eventrouter-queue: wrk's 99th latency percentile",
        "queue.single.p99_ms",
        at_most=20,
        unit="ms",
        requires=(AT_64,),
    ),
    Target(
        "queue.single.cpu",
        "queue mode, single events",
        "edge CPU per event ≤ 1.3x the prototype's",
        "server CPU µs per acknowledged event, eventrouter-queue / prototype",
        "queue.single.cpu_us",
        per="prototype.single.cpu_us",
        at_most=1.3,
        unit="x",
    ),
    Target(
        "embedded.single.bare",
        "embedded mode, single events",
        "≥ 0.5x the bare endpoint",
        "eventrouter events/s stored in SQLite / bare req/s",
        "embedded.single.events_s",
        per="bare.single.req_s",
        at_least=0.5,
        unit="x",
    ),
    Target(
        "embedded.batch.rate",
        "embedded mode, /v1/batch",
        "≥ 80,000 events/s stored",
        "eventrouter: events acknowledged and stored in SQLite, per s",
        "embedded.batch.events_s",
        at_least=80_000,
        unit="events/s",
    ),
    Target(
        "sinks.clickhouse",
        "sinks",
        "ClickHouse ≥ 400,000 rows/s",
        "clickhouse sink: rows written through the bus, per s",
        "sinks.clickhouse.rows_s",
        at_least=400_000,
        unit="rows/s",
    ),
    Target(
        "sinks.postgres",
        "sinks",
        "PostgreSQL ≥ 100,000 rows/s",
        "postgres sink: rows written through the bus, per s",
        "sinks.postgres.rows_s",
        at_least=100_000,
        unit="rows/s",
    ),
    Target(
        "sinks.s3",
        "sinks",
        "S3 NDJSON ≥ 500,000 events/s",
        "s3 sink (ndjson, moto): events written through the bus, per s",
        "sinks.s3.events_s",
        at_least=500_000,
        unit="events/s",
    ),
    Target(
        "e2e.stored",
        "end to end",
        "≥ 100,000 events/s stored, sustained for 3 minutes",
        "/v1/batch → RabbitMQ → worker → ClickHouse: events/s stored during the load",
        "e2e.stored.events_s",
        at_least=100_000,
        unit="events/s",
        requires=(SUSTAINED,),
    ),
    Target(
        "e2e.flat",
        "end to end",
        "a flat queue",
        "the queue's growth during the load / the events/s acknowledged (≤ 5 %)",
        "e2e.depth_growth.events_s",
        per="e2e.acknowledged.events_s",
        at_most=0.05,
        unit="%",
        requires=(SUSTAINED,),
    ),
    Target(
        "e2e.lost",
        "end to end",
        "0 lost",
        "events acknowledged by the edge and never stored in ClickHouse",
        "e2e.lost.events",
        at_most=0,
        unit="events",
    ),
)


@dataclass
class Measured:
    """What a run measured: named figures (see :func:`unit_of` for their names) and,
    keyed by a figure name or a prefix of it, what a reader must know about them."""

    figures: dict[str, float] = field(default_factory=dict)
    #: Why figures cannot count (acknowledged events lost): their targets are not met.
    problems: dict[str, str] = field(default_factory=dict)
    #: Why figures are missing (an area failed, or did not run).
    missing: dict[str, str] = field(default_factory=dict)
    #: What else to say beside them (error responses, socket errors).
    remarks: dict[str, str] = field(default_factory=dict)


@dataclass
class Verdict:
    """One row of the table: a target, the value of this run and whether it met it."""

    key: str
    area: str
    goal: str
    measured: str
    value: float | None
    unit: str
    basis: str  # the figures the value comes from
    met: bool | None  # None: not evaluated (see the note)
    note: str = ""


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _about(names: Iterable[str], notes: dict[str, str]) -> list[str]:
    """The notes whose key is one of ``names`` or a prefix of one, each once."""
    found = [text for key, text in notes.items() if any(_under(n, key) for n in names)]
    return list(dict.fromkeys(found))


#: Figure names end with their unit.
UNITS = {
    "req_s": "req/s",
    "events_s": "events/s",
    "rows_s": "rows/s",
    "cpu_us": "µs/event",
    "p99_ms": "ms",
    "seconds": "s",
    "events": "events",
    "connections": "connections",
}


def unit_of(name: str) -> str:
    """The unit of a figure, from the end of its name (``queue.single.cpu_us``:
    ``µs/event``)."""
    return UNITS.get(name.rsplit(".", 1)[-1], "")


def number(value: float, unit: str) -> str:
    """A figure or a judged value as the table shows it."""
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "%":
        return f"{value:.1%}"
    if unit in ("ms", "µs/event", "s"):
        return f"{value:,.1f} {unit}"
    return f"{value:,.0f} {unit}".rstrip()


def judge(target: Target, measured: Measured) -> Verdict:
    """``target`` held to the figures of ``measured``.

    Not met when a figure it uses is invalid (events lost); not evaluated when a figure
    is missing or a requirement of the run is not satisfied; otherwise met or not by
    the bound."""
    figures = measured.figures
    names = [target.figure] + ([target.per] if target.per else [])
    values = [figures.get(name) for name in names]
    value: float | None = values[0]
    basis = " / ".join(
        "?" if v is None else number(v, unit_of(n)) for n, v in zip(names, values, strict=True)
    )
    if target.per is not None:
        numerator, denominator = values
        value = None if numerator is None or not denominator else numerator / denominator
    notes = _about(names, measured.problems)
    met: bool | None
    if notes:
        met = False
    elif value is None:
        met = None
        notes = _about(names, measured.missing) or ["not measured"]
    else:
        unmet = [
            f"not judged: {r.why} (this run: {number(figures[r.figure], unit_of(r.figure))})"
            if r.figure in figures
            else f"not judged: {r.why} (this run: not measured)"
            for r in target.requires
            if r.figure not in figures
            or (r.at_least is not None and figures[r.figure] < r.at_least)
            or (r.at_most is not None and figures[r.figure] > r.at_most)
        ]
        if unmet:
            met, notes = None, unmet
        else:
            met = (target.at_least is None or value >= target.at_least) and (
                target.at_most is None or value <= target.at_most
            )
    notes += _about(names, measured.remarks)
    return Verdict(
        key=target.key,
        area=target.area,
        goal=target.goal,
        measured=target.measured,
        value=value,
        unit=target.unit,
        basis=basis if target.per else "",
        met=met,
        note="; ".join(notes),
    )


def verdicts(measured: Measured, targets: Sequence[Target] = TARGETS) -> list[Verdict]:
    return [judge(target, measured) for target in targets]


def markdown(rows: Sequence[Verdict]) -> list[str]:
    """The table: one row per target, with its figure, where it comes from and ``met``."""
    lines = [
        "| # | area | target (issue 20) | measured | figure | from | met | note |",
        "| ---: | --- | --- | --- | ---: | --- | --- | --- |",
    ]
    for index, row in enumerate(rows, 1):
        figure = "—" if row.value is None else number(row.value, row.unit)
        met = {True: "yes", False: "**no**", None: "n/e"}[row.met]
        cells = [str(index), row.area, row.goal, row.measured, figure, row.basis, met, row.note]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return lines


def summary(rows: Sequence[Verdict]) -> str:
    """``targets: 14: 2 met (#5, #14), 10 missed (#1, ...), 2 not evaluated (#12, #13)``:
    the rows by verdict, numbered as in :func:`markdown`."""
    labels = (("met", True), ("missed", False), ("not evaluated", None))
    parts = []
    for label, value in labels:
        found = [f"#{index}" for index, row in enumerate(rows, 1) if row.met is value]
        parts.append(f"{len(found)} {label}" + (f" ({', '.join(found)})" if found else ""))
    return f"targets: {len(rows)}: {', '.join(parts)}"


# -- figures from each script's results --------------------------------------------------------
def ingest_figures(measurements: Iterable[Any], measured: Measured) -> None:
    """Figures from bench/ingest.py ``Measurement``\\ s, named ``<server>.<scenario>.<unit>``
    (:data:`SERVERS`): the bare endpoint's req/s (single) or events/s accepted (batch);
    the prototype's events/s acknowledged (it answers only once RabbitMQ confirmed);
    eventrouter's events/s both acknowledged and durable (held by RabbitMQ, or stored in
    SQLite); each one's p99 and server CPU µs per acknowledged event."""
    for m in measurements:
        server, scenario = SERVERS[m.target], m.scenario.name
        prefix = f"{server}.{scenario}"
        acknowledged = m.acknowledged_events
        if server == "bare":
            rate = m.requests_per_s * m.scenario.events_per_request
            measured.figures[f"{prefix}.{'req_s' if scenario == 'single' else 'events_s'}"] = rate
        elif server == "prototype":
            measured.figures[f"{prefix}.events_s"] = acknowledged / m.wrk.seconds
        else:
            measured.figures[f"{prefix}.events_s"] = m.durable_per_s
        measured.figures[f"{prefix}.p99_ms"] = m.wrk.p99_us / 1000
        if acknowledged:
            measured.figures[f"{prefix}.cpu_us"] = m.server_cpu * 1e6 / acknowledged
        if m.stored is not None and m.stored < acknowledged:
            where = "held by RabbitMQ" if server == "queue" else "stored"
            measured.problems[prefix] = f"LOST: {acknowledged:,} acknowledged, {m.stored:,} {where}"
        said = []
        if m.wrk.status or m.wrk.socket_errors:
            said.append(f"{m.wrk.status:,} non-2xx, {m.wrk.socket_errors:,} socket errors")
        if m.restarted_workers:
            said.append(f"{m.restarted_workers} server process(es) exited mid-run")
        if said:
            measured.remarks[prefix] = f"{m.target} {scenario}: " + ", ".join(said)


def ab_figures(comparisons: Iterable[Any], documents: dict[str, dict], measured: Measured) -> None:
    """Figures from bench/compare.py's comparison of the two trees' queue rows: the
    median of each side's rounds, named ``ab.<side>.queue.<scenario>.events_s``. A round
    whose row lost events makes the figure invalid."""
    for c in comparisons:
        if c.area != "queue" or c.subject != "eventrouter-queue":
            continue
        scenario = c.scenario.split(":", 1)[0]
        rounds = "; ".join(
            f"{side}, each round: " + " / ".join(compare._number(v, c.unit) for v in values)
            for side, values in (("base", c.base), ("head", c.head))
        )
        measured.remarks[f"ab.base.queue.{scenario}.events_s"] = rounds
        for side in compare.SIDES:
            name = f"ab.{side}.queue.{scenario}.events_s"
            median = getattr(c, f"{side}_median")
            if median is not None:
                measured.figures[name] = median
            for number_, run in enumerate(compare.runs_of(documents[side]), 1):
                if run.get("error"):
                    measured.missing.setdefault(name, f"{side} round {number_}: {run['error']}")
                for row in run.get("rows") or []:
                    same = row.get("subject") == c.subject and row.get("area") == "queue"
                    if same and row.get("scenario") == c.scenario and not row.get("valid", True):
                        measured.problems[name] = f"{side} round {number_}: {row.get('note')}"


def sink_figures(results: Iterable[Any], measured: Measured) -> None:
    """Figures from bench/sinks.py ``Result``\\ s: events (rows) written per second."""
    for r in results:
        measured.figures[f"sinks.{r.name}.{SINKS.get(r.name, 'events_s')}"] = r.rate


def e2e_figures(result: Any, measured: Measured) -> None:
    """Figures from bench/e2e.py's ``Result``: events/s stored during the load and
    acknowledged, the queue's growth (events/s), events lost and the load's length."""
    lost = max(0, result.acknowledged - result.stored)
    measured.figures.update(
        {
            "e2e.stored.events_s": result.stored_per_s,
            "e2e.acknowledged.events_s": result.acknowledged_per_s,
            "e2e.depth_growth.events_s": result.depth_slope,
            "e2e.lost.events": lost,
            "e2e.seconds": result.load_seconds,
            "e2e.p99_ms": result.p99_ms,
        }
    )
    if lost:
        measured.problems["e2e.stored"] = f"LOST: {lost:,} acknowledged events not stored"
    if result.non_2xx or result.socket_errors:
        measured.remarks["e2e"] = (
            f"{result.non_2xx:,} non-2xx, {result.socket_errors:,} socket errors"
        )


# -- the areas ---------------------------------------------------------------------------------
@dataclass
class Outcome:
    measured: Measured = field(default_factory=Measured)
    reports: list[str] = field(default_factory=list)  # each area's own report
    details: dict[str, Any] = field(default_factory=dict)  # for the JSON document
    failed: list[str] = field(default_factory=list)  # areas (or parts) that failed


def _short(error: BaseException | str) -> str:
    return bench_all._short(error)


def run_ingest(args: argparse.Namespace, outcome: Outcome) -> None:
    """bare, prototype, eventrouter-queue and eventrouter, each ``single`` then ``batch``."""
    argv = ["--duration", f"{args.duration:g}", "--warmup", f"{args.warmup:g}"]
    argv += ["--connections", str(args.connections), "--workers", str(args.workers)]
    argv += ["--wrk-threads", str(args.wrk_threads), "--broker", args.broker]
    ingest_args = ingest.parse_args([*argv, "--targets", "bare,eventrouter,eventrouter-queue"])
    if problem := ingest.missing_prerequisite(ingest_args):
        raise RuntimeError(problem)
    outcome.measured.figures["ingest.connections"] = args.connections
    scenarios = ingest.make_scenarios(datetime.now(UTC))
    runs = []
    with tempfile.TemporaryDirectory(prefix="eventrouter-targets-") as tmp:
        workdir = Path(tmp)
        bodies = ingest.write_bodies(workdir, scenarios)
        servers: dict[str, Callable[[], Any]] = {
            "bare": lambda: ingest.bare_server(workdir, args.workers, scenarios[0].body),
            "eventrouter-queue": lambda: ingest.eventrouter_queue_server(
                workdir, args.workers, args.broker
            ),
            "eventrouter": lambda: ingest.eventrouter_server(workdir, args.workers),
        }
        for name in SERVERS:
            try:
                if name == "prototype":
                    runs.append(run_prototype(workdir, scenarios, bodies, ingest_args))
                else:
                    runs.append(ingest.run_target(servers[name](), scenarios, bodies, ingest_args))
            except Exception as exc:
                log(f"ingest: {name} failed: {exc!r}")
                outcome.measured.missing[SERVERS[name]] = f"{name} failed: {_short(exc)}"
                outcome.failed.append(f"ingest {name}")
    measurements = [m for run in runs for m in run.measurements]
    ingest_figures(measurements, outcome.measured)
    notes = ingest.anomalies(runs)
    outcome.reports += [
        "## Ingest (bench/ingest.py, bench/prototype.py)",
        "",
        ingest.setup_line(ingest_args, scenarios),
        "",
        *ingest.table(measurements),
        "",
        "Per event, beside the bare endpoint and the prototype (events/s: acknowledged):",
        "",
        *prototype.table(measurements),
        *ingest.queue_tables(runs),
        *(["", "Anomalies:", *notes] if notes else []),
        "",
    ]


def run_prototype(
    workdir: Path, scenarios: Sequence[Any], bodies: dict[str, Path], args: argparse.Namespace
) -> Any:
    """bench/prototype_app.py measured as bench/prototype.py does, its queue purged
    after each scenario (nothing consumes it) and deleted at the end."""
    prefix = f"bench-prototype-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(3)}"
    server = prototype.prototype_server(workdir, args.workers, args.broker, prefix)
    measurements = []
    try:
        with server:
            for scenario in scenarios:
                measurement, output = ingest.measure(server, scenario, bodies[scenario.name], args)
                (RESULTS_DIR / f"wrk-prototype-{scenario.name}.txt").write_text(output)
                measurements.append(measurement)
                prototype.purge_prototype_queue(args.broker, prefix)
    finally:
        prototype.delete_prototype_queue(args.broker, prefix)
    return ingest.TargetRun("prototype", measurements, server.log_problems())


def ab_options(args: argparse.Namespace) -> list[str]:
    """bench/all.py's options for both trees of the A/B: its queue area at this run's
    load (its wrk threads are its own: the base's bench/all.py has no such option)."""
    return [
        *("--only", "queue", "--duration", f"{args.duration:g}", "--warmup", f"{args.warmup:g}"),
        *("--connections", str(args.connections), "--workers", str(args.workers)),
        *("--broker", args.broker),
    ]


def run_ab(args: argparse.Namespace, outcome: Outcome) -> None:
    """bench/compare.py's rounds, base then head, with bench/all.py ``--only queue``."""
    options = ab_options(args)
    commit = compare.resolve(args.base)
    head_git = bench_all.machine()["git"]
    head = compare.Tree("head", REPO_ROOT, Path(sys.executable), f"this tree at {head_git}")
    rounds = []
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        base = compare.prepare_base(stack, args.base, commit)
        for number_ in range(1, args.ab_rounds + 1):
            for tree in (base, head):
                log(f"== ab round {number_} of {args.ab_rounds}: {tree.side} ({tree.label}) ==")
                rounds.append(compare.run_all(tree, options, number_, work))
    documents = {
        side: {"runs": [r.document for r in rounds if r.side == side]} for side in compare.SIDES
    }
    comparisons = compare.compare(documents["base"], documents["head"])
    ab_figures(comparisons, documents, outcome.measured)
    if any(r.exit != 0 for r in rounds):
        outcome.failed.append("ab")
    outcome.details["ab"] = {
        "base": {"ref": args.base, "commit": commit, "label": base.label},
        "head": head.label,
        "options": options,
        "rounds": [
            {"side": r.side, "round": r.number, "seconds": r.seconds, "exit": r.exit}
            for r in rounds
        ],
        "rows": [asdict(c) for c in comparisons],
    }
    outcome.reports += [
        f"## A/B (bench/compare.py): base {base.label}; head {head.label}",
        "",
        f"bench/all.py {' '.join(options)}; {args.ab_rounds} round(s), base then head in each.",
        "",
        *compare.markdown(comparisons),
        "",
        *(
            f"- round {r.number}, {r.side}: "
            + ("did not run" if r.exit is None else f"{r.seconds / 60:.1f} min, exit {r.exit}")
            + (f" ({r.document['error']})" if "error" in r.document else "")
            for r in rounds
        ),
        "",
    ]


def run_sinks(args: argparse.Namespace, outcome: Outcome) -> None:
    """Each sink with a target, one at a time: a store that is down costs only its row."""
    measured = []
    for name in SINKS:
        argv = ["--targets", name, "--batches", str(args.batches)]
        argv += ["--batch-events", str(args.batch_events)]
        if name == "s3":
            argv += ["--set", 's3.format="ndjson"']
        try:
            results = sink_bench.run(sink_bench.parse_args(argv))
        except Exception as exc:
            log(f"sinks: {name} failed: {exc!r}")
            outcome.measured.missing[f"sinks.{name}"] = f"failed: {_short(exc)}"
            outcome.failed.append(f"sinks {name}")
            continue
        sink_figures(results, outcome.measured)
        measured += results
    if measured:
        outcome.reports += [sink_bench.report(measured)]


def run_e2e(args: argparse.Namespace, outcome: Outcome) -> None:
    argv = ["--duration", f"{args.e2e_duration:g}", "--connections", str(args.connections)]
    argv += ["--server-workers", str(args.e2e_server_workers)]
    argv += ["--workers", str(args.e2e_workers), "--broker", args.broker]
    e2e_args = e2e_bench.parse_args(argv)
    result = e2e_bench.run(e2e_args)
    e2e_figures(result, outcome.measured)
    outcome.reports += [e2e_bench.report(result, e2e_args)]


STEPS: dict[str, Callable[[argparse.Namespace, Outcome], None]] = {
    "ingest": run_ingest,
    "ab": run_ab,
    "sinks": run_sinks,
    "e2e": run_e2e,
}
#: The figures each area makes, for the note of a target whose area did not run.
AREA_FIGURES = {
    "ingest": ("bare", "prototype", "queue", "embedded"),
    "ab": ("ab",),
    "sinks": ("sinks",),
    "e2e": ("e2e",),
}


# -- main --------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Without --quick: "
        + bench_all._options(FULL)
        + "; with --quick: "
        + bench_all._options(QUICK)
        + ". See bench/README.md, 'Targets (issue 20)'.",
    )
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke run")
    parser.add_argument("--only", metavar="AREA[,AREA]", help=f"from {', '.join(AREAS)} [all]")
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="[bench/results/targets-latest.json]"
    )
    parser.add_argument("--broker", default=ingest.DEFAULT_BROKER, help="RabbitMQ on loopback")
    group = parser.add_argument_group("ingest (bench/ingest.py, bench/prototype.py)")
    group.add_argument("--duration", type=float, help="seconds per measured wrk run [15]")
    group.add_argument("--warmup", type=float, help="discarded seconds before each [2]")
    group.add_argument("--connections", type=int, default=64, help="wrk connections [64]")
    group.add_argument(
        "--workers", type=int, default=1, help="gunicorn workers of every server [1]"
    )
    group.add_argument("--wrk-threads", type=int, default=1, help="wrk threads [1]")
    group = parser.add_argument_group("ab (bench/compare.py)")
    group.add_argument(
        "--base",
        default=ISSUE_20_BASE,
        metavar="REF",
        help="the commit to compare /v1/batch with [%(default)s: main before issue 20]",
    )
    group.add_argument("--ab-rounds", type=int, help="rounds, base then head in each [2]")
    group.add_argument("--no-ab", action="store_true", help="skip the A/B (its row: n/e)")
    group = parser.add_argument_group("sinks (bench/sinks.py)")
    group.add_argument("--batches", type=int, help="measured batches per sink [10]")
    group.add_argument("--batch-events", type=int, help="events per batch [50000]")
    group = parser.add_argument_group("e2e (bench/e2e.py)")
    group.add_argument("--e2e-duration", type=float, help="seconds of load [180]")
    group.add_argument(
        "--e2e-server-workers", type=int, default=2, help="the edge's gunicorn workers [2]"
    )
    group.add_argument("--e2e-workers", type=int, default=1, help="eventrouter workers [1]")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.only = [a.strip() for a in (args.only or ",".join(AREAS)).split(",") if a.strip()]
    if not args.only or any(a not in AREAS for a in args.only):
        parser.error(f"--only: choose from {', '.join(AREAS)}")
    if args.no_ab and "ab" in args.only:
        args.only.remove("ab")
    positive = ("duration", "warmup", "connections", "workers", "wrk_threads", "ab_rounds")
    positive += ("batches", "batch_events", "e2e_duration", "e2e_server_workers", "e2e_workers")
    for name in positive:
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    try:
        ingest.queue_mode.check_loopback(args.broker)
    except ValueError as exc:
        parser.error(f"--broker: {exc}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if "ab" in args.only:
        try:
            compare.resolve(args.base)
        except RuntimeError:
            print(f"targets: --base {args.base}: not a commit in this repository", file=sys.stderr)
            return 2
    # A SIGTERM (a CI timeout) unwinds like Ctrl-C, so every server started is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    RESULTS_DIR.mkdir(exist_ok=True)
    started_at, started, load_at_start = datetime.now(UTC), time.monotonic(), bench_all._load()
    pace_at_start = floor.edge_pace()
    outcome = Outcome()
    area_seconds: dict[str, float] = {}
    for area in AREAS:
        if area not in args.only:
            for prefix in AREA_FIGURES[area]:
                outcome.measured.missing[prefix] = (
                    "not run: --no-ab"
                    if area == "ab" and args.no_ab
                    else f"not run: --only {area} left out"
                )
            continue
        log(f"== {area} ==")
        step_started = time.monotonic()
        try:
            STEPS[area](args, outcome)
        except Exception as exc:
            log(f"{area} failed: {exc!r}")
            for prefix in AREA_FIGURES[area]:
                outcome.measured.missing.setdefault(prefix, f"{area} failed: {_short(exc)}")
            outcome.failed.append(area)
        area_seconds[area] = round(time.monotonic() - step_started, 1)
    pace_at_end = floor.edge_pace()
    rows = verdicts(outcome.measured)
    info = bench_all.machine()
    seconds = time.monotonic() - started
    header = (
        f"`bench/targets.py{' --quick' if args.quick else ''}` on "
        f"{started_at:%Y-%m-%d %H:%M} UTC, {seconds / 60:.1f} min "
        f"({', '.join(f'{a} {s:.0f} s' for a, s in area_seconds.items())}); eventrouter at "
        f"{info['git']}; nproc {info['nproc']} ({info['cpu']}), shared; load average "
        f"{load_at_start} at the start, {bench_all._load()} at the end; the edge's per-event "
        f"steps alone (bench/floor.py) {pace_at_start:.2f} µs at the start, "
        f"{pace_at_end:.2f} µs at the end. ingest: wrk -t{args.wrk_threads} "
        f"-c{args.connections}, {args.duration:g} s runs after {args.warmup:g} s warm-ups, "
        f"{args.workers} gunicorn worker(s) per server; A/B: "
        + (f"base {args.base}, {args.ab_rounds} round(s)" if "ab" in args.only else "not run")
        + f"; sinks: {args.batches} x {args.batch_events:,} events; e2e: "
        f"{args.e2e_duration:g} s, {args.e2e_server_workers} gunicorn worker(s), "
        f"{args.e2e_workers} eventrouter worker(s)."
    )
    lines = [header, "", *markdown(rows), "", f"- {summary(rows)}"]
    if outcome.failed:
        lines.append(f"- **failed**: {', '.join(outcome.failed)} (see the note column)")
    print("\n".join(lines))
    latest = RESULTS_DIR / "targets-latest.md"
    latest.write_text("\n".join(["# Issue 20's targets", "", *lines, "", *outcome.reports]) + "\n")
    document = {
        "started": started_at.isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "area_seconds": area_seconds,
        "load_average": {"start": load_at_start, "end": bench_all._load()},
        "edge_pace_us": {"start": round(pace_at_start, 3), "end": round(pace_at_end, 3)},
        "machine": info,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": [asdict(row) for row in rows],
        "figures": outcome.measured.figures,
        "problems": outcome.measured.problems,
        "missing": outcome.measured.missing,
        "remarks": outcome.measured.remarks,
        "failed": outcome.failed,
        **outcome.details,
    }
    json_path = args.json or RESULTS_DIR / "targets-latest.json"
    json_path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    log(f"table written to {json_path}; full reports in {latest.relative_to(REPO_ROOT)}")
    lost = any(text.startswith("LOST") for text in outcome.measured.problems.values())
    return 1 if outcome.failed or lost else 0


if __name__ == "__main__":
    sys.exit(main())
