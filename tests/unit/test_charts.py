"""The SVG chart geometry (eventrouter.admin.charts): round y ticks from 0 on the
baseline, readable x labels, bars and lines inside the plot."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from eventrouter.admin.charts import (
    HEIGHT,
    LEFT,
    WIDTH,
    X_LABELS,
    chart_geometry,
    line_geometry,
    nice_ticks,
)

START = datetime(2026, 1, 5, tzinfo=UTC)


def buckets(*counts: int, step: int = 3600) -> list[tuple[datetime, int]]:
    return [(START + timedelta(seconds=step * i), n) for i, n in enumerate(counts)]


@pytest.mark.parametrize(
    ("peak", "top", "ticks"),
    [
        (0, 1, [0, 1]),
        (1, 1, [0, 1]),
        (2, 2, [0, 1, 2]),
        (3, 3, [0, 1, 2, 3]),
        (7, 8, [0, 2, 4, 6, 8]),
        (10, 10, [0, 5, 10]),
        (97, 100, [0, 50, 100]),
        (1234, 1500, [0, 500, 1000, 1500]),
        (999_999, 1_000_000, [0, 500_000, 1_000_000]),
    ],
)
def test_ticks_are_round_and_start_at_zero(peak, top, ticks):
    assert nice_ticks(peak) == (top, ticks)


def test_one_event_reads_one_at_the_top_and_zero_at_the_baseline():
    chart = chart_geometry(buckets(0, 1, 0), 3600)
    labels = dict((label, y) for y, label in chart.y_ticks)
    assert labels == {"0": chart.baseline, "1": labels["1"]}
    assert labels["1"] < chart.baseline
    bar = chart.bars[1]
    assert bar.y == labels["1"] and bar.y + bar.height == chart.baseline


def test_bars_reach_their_value_on_the_axis():
    chart = chart_geometry(buckets(3, 7, 5), 3600)
    assert chart.top == 8
    scale = (chart.baseline - dict((lab, y) for y, lab in chart.y_ticks)["8"]) / 8
    for bar in chart.bars:
        assert bar.height == pytest.approx(bar.count * scale, abs=0.02)
        assert bar.x >= LEFT and bar.x + bar.width <= WIDTH


def test_x_labels_are_spread_and_include_both_ends():
    chart = chart_geometry(buckets(*range(60)), 3600)
    xs = [x for x, _, _ in chart.x_ticks]
    assert 3 <= len(xs) <= X_LABELS
    assert xs == sorted(xs)
    gaps = [b - a for a, b in itertools.pairwise(xs)]
    assert min(gaps) > 60  # no two labels on top of each other
    assert chart.x_ticks[0][1] == "01-05 00:00" and chart.x_ticks[-1][1] == "01-07 11:00"
    days = chart_geometry(buckets(1, 2, step=86400), 86400)
    assert [label for _, label, _ in days.x_ticks] == ["2026-01-05", "2026-01-06"]
    assert chart.x_ticks[-1][2] == "end"  # the last label ends at the axis's end


def test_an_empty_chart_still_has_an_axis():
    chart = chart_geometry([], 3600)
    assert chart.bars == [] and chart.x_ticks == []
    assert [label for _, label in chart.y_ticks] == ["0", "1"]


def test_line_points_sit_on_the_scale():
    chart = line_geometry(buckets(0, 4, 2, step=86400), 86400)
    assert chart.top == 4 and chart.y_title == "users"
    assert [p.y for p in chart.points] == [
        chart.baseline,
        chart.y_ticks[-1][0],
        pytest.approx((chart.baseline + chart.y_ticks[-1][0]) / 2, abs=0.01),
    ]
    assert chart.polyline.count(",") == 3
    assert all(0 < p.x < WIDTH and 0 < p.y <= HEIGHT for p in chart.points)
