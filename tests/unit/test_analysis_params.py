"""The funnel and retention pages' query parameters (admin/analysis.py) and the pure
parts of eventrouter.store.analysis: windows, periods, durations, the funnel chart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl

import pytest

from eventrouter.admin.analysis import funnel_chart, heat, parse_funnel, parse_retention
from eventrouter.errors import APIError
from eventrouter.store.analysis import (
    InvalidQuery,
    Step,
    StepResult,
    format_duration,
    parse_window,
    period_start,
)
from eventrouter.store.query import PathCondition

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)  # a fixed "now" for parsing only


def _params(*pairs: tuple[str, str]) -> dict:
    """Query pairs as Falcon's req.params gives them (a repeated name: a list)."""
    params: dict = {}
    for name, value in pairs:
        if name in params:
            old = params[name]
            params[name] = [*old, value] if isinstance(old, list) else [old, value]
        else:
            params[name] = value
    return params


def test_a_funnel_url_round_trips():
    params = _params(
        ("range", "7d"),
        ("step", "Viewed"),
        ("step", ""),  # an unused form row
        ("step", "Bought"),
        ("where1", "properties.plan = pro"),
        ("where1", "context.page.path=/a=b"),
        ("where3", "properties.total=42.5"),
        ("window", "2h"),
        ("by", "properties.plan"),
    )
    query = parse_funnel(params, NOW)
    assert query.since == NOW - timedelta(days=7) and query.until == NOW
    assert query.window == 7200
    assert query.steps == [
        Step(
            "Viewed",
            (
                PathCondition("properties", ("plan",), "pro"),
                PathCondition("context", ("page", "path"), "/a=b"),
            ),
        ),
        Step("Bought", (PathCondition("properties", ("total",), "42.5"),)),
    ]
    canonical = parse_qsl(query.query_string())
    assert ("where2", "properties.total=42.5") in canonical  # renumbered by kept steps
    again = parse_funnel(_params(*canonical), NOW)
    assert (again.steps, again.window, again.by) == (query.steps, query.window, query.by)


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([("step", "A")], "step: give 2 to 5 steps, not 1"),
        ([("step", s) for s in "ABCDEF"], "step: give 2 to 5 steps, not 6"),
        ([("step", "A"), ("step", "B"), ("window", "0")], "window: must be 1 s to 90 days"),
        ([("step", "A"), ("step", "B"), ("window", "91d")], "window: must be 1 s to 90 days"),
        ([("step", "A"), ("step", "B"), ("window", "soon")], "window: 'soon'"),
        ([("step", "A"), ("step", "B"), ("window", "1h"), ("window", "2h")], "window: given"),
        ([("step", "A"), ("step", "B"), ("where1", "plan")], "where1: 'plan' is not PATH=VALUE"),
        ([("step", "A"), ("step", "B"), ("where2", "secrets.x=1")], "where2: secrets.x"),
        ([("step", "A"), ("step", "B"), ("where2", "properties.a b=1")], "where2: properties.a b"),
        ([("step", "A"), ("step", "B"), ("where3", "properties.x=1")], "where3: there is no step"),
        (
            [("step", "A"), ("step", ""), ("step", "B"), ("where2", "properties.x=1")],
            "where2: step 2 is empty",
        ),
        ([("step", "A"), ("step", "B"), ("by", "properties.")], "by: properties."),
        ([("step", "A"), ("step", "B"), ("range", "3y")], "range: '3y' is not one of"),
    ],
)
def test_a_bad_funnel_parameter_is_400_naming_it(pairs, message):
    with pytest.raises(APIError) as caught:
        parse_funnel(_params(*pairs), NOW)
    assert caught.value.status == 400
    assert message in caught.value.body()["message"]


def test_a_retention_url_round_trips_and_names_bad_parameters():
    query = parse_retention({"first": "Signed Up", "returning": "Bought", "period": "week"}, NOW)
    assert (query.range, query.since, query.period) == ("30d", NOW - timedelta(days=30), "week")
    assert dict(parse_qsl(query.query_string()))["first"] == "Signed Up"
    spaced = parse_retention({"first": " A\u2028", "returning": "B "}, NOW)
    assert (spaced.first, spaced.returning) == (" A\u2028", "B ")  # names as they are
    for params, message in [
        ({"returning": "B"}, "first: required"),
        ({"first": " ", "returning": "B"}, "first: required"),
        ({"first": "A"}, "returning: required"),
        ({"first": "A", "returning": "B", "period": "month"}, "period: 'month' is not one of"),
        ({"first": ["A", "B"], "returning": "B"}, "first: given more than once"),
    ]:
        with pytest.raises(APIError) as caught:
            parse_retention(params, NOW)
        assert caught.value.status == 400
        assert message in caught.value.body()["message"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("3600", 3600), ("30m", 1800), ("1h", 3600), ("1d", 86400), ("7d", 604800), ("2w", 1209600)],
)
def test_windows(text, seconds):
    assert parse_window(text) == seconds


def test_a_window_names_itself_when_wrong():
    for text in ("", "-1", "1y", "1.5h", "9" * 20):
        with pytest.raises(InvalidQuery, match=r"^window: "):
            parse_window(text)


def test_periods_start_at_utc_midnight_and_on_monday():
    moment = int(datetime(2026, 12, 3, 15, 30, tzinfo=UTC).timestamp())  # a Thursday
    assert period_start(moment, "day") == int(datetime(2026, 12, 3, tzinfo=UTC).timestamp())
    assert period_start(moment, "week") == int(datetime(2026, 11, 30, tzinfo=UTC).timestamp())
    monday = int(datetime(2026, 11, 30, tzinfo=UTC).timestamp())
    assert period_start(monday, "week") == monday
    assert period_start(monday - 1, "week") == monday - 7 * 86400


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, ""), (0, "0 s"), (45, "45 s"), (200, "3 min 20 s"), (3600, "1 h"), (90061, "1 d 1 h")],
)
def test_durations_read_as_two_units(seconds, text):
    assert format_duration(seconds) == text


def test_the_funnel_chart_has_a_y_axis_from_zero():
    steps = [Step("A"), Step('"><svg onload=alert(1)>' * 3)]
    results = [StepResult(1, 1.0, 1.0, None), StepResult(0, 0.0, 0.0, None)]
    chart = funnel_chart(steps, results)
    labels = [label for _, label in chart.y_ticks]
    assert labels == ["0", "1"]
    assert chart.y_ticks[0][0] == chart.baseline  # 0 on the baseline, not halfway up
    assert chart.bars[0].height == chart.baseline - chart.y_ticks[-1][0]
    assert chart.bars[1].height == 0
    assert chart.bars[1].label.endswith("…") and len(chart.bars[1].label) < 40
    big = funnel_chart(steps, [StepResult(1234, 1.0, 1.0, None), StepResult(617, 0.5, 0.5, 9)])
    assert [label for _, label in big.y_ticks] == ["0", "400", "800", "1,200", "1,600", "2,000"]


def test_heat_is_a_class_from_a_number():
    assert [heat(n, 10) for n in (None, 0, 4, 10)] == ["heat-none", "heat-0", "heat-4", "heat-10"]
    assert heat(0, 0) == "heat-none"
