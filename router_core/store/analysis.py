"""Funnels and retention over any queryable store (the dashboard's ``/admin/funnels`` and
``/admin/retention``; docs/admin.md, "Funnels" and "Retention", for operators).

A **user** is an event's ``user_id`` when it has one, else its ``anonymous_id`` (events
with neither are left out). No identity stitching: the anonymous visits of a user who
later signs in are another user's here, as they are on the user page.

The store does the work, in one statement each: its dialect's own when it has one
(``QueryDialect.funnel_statement`` and ``retention_statement``: ClickHouse's per-user
arrays), else the standard SQL here (common table expressions, one ``GROUP BY`` per
step; SQLite and PostgreSQL). Either gives the same few rows (users counted by
breakdown value and delays; users counted by cohort and period), finished here into
conversion rates, exact medians and a cohort table. Every value, event names and JSON
paths included, is a bound parameter. Times are compared in whole seconds (ClickHouse
before 20.1 keeps no more).

Copies of one event (a redelivery a store kept twice) change nothing: a user counts once
per step and per period, and copies share their time.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    and_,
    case,
    exists,
    func,
    literal_column,
    or_,
    select,
    union,
    union_all,
)

from eventrouter.store.interface import InvalidQuery
from eventrouter.store.query import FILTER_COLUMNS, EventStore, PathCondition
from eventrouter.store.rollup import day_number, event_scope

MIN_STEPS, MAX_STEPS = 2, 5
#: The conversion window's bounds, in seconds.
MIN_WINDOW, MAX_WINDOW = 1, 90 * 86400
#: Breakdown values shown on their own (most users at step 1 first); the rest are one
#: :data:`OTHER` row.
BREAKDOWN_VALUES = 10
OTHER = "(other)"
DAY = 86400
PERIODS = {"day": DAY, "week": 7 * DAY}
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
    if since is not None:
        bounds += dialect.range_hint(since, until)
    return bounds


def _step_condition(store: EventStore, step: Step) -> ColumnElement:
    dialect, c = store.dialect, store.table.c
    return and_(
        dialect.equals(c.event, step.event),
        *(dialect.equals(dialect.json_text(p.column, p.path), p.value) for p in step.conditions),
    )


# -- the whole days from event_users_daily -----------------------------------------------
@dataclass(frozen=True)
class DailySpan:
    """A range cut for :data:`eventrouter.store.rollup.event_users_daily`: its whole
    UTC days ``[first_day, end_day)`` (None: unbounded) read from the rollup, and the
    ``edges`` (conditions on ``events``: the partial days at either end) read from
    ``events``."""

    days: tuple[ColumnElement, ...]
    edges: tuple[ColumnElement, ...]


def daily_span(
    store: EventStore, since: datetime | None, until: datetime | None
) -> DailySpan | None:
    """How ``event_users_daily`` answers ``[since, until)``: None when the store keeps
    none (or the reader is told not to read rollups) or the range holds no whole day.

    A day the range cuts is read whole from the rollup all the same when the part of it
    left out holds no event at all (one index lookup each): a range starting before the
    first stored event, or ending now with nothing stored later that day, is the same
    range with that day whole."""
    dialect = store.dialect
    daily = dialect.event_users_daily
    if not store.keeps(daily):
        return None
    r, c = daily.c, store.table.c
    day = timedelta(days=1)
    start = since.astimezone(UTC) if since is not None else None
    end = until.astimezone(UTC) if until is not None else None
    first_day = start.replace(hour=0, minute=0, second=0, microsecond=0) if start else None
    end_day = end.replace(hour=0, minute=0, second=0, microsecond=0) if end else None
    # The cut-off parts of the two cut days: a day whose part holds no event is whole.
    lower = (first_day, start) if start is not None and first_day < start else None
    upper = (end, end_day + day) if end is not None and end_day < end else None
    held = _hold_events(store, [part for part in (lower, upper) if part is not None])
    if lower is not None and held[lower]:
        first_day += day
    if upper is not None and not held[upper]:
        end_day += day
    if first_day is not None and end_day is not None and first_day >= end_day:
        return None
    days, edges = [], []
    if first_day is not None:
        days.append(r.day >= day_number(first_day))
        if start < first_day:
            edges.append(
                and_(c.timestamp >= dialect.time(start), c.timestamp < dialect.time(first_day))
            )
    if end_day is not None:
        days.append(r.day < day_number(end_day))
        if end_day < end:
            edges.append(
                and_(c.timestamp >= dialect.time(end_day), c.timestamp < dialect.time(end))
            )
    return DailySpan(days=tuple(days), edges=tuple(edges))


def _hold_events(
    store: EventStore, parts: Sequence[tuple[datetime, datetime]]
) -> dict[tuple[datetime, datetime], bool]:
    """Whether ``events`` holds any row with a time in each ``[start, end)`` of
    ``parts``: one statement (an index lookup each), none for no part."""
    if not parts:
        return {}
    c, dialect = store.table.c, store.dialect
    checks = [
        exists().where(c.timestamp >= dialect.time(start), c.timestamp < dialect.time(end))
        for start, end in parts
    ]
    with store.engine.connect() as connection:
        row = connection.execute(select(*checks)).one()
    return {part: bool(held) for part, held in zip(parts, row, strict=True)}


def _daily_times(store: EventStore, span: DailySpan, event: str) -> Any:
    """The subquery ``(u, t)``: the users of ``event`` and a time of theirs, each group's
    first one from ``event_users_daily`` for the whole days, every event's own for the
    partial days; a user's least ``t`` is their first ``event`` in the range."""
    dialect, c = store.dialect, store.table.c
    r = dialect.event_users_daily.c  # type: ignore[union-attr]
    user = func.coalesce(c.user_id, c.anonymous_id)
    parts = [
        select(r.user_key.label("u"), r.first.label("t")).where(
            dialect.equals(r.event, event), *span.days
        )
    ]
    if span.edges:
        parts.append(
            select(user.label("u"), c.timestamp.label("t")).where(
                dialect.equals(c.event, event), user.isnot(None), or_(*span.edges)
            )
        )
    return (union_all(*parts) if len(parts) > 1 else parts[0]).subquery("times")


def _least(values: Sequence[ColumnElement]) -> ColumnElement:
    """The least non-NULL of one or two values (NULL: none), in standard SQL."""
    if len(values) == 1:
        return values[0]
    a, b = values
    return case((a.is_(None), b), (or_(b.is_(None), a <= b), a), else_=b)


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
    if statement is None:
        # The entries from event_users_daily when the entry step is an event name alone.
        span = daily_span(store, since, until) if not steps[0].conditions else None
        entries = _daily_entries(store, span, steps[0].event) if span is not None else None
        seen = _seen_values(store, by, steps[0].event) if by is not None else None
        statement = _funnel_statement(store, conditions, where, window, dimension, entries, seen)
    # Rows (value, users, delay 2, ..., delay n): users with the same value and delays
    # (None or 0: not reached), grouped.
    groups: dict[Any, tuple[int, list[list[int]]]] = {}
    with store.engine.connect() as connection:
        dialect.before_analysis(connection, "funnel")
        rows = connection.execute(statement).all()
    for value, users, *delays in rows:
        value, users = dialect.text_value(value), int(users)
        entered, deltas = groups.get(value, (0, [[] for _ in delays]))
        for k, delay in enumerate(delays):
            if not delay:
                break
            deltas[k].extend([int(delay)] * users)
        groups[value] = (entered + users, deltas)
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


def _daily_entries(store: EventStore, span: DailySpan, event: str) -> Select:
    """Each user's entry ``(u, t1)``, the second of their first ``event`` in the range,
    from ``event_users_daily`` (:func:`_daily_times`)."""
    times = _daily_times(store, span, event)
    # The least time, then its second: one conversion per user, not per row.
    return select(times.c.u, store.dialect.epoch(func.min(times.c.t)).label("t1")).group_by(
        times.c.u
    )


def _seen_values(store: EventStore, by: str, event: str) -> Any:
    """Each user's values of the JSON path ``by`` among their ``event`` events, from
    the store's :attr:`QueryDialect.users_seen` (one row per value and user): the
    subquery ``(u, v, n)``, ``v`` the least value as kept and ``n`` how many; None when
    the store does not keep ``by`` there complete (or a filter column)."""
    dialect = store.dialect
    seen = dialect.users_seen
    # users_seen_kept() asks the listing, which goes with the table: no check of its own.
    if seen is None or by in FILTER_COLUMNS or not store.use_rollup:
        return None
    if not dialect.users_seen_kept(by):
        return None
    r = seen.c  # type: ignore[union-attr]
    return (
        select(r.user_key.label("u"), func.min(r.value).label("v"), func.count().label("n"))
        .where(r.path == by, r.event == event_scope(event))
        .group_by(r.user_key)
        .subquery("seen")
    )


def _funnel_statement(
    store: EventStore,
    conditions: list[ColumnElement],
    where: list[ColumnElement],
    window: int,
    dimension: ColumnElement | None,
    entries: Select | None = None,
    seen: Any = None,
) -> Select:
    """The funnel in standard SQL (``QueryDialect.funnel_statement``'s rows):

    - ``s1``: each user's entry, ``min(second)`` of their step-1 events (``entries``:
      the same rows, read elsewhere: :func:`_daily_entries`);
    - ``s<k>``: the users of ``s<k-1>`` with the earliest step-k second strictly after
      their step k - 1 and within the window: read for each user alone where the store
      can (``QueryDialect.user_probes``: ``p<k>`` holds each index's answer), else by
      one ``GROUP BY`` over the step's events joined to ``s<k-1>`` by user;
    - ``b``: the entry event's value of ``dimension`` (the least, when several entry
      events share the second), read the same way; or, given ``seen``
      (:func:`_seen_values`), the one value of a user whose step-1 events all have
      the same (every entry event has it, whatever the range), and only the others'
      entry events read, each user's alone;
    - then the users counted by value and delays (``s1`` left-joined to the others)."""
    dialect, table = store.dialect, store.table
    user = func.coalesce(table.c.user_id, table.c.anonymous_id)
    second = dialect.epoch(table.c.timestamp)
    if entries is None:
        entries = (
            select(user.label("u"), func.min(second).label("t1"))
            .select_from(table)
            .where(conditions[0], user.isnot(None), *where)
            .group_by(user)
        )
    entries_cte = entries.cte("s1")
    reached = [entries_cte]
    one = literal_column("1")
    for k, condition in enumerate(conditions[1:], 2):
        previous = reached[-1]
        after, last = previous.c[f"t{k - 1}"], previous.c.t1 + literal_column(str(int(window)))
        probes = dialect.user_probes(
            previous.c.u, table.c.timestamp, [condition], where, after + one, last + one
        )
        if probes is not None:
            found, earliest = _probed(previous, [previous.c.u, previous.c.t1], probes, f"p{k}")
            step = (
                select(found.c.u, found.c.t1, dialect.epoch(earliest).label(f"t{k}"))
                .where(earliest.isnot(None))
                .cte(f"s{k}")
            )
        else:
            step = (
                select(previous.c.u, previous.c.t1, func.min(second).label(f"t{k}"))
                .select_from(table.join(previous, user == previous.c.u))
                .where(condition, *where, second > after, second <= last)
                .group_by(previous.c.u, previous.c.t1)
                .cte(f"s{k}")
            )
        reached.append(step)
    joined = entries_cte
    for step in reached[1:]:
        joined = joined.outerjoin(step, step.c.u == entries_cte.c.u)
    value: ColumnElement = literal_column("NULL")
    if dimension is not None:
        t1 = entries_cte.c.t1
        probes = dialect.user_probes(
            entries_cte.c.u, dimension, [conditions[0]], where, t1, t1 + one
        )
        if seen is not None:
            # The entry event read (a correlated subquery: each user's events alone,
            # through the store's index of users' events) only for a user of several
            # values; CASE reads it for no one else.
            if probes is not None:
                entry_value = _least(probes)
            else:
                entry_value = (
                    select(func.min(dimension))
                    .where(conditions[0], user == entries_cte.c.u, *where, second == t1)
                    .scalar_subquery()
                )
            value_of = case((seen.c.n == 1, dialect.path_rollup_value(seen.c.v)), else_=entry_value)
            values = (
                select(entries_cte.c.u, value_of.label("v"))
                .select_from(entries_cte.outerjoin(seen, seen.c.u == entries_cte.c.u))
                .cte("b")
            )
        elif probes is not None:
            found, least = _probed(entries_cte, [entries_cte.c.u], probes, "pb")
            values = select(found.c.u, least.label("v")).cte("b")
        else:
            values = (
                select(entries_cte.c.u, func.min(dimension).label("v"))
                .select_from(table.join(entries_cte, user == entries_cte.c.u))
                .where(conditions[0], *where, second == t1)
                .group_by(entries_cte.c.u)
                .cte("b")
            )
        joined = joined.outerjoin(values, values.c.u == entries_cte.c.u)
        value = values.c.v
    delays = [
        (step.c[f"t{k}"] - reached[k - 2].c[f"t{k - 1}"]).label(f"d{k}")
        for k, step in enumerate(reached[1:], 2)
    ]
    return (
        select(value.label("value"), func.count().label("users"), *delays)
        .select_from(joined)
        .group_by(*([value] if dimension is not None else []), *delays)
    )


def _probed(
    previous: Any, keep: Sequence[ColumnElement], probes: Sequence[Any], name: str
) -> tuple[Any, ColumnElement]:
    """The CTE ``name``: ``keep`` and each probe's answer (``h0``, ``h1``, ...) per row of
    ``previous``, materialised so that each probe runs once per user; and the least of
    its answers (the probes' result)."""
    found = (
        select(*keep, *(probe.label(f"h{i}") for i, probe in enumerate(probes)))
        .select_from(previous)
        .cte(name)
        .prefix_with("MATERIALIZED")
    )
    return found, _least([found.c[f"h{i}"] for i in range(len(probes))])


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
    span = daily_span(store, since, until)
    if span is not None:
        statement = _retention_daily(store, span, first, returning, size, offset, periods)
    else:
        statement = None
        if store.keeps(dialect.user_days):
            statement = dialect.retention_days(
                first, returning, since, until, where, size, offset, periods
            )
        if statement is None:
            statement = dialect.retention_statement(
                is_first, is_returning, where, size, offset, periods
            )
    if statement is None:
        statement = _retention_statement(store, is_first, is_returning, where, period, periods)
    cohorts: dict[int, list[int]] = defaultdict(lambda: [0] * (periods + 1))
    with store.engine.connect() as connection:
        dialect.before_analysis(connection, "retention")
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


def _retention_statement(
    store: EventStore,
    is_first: ColumnElement,
    is_returning: ColumnElement,
    where: list[ColumnElement],
    period: str,
    periods: int,
) -> Any:
    """Retention in standard SQL (``QueryDialect.retention_statement``'s rows):

    - ``pp``: per user and period, the earliest first-event second and the latest
      returning-event second;
    - ``pu``: per user, the entry (their earliest first-event second);
    - the cohort sizes (k = -1), and per cohort and k the users of ``pp`` whose latest
      returning second in period k is at or after their entry."""
    dialect, c = store.dialect, store.table.c
    user = func.coalesce(c.user_id, c.anonymous_id)
    epoch = dialect.epoch(c.timestamp)
    size = _integer(PERIODS[period])
    # Literal ints in the SQL text, not parameters: PostgreSQL matches a GROUP BY
    # expression with the selected one only when their texts are identical.
    offset = _integer(_WEEK_OFFSET if period == "week" else 0)
    bucket = epoch - (epoch - offset) % size
    per_period = (
        select(
            user.label("u"),
            bucket.label("p"),
            func.min(case((is_first, epoch), else_=None)).label("a"),
            func.max(case((is_returning, epoch), else_=None)).label("b"),
        )
        .select_from(store.table)
        .where(or_(is_first, is_returning), user.isnot(None), *where)
        .group_by(user, bucket)
        .cte("pp")
    )
    per_user = (
        select(per_period.c.u, func.min(per_period.c.a).label("entry"))
        .group_by(per_period.c.u)
        .having(func.min(per_period.c.a).isnot(None))
        .cte("pu")
    )
    cohort = per_user.c.entry - (per_user.c.entry - offset) % size
    sizes = select(cohort.label("cohort"), literal_column("-1").label("k"), func.count())
    sizes = sizes.select_from(per_user).group_by(cohort)
    k = (per_period.c.p - cohort) // size
    returns = (
        select(cohort.label("cohort"), k.label("k"), func.count())
        .select_from(per_period.join(per_user, per_period.c.u == per_user.c.u))
        .where(
            per_period.c.b >= per_user.c.entry,
            per_period.c.p < cohort + literal_column(str(PERIODS[period] * periods)),
        )
        .group_by(cohort, k)
    )
    return union_all(sizes, returns)


def _retention_daily(
    store: EventStore,
    span: DailySpan,
    first: str,
    returning: str,
    size: int,
    offset: int,
    periods: int,
) -> Any:
    """Retention from ``event_users_daily`` (``QueryDialect.retention_statement``'s
    rows): each user's entry from their groups of ``first`` (:func:`_daily_times`), then
    their groups of ``returning`` from the entry's second to the cohort's last period
    (a group counts in its day's period when its last event is at or after the entry),
    and the partial days' returning events from ``events``. A user's groups are one
    index range each (the rollup's key leads with the event and the user)."""
    dialect, c = store.dialect, store.table.c
    r = dialect.event_users_daily.c  # type: ignore[union-attr]
    # Literal ints in the SQL text, as the standard SQL's.
    size_sql, shift = _integer(size), _integer(offset)
    times = _daily_times(store, span, first)
    entries = (
        select(times.c.u, dialect.epoch(func.min(times.c.t)).label("entry"))
        .group_by(times.c.u)
        .subquery("entries")
    )
    entry, day_size = entries.c.entry, _integer(DAY)
    cohorts = select(
        entries.c.u,
        entry.label("entry"),
        (entry // day_size).label("entry_day"),
        (entry - (entry - shift) % size_sql).label("cohort"),
    ).subquery("entered")
    span_seconds = _integer(int(size) * int(periods))
    cohorts = (
        select(
            *cohorts.c,
            # The day after the cohort's last period: the end of each user's index range.
            ((cohorts.c.cohort + span_seconds) // day_size).label("end_day"),
        )
        .cte("cohorts")
        .prefix_with("MATERIALIZED")
    )
    end = cohorts.c.cohort + span_seconds

    def period_of(second: ColumnElement) -> ColumnElement:
        return (second - (second - shift) % size_sql).label("p")

    # Days since 1970 as seconds: integer arithmetic per row, no time parsed.
    day = r.day * day_size
    parts = [
        select(cohorts.c.u, cohorts.c.cohort, period_of(day))
        .select_from(cohorts)
        .join(
            dialect.event_users_daily,  # type: ignore[arg-type]
            and_(dialect.equals(r.event, returning), r.user_key == cohorts.c.u),
        )
        .where(
            *span.days,
            r.day >= cohorts.c.entry_day,
            r.day < cohorts.c.end_day,
            # On the entry's own day, a group counts if its last event is not earlier.
            or_(r.day > cohorts.c.entry_day, dialect.epoch(r.last) >= cohorts.c.entry),
        )
    ]
    if span.edges:
        user, second = func.coalesce(c.user_id, c.anonymous_id), dialect.epoch(c.timestamp)
        parts.append(
            select(cohorts.c.u, cohorts.c.cohort, period_of(second))
            .select_from(cohorts)
            .join(store.table, user == cohorts.c.u)
            .where(
                dialect.equals(c.event, returning),
                or_(*span.edges),
                second >= cohorts.c.entry,
                second < end,
            )
        )
    if len(parts) > 1:
        back = union(*parts).subquery("back")
    elif size == DAY:  # one row per user and day: already one per user and period
        back = parts[0].subquery("back")
    else:
        back = parts[0].distinct().subquery("back")
    k = ((back.c.p - back.c.cohort) // size_sql).label("k")
    sizes = select(cohorts.c.cohort, literal_column("-1").label("k"), func.count())
    returned = select(back.c.cohort, k, func.count()).group_by(back.c.cohort, k)
    return union_all(sizes.group_by(cohorts.c.cohort), returned)


def _integer(value: int) -> ColumnElement:
    """``value`` as literal SQL text typed as an integer: divisions by it (``//``) are
    the stores' integer divisions, not ``FLOOR`` of a float or ``numeric`` one (which
    also made PostgreSQL compare and hash days as ``double precision``)."""
    return literal_column(str(int(value)), BigInteger)


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
