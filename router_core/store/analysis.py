"""Funnels and retention over any queryable store (the dashboard's ``/admin/funnels`` and
``/admin/retention``; docs/admin.md, "Funnels" and "Retention", for operators).

A **user** is an event's ``user_id`` when it has one, else its ``anonymous_id`` (events
with neither are left out). No identity stitching: the anonymous visits of a user who
later signs in are another user's here, as they are on the user page.

Both read the events of the steps through :class:`~eventrouter.store.query.EventStore`'s
dialect (SQLAlchemy Core; every value, event names and JSON paths included, a bound
parameter) as narrow rows, and finish in Python, so that the same rows give the same
answer on every store:

- a funnel reads ``(user_id, anonymous_id, second, one flag per step[, breakdown])`` of
  the events that match any step in the range, one row per event (times compared in
  whole seconds: ClickHouse before 20.1 keeps no more);
- retention reads one row per user and period in which they did the first or the
  returning event (``GROUP BY`` in the store): the earliest first-event second and the
  latest returning-event second of that period.

Copies of one event (a redelivery a store kept twice) change nothing: a user counts once
per step and per period, and copies share their time.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, literal_column, or_

from eventrouter.store.interface import InvalidQuery
from eventrouter.store.query import EventStore, PathCondition

MIN_STEPS, MAX_STEPS = 2, 5
#: The conversion window's bounds, in seconds.
MIN_WINDOW, MAX_WINDOW = 1, 90 * 86400
#: Breakdown values shown on their own (most users at step 1 first); the rest are one
#: :data:`OTHER` row.
BREAKDOWN_VALUES = 10
OTHER = "(other)"
PERIODS = {"day": 86400, "week": 7 * 86400}
#: Weeks start on Monday (1970-01-01, second 0, was a Thursday: Monday is 4 days later).
_WEEK_OFFSET = 4 * 86400
RETENTION_PERIODS = 8
#: Most cohorts (rows) a retention table holds: the latest ones.
MAX_COHORTS = 100


@dataclass(frozen=True)
class Step:
    """One funnel step: an event name and conditions on its JSON paths, all of which
    must hold (``properties.plan=pro``)."""

    event: str
    conditions: tuple[PathCondition, ...] = ()


@dataclass(frozen=True)
class StepResult:
    users: int
    #: Share of the previous step's users (1.0 at step 1), and of step 1's; None: no
    #: users to convert.
    from_previous: float | None
    from_first: float | None
    #: Exact median seconds from the previous step to this one, None at step 1 or with
    #: no users.
    median_seconds: float | None


@dataclass
class FunnelResult:
    steps: list[StepResult]
    #: ``(value, steps)`` per breakdown value (None: the entry event has no value), the
    #: :data:`BREAKDOWN_VALUES` with most users first, then :data:`OTHER`.
    breakdown: list[tuple[Any, list[StepResult]]] = field(default_factory=list)


@dataclass(frozen=True)
class Cohort:
    start: datetime
    users: int
    #: Per period 0..7: users with a returning event in it, or None when the period
    #: starts at or after the range's end (not seen yet).
    returned: list[int | None]


@dataclass
class RetentionResult:
    period: str
    cohorts: list[Cohort]
    #: Cohorts left out beyond :data:`MAX_COHORTS` (the oldest).
    dropped: int = 0


def check_steps(steps: Sequence[Step]) -> None:
    if not MIN_STEPS <= len(steps) <= MAX_STEPS:
        raise InvalidQuery("step", f"give {MIN_STEPS} to {MAX_STEPS} steps, not {len(steps)}")


def _time_bounds(store: EventStore, since: datetime | None, until: datetime | None) -> list:
    c, dialect = store.table.c, store.dialect
    bounds = []
    if since is not None:
        bounds.append(c.timestamp >= dialect.time(since))
    if until is not None:
        bounds.append(c.timestamp < dialect.time(until))
    return bounds


def _step_condition(store: EventStore, step: Step) -> ColumnElement:
    dialect, c = store.dialect, store.table.c
    return and_(
        dialect.equals(c.event, step.event),
        *(dialect.equals(dialect.json_text(p.column, p.path), p.value) for p in step.conditions),
    )


def _user(user_id: Any, anonymous_id: Any) -> Any:
    """The user a row counts for ('' is absent, as ClickHouse stores it)."""
    return user_id or anonymous_id or None


# -- funnels ------------------------------------------------------------------------------
def funnel(
    store: EventStore,
    steps: Sequence[Step],
    window: int,
    since: datetime | None,
    until: datetime | None,
    by: str | None = None,
) -> FunnelResult:
    """Users through ``steps`` in order, within ``window`` seconds of their entry.

    Per user: the entry is their first step-1 event in ``[since, until)``; step k is
    reached at the earliest step-k event strictly later (a later second) than the step
    reached before it, and no later than the entry plus ``window``; every step's events
    must be in the range too. A user counts once per step. ``by`` (a filter column or a
    JSON path) is read from the entry event.

    The store computes it when its dialect can (``QueryDialect.funnel_statement``);
    otherwise the events are read and each user's path walked here.

    :raises InvalidQuery: a wrong step count or window, an unknown ``by``."""
    check_steps(steps)
    if not MIN_WINDOW <= window <= MAX_WINDOW:
        raise InvalidQuery("window", f"must be {MIN_WINDOW} s to {MAX_WINDOW // 86400} days")
    dialect = store.dialect
    conditions = [_step_condition(store, step) for step in steps]
    where = _time_bounds(store, since, until)
    dimension = store.dimension(by) if by is not None else None
    statement = dialect.funnel_statement(conditions, where, window, dimension)
    groups: dict[Any, tuple[int, list[list[int]]]] = {}
    if statement is None:
        groups = _funnel_in_python(store, steps, conditions, where, window, dimension)
    else:
        with store.engine.connect() as connection:
            for value, entered, *deltas in connection.execute(statement):
                value = dialect.text_value(value)
                old_entered, old_deltas = groups.get(value, (0, [[] for _ in deltas]))
                merged = [old + list(new) for old, new in zip(old_deltas, deltas, strict=True)]
                groups[value] = (old_entered + int(entered), merged)
    count = len(steps)
    total_entered = sum(entered for entered, _ in groups.values())
    total_deltas = [
        [d for _, deltas in groups.values() for d in deltas[k]] for k in range(count - 1)
    ]
    result = FunnelResult(steps=_summarise(total_entered, total_deltas))
    if by is not None:
        ranked = sorted(groups.items(), key=lambda kv: (-kv[1][0], str(kv[0])))
        shown, rest = ranked[:BREAKDOWN_VALUES], ranked[BREAKDOWN_VALUES:]
        result.breakdown = [(v, _summarise(*group)) for v, group in shown]
        if rest:
            entered = sum(group[0] for _, group in rest)
            deltas = [[d for _, group in rest for d in group[1][k]] for k in range(count - 1)]
            result.breakdown.append((OTHER, _summarise(entered, deltas)))
    return result


def _funnel_in_python(
    store: EventStore,
    steps: Sequence[Step],
    conditions: list[ColumnElement],
    where: list[ColumnElement],
    window: int,
    dimension: ColumnElement | None,
) -> dict[Any, tuple[int, list[list[int]]]]:
    """The funnel per breakdown value, ``value: (entered, deltas per step from step
    2)``, from one narrow read of the events of every step."""
    dialect, c = store.dialect, store.table.c
    # One int per row: bit i set when the event matches step i (one event may match two
    # steps that name the same event).
    mask = sum(
        (case((cond, 1 << i), else_=0) for i, cond in enumerate(conditions[1:], 1)),
        case((conditions[0], 1), else_=0),
    ).label("mask")
    columns = [c.user_id, c.anonymous_id, dialect.epoch(c.timestamp).label("t"), mask]
    if dimension is not None:
        columns.append(dimension.label("by"))
    names = sorted({step.event for step in steps})
    statement = dialect.select(*columns).where(
        or_(*(dialect.equals(c.event, name) for name in names))
        if len(names) > 1
        else dialect.equals(c.event, names[0]),
        or_(*conditions),
        *where,
    )
    per_user: dict[Any, list[tuple]] = defaultdict(list)
    with store.engine.connect() as connection:
        rows = connection.execute(statement).all()
    # Rows of (second, mask) sort as they are; with a breakdown, (second, mask, value as
    # sortable text, value): the entry is the same whichever order the store gave.
    if dimension is None:
        for user_id, anonymous_id, t, bits in rows:
            if user := _user(user_id, anonymous_id):
                per_user[user].append((int(t), bits))
    else:
        for user_id, anonymous_id, t, bits, value in rows:
            if user := _user(user_id, anonymous_id):
                value = dialect.text_value(value)
                key = "" if value is None else f" {value}"
                per_user[user].append((int(t), bits, key, value))
    del rows
    groups: dict[Any, tuple[int, list[list[int]]]] = {}
    for events in per_user.values():
        path = _path(events, len(steps), window)
        if path is None:
            continue
        times, value = path
        entered, deltas = groups.get(value, (0, [[] for _ in steps[1:]]))
        for k in range(1, len(times)):
            deltas[k - 1].append(times[k] - times[k - 1])
        groups[value] = (entered + 1, deltas)
    return groups


def _path(events: list[tuple], count: int, window: int) -> tuple[list[int], Any] | None:
    """One user's step times (as far as they got) and breakdown value; None: no entry.

    ``events``: ``(second, mask[, sort key, value])``, in any order. One pass after the
    sort: from the entry on, the first event of step k strictly later than step k - 1
    (every event skipped meanwhile is earlier than it, so of no use to step k + 1)."""
    events.sort()
    entry = next((i for i, event in enumerate(events) if event[1] & 1), None)
    if entry is None:
        return None
    first = events[entry]
    times = [first[0]]
    deadline = first[0] + window
    position, end = entry + 1, len(events)
    for step in range(1, count):
        bit = 1 << step
        while position < end:
            t, mask = events[position][0], events[position][1]
            position += 1
            if t > deadline:
                return times, (first[3] if len(first) > 3 else None)
            if mask & bit and t > times[-1]:
                times.append(t)
                break
        else:
            break
    return times, (first[3] if len(first) > 3 else None)


def _summarise(entered: int, deltas: list[list[int]]) -> list[StepResult]:
    """Step results from the users who entered and, per later step, the delays of the
    users who reached it."""
    results = [StepResult(entered, 1.0 if entered else None, 1.0 if entered else None, None)]
    for delays in deltas:
        users, previous = len(delays), results[-1].users
        results.append(
            StepResult(
                users=users,
                from_previous=users / previous if previous else None,
                from_first=users / entered if entered else None,
                median_seconds=statistics.median(delays) if delays else None,
            )
        )
    return results


# -- retention ----------------------------------------------------------------------------
def period_start(second: int, period: str) -> int:
    """The first second of the UTC day or week (from Monday) holding ``second``."""
    size = PERIODS[period]
    offset = _WEEK_OFFSET if period == "week" else 0
    return second - (second - offset) % size


def retention(
    store: EventStore,
    first: str,
    returning: str,
    period: str,
    since: datetime | None,
    until: datetime | None,
    periods: int = RETENTION_PERIODS,
) -> RetentionResult:
    """A cohort table: users by the period (UTC day, or week from Monday) of their first
    ``first`` event in ``[since, until)``; for each period k = 0 .. ``periods`` - 1 from
    it, how many of them did ``returning`` in period k, at or after their first
    ``first`` event (period 0 is the cohort's own: with ``first`` = ``returning``, all
    of them). Returning events count in the range only; a period that starts at or after
    ``until`` (or now) is None (not yet seen).

    :raises InvalidQuery: an unknown ``period``."""
    if period not in PERIODS:
        raise InvalidQuery("period", f"{period!r} is not one of {', '.join(PERIODS)}")
    dialect, c = store.dialect, store.table.c
    is_first = dialect.equals(c.event, first)
    is_returning = dialect.equals(c.event, returning)
    where = _time_bounds(store, since, until)
    size = PERIODS[period]
    offset = _WEEK_OFFSET if period == "week" else 0
    statement = dialect.retention_statement(is_first, is_returning, where, size, offset, periods)
    cohorts: dict[int, list[int]] = defaultdict(lambda: [0] * (periods + 1))
    if statement is None:
        cohorts.update(_retention_in_python(store, is_first, is_returning, where, period, periods))
    else:
        with store.engine.connect() as connection:
            for cohort, k, users in connection.execute(statement):
                cohorts[int(cohort)][int(k) + 1] += int(users)
    size_s = size
    end = int((until or datetime.now(UTC)).timestamp())
    ordered = sorted(cohorts.items())
    dropped = max(len(ordered) - MAX_COHORTS, 0)
    table = [
        Cohort(
            start=datetime.fromtimestamp(start, UTC),
            users=counts[0],
            returned=[None if start + k * size_s >= end else counts[k + 1] for k in range(periods)],
        )
        for start, counts in ordered[dropped:]
    ]
    return RetentionResult(period=period, cohorts=table, dropped=dropped)


def _retention_in_python(
    store: EventStore,
    is_first: ColumnElement,
    is_returning: ColumnElement,
    where: list[ColumnElement],
    period: str,
    periods: int,
) -> dict[int, list[int]]:
    """``cohort start: [size, users in period 0, ..., periods - 1]`` from one row per
    user and period (``GROUP BY`` in the store): the earliest first-event second and the
    latest returning-event second of the period."""
    dialect, c = store.dialect, store.table.c
    epoch = dialect.epoch(c.timestamp)
    size = PERIODS[period]
    # Literal ints in the SQL text, not parameters: PostgreSQL matches a GROUP BY
    # expression with the selected one only when their texts are identical.
    offset = literal_column(str(_WEEK_OFFSET if period == "week" else 0))
    bucket = (epoch - (epoch - offset) % literal_column(str(size))).label("p")
    first_at = func.min(case((is_first, epoch), else_=None)).label("a")
    returned_at = func.max(case((is_returning, epoch), else_=None)).label("b")
    statement = (
        dialect.select(c.user_id, c.anonymous_id, bucket, first_at, returned_at)
        .where(or_(is_first, is_returning), *where)
        .group_by(c.user_id, c.anonymous_id, bucket)
    )
    per_user: dict[Any, list[tuple[int, int | None, int | None]]] = defaultdict(list)
    with store.engine.connect() as connection:
        for user_id, anonymous_id, start, a, b in connection.execute(statement):
            user = _user(user_id, anonymous_id)
            if user is not None:
                per_user[user].append((int(start), _int(a), _int(b)))
    cohorts: dict[int, list[int]] = {}
    for rows in per_user.values():
        firsts = [a for _, a, _ in rows if a is not None]
        if not firsts:
            continue
        entry = min(firsts)
        cohort = period_start(entry, period)
        counts = cohorts.setdefault(cohort, [0] * (periods + 1))
        counts[0] += 1
        returned = set()
        for start, _, b in rows:
            if b is not None and b >= entry and 0 <= (k := (start - cohort) // size) < periods:
                returned.add(k)
        for k in returned:
            counts[k + 1] += 1
    return cohorts


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def parse_window(text: str) -> int:
    """``3600``, ``30m``, ``1h``, ``1d``, ``7d`` → seconds.

    :raises InvalidQuery: anything else, or out of bounds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    text = text.strip()
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    if not number.isdigit() or len(number) > 9:
        raise InvalidQuery("window", f"{text!r}: write seconds or 30m, 1h, 1d, 7d")
    seconds = int(number) * units[unit]
    if not MIN_WINDOW <= seconds <= MAX_WINDOW:
        raise InvalidQuery("window", f"must be {MIN_WINDOW} s to {MAX_WINDOW // 86400} days")
    return seconds


def format_duration(seconds: float | None) -> str:
    """``200`` → ``3 min 20 s``; ``90061`` → ``1 d 1 h``: the two largest units."""
    if seconds is None:
        return ""
    total = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if total >= size or (unit == "s" and not parts):
            parts.append(f"{total // size} {unit}")
            total %= size
    return " ".join(parts[:2])


__all__ = [
    "MAX_STEPS",
    "MIN_STEPS",
    "PERIODS",
    "Cohort",
    "FunnelResult",
    "RetentionResult",
    "Step",
    "StepResult",
    "format_duration",
    "funnel",
    "parse_window",
    "period_start",
    "retention",
]
