"""The hourly rollup: event counts per ``(hour, type, event, source)``, kept by the
database itself so that the dashboard's chart, top values and counts read a few
thousand rows instead of every event in the range.

``events_hourly`` holds, for each hour of ``timestamp`` (UTC) and each ``type``,
``event`` and ``source``, how many rows ``events`` holds (``n``). A store keeps it in
the same transaction as the rows it counts (SQLite: the sink counts each commit's
inserts in one statement, and row triggers take deleted rows off; PostgreSQL: the sink
counts the rows each transaction inserted, and a statement trigger with a transition
table takes deleted rows off):

- an insert counts only the rows actually inserted (a redelivered copy that the unique
  key refuses is not counted);
- a delete (``eventrouter privacy delete``) takes its rows off again;
- dropping old rows wholesale (PostgreSQL's retention drops a partition, which fires no
  trigger) trims the matching hours in the same transaction (the store's own code);
- creating the table (a migration) fills it from ``events`` in the same transaction.

Beside it, ``users_active`` and ``users_active_counts`` keep the distinct users (the
``user_id``, else the ``anonymous_id``) per UTC day, week (from Monday) and month: one
row per period and user with their events, and the users per period, kept the same
way; :meth:`EventStore.active_users` reads the counts when it asks for no filter
and no breakdown.

Beside it, a store may keep ``events_hourly_paths``: the same counts per value of a
few configured JSON paths (the sinks' ``rollup_paths``, e.g. ``properties.plan``), so
that the dashboard's breakdown by such a path reads the rollup too
(:meth:`EventStore.top`). Its ``value`` is exactly what ``QueryDialect.json_text`` gives
for the path on that store (strings as they are, numbers and booleans as the store
spells them, objects and arrays as JSON text); a missing key and a JSON null are both
"no value" (SQL NULL, as ``json_text`` gives them), which the key columns keep apart
from every text: SQLite keeps ``''`` for no value and ``'v' || text`` otherwise
(:meth:`QueryDialect.path_rollup_value` reads it back), PostgreSQL keeps the text as is
beside a ``digest`` key (sha-256 of the text, empty for no value: a btree key cannot
hold a long string). It is kept exactly as ``events_hourly`` is (inserts counted by the
sink, deletes by a trigger, retention's partition drops trimmed), for the paths listed
in ``events_hourly_paths_kept`` (:data:`rollup_paths_kept`): a path is listed there in
the same transaction as its counts are filled from ``events`` (at start or ``eventrouter
migrate``, with every writer kept out), writers count exactly the listed paths, and a
reader reads only a listed path (:meth:`EventStore.top`), so never one whose backfill
has not completed. A path taken out of the configuration loses its rows and its listing
at the next start or migrate; no path configured drops both tables.

An event without a name (any call but track) is kept under :data:`NO_EVENT`. Stores
that keep no such table say so with ``QueryDialect.rollup = None`` and are read from
``events``. ClickHouse keeps it differently (its copies of a redelivered event collapse
only when parts merge, so a count kept at insert would count them twice): a compactor
recounts the days that changed, and until it has, those days are *gaps*
(``QueryDialect.rollup_gaps``) read from ``events`` like the partial hours
(sinks/clickhouse_rollup.py). It keeps ``events_hourly_paths`` the same way, encoded as
SQLite's, and records per day and path which compaction counted it: a path's gaps
(``rollup_gaps`` with the path) are the dirty days and the days whose latest compaction
did not count it, and ``QueryDialect.path_rollup_kept`` says whether it was ever counted
(instead of :data:`rollup_paths_kept`).

:class:`eventrouter.store.query.EventStore` reads the rollup whenever a filter allows
(:func:`usable`: equality on ``type``, ``event``, ``source`` only; buckets of whole
hours) and reads ``events`` for the rest: the whole hours inside the range come from
here, the partial hours at its two ends from ``events`` (an index range of at most two
hours), summed in one statement; a breakdown by a kept JSON path reads
``events_hourly_paths`` the same way. The answer is the same either way, which
tests/integration/test_rollups.py checks on every store.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import BigInteger, Column, DateTime, Integer, MetaData, String, Table, Text

#: The rollup's bucket, in seconds.
HOUR = 3600
#: The ``event`` the rollup keeps for a call without one (its key columns are NOT NULL).
NO_EVENT = ""
#: Filter columns the rollup can answer (equality only).
ROLLUP_COLUMNS = ("type", "event", "source")
#: Filter columns it cannot: a filter on any of these reads ``events``.
SCAN_COLUMNS = ("user_id", "anonymous_id", "session_id")

metadata = MetaData()
events_hourly = Table(
    "events_hourly",
    metadata,
    # The store's own time type: SQLite keeps SQLAlchemy's text, PostgreSQL timestamptz.
    Column("hour", DateTime, nullable=False),
    Column("type", String(16), nullable=False),
    Column("event", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("n", BigInteger, nullable=False),
)


#: Most JSON paths a store keeps hourly counts of (the sinks' ``rollup_paths``): each one
#: costs the writer an aggregate over its rows and the rollup's rows per hour.
MAX_ROLLUP_PATHS = 8
#: Hourly counts per value of the kept JSON paths (the columns every store has; a store
#: may keep more, PostgreSQL's ``digest``). ``value``: see the module's docstring.
events_hourly_paths = Table(
    "events_hourly_paths",
    metadata,
    Column("path", Text, nullable=False),
    Column("hour", DateTime, nullable=False),
    Column("type", String(16), nullable=False),
    Column("event", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("value", Text),
    Column("n", BigInteger, nullable=False),
)
#: The paths whose counts ``events_hourly_paths`` holds complete (backfilled): the only
#: ones writers count and readers read.
rollup_paths_kept = Table(
    "events_hourly_paths_kept", metadata, Column("path", Text, nullable=False)
)


def check_rollup_paths(paths: list[str]) -> list[tuple[str, tuple[str, ...]]]:
    """``rollup_paths`` as ``(column, segments)``, validated as the breakdown's
    ``dimension`` is (``PathCondition.parse``).

    :raises ValueError: too many, a repeated one, or one the dimension would refuse."""
    from eventrouter.store.query import InvalidQuery, PathCondition

    if len(paths) > MAX_ROLLUP_PATHS:
        raise ValueError(f"rollup_paths: at most {MAX_ROLLUP_PATHS} paths")
    if len(set(paths)) != len(paths):
        raise ValueError("rollup_paths: a path is listed twice")
    parsed = []
    for path in paths:
        try:
            condition = PathCondition.parse(path, "")
        except InvalidQuery as exc:
            raise ValueError(f"rollup_paths: {path!r}: {exc}") from None
        parsed.append((condition.column, condition.path))
    return parsed


#: The ``event`` key of :data:`users_seen`'s rows that count every event.
ALL_EVENTS = ""


def event_scope(name: str | None) -> str:
    """:data:`users_seen`'s ``event`` key of the rows that count only the events named
    ``name`` (None: those without one): ``'e'`` and the name, apart from
    :data:`ALL_EVENTS` whatever the name."""
    return "e" + (name or "")


#: When each user was last seen with each value of a kept JSON path (the sinks'
#: ``rollup_paths``, with ``unique_users``): one row per path, ``event`` scope (every
#: event, :data:`ALL_EVENTS`, or one event's, :func:`event_scope`), value (encoded as
#: in ``events_hourly_paths``) and user (the ``user_id``, else the ``anonymous_id``),
#: with the latest ``timestamp`` of their events there (``last``) and how many (``n``,
#: so that a deletion knows when the last one went). The Active users page's
#: breakdown by such a path over a range ending now is then the rows with
#: ``last >= since`` per value (:meth:`EventStore.active_users`): one row per user
#: and value, not one per event. A store may keep more columns (PostgreSQL's
#: ``digest``, as in ``events_hourly_paths``).
users_seen = Table(
    "users_seen",
    metadata,
    Column("path", Text, nullable=False),
    Column("event", Text, nullable=False),
    Column("value", Text),
    Column("user_key", Text, nullable=False),
    Column("last", DateTime, nullable=False),
    Column("n", BigInteger, nullable=False),
)
#: The paths whose rows ``users_seen`` holds complete (filled from ``events`` in the
#: transaction that lists them): a reader reads a path only while it is listed here and
#: in :data:`rollup_paths_kept`.
users_seen_kept = Table("users_seen_kept", metadata, Column("path", Text, nullable=False))


#: Each user's events per event name and UTC day (the sinks' ``unique_users``): one row
#: per ``event`` (a name: events without one are not kept), user (the ``user_id``, else
#: the ``anonymous_id``: events with neither are not kept) and ``day`` (days since
#: 1970-01-01, :func:`day_number`: periods are integer arithmetic on it), with the times
#: of their ``first`` and ``last`` event that day and how many (``n``, so that a
#: deletion knows when the group empties; where it took the first or last event, the
#: store reads that time again from ``events``). Funnels and retention read their
#: entries and returning users from it for the whole days of their range, and
#: ``events`` only for the partial days at its ends (eventrouter.store.analysis): a
#: user active on a day is one row there, however many events they sent. Copies of one
#: event change neither time. Kept like ``users_active``: inserts counted by the sink in
#: the same transaction, deletes by a trigger, retention's partition drops by the day.
event_users_daily = Table(
    "event_users_daily",
    metadata,
    Column("event", Text, nullable=False),
    Column("user_key", Text, nullable=False),
    Column("day", Integer, nullable=False),
    Column("first", DateTime, nullable=False),
    Column("last", DateTime, nullable=False),
    Column("n", BigInteger, nullable=False),
)

#: Distinct users per period (:meth:`EventStore.active_users`), kept beside
#: ``users_active`` (one row per period and user, with their events): ``kind`` is
#: :data:`PERIOD_KINDS`'s letter, ``start`` the period's first moment (UTC).
users_active_counts = Table(
    "users_active_counts",
    metadata,
    Column("kind", String(1), nullable=False),
    Column("start", DateTime, nullable=False),
    Column("users", BigInteger, nullable=False),
)
PERIOD_KINDS = {"day": "d", "week": "w", "month": "m"}


def day_number(moment: datetime) -> int:
    """The UTC day holding ``moment`` (a naive one is UTC), as days since 1970-01-01:
    :data:`event_users_daily`'s ``day``."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return (moment.date() - date(1970, 1, 1)).days


def period_start(moment: datetime, interval: str) -> datetime:
    """The first moment (UTC) of the day, week (from Monday) or month holding ``moment``."""
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if interval == "week":
        return day - timedelta(days=day.weekday())
    if interval == "month":
        return day.replace(day=1)
    return day


def floor_hour(moment: datetime, unit: int = HOUR) -> datetime:
    """The start of the ``unit`` (seconds: an hour, a day) holding ``moment``, UTC."""
    moment = moment.astimezone(UTC)
    start = moment.replace(minute=0, second=0, microsecond=0)
    return start - timedelta(hours=start.hour % (unit // HOUR))


def ceil_hour(moment: datetime, unit: int = HOUR) -> datetime:
    floor = floor_hour(moment, unit)
    return floor if floor == moment.astimezone(UTC) else floor + timedelta(seconds=unit)


def usable(where: object) -> bool:
    """Whether the rollup can answer a filter: no JSON path, no filter on a column it does
    not keep, and no event name it keeps for another meaning (:data:`NO_EVENT`)."""
    if getattr(where, "paths", None):
        return False
    if any(getattr(where, name) is not None for name in SCAN_COLUMNS):
        return False
    return getattr(where, "event", None) != NO_EVENT


@dataclass(frozen=True)
class Split:
    """A time range cut for the rollup: whole hours ``[start, end)`` from the rollup
    (``start`` None: from the first), the rest from ``events``, and so are the ``gaps``
    inside it (ranges the store's rollup does not hold yet: ``QueryDialect.rollup_gaps``)."""

    start: datetime | None
    end: datetime
    gaps: tuple[tuple[datetime, datetime], ...] = ()


def split(
    since: datetime | None, until: datetime | None, now: datetime, unit: int = HOUR
) -> Split | None:
    """Where the whole hours of ``[since, until)`` (``until`` None: up to now, and
    whatever lies beyond it read from ``events``) begin and end; None: not one whole
    hour in it (read ``events`` alone). With a ``unit`` of a day
    (``QueryDialect.rollup_unit``), the whole days."""
    start = ceil_hour(since, unit) if since is not None else None
    end = floor_hour(until if until is not None else now, unit)
    if start is not None and start >= end:
        return None
    return Split(start, end)
