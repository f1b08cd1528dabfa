"""The Active users chart's periods (admin/active_users.py ``fill_periods``): every day,
week or month of the range is drawn, those without users at 0, so a gap is never hidden
by a line drawn straight across it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from eventrouter.admin.active_users import fill_periods, next_period


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_empty_days_are_zero_from_the_range_start_to_today():
    series = [(at(2025, 3, 2), 5), (at(2025, 3, 5), 2)]
    filled = fill_periods(series, at(2025, 3, 1, 13, 30), at(2025, 3, 6, 8), "day")
    assert filled == [
        (at(2025, 3, 1), 0),
        (at(2025, 3, 2), 5),
        (at(2025, 3, 3), 0),
        (at(2025, 3, 4), 0),
        (at(2025, 3, 5), 2),
        (at(2025, 3, 6), 0),
    ]


def test_weeks_start_on_monday_and_months_on_the_first():
    # 2025-03-05 is a Wednesday; its week starts on Monday 2025-03-03.
    weeks = fill_periods([(at(2025, 3, 17), 4)], at(2025, 3, 5), at(2025, 3, 20), "week")
    assert weeks == [(at(2025, 3, 3), 0), (at(2025, 3, 10), 0), (at(2025, 3, 17), 4)]
    months = fill_periods([(at(2025, 1, 1), 9)], at(2024, 11, 30), at(2025, 2, 28), "month")
    assert months == [(at(2024, 11, 1), 0), (at(2024, 12, 1), 0), (at(2025, 1, 1), 9),
                      (at(2025, 2, 1), 0)]  # fmt: skip


def test_the_whole_range_starts_at_the_first_period_with_users():
    series = [(at(2025, 1, 30), 1), (at(2025, 2, 2), 3)]
    filled = fill_periods(series, None, at(2025, 2, 2, 23), "day")
    assert [n for _, n in filled] == [1, 0, 0, 3]
    assert fill_periods([], None, at(2025, 2, 2), "day") == []


@pytest.mark.parametrize(
    ("start", "interval", "after"),
    [
        (at(2024, 2, 28), "day", at(2024, 2, 29)),
        (at(2024, 12, 30), "week", at(2025, 1, 6)),
        (at(2024, 1, 1), "month", at(2024, 2, 1)),
        (at(2024, 12, 1), "month", at(2025, 1, 1)),
        (at(2025, 1, 1), "month", at(2025, 2, 1)),
    ],
)
def test_next_period(start, interval, after):
    assert next_period(start, interval) == after


def test_a_corrupt_span_is_bounded():
    filled = fill_periods([], at(1900, 1, 1), at(2025, 1, 1), "day")
    assert len(filled) <= 10 * 366 + 1
