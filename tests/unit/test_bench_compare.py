"""bench/compare.py, before and after in one run: the table and its verdicts, built from
two bench/all.py JSON documents, and the command line's refusals. Nothing here measures
anything (performance is never asserted in tests): the figures below are made up."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import load_bench_script


@pytest.fixture(scope="module")
def compare() -> ModuleType:
    """bench/compare.py as a module."""
    return load_bench_script("compare")


def row(area: str, scenario: str, subject: str, figure: float | None, unit: str, **extra):
    """A row as bench/all.py's JSON has it (only the fields the comparison reads)."""
    return {"area": area, "scenario": scenario, "subject": subject, "figure": figure} | {
        "unit": unit,
        "ratio": None,
        "at_most": None,
        "valid": True,
        "note": "",
        **extra,
    }


def run(*rows: dict, pace: tuple[float, float] | None = None) -> dict:
    return {"rows": list(rows)} | (
        {"edge_pace_us": {"start": pace[0], "end": pace[1]}} if pace else {}
    )


SINGLE = "single: POST /v1/track"


def ingest(figure: float | None, bare_ratio: float | None = None, **extra) -> dict:
    return row("ingest", SINGLE, "eventrouter", figure, "req/s", ratio=bare_ratio, **extra)


def postgres(figure: float) -> dict:
    scenario = "sink writes: 10 x 50,000 events via the bus"
    return row("sinks", scenario, "postgres", figure, "events/s written")


def chart(figure: float) -> dict:
    return row("dashboard", "chart", "clickhouse, 1,000,000 events", figure, "ms, median of 20")


def by_subject(comparisons) -> dict:
    return {c.subject: c for c in comparisons}


def test_each_figure_is_judged_against_the_noise_band(compare) -> None:
    base = {
        "runs": [
            run(ingest(1000), postgres(100), chart(100)),
            run(ingest(1040), postgres(102), chart(101)),
        ]
    }
    head = {
        "runs": [
            run(ingest(1050), postgres(130), chart(130)),
            run(ingest(1080), postgres(128), chart(131)),
        ]
    }
    rows = by_subject(compare.compare(base, head))

    single = rows["eventrouter"]
    assert (single.base, single.head) == ([1000, 1040], [1050, 1080])
    assert (single.base_median, single.head_median) == (1020, 1065)
    assert single.ratio == pytest.approx(1065 / 1020)
    assert single.noise == pytest.approx(0.10)  # the base spread 4 %: the stated band
    assert single.verdict == "within noise"

    assert rows["postgres"].verdict == "faster"  # events/s: more is faster
    # Times: a larger median is slower, whatever the direction of the ratio.
    assert rows["clickhouse, 1,000,000 events"].lower_is_better
    assert rows["clickhouse, 1,000,000 events"].verdict == "slower"


def test_the_base_s_own_spread_widens_the_band(compare) -> None:
    base = {"runs": [run(postgres(100)), run(postgres(140))]}  # spread 40 / 120 = 33 %
    head = {"runs": [run(postgres(150)), run(postgres(150))]}  # 1.25 x the base
    [comparison] = compare.compare(base, head)
    assert comparison.noise == pytest.approx(40 / 120)
    assert comparison.verdict == "within noise"

    [narrow] = compare.compare(base, head, band=0.0)
    assert narrow.verdict == "within noise"  # the band is a floor, the spread still counts
    tight = {"runs": [run(postgres(119)), run(postgres(121))]}
    [faster] = compare.compare(tight, head)
    assert (faster.noise, faster.verdict) == (pytest.approx(0.10), "faster")


def test_a_base_that_could_not_run_gives_n_a_rows_and_the_reason(compare) -> None:
    refused = "bench/all.py exited 2: all.py: error: unrecognized arguments: --new-option"
    base = {"runs": [{"error": refused}, {"error": refused}]}
    head = {"runs": [run(postgres(100)), run(postgres(110))]}
    [comparison] = compare.compare(base, head)
    assert comparison.verdict == "n/a"
    assert comparison.base == [None, None] and comparison.base_median is None
    assert comparison.ratio is None
    assert comparison.note == f"base: no figure in 2 of 2 rounds (round 1, 2: {refused})"


def test_a_head_figure_that_failed_every_round_is_failed_with_its_note(compare) -> None:
    base = {"runs": [run(ingest(1000)), run(ingest(1000))]}
    lost = "LOST: 6,400 acknowledged, 6,300 durable"
    head = {
        "runs": [
            run(ingest(None, note="failed: no broker")),
            run(ingest(None, valid=False, note=lost)),
        ]
    }
    [comparison] = compare.compare(base, head)
    assert comparison.verdict == "failed"
    assert "head round 1: failed: no broker" in comparison.note
    assert f"head round 2: {lost}" in comparison.note
    assert "head: no figure in 2 of 2 rounds" in comparison.note


def test_one_failed_round_leaves_the_median_of_the_others(compare) -> None:
    base = {"runs": [run(postgres(100)), {"error": "bench/all.py exited 1: boom"}]}
    head = {"runs": [run(postgres(104)), run(postgres(96))]}
    [comparison] = compare.compare(base, head)
    assert (comparison.base_median, comparison.head_median) == (100, 100)
    assert comparison.verdict == "within noise"
    assert (
        comparison.note == "base: no figure in 1 of 2 rounds (round 2: bench/all.py exited 1: boom)"
    )


def test_rows_match_across_runs_whatever_figures_their_scenarios_quote(compare) -> None:
    def e2e(acknowledged: str, figure: float) -> dict:
        scenario = (
            "/v1/batch → RabbitMQ → worker → ClickHouse: "
            f"stored while {acknowledged} events/s were acknowledged"
        )
        return row("e2e", scenario, "eventrouter, 1 worker", figure, "events/s stored")

    base = {"runs": [run(e2e("51,274", 50_000)), run(e2e("49,001", 48_000))]}
    head = {"runs": [run(e2e("52,000", 51_000)), run(e2e("50,500", 49_000))]}
    [comparison] = compare.compare(base, head)
    assert comparison.base == [50_000, 48_000] and comparison.head == [51_000, 49_000]


def test_a_figure_that_is_not_positive_has_no_ratio(compare) -> None:
    def growth(figure: float) -> dict:
        scenario = "/v1/batch → RabbitMQ → worker → ClickHouse: queue depth growth during the load"
        return row("e2e", scenario, "eventrouter, 1 worker", figure, "events/s", at_most=2_500)

    base = {"runs": [run(growth(-2_022)), run(growth(57))]}
    head = {"runs": [run(growth(-555)), run(growth(120))]}
    [comparison] = compare.compare(base, head)
    assert comparison.lower_is_better  # held to an upper bound
    assert comparison.ratio is None and comparison.verdict == "n/a"
    assert comparison.note == "no ratio between figures ≤ 0"


def test_the_pace_of_each_run_is_a_row_of_its_own(compare) -> None:
    base = {"runs": [run(pace=(4.0, 4.2)), run(pace=(4.1, 4.1))]}
    head = run(pace=(3.0, 3.2))  # one run, not a {"runs": ...} document
    [pace] = compare.compare(base, head)
    assert (pace.area, pace.unit, pace.lower_is_better) == ("floor", "µs per event", True)
    assert pace.base == [pytest.approx(4.1), pytest.approx(4.1)] and pace.head == [
        pytest.approx(3.1)
    ]
    assert pace.verdict == "faster"


def test_rows_only_one_side_has_are_kept_in_the_order_they_appear(compare) -> None:
    base = {"runs": [run(ingest(1000), postgres(100))]}
    head = {"runs": [run(ingest(1000), chart(100))]}
    rows = compare.compare(base, head)
    assert [c.subject for c in rows] == ["eventrouter", "postgres", "clickhouse, 1,000,000 events"]
    assert [c.verdict for c in rows] == ["within noise", "failed", "n/a"]


def test_the_markdown_table(compare) -> None:
    base = {"runs": [run(ingest(5_225, 0.45), chart(100)), run(ingest(5_300, 0.46), chart(100))]}
    head = {"runs": [run(ingest(6_000, 0.5), chart(99.5)), {"error": "bench/all.py exited 1: x"}]}
    lines = compare.markdown(compare.compare(base, head))
    assert lines[0].startswith("| area | scenario | measured | unit | base | head | head / base |")
    assert len(lines) == 4
    cells = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert cells[:4] == ["ingest", SINGLE, "eventrouter", "req/s"]
    # base 5,262.5: the median of two rounds; head 6,000: its one round that ran
    assert cells[4:9] == ["5,262", "6,000", "1.14", "±10%", "**faster**"]
    assert cells[9:11] == ["5,225 (45%) / 5,300 (46%)", "6,000 (50%) / failed"]
    assert cells[11] == "head: no figure in 1 of 2 rounds (round 2: bench/all.py exited 1: x)"
    chart_cells = [cell.strip() for cell in lines[3].strip("|").split("|")]
    assert chart_cells[4:9] == ["100.0", "99.5", "0.99", "±10%", "within noise"]
    assert compare.summary(compare.compare(base, head)) == "verdicts: 1 within noise, 1 faster"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--base", "no-such-ref-anywhere"], "--base no-such-ref-anywhere: not a commit"),
        (["--base", "HEAD", "--json", "x.json"], "--json: this script writes"),
        (["--base", "HEAD", "--repeat", "0"], "--repeat must be at least 1"),
        (["--base", "HEAD", "--only", "disk"], "--only: choose from"),  # bench/all.py's own check
    ],
    ids=["ref", "json", "repeat", "all.py-option"],
)
def test_a_bad_command_line_is_refused_before_anything_runs(compare, capsys, argv, message):
    try:
        code = compare.main(argv)
    except SystemExit as exit:  # argparse's refusal
        code = exit.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_each_tree_runs_on_its_own_venv_and_no_one_else_s_path(
    compare, monkeypatch, tmp_path
) -> None:
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    python = tmp_path / "venv" / "bin" / "python"
    env = compare.environment(python)
    assert "PYTHONPATH" not in env
    assert env["PATH"].split(":")[0] == str(python.parent)
    assert str(Path(sys.prefix) / "bin") not in env["PATH"].split(":")[1:]
    assert env["VIRTUAL_ENV"] == str(tmp_path / "venv")


def test_a_tree_older_than_the_locks_borrows_the_heads(compare, tmp_path) -> None:
    assert compare.locks_for(tmp_path)[0] == compare.REPO_ROOT / "requirements"
    (tmp_path / "requirements").mkdir()
    for name in ("build.txt", "test.txt"):
        (tmp_path / "requirements" / name).write_text("")
    assert compare.locks_for(tmp_path) == (tmp_path / "requirements", "its own requirements/ locks")


def test_rounds_wait_for_a_quiet_machine_but_not_forever(compare, monkeypatch) -> None:
    cpus = compare.os.cpu_count() or 1
    busy = iter(range(1000))  # idle time never grows: every CPU busy
    monkeypatch.setattr(compare, "_idle_seconds", lambda: 0.0 * next(busy))
    seen = compare.settle(window=0.01, limit=0.05)
    assert seen.startswith("still busy after") and seen.endswith("starting anyway")

    clock = iter(range(1000))  # idle time grows by more than the window on every CPU
    monkeypatch.setattr(compare, "_idle_seconds", lambda: float(next(clock)) * cpus)
    assert compare.settle(window=0.01, limit=5).startswith("quiet after")
