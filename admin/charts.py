"""Server-rendered SVG charts: geometry computed here, drawn by ``_chart.html``.

No chart library and no script: the browser draws plain ``<rect>`` elements with
presentation attributes (allowed by a Content-Security-Policy without inline styles),
each with a ``<title>`` that shows its bucket and count on hover.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

WIDTH = 900
HEIGHT = 220
#: Room for the axis labels.
LEFT, BOTTOM, TOP = 48, 28, 10


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    start: datetime
    count: int


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    width: int
    height: int
    #: The largest count (the top of the y axis) and (y, label) ticks below it.
    peak: int
    y_ticks: list[tuple[float, str]]
    #: (x, label) under the first, middle and last bars.
    x_ticks: list[tuple[float, str]]
    baseline: float


def _time_label(start: datetime, step: int) -> str:
    if step >= 86400:
        return start.strftime("%Y-%m-%d")
    return start.strftime("%m-%d %H:%M")


def chart_geometry(buckets: list[tuple[datetime, int]], step: int) -> Chart:
    """Bars for ``(bucket start, count)`` pairs, oldest first."""
    plot_width = WIDTH - LEFT - 8
    plot_height = HEIGHT - BOTTOM - TOP
    baseline = TOP + plot_height
    peak = max((n for _, n in buckets), default=0)
    slot = plot_width / max(len(buckets), 1)
    gap = min(2.0, slot * 0.2)
    bars = []
    for i, (start, count) in enumerate(buckets):
        height = plot_height * count / peak if peak else 0.0
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
    y_ticks = [(round(baseline - plot_height * f, 2), f"{round(peak * f):,}") for f in (0.5, 1.0)]
    picks = sorted({0, len(bars) // 2, len(bars) - 1}) if bars else []
    x_ticks = [
        (round(bars[i].x + bars[i].width / 2, 2), _time_label(bars[i].start, step)) for i in picks
    ]
    return Chart(bars, WIDTH, HEIGHT, peak, y_ticks if peak else [], x_ticks, baseline)
