"""bench/targets.py, issue 20's targets in one table: each target judged from the figures
of one run, the table's rows and ``met`` column, and the command line's refusals.
Nothing here measures anything (performance is never asserted in tests): the figures
below are made up."""

from __future__ import annotations

from types import ModuleType, SimpleNamespace

import pytest

from tests.helpers import load_bench_script


@pytest.fixture(scope="module")
def targets() -> ModuleType:
    """bench/targets.py as a module."""
    return load_bench_script("targets")


#: A run in which every target of issue 20 is met.
GOOD = {
    "ingest.connections": 64,
    "bare.single.req_s": 30_000,
    "bare.batch.events_s": 500_000,
    "prototype.single.events_s": 14_000,
    "prototype.single.cpu_us": 46.5,
    "queue.single.events_s": 16_000,
    "queue.single.p99_ms": 12.0,
    "queue.single.cpu_us": 50.0,
    "queue.batch.events_s": 160_000,
    "embedded.single.events_s": 15_500,
    "embedded.batch.events_s": 90_000,
    "ab.base.queue.batch.events_s": 85_000,
    "ab.head.queue.batch.events_s": 140_000,
    "sinks.clickhouse.rows_s": 450_000,
    "sinks.postgres.rows_s": 120_000,
    "sinks.s3.events_s": 600_000,
    "e2e.stored.events_s": 105_000,
    "e2e.acknowledged.events_s": 105_500,
    "e2e.depth_growth.events_s": 40.0,
    "e2e.lost.events": 0,
    "e2e.seconds": 180.02,
}


def judged(targets: ModuleType, **measured) -> dict:
    """The verdicts of a run, by target key."""
    figures = {**GOOD, **measured.pop("figures", {})}
    for name in measured.pop("drop", ()):
        del figures[name]
    run = targets.Measured(figures=figures, **measured)
    return {verdict.key: verdict for verdict in targets.verdicts(run)}


def test_every_target_of_the_issue_has_one_row(targets) -> None:
    rows = judged(targets)
    assert len(rows) == len(targets.TARGETS) == 14
    assert {key: row.met for key, row in rows.items()} == dict.fromkeys(rows, True)


def test_a_ratio_is_between_two_figures_of_the_same_run(targets) -> None:
    rows = judged(targets, figures={"queue.single.events_s": 14_000})

    versus_bare = rows["queue.single.bare"]
    assert versus_bare.value == pytest.approx(14_000 / 30_000)
    assert versus_bare.met is False
    assert versus_bare.basis == "14,000 events/s / 30,000 req/s"
    assert rows["queue.single.prototype"].value == pytest.approx(1.0)
    assert rows["queue.single.prototype"].met is True  # ≥ 1.0x: equal is enough


def test_upper_bounds_are_judged_as_upper_bounds(targets) -> None:
    rows = judged(
        targets,
        figures={"queue.single.cpu_us": 62.0, "queue.single.p99_ms": 20.5},
    )
    assert rows["queue.single.cpu"].value == pytest.approx(62.0 / 46.5)
    assert rows["queue.single.cpu"].met is False  # 1.33x the prototype's: over 1.3x
    assert rows["queue.single.p99"].met is False


def test_the_ab_row_is_this_tree_over_the_base(targets) -> None:
    rows = judged(targets, figures={"ab.head.queue.batch.events_s": 120_000})
    assert rows["queue.batch.ab"].value == pytest.approx(120_000 / 85_000)
    assert rows["queue.batch.ab"].met is False


def test_a_missing_figure_is_not_evaluated_and_says_why(targets) -> None:
    rows = judged(
        targets,
        drop=["sinks.postgres.rows_s", "prototype.single.events_s"],
        missing={"sinks.postgres": "failed: OperationalError: connection refused"},
    )
    assert rows["sinks.postgres"].met is None
    assert rows["sinks.postgres"].note == "failed: OperationalError: connection refused"
    assert rows["queue.single.prototype"].met is None
    assert rows["queue.single.prototype"].note == "not measured"
    assert rows["queue.single.prototype"].basis == "16,000 events/s / ?"


def test_lost_events_fail_the_target_whatever_the_rate(targets) -> None:
    rows = judged(
        targets,
        problems={"queue.batch": "LOST: 2,400,000 acknowledged, 2,399,900 held by RabbitMQ"},
    )
    assert rows["queue.batch.rate"].met is False
    assert rows["queue.batch.rate"].note.startswith("LOST")
    # The A/B's figures are other runs' (bench/compare.py's rounds): not this problem's.
    assert rows["queue.batch.ab"].met is True


def test_a_target_stated_for_another_run_is_not_judged(targets) -> None:
    rows = judged(targets, figures={"ingest.connections": 32, "e2e.seconds": 10.0})

    assert rows["queue.single.p99"].met is None
    assert rows["queue.single.p99"].note == (
        "not judged: stated for 64 connections (this run: 32 connections)"
    )
    for key in ("e2e.stored", "e2e.flat"):
        assert rows[key].met is None
        assert rows[key].note == "not judged: stated for 180 s of load (this run: 10.0 s)"
    assert rows["e2e.lost"].met is True  # 0 lost holds for any length of load


def test_the_queue_must_stay_flat_and_nothing_may_be_lost(targets) -> None:
    rows = judged(
        targets,
        figures={"e2e.depth_growth.events_s": 9_000.0, "e2e.lost.events": 3},
    )
    assert rows["e2e.flat"].value == pytest.approx(9_000 / 105_500)
    assert rows["e2e.flat"].met is False
    assert rows["e2e.lost"].met is False


def test_the_table_has_a_met_column(targets) -> None:
    rows = targets.verdicts(
        targets.Measured(
            figures={**GOOD, "sinks.s3.events_s": 250_000},
            remarks={"queue.single": "eventrouter-queue single: 12 non-2xx, 0 socket errors"},
        )
    )
    lines = targets.markdown(rows)

    assert lines[0] == "| # | area | target (issue 20) | measured | figure | from | met | note |"
    assert len(lines) == 2 + 14
    s3 = lines[2 + 10]
    assert s3.startswith("| 11 | sinks | S3 NDJSON ≥ 500,000 events/s |")
    assert s3.endswith("| 250,000 events/s |  | **no** |  |")
    queue_single = lines[2 + 2]
    assert queue_single.startswith("| 3 | queue mode, single events | ≥ 0.5x the bare endpoint |")
    assert queue_single.endswith(
        "| 0.53x | 16,000 events/s / 30,000 req/s | yes "
        "| eventrouter-queue single: 12 non-2xx, 0 socket errors |"
    )
    assert targets.summary(rows) == (
        "targets: 14: 13 met (#1, #2, #3, #4, #5, #6, #7, #8, #9, #10, #12, #13, #14), "
        "1 missed (#11), 0 not evaluated"
    )


def test_figures_from_the_ingest_measurements(targets) -> None:
    def measurement(target, scenario, events_per_request, requests, stored, cpu, status=0):
        wrk = SimpleNamespace(
            seconds=10.0, p99_us=15_000, status=status, socket_errors=0, requests=requests
        )
        acknowledged = (requests - status) * events_per_request
        return SimpleNamespace(
            target=target,
            scenario=SimpleNamespace(name=scenario, events_per_request=events_per_request),
            wrk=wrk,
            stored=stored,
            server_cpu=cpu,
            restarted_workers=0,
            acknowledged_events=acknowledged,
            requests_per_s=requests / 10.0,
            durable_per_s=None if stored is None else min(stored, acknowledged) / 10.0,
        )

    run = targets.Measured()
    targets.ingest_figures(
        [
            measurement("bare", "single", 1, 300_000, None, 5.0),
            measurement("bare", "batch", 100, 5_000, None, 5.0),
            measurement("prototype", "single", 1, 140_000, None, 7.0, status=10),
            measurement("eventrouter-queue", "single", 1, 130_000, 130_050, 9.1),
            measurement("eventrouter-queue", "batch", 100, 9_000, 899_000, 4.0),
            measurement("eventrouter", "batch", 100, 8_000, 800_000, 6.0),
        ],
        run,
    )
    figures = run.figures
    assert figures["bare.single.req_s"] == 30_000
    assert figures["bare.batch.events_s"] == 50_000  # 500 req/s of 100 events
    assert figures["prototype.single.events_s"] == 13_999  # 200s only
    assert figures["prototype.single.cpu_us"] == pytest.approx(7.0 * 1e6 / 139_990)
    assert figures["queue.single.events_s"] == 13_000  # held, at most what was acknowledged
    assert figures["queue.single.p99_ms"] == 15.0
    assert figures["queue.single.cpu_us"] == pytest.approx(70.0)
    assert figures["embedded.batch.events_s"] == 80_000
    assert run.problems == {"queue.batch": "LOST: 900,000 acknowledged, 899,000 held by RabbitMQ"}
    assert run.remarks == {"prototype.single": "prototype single: 10 non-2xx, 0 socket errors"}


def test_figures_from_the_e2e_result(targets) -> None:
    result = SimpleNamespace(
        acknowledged=1_000_000,
        stored=999_000,
        stored_per_s=95_000.0,
        acknowledged_per_s=100_000.0,
        depth_slope=-12.0,
        load_seconds=10.0,
        p99_ms=80.0,
        non_2xx=0,
        socket_errors=0,
    )
    run = targets.Measured()
    targets.e2e_figures(result, run)
    assert run.figures["e2e.lost.events"] == 1_000
    assert run.problems == {"e2e.stored": "LOST: 1,000 acknowledged events not stored"}


def test_quick_and_full_runs(targets) -> None:
    full = targets.parse_args([])
    assert (full.e2e_duration, full.duration, full.ab_rounds) == (180, 15, 2)
    assert (full.workers, full.wrk_threads, full.connections) == (1, 1, 64)
    assert full.only == ["ingest", "ab", "sinks", "e2e"]
    assert full.base == targets.ISSUE_20_BASE
    quick = targets.parse_args(["--quick", "--e2e-duration", "30", "--no-ab"])
    assert (quick.e2e_duration, quick.duration) == (30, 3)
    assert quick.only == ["ingest", "sinks", "e2e"]


@pytest.mark.parametrize(
    "argv",
    [["--only", "dashboard"], ["--e2e-duration", "0"], ["--broker", "amqp://guest@10.0.0.1//"]],
)
def test_the_command_line_refuses(targets, argv, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        targets.parse_args(argv)
    assert exited.value.code == 2
