"""Server-rendered SVG charts: geometry computed here, drawn by ``_chart.html`` (bars)
and ``_line_chart.html`` (lines).

No chart library and no script: the browser draws plain ``<rect>``, ``<polyline>`` and
``<text>`` elements with presentation attributes (allowed by a Content-Security-Policy
without inline styles), each bar or point with a ``<title>`` that shows its bucket and
count on hover. Both charts share the axes: the y axis starts at 0 on the baseline and
climbs in round steps (1, 2 or 5 times a power of ten) to the first tick at or above the
largest value; the x axis labels a handful of evenly spaced buckets. Every label is text
for Jinja to escape: nothing here is markup.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

WIDTH = 900
HEIGHT = 240
#: Room for the axis labels and titles.
LEFT, RIGHT, BOTTOM, TOP = 64, 12, 40, 12
#: About this many steps on the y axis (fewer when the values are small integers).
Y_STEPS = 4
#: At most this many labels under the x axis.
X_LABELS = 7


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    start: datetime
    count: int


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    start: datetime
    count: int


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    width: int
    height: int
    #: The largest count, and the value at the top of the y axis (a round number at or
    #: above it); (y, label) ticks from 0 on the baseline up to ``top``.
    peak: int
    y_ticks: list[tuple[float, str]]
    #: (x, label, text-anchor) under evenly spaced buckets (a label near an end of the
    #: axis is anchored at that end, so that it is not cut off).
    x_ticks: list[tuple[float, str, str]]
    baseline: float
    top: int = 1
    left: int = LEFT
    right: float = WIDTH - RIGHT
    y_title: str = "events"
    x_title: str = "time (UTC)"
    #: Line charts: the points, and ``points`` as an SVG ``points`` attribute.
    points: list[Point] = field(default_factory=list)
    polyline: str = ""


def nice_ticks(peak: float, steps: int = Y_STEPS) -> tuple[int, list[int]]:
    """``(top, ticks)``: round, whole-number ticks from 0 up to ``top``, the first tick
    at or above ``peak``; the step is 1, 2 or 5 times a power of ten (at least 1: counts
    are whole). A chart of nothing still has an axis from 0 to 1."""
    if peak <= 0:
        return 1, [0, 1]
    raw = peak / steps
    magnitude = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    step = max(int(step), 1)
    top = -(-math.ceil(peak) // step) * step
    return top, list(range(0, top + 1, step))


def _time_label(start: datetime, step: int) -> str:
    if step >= 86400:
        return start.strftime("%Y-%m-%d")
    return start.strftime("%m-%d %H:%M")


def _y_axis(peak: int, plot_height: float, baseline: float) -> tuple[int, list]:
    top, values = nice_ticks(peak)
    return top, [(round(baseline - plot_height * v / top, 2), f"{v:,}") for v in values]


def _x_tick(x: float, label: str) -> tuple[float, str, str]:
    """A label's (x, text, anchor): labels are up to ~70 px wide at 12 px."""
    if x > WIDTH - RIGHT - 40:
        return x, label, "end"
    if x < LEFT + 40:
        return x, label, "start"
    return x, label, "middle"


def _x_picks(count: int) -> list[int]:
    """Indexes of the buckets to label: the first, the last and evenly spaced ones."""
    if count <= 0:
        return []
    if count <= X_LABELS:
        return list(range(count))
    every = math.ceil((count - 1) / (X_LABELS - 1))
    picks = list(range(0, count, every))
    if count - 1 - picks[-1] < every / 2:  # too close to the last: its label would overlap
        picks.pop()
    return [*picks, count - 1]


def chart_geometry(
    buckets: list[tuple[datetime, int]], step: int, *, y_title: str = "events"
) -> Chart:
    """Bars for ``(bucket start, count)`` pairs, oldest first."""
    plot_width = WIDTH - LEFT - RIGHT
    plot_height = HEIGHT - BOTTOM - TOP
    baseline = TOP + plot_height
    peak = max((n for _, n in buckets), default=0)
    top, y_ticks = _y_axis(peak, plot_height, baseline)
    slot = plot_width / max(len(buckets), 1)
    gap = min(2.0, slot * 0.2)
    bars = []
    for i, (start, count) in enumerate(buckets):
        height = plot_height * count / top
        if count and height < 1:
            height = 1.0  # a bucket with events is never invisible
        bars.append(
            Bar(
                x=round(LEFT + i * slot + gap / 2, 2),
                y=round(baseline - height, 2),
                width=round(max(slot - gap, 0.5), 2),
                height=round(height, 2),
                start=start,
                count=count,
            )
        )
    x_ticks = [
        _x_tick(round(bars[i].x + bars[i].width / 2, 2), _time_label(bars[i].start, step))
        for i in _x_picks(len(bars))
    ]
    return Chart(bars, WIDTH, HEIGHT, peak, y_ticks, x_ticks, baseline, top=top, y_title=y_title)


def line_geometry(
    buckets: list[tuple[datetime, int]], step: int, *, y_title: str = "users"
) -> Chart:
    """A line through ``(bucket start, value)`` pairs, oldest first, one point per bucket
    at the middle of its slot."""
    plot_width = WIDTH - LEFT - RIGHT
    plot_height = HEIGHT - BOTTOM - TOP
    baseline = TOP + plot_height
    peak = max((n for _, n in buckets), default=0)
    top, y_ticks = _y_axis(peak, plot_height, baseline)
    slot = plot_width / max(len(buckets), 1)
    points = [
        Point(
            x=round(LEFT + (i + 0.5) * slot, 2),
            y=round(baseline - plot_height * n / top, 2),
            start=start,
            count=n,
        )
        for i, (start, n) in enumerate(buckets)
    ]
    x_ticks = [
        _x_tick(points[i].x, _time_label(points[i].start, step)) for i in _x_picks(len(points))
    ]
    return Chart(
        [],
        WIDTH,
        HEIGHT,
        peak,
        y_ticks,
        x_ticks,
        baseline,
        top=top,
        y_title=y_title,
        points=points,
        polyline=" ".join(f"{p.x},{p.y}" for p in points),
    )
