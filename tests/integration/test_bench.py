"""bench/all.py, the one benchmark command: its command line, and the table it builds
from each script's results. Nothing here measures anything: performance is never
asserted in tests; the results below are made up."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from contextlib import suppress
from types import ModuleType

import pytest

from tests.helpers import BENCH_DIR, load_bench_script

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """bench/all.py as a module."""
    return load_bench_script("all")


def test_help_names_every_area_and_option() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / "all.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for word in ("--quick", "--only", "--json", "--duration", "--connections", "--workers"):
        assert word in done.stdout
    for area in ("ingest", "queue", "sinks", "dashboard"):
        assert area in done.stdout


@pytest.mark.parametrize(
    ("option", "value"), [("--only", "ingest,disk"), ("--repeat", "0")], ids=["area", "repeat"]
)
def test_a_bad_option_is_refused_naming_it(option: str, value: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / "all.py"), option, value],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert option in done.stderr


def test_quick_and_full_defaults(bench: ModuleType) -> None:
    # The command line's option defaults (run lengths and sizes), not measured times.
    full = bench.parse_args([])
    assert (full.duration, full.batches, full.events) == (15, 10, 10_000_000)
    assert full.stores == ["sqlite", "postgres", "clickhouse"]
    assert full.only == ["ingest", "queue", "sinks", "e2e", "dashboard", "scaling", "quality"]
    quick = bench.parse_args(["--quick", "--duration", "5", "--only", "sinks"])
    assert (quick.duration, quick.batches, quick.events) == (5, 2, 100_000)
    assert quick.only == ["sinks"]


def _measurement(ingest: ModuleType, scenario: str, target: str, **numbers: int):
    """A made-up wrk run of 10 s: ``requests`` answered, ``stored`` events durable."""
    per_request = 1 if scenario == "single" else 100
    wrk = ingest.WrkResult(
        duration_us=10_000_000,
        requests=numbers["requests"],
        bytes=0,
        connect=0,
        read=0,
        write=0,
        timeout=0,
        status=0,
        p50_us=2_000,
        p99_us=numbers.get("p99_us", 10_000),
        max_us=30_000,
    )
    return ingest.Measurement(
        scenario=ingest.Scenario(scenario, f"/v1/{scenario}", b"{}", per_request),
        target=target,
        wrk=wrk,
        stored=numbers.get("stored"),
        server_cpu=1.0,
        wrk_cpu=1.0,
        broker_cpu=None,
        idle_cpu=0.0,
        restarted_workers=0,
    )


def _rows(rows, subject: str) -> dict[str, object]:
    return {row.scenario.split(":")[0]: row for row in rows if row.subject == subject}


def test_table_merges_every_area_with_ratios_to_the_same_runs_bare(bench) -> None:
    ingest, queue_mode = bench.ingest, bench.ingest.queue_mode
    bare = [
        _measurement(ingest, "single", "bare", requests=200_000),  # 20,000 req/s
        _measurement(ingest, "batch", "bare", requests=10_000),  # 100,000 events/s
    ]
    embedded = [
        _measurement(ingest, "single", "eventrouter", requests=100_000, stored=100_000),
        _measurement(ingest, "batch", "eventrouter", requests=4_000, stored=400_000),
    ]
    queued = [
        # 8,000 events/s held = 40 % of bare; p99 over the 20 ms target.
        _measurement(
            ingest, "single", "eventrouter-queue", requests=80_000, stored=80_000, p99_us=25_000
        ),
        # 1,000 events acknowledged but not held by the broker.
        _measurement(ingest, "batch", "eventrouter-queue", requests=3_000, stored=299_000),
    ]
    drain = queue_mode.Drain(
        events=80_000,
        rows=80_000,
        first_row_s=1.0,
        done_s=5.0,
        rows_at_first=0,
        complete=True,
        worker_cpu=4.0,
        broker_cpu=None,
        left_in_queue=0,
        dead_lettered=0,
        summary="",
    )
    runs = [
        ingest.TargetRun("bare", bare, []),
        ingest.TargetRun("eventrouter", embedded, []),
        ingest.TargetRun("eventrouter-queue", queued, [], drain=drain),
    ]
    sink_bench = bench.sink_bench

    def written(name: str, goal: float | None, events: int, seconds: float):
        return sink_bench.Result(
            name=name,
            target=sink_bench.Target({"type": name}, goal),
            events=events,
            batches=2,
            seconds=seconds,
            batch_seconds=[seconds / 2] * 2,
            columns={},
            cpu_self=1.0,
            cpu_store=0.0,
        )

    results = [written("s3", 100_000, 500_000, 4.0), written("sqlite", None, 100_000, 1.0)]
    dashboard = bench.dashboard
    endpoints = dashboard.endpoints(lambda: "")
    timings = [
        dashboard.Timing(
            "clickhouse", endpoints[0], "/", ms=[250.0, 240.0, 260.0], statuses=[200, 200, 200]
        ),
        dashboard.Timing("clickhouse", endpoints[1], "/", ms=[350.0], statuses=[200]),
        dashboard.Timing("postgres", endpoints[3], "/", ms=[90.0], statuses=[500]),
        dashboard.Timing("postgres", endpoints[-1], "/", error=dashboard.NOT_BUILT, rows=5_000),
    ]

    rows = bench.merge(
        bench.ingest_rows(runs, connections=64),
        [*bench.sink_rows(results), bench.failure_row("sinks", "clickhouse", "Refused")],
        bench.dashboard_rows(timings, events=1_000_000),
    )

    cpu = [row for row in rows if row.subject.endswith(": server CPU")]
    rows = [row for row in rows if row not in cpu]
    assert [row.area for row in rows] == (
        ["ingest"] * 4 + ["queue"] * 3 + ["sinks"] * 3 + ["dashboard"] * 4
    )
    # Beside each server's run, its CPU per event answered: 1 CPU second for 100,000
    # single events is 10 µs each.
    assert len(cpu) == 6
    single_cpu = next(r for r in cpu if r.subject == "eventrouter: server CPU")
    assert single_cpu.unit == "µs CPU per event" and single_cpu.target == ""
    assert single_cpu.figure == pytest.approx(10.0)

    base = _rows(rows, "bare")
    assert base["single"].figure == 20_000 and base["batch"].figure == 100_000
    assert base["single"].ratio is None and base["single"].met is None

    ours = _rows(rows, "eventrouter")
    assert ours["single"].ratio == pytest.approx(0.5)
    assert ours["single"].met is True  # >= 45 % of bare, p99 10 ms
    assert ours["batch"].figure == pytest.approx(40_000)
    assert ours["batch"].ratio == pytest.approx(0.4)
    assert ours["batch"].met is False  # < 50,000 events/s

    queue = _rows(rows, "eventrouter-queue")
    assert queue["single"].ratio == pytest.approx(0.4)
    assert queue["single"].p99_ms == 25.0
    assert queue["single"].met is False
    assert queue["batch"].valid is False and "LOST" in queue["batch"].note
    assert queue["batch"].met is False
    worker = next(row for row in rows if row.area == "queue" and row.scenario.startswith("worker"))
    assert worker.figure == pytest.approx(20_000)  # 80,000 rows in the 4 s after the first
    assert worker.at_least == pytest.approx(8_000)  # the queue's single ingest rate
    assert worker.met is True

    s3 = next(row for row in rows if row.subject == "s3")
    sqlite = next(row for row in rows if row.subject == "sqlite")
    assert s3.figure == 125_000 and s3.met is True and s3.ratio is None
    assert sqlite.target == "" and sqlite.met is None
    broken = next(row for row in rows if row.subject == "clickhouse")
    assert broken.figure is None and broken.valid is False and "Refused" in broken.note

    first, filtered, chart, retention = rows[-4:]
    assert first.figure == 250.0 and first.met is True and first.note == "p95 260.0 ms"
    assert filtered.met is False  # 350 ms > 300 ms
    assert chart.valid is False and chart.target == "≤ 300 ms" and chart.met is False
    # A view another branch builds answers 404 here: not built, neither met nor failed.
    assert retention.valid is True and retention.met is None and retention.note == "not built"
    assert retention.subject == "postgres, 5,000 events"

    table = bench.markdown(rows)
    assert len(table) == 2 + len(rows)
    assert all(line.count("|") == table[0].count("|") for line in table)
    assert "| ingest | single: POST /v1/track | eventrouter | 10,000 | req/s | 50% | 10.0 |" in (
        "\n".join(table)
    )
    json.dumps([bench.asdict(row) for row in rows], allow_nan=False)


def test_repeated_runs_are_put_side_by_side_with_how_many_met_each_target(bench) -> None:
    """``--repeat``: each run judged on its own (ratio to its own bare run), then one
    line per target with every run's figure, bold where that run met it, and the count."""
    ingest = bench.ingest

    def run(bare_requests: int, queue_requests: int, p99_us: int) -> list:
        bare = _measurement(ingest, "single", "bare", requests=bare_requests)
        queued = _measurement(
            ingest, "single", "eventrouter-queue", requests=queue_requests,
            stored=queue_requests, p99_us=p99_us,
        )  # fmt: skip
        return bench.merge(
            bench.ingest_rows(
                [
                    ingest.TargetRun("bare", [bare], []),
                    ingest.TargetRun("eventrouter-queue", [queued], []),
                ],
                64,
            )
        )

    first = run(200_000, 130_000, 15_000)  # 65 % of its bare run, p99 15 ms: met
    second = run(300_000, 130_000, 15_000)  # the same figure, 43 % of a faster bare: missed
    lines = bench.side_by_side([first, second])
    assert lines[0].startswith("| area | scenario | measured | target | run 1 | run 2 | met |")
    (line,) = [line for line in lines if "eventrouter-queue" in line]
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[4] == "**13,000 (65%), p99 15.0 ms**"
    assert cells[5] == "13,000 (43%), p99 15.0 ms"
    assert cells[6] == "1 of 2"
    assert not any("| bare |" in line for line in lines)  # no target: not listed
    # Rows whose scenario quotes the run's own figures are still one line.
    quoting = [
        [bench.Row("e2e", f"stored while {acked:,} events/s were acknowledged", "worker",
                   stored, "events/s", at_least=50_000, target="≥ 50,000", met=stored >= 50_000)]
        for acked, stored in ((54_267, 50_515.0), (46_329, 42_520.0))
    ]  # fmt: skip
    (line,) = [line for line in bench.side_by_side(quoting) if "| e2e |" in line]
    assert "stored while … events/s were acknowledged" in line
    assert "**50,515** | 42,520 | 1 of 2" in line


def test_ratio_is_not_evaluated_without_a_bare_run(bench) -> None:
    ingest = bench.ingest
    single = _measurement(ingest, "single", "eventrouter", requests=100_000, stored=100_000)
    rows = bench.merge(bench.ingest_rows([ingest.TargetRun("eventrouter", [single], [])], 64))
    assert rows[0].ratio is None
    assert rows[0].met is None
    assert "not evaluated" in rows[0].note


def test_end_to_end_rows_judge_rate_flatness_and_loss(bench) -> None:
    e2e = bench.e2e_bench
    steady = e2e.Result(acknowledged=400_000, load_seconds=10.0, stored_during_load=380_000)
    steady.stored = 400_000
    steady.events_per_message = 100
    steady.samples = [e2e.Sample(t, 30, 0) for t in (1.0, 2.0, 3.0)]  # flat depth
    rate, growth = bench.merge(bench.e2e_rows(steady, 1))
    assert (rate.figure, rate.met, rate.valid) == (38_000, False, True)  # under 50,000
    assert (growth.figure, growth.met) == (0, True)

    growing = e2e.Result(acknowledged=600_000, load_seconds=10.0, stored_during_load=550_000)
    growing.stored = 599_000  # 1,000 acknowledged events never stored
    growing.events_per_message = 100
    growing.samples = [e2e.Sample(t, 100 * t, 0) for t in (1.0, 2.0, 3.0)]
    rate, growth = bench.merge(bench.e2e_rows(growing, 2))
    assert rate.figure == 55_000 and rate.met is False and not rate.valid
    assert "1,000 acknowledged events not stored" in rate.note
    assert growth.figure == pytest.approx(10_000) and growth.met is False
    assert rate.subject == "eventrouter, 2 workers"


def test_floor_times_every_step_of_the_write_path() -> None:
    """bench/floor.py, with one round per timing: a row per step and per process, each
    with a positive time, and the sum rows; the worker batch with and without the
    collector, unsummed."""
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / "floor.py"), "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| ")]
    steps = {(cells[0].strip(), cells[1].strip()): cells[2].strip() for cells in rows[2:]}
    for process, step in [
        ("edge", "normalise (normalise.to_command)"),
        ("edge", "encode for the broker (JSON, the free-form fields copied as sent)"),
        ("worker", "decode a broker message"),
        ("worker", "ClickHouse: the Native block's columns"),
        ("edge", "**all of the above**"),
        ("worker", "**all of the above**"),
        ("worker batch", "decode 50 messages of 1,000 events and free them, collector on"),
        ("worker batch", "the same inside worker.gc_paused(), as the worker decodes"),
    ]:
        assert float(steps[(process, step)].strip("*")) > 0, (process, step)
    # Two ways of one step: not summed.
    assert ("worker batch", "**all of the above**") not in steps
    assert "stolen by the hypervisor" in done.stdout


def test_sink_bench_writes_every_row_and_counts_the_store_backends_cpu(bench) -> None:
    """bench/sinks.py against this machine's PostgreSQL, two small batches: every row is
    written, and the store's CPU includes the backends the sink's connections started
    after the target was set up (they do the COPY's work; once, only the postmaster,
    started long before, was counted: 0-1 %)."""
    sink_bench = bench.sink_bench
    argv = ["--targets", "postgres", "--batches", "2", "--batch-events", "10000"]
    [result] = sink_bench.run(sink_bench.parse_args(argv))
    assert result.columns["rows written"] == "20,000"
    assert result.events == 20_000 and len(result.batch_seconds) == 2
    assert result.cpu_store > 0.05


def test_sink_bench_counts_its_own_database_backends_not_others(bench) -> None:
    """On a shared machine other programs' PostgreSQL backends run beside the benchmark:
    the store's CPU counts the backends of the benchmark's database and the server's
    WAL writer, never another database's backend."""
    import psycopg

    admin = "postgresql://postgres@127.0.0.1:5432/test"
    with psycopg.connect(admin) as first, psycopg.connect(admin) as second:
        backends = {
            first.execute("SELECT pg_backend_pid()").fetchone()[0],
            second.execute("SELECT pg_backend_pid()").fetchone()[0],
        }
        # "test" stands for the benchmark's database; a made-up name for another's.
        counted = bench.sink_bench._postgres_processes("test")
        elsewhere = bench.sink_bench._postgres_processes("bench_no_such_database")
    assert backends <= set(counted)
    assert not backends & set(elsewhere)
    assert elsewhere and set(elsewhere) <= set(counted)  # the shared writers, in both


def test_the_prototype_validates_and_publishes_the_raw_body() -> None:
    """bench/prototype_app.py, the reference the queue mode is compared with: a valid
    body is answered 200 once RabbitMQ holds it, byte for byte; an invalid one 400; and
    the 200 waits for the broker's confirm: with its exchange deleted, the broker refuses
    the next publish and the request is answered 503 (without publisher confirms it was
    answered 200 as soon as the bytes were written, and the event was lost)."""
    import os

    from falcon import testing
    from kombu import Connection

    from tests.queue_support import AMQP_URL as amqp_url

    prefix = f"test-prototype-{os.getpid()}"
    os.environ.update(PROTOTYPE_BROKER=amqp_url, PROTOTYPE_PREFIX=prefix)
    path = list(sys.path)
    sys.path.insert(0, str(BENCH_DIR))
    try:
        spec = importlib.util.spec_from_file_location(
            "prototype_app", BENCH_DIR / "prototype_app.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # msgspec resolves its annotations there
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
        del os.environ["PROTOTYPE_BROKER"], os.environ["PROTOTYPE_PREFIX"]
    body = json.dumps({"batch": [{"type": "track", "userId": "u", "event": "E"}]}).encode()
    try:
        import asyncio

        async def post_both():
            async with testing.ASGIConductor(module.app) as conductor:
                headers = {"Content-Type": "application/json"}
                ok = await conductor.simulate_post("/v1/batch", body=body, headers=headers)
                bad = await conductor.simulate_post(
                    "/v1/batch", body=b'{"batch":[{"type":"track"}]}', headers=headers
                )
                held = await asyncio.to_thread(take_one)
                await asyncio.to_thread(delete_exchange)
                refused = await conductor.simulate_post("/v1/batch", body=body, headers=headers)
                return ok, bad, held, refused

        def take_one():
            with Connection(amqp_url) as connection:
                return connection.channel().basic_get(f"{prefix}.events", no_ack=True)

        def delete_exchange():
            with Connection(amqp_url) as connection:
                connection.channel().exchange_delete(prefix)

        ok, bad, held, refused = asyncio.run(post_both())
        assert (ok.status_code, ok.json) == (200, {"success": True})
        assert bad.status_code == 400
        assert held is not None and held.body == body
        assert refused.status_code == 503
    finally:
        with Connection(amqp_url) as connection:
            channel = connection.channel()
            channel.queue_delete(f"{prefix}.events")
            with suppress(*connection.channel_errors):  # the test deleted it already
                channel.exchange_delete(prefix)
