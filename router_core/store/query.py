"""The store query layer: one API over every queryable store, the same SQLAlchemy Core
expressions with each store's differences asked of its :class:`QueryDialect`
(``Store.query_dialect()``: JSON access, time functions, page windows, the live tail).

It serves ``GET /api/v1/events`` and the admin dashboard. Results come newest first by
``(timestamp, message_id, source)`` with keyset pagination: the cursor is the last row's
key, so a page costs the same however deep it is and rows arriving meanwhile never shift
it. Every filter value is a bound parameter. A messageId is unique per source only: an
event is named by its source and its id (:meth:`EventStore.get`).
"""

from __future__ import annotations

import base64
import dataclasses
import re
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    and_,
    func,
    inspect,
    literal_column,
    or_,
    select,
    union_all,
)

from eventrouter.columns import JSON_COLUMNS, iso_utc
from eventrouter.store import rollup
from eventrouter.store.interface import (
    InvalidQuery,
    QueryDialect,
    Store,
    row_to_event,
)

__all__ = [
    "INTERVALS",
    "ActiveUsers",
    "AmbiguousEvent",
    "EventFilter",
    "EventStore",
    "InvalidQuery",
    "Page",
    "PathCondition",
    "QueryDialect",
    "StoreSize",
    "TailPosition",
    "decode_cursor",
    "encode_cursor",
    "iso_utc",
    "row_to_event",
]

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
FILTER_COLUMNS = ("type", "event", "user_id", "anonymous_id", "session_id", "source")
#: Later than any stored ``timestamp`` (the upper bound of an open range's last hours).
END = datetime.max.replace(tzinfo=UTC)
#: Seconds before a store found without its rollup table is asked again.
ROLLUP_RECHECK = 60.0


class AmbiguousEvent(LookupError):
    """A message id asked for without a source is stored by several sources."""

    def __init__(self, message_id: str, sources: Sequence[str]) -> None:
        self.message_id = message_id
        #: Every source that has an event of that id, sorted.
        self.sources = sorted(sources)
        #: What is ambiguous, naming the id and the sources.
        self.summary = (
            f"message_id: {len(self.sources)} sources have an event {message_id!r} "
            f"({', '.join(map(repr, self.sources))})"
        )
        super().__init__(f"{self.summary}: name one with source")


#: JSON columns a path condition may address (every JSON column), and the shape of one
#: path segment.
PATH_COLUMNS = JSON_COLUMNS
_SEGMENT = re.compile(r"^[A-Za-z0-9_$@:-]{1,100}$")
#: Most path conditions in one query.
MAX_PATH_CONDITIONS = 10


class PathCondition(msgspec.Struct, frozen=True):
    """``properties.plan = "pro"``: the JSON value at ``path`` under ``column``, as text
    (strings as they are, numbers and booleans as JSON writes them), equals ``value``."""

    column: str
    path: tuple[str, ...]
    value: str

    @classmethod
    def parse(cls, name: str, value: str) -> PathCondition:
        """From a query parameter such as ``properties.plan`` = ``pro``.

        :raises InvalidQuery: an unknown column or a malformed path."""
        column, _, rest = name.partition(".")
        segments = tuple(rest.split(".")) if rest else ()
        if column not in PATH_COLUMNS or not segments:
            raise InvalidQuery(name, "write properties.KEY, traits.KEY or context.KEY")
        for segment in segments:
            if not _SEGMENT.match(segment):
                raise InvalidQuery(
                    name, f"path segment {segment!r}: letters, digits and _$@:- only"
                )
        return cls(column, segments, value)


class EventFilter(msgspec.Struct, kw_only=True):
    type: str | None = None
    event: str | None = None
    user_id: str | None = None
    anonymous_id: str | None = None
    session_id: str | None = None
    source: str | None = None
    #: Inclusive lower bound on ``timestamp``.
    since: datetime | None = None
    #: Exclusive upper bound on ``timestamp``.
    until: datetime | None = None
    #: Conditions on JSON paths, all of which must hold.
    paths: list[PathCondition] = []


class StoreSize(msgspec.Struct):
    dialect: str
    events: int
    #: On-disk bytes of the events (and, on PostgreSQL, of every partition and index).
    bytes: int | None


def _int_or_none(value: Any) -> int | None:
    return int(value) if value is not None else None


def _aware(value: datetime) -> datetime:
    """A stored time as an aware UTC datetime (stores hand back naive UTC or aware)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: Sources :meth:`EventStore.get` reads of an id asked for without a source: enough to
#: name those that share it in an ambiguity error.
AMBIGUITY_SOURCES = 20
#: How far back a tail by ``received_at`` looks for rows committed after later ones.
TAIL_LOOKBACK = timedelta(seconds=5)


class TailPosition(msgspec.Struct, kw_only=True):
    """How far a live tail has read a store (see :meth:`EventStore.stored_since`)."""

    #: The last value of the store's insert order read (``QueryDialect.insert_order``).
    rowid: int = 0
    received_at: datetime = datetime.min.replace(tzinfo=UTC)
    #: Events shown by ``(source, message_id)`` (one source's id does not hide another's).
    seen: dict[tuple[str, str], datetime] = {}


#: The periods :meth:`EventStore.active_users` counts users per.
INTERVALS = ("day", "week", "month")


class ActiveUsers(msgspec.Struct, kw_only=True):
    """Distinct users (:meth:`EventStore.active_users`)."""

    interval: str
    #: Whether the counts are exact (else the store's estimate).
    exact: bool
    #: ``(period start, users)``, oldest first; periods without users left out.
    series: list[tuple[datetime, int]]
    by: str | None = None
    #: ``(value, users)`` of ``by`` over the whole range, most users first.
    top: list[tuple[Any, int]] = []


class Page(msgspec.Struct):
    events: list[dict[str, Any]]
    next_cursor: str | None


def encode_cursor(timestamp: datetime, message_id: str, source: str | None = None) -> str:
    """The key of a page's last row as an opaque cursor: ``(timestamp, message_id,
    source)`` (two events may share a time and an id when their sources differ)."""
    key = [timestamp.isoformat(), message_id]
    if source is not None:
        key.append(source)
    raw = msgspec.json.encode(key)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str, str | None]:
    """``(timestamp, message_id, source)``; ``source`` is None in a cursor of an
    earlier release (which named no source)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = msgspec.json.decode(raw, type=list[str])
        if len(key) not in (2, 3):
            raise ValueError(key)
        timestamp, message_id, *source = key
        return datetime.fromisoformat(timestamp), message_id, (source or [None])[0]
    except (ValueError, msgspec.DecodeError):
        raise InvalidQuery("cursor", "not a cursor returned by this API") from None


class EventStore:
    """Reads the stored events of one store. Blocking: call it from a thread in async
    code.

    :raises ValueError: the store cannot be queried (``Store.query_dialect()`` is None).
    """

    def __init__(self, store: Store, *, use_rollup: bool = True) -> None:
        dialect = store.query_dialect()
        if dialect is None:
            raise ValueError(f"{type(store).__name__} cannot be queried")
        self.dialect: QueryDialect = dialect
        self.table = dialect.table
        #: Read the store's rollup where it can answer (False: always ``events``, which
        #: gives the same answers; the tests compare the two).
        self.use_rollup = use_rollup
        self._tables_found: set[str] = set()
        self._tables_checked: dict[str, float] = {}

    @property
    def engine(self) -> Any:
        return self.dialect.engine

    def close(self) -> None:
        self.dialect.close()

    def ensure_schema(self) -> None:
        """Create the ``events`` table if the store's readers may come before any writer
        (SQLite: a queued edge may serve queries before any worker created it; server
        stores are migrated)."""
        self.dialect.ensure_schema()

    def conditions(self, where: EventFilter) -> list[ColumnElement]:
        """``where`` as SQL conditions, every value a bound parameter.

        :raises InvalidQuery: too many path conditions, or a store without JSON access."""
        dialect, c = self.dialect, self.table.c
        conditions = [
            dialect.equals(c[name], value)
            for name in FILTER_COLUMNS
            if (value := getattr(where, name)) is not None
        ]
        if len(where.paths) > MAX_PATH_CONDITIONS:
            raise InvalidQuery("paths", f"at most {MAX_PATH_CONDITIONS} path conditions")
        conditions += [
            dialect.equals(dialect.json_text(p.column, p.path), p.value) for p in where.paths
        ]
        return self._between(conditions, where.since, where.until)

    def query(
        self,
        where: EventFilter,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
        columns: Sequence[str] = (),
    ) -> Page:
        """A page of the events matching ``where``, newest first, after ``cursor``:
        each event's stored ``columns`` (none: all; ``message_id``, ``source`` and
        ``timestamp`` always: the keyset's), as the API shows them."""
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidQuery("limit", f"must be between 1 and {MAX_LIMIT}")
        # ``since`` bounds the last page window instead (:meth:`_page`): each window adds
        # its own lower bound (ClickHouse 18.16 reads twice as long with two lower bounds
        # on ``timestamp``).
        conditions = self.conditions(msgspec.structs.replace(where, since=None))
        moment = None
        if cursor:
            moment, message_id, source = decode_cursor(cursor)
            conditions.append(self._after(moment, message_id, source))
        anchor = moment or where.until or datetime.now(UTC)  # no page event is newer
        if columns:
            unknown = set(columns) - set(self.table.c.keys())
            if unknown:
                raise ValueError(f"no such column: {', '.join(sorted(unknown))}")
            columns = list(dict.fromkeys(["message_id", "source", "timestamp", *columns]))
        rows = self._page(conditions, limit + 1, where.since, anchor, columns)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = None
        if more:
            last = rows[-1]
            next_cursor = encode_cursor(last.timestamp, last.message_id, last.source)
        return Page(events=[self.dialect.event(row) for row in rows], next_cursor=next_cursor)

    def _after(self, moment: datetime, message_id: str, source: str | None) -> ColumnElement:
        """Rows after ``(moment, message_id, source)`` in newest-first order (a cursor
        without a source, from an earlier release: after every row of that id)."""
        c = self.table.c
        timestamp = self.dialect.time(moment)
        same_id = c.message_id < message_id
        if source is not None:
            same_id = or_(same_id, and_(c.message_id == message_id, c.source < source))
        # ``timestamp <= moment`` is implied by the rest, and said again for the planner:
        # without it SQLite reads the OR as two index searches, every older row, and
        # sorts them all (page 2 of 10M events took 35 s; with it, an index range read
        # that stops at the page, as page 1 does). bench/dashboard.py, "page 2".
        return and_(
            c.timestamp <= timestamp,
            or_(c.timestamp < timestamp, and_(c.timestamp == timestamp, same_id)),
        )

    def _page(
        self,
        conditions: list[ColumnElement],
        count: int,
        since: datetime | None,
        anchor: datetime,
        columns: Sequence[str] = (),
    ) -> list[Any]:
        """The first ``count`` rows (``columns``; none: all) matching ``conditions`` and
        ``timestamp >= since``, newest first, read window by window
        (``QueryDialect.page_windows``; none: one query).

        Some stores (ClickHouse, 18.x and 19.x at least) cannot stop reading at ``LIMIT``
        in sort order: they read every row the filters leave, however old, then sort. So
        the page is looked for in the first window before ``anchor`` (the cursor's time,
        the range's end or now; with no end, later events count in the first window),
        then the next, then all that is left, each window a query of its own. A page that
        fills in the first window (any busy filter) reads that window's data, not the
        whole range; a sparse filter costs a few more queries. The windows are disjoint
        and taken newest first, so the rows come out in the same order as from one query.
        A store that reads a page in two steps (``QueryDialect.page_keys``) takes the
        keys window by window and the rows of all of them at once, at the end.
        """
        dialect = self.dialect
        rows: list[Any] = []
        keyed = False
        with self.engine.connect() as connection:
            for window, _, _, last in self._windows(conditions, since, anchor):
                statement = dialect.page_keys(window, count - len(rows))
                keyed = statement is not None
                if statement is None:
                    statement = dialect.page(window, count - len(rows), columns)
                rows += connection.execute(statement).all()
                if len(rows) >= count or last:
                    break
            if keyed and rows:
                rows = connection.execute(dialect.page_rows(rows, columns)).all()
        return rows

    def _windows(
        self, conditions: Sequence[ColumnElement], since: datetime | None, anchor: datetime
    ) -> Iterator[tuple[list[ColumnElement], datetime | None, datetime | None, bool]]:
        """``conditions`` cut into :meth:`_page`'s windows, newest first: each window's
        conditions, its lower and upper bounds (None: unbounded) and whether it is the
        last."""
        newer: datetime | None = None  # the previous window's lower bound
        for width in (*self.dialect.page_windows, None):
            lower = None if width is None else anchor - width
            last = lower is None or (since is not None and lower <= since)
            if last:
                lower = since  # the range's own start bounds the last window
            yield self._between(conditions, lower, newer), lower, newer, last
            if last:
                return
            newer = lower

    def _between(
        self,
        conditions: Sequence[ColumnElement],
        lower: datetime | None,
        upper: datetime | None,
    ) -> list[ColumnElement]:
        """``conditions`` and ``lower <= timestamp < upper`` (None: unbounded), with what
        the bounds imply for the store's index (``QueryDialect.range_hint``, ClickHouse:
        the days; a cursor's condition alone read ``message_id`` of every row the key
        range left): the time part of every filter and page window."""
        dialect, column = self.dialect, self.table.c.timestamp
        window = list(conditions)
        if lower is not None:
            window.append(column >= dialect.time(lower))
        if upper is not None:
            window.append(column < dialect.time(upper))
        if lower is not None or upper is not None:
            window += dialect.range_hint(lower, upper)
        return window

    def get(self, message_id: str, source: str | None = None) -> dict[str, Any] | None:
        """The event of ``message_id`` from ``source``; None if there is none.

        Without ``source``: the event if exactly one source has that id.

        :raises AmbiguousEvent: no ``source`` given, and several sources have the id."""
        dialect, c = self.dialect, self.table.c
        same_id = dialect.equals(c.message_id, message_id)
        with self.engine.connect() as connection:
            if source is None:
                # By source, not by row: one source may hold several copies of an event
                # (redeliveries an SQLite store without the unique index keeps, say).
                sources = connection.execute(
                    dialect.select(c.source).where(same_id).distinct().limit(AMBIGUITY_SOURCES)
                ).scalars()
                sources = list(sources)
                if len(sources) > 1:
                    raise AmbiguousEvent(message_id, sources)
                if not sources:
                    return None
                source = sources[0]
            # The copy received last, where there are several.
            statement = (
                dialect.select()
                .where(same_id, dialect.equals(c.source, source))
                .order_by(c.received_at.desc())
                .limit(1)
            )
            row = connection.execute(statement).first()
        return dialect.event(row) if row is not None else None

    # -- aggregates (the dashboard's charts) ----------------------------------------------
    def dimension(self, name: str) -> ColumnElement:
        """What events can be counted by: a filter column (``event``, ``source``, ...) or
        a JSON path (``properties.plan``), as an SQL expression.

        :raises InvalidQuery: anything else."""
        if name in FILTER_COLUMNS:
            return self.table.c[name]
        condition = PathCondition.parse(name, "")
        return self.dialect.json_text(condition.column, condition.path)

    def count_by_time(self, where: EventFilter, step: int) -> list[tuple[datetime, int]]:
        """Events matching ``where`` per ``step`` seconds of ``timestamp``, oldest first;
        buckets start at multiples of ``step`` since the epoch and empty ones are left out.

        Whole hours come from the store's rollup when the filter and the step allow
        (:mod:`eventrouter.store.rollup`), the rest from ``events``: the same answer."""
        step = int(step)
        if step < 1:
            raise InvalidQuery("step", "must be at least one second")
        # The step is an int written into the SQL, not a parameter: PostgreSQL matches a
        # GROUP BY expression to the selected one only when their texts are identical.
        width = literal_column(str(step))

        def bucket_of(epoch: ColumnElement) -> ColumnElement:
            return (epoch - epoch % width).label("bucket")

        cut, kept = self._rollup_cut(where) if step % rollup.HOUR == 0 else (None, None)
        if cut is None:
            bucket = bucket_of(self.dialect.epoch(self.table.c.timestamp))
            statement = (
                self.dialect.select(bucket, func.count().label("n"))
                .where(*self.conditions(where))
                .group_by(bucket)
                .order_by(bucket)
            )
        else:
            table = self._hourly if kept is None else self.dialect.path_rollup
            parts = [
                self._rollup_part(cut, where, kept, bucket_of(self.dialect.epoch(table.c.hour)))
            ]
            for edge in self._edges(cut, where):
                bucket = bucket_of(self.dialect.epoch(self.table.c.timestamp))
                parts.append(
                    self.dialect.select(bucket, func.count().label("n"))
                    .where(*self.conditions(edge))
                    .group_by(bucket)
                )
            both = union_all(*parts).subquery("parts")
            statement = (
                select(both.c.bucket, func.sum(both.c.n).label("total"))
                .group_by(both.c.bucket)
                .order_by(both.c.bucket)
            )
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [(datetime.fromtimestamp(int(start), UTC), int(n)) for start, n in rows if n]

    def top(self, where: EventFilter, dimension: str, limit: int = 10) -> list[tuple[Any, int]]:
        """The ``limit`` most frequent values of ``dimension`` among events matching
        ``where``, with their counts, most frequent first (``None``: no value). From the
        rollup where it can answer (``type``, ``event``, ``source``, and a JSON path the
        store keeps complete: :meth:`_path_kept`)."""
        # Not labelled ``value``: ClickHouse (18.16) would read the path rollup's own
        # ``value`` column, inside the expression that decodes it, as this alias.
        value = self.dimension(dimension).label("shown")
        count = func.count().label("n")
        kept: ColumnElement | None = None
        cut = None
        if dimension in rollup.ROLLUP_COLUMNS:
            cut = self._rollup_split(where)
            kept = self._hourly.c[dimension]
            if dimension == "event" and self.dialect.null_event:
                kept = func.nullif(kept, rollup.NO_EVENT)
        elif (
            dimension not in FILTER_COLUMNS and rollup.usable(where) and self._path_kept(dimension)
        ):
            cut = self._rollup_split(where, dimension)
        if cut is None:
            statement = (
                self.dialect.select(value, count)
                .where(*self.conditions(where))
                .group_by(value)
                .order_by(count.desc(), value)
                .limit(limit)
            )
        else:
            if kept is not None:
                first = self._rollup_select(cut, where, kept.label("shown"))
            else:
                paths = self.dialect.path_rollup
                first = self._rollup_select(
                    cut,
                    where,
                    self.dialect.path_rollup_value(paths.c.value).label("shown"),
                    path=dimension,
                )
            parts = [first]
            parts += [
                self.dialect.select(value, count).where(*self.conditions(edge)).group_by(value)
                for edge in self._edges(cut, where)
            ]
            both = union_all(*parts).subquery("parts")
            total = func.sum(both.c.n).label("total")
            statement = (
                select(both.c.shown, total)
                .group_by(both.c.shown)
                # A rollup may keep a key at 0 (ClickHouse's, for a key erased from an hour).
                .having(total > 0)
                .order_by(total.desc(), both.c.shown)
                .limit(limit)
            )
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [(self.dialect.text_value(v), int(n)) for v, n in rows]

    def count(self, where: EventFilter) -> int:
        """Events matching ``where``: from the rollup where it can answer (as
        :meth:`count_by_time`), else from ``events``."""
        cut, kept = self._rollup_cut(where)
        if cut is None:
            statement = self.dialect.select(func.count().label("n")).where(*self.conditions(where))
        else:
            parts = [self._rollup_part(cut, where, kept)]
            parts += [
                self.dialect.select(func.count().label("n")).where(*self.conditions(edge))
                for edge in self._edges(cut, where)
            ]
            both = union_all(*parts).subquery("parts")
            statement = select(func.sum(both.c.n))
        with self.engine.connect() as connection:
            return int(connection.execute(statement).scalar() or 0)

    # -- unique users ----------------------------------------------------------------------
    def period(
        self,
        interval: str,
        column: ColumnElement | None = None,
        epoch: ColumnElement | None = None,
    ) -> ColumnElement:
        """The start of the ``interval`` (``day``, ``week`` from Monday, ``month``)
        holding each event's ``timestamp`` (or the time ``column``, whose second is
        ``epoch`` when given), UTC, as seconds since the epoch.

        :raises InvalidQuery: another interval."""
        column = self.table.c.timestamp if column is None else column
        epoch = self.dialect.epoch(column) if epoch is None else epoch
        if interval == "day":
            day = literal_column("86400")
            return epoch - epoch % day
        if interval == "week":
            # 1970-01-01 was a Thursday: shifted three days, weeks start on Mondays.
            shifted = epoch + literal_column("259200")
            return shifted - shifted % literal_column("604800") - literal_column("259200")
        if interval == "month":
            return self.dialect.month_start(column)
        raise InvalidQuery("interval", f"{interval!r} is not one of {', '.join(INTERVALS)}")

    def active_users(
        self, where: EventFilter, interval: str, by: str | None = None, limit: int = 10
    ) -> ActiveUsers:
        """Distinct users among the events matching ``where``: per ``interval`` (daily,
        weekly or monthly active users) and, with ``by`` (a dimension, :meth:`dimension`),
        per value, the ``limit`` values with the most users first. A user is the
        ``user_id``, else the ``anonymous_id`` (no merging through identify or alias).

        Periods are whole: ``where.since`` is moved back to the start of its period (the
        first day, week or month counts all of its users, as every later one does).
        Without filters besides the time, the store's per-period counts answer the series
        (:mod:`eventrouter.store.rollup`), or its per-day distinct users
        (``QueryDialect.users_days``, ClickHouse); otherwise ``events``. The top values
        of ``by`` come from the store's last-seen rows when ``by`` is a path it keeps
        them for (:meth:`_users_seen_select`), or per-day users per value
        (``QueryDialect.users_per_value``, ClickHouse), else from ``events``."""
        if interval not in INTERVALS:
            raise InvalidQuery("interval", f"{interval!r} is not one of {', '.join(INTERVALS)}")
        if where.since is not None:
            where = msgspec.structs.replace(where, since=rollup.period_start(where.since, interval))
        dialect = self.dialect
        counts = dialect.users_rollup
        plain = msgspec.structs.replace(where, since=None) == EventFilter()
        days = dialect.users_days
        # The store's per-day distinct users answer the series, with or without ``by``.
        from_days = plain and self.use_rollup and days is not None and self._has_table(days.name)
        # So do its per-period counts (``by`` is the top values': counted apart, below).
        # Dropped when the sink's unique_users is turned off: asked each time.
        from_counts = plain and self.keeps(counts)
        users = dialect.count_distinct(dialect.user_key()).label("users")
        conditions = self.conditions(where)
        if from_counts:
            r = counts.c  # type: ignore[union-attr]
            series_sql = (
                select(r.start, r.users)
                .where(r.kind == rollup.PERIOD_KINDS[interval])
                .order_by(r.start)
            )
            if where.since is not None:
                series_sql = series_sql.where(r.start >= dialect.time(where.since))
        elif from_days:
            series_sql = dialect.users_statement(interval, where.since)
        elif (daily_sql := self._daily_users_select(where, interval)) is not None:
            series_sql = daily_sql
        else:
            # copies_select: distinct users are the same whether or not a redelivered
            # event's copies are read as one (ClickHouse then skips FINAL).
            period = self.period(interval).label("period")
            series_sql = (
                dialect.copies_select(period, users)
                .where(*conditions)
                .group_by(period)
                .order_by(period)
            )
        # The counts keep each period's start as a time, the others as epoch seconds.
        start_of = _aware if from_counts else (lambda s: datetime.fromtimestamp(int(s), UTC))
        with self.engine.connect() as connection:
            series = [
                (start_of(start), int(n)) for start, n in connection.execute(series_sql).all() if n
            ]
            top = []
            if by is not None:
                top_sql = self._users_seen_select(where, by, limit)
                per_value = plain and by not in FILTER_COLUMNS and self.keeps(dialect.users_paths)
                if top_sql is None and per_value and where.since is not None:
                    top_sql = dialect.users_per_value(by, self.dimension(by), where.since, limit)
                if top_sql is None:
                    value = self.dimension(by).label("value")
                    top_sql = (
                        dialect.copies_select(value, users)
                        .where(*conditions)
                        .group_by(value)
                        .order_by(users.desc(), value)
                        .limit(limit)
                    )
                top = [
                    (dialect.text_value(v), int(n))
                    for v, n in connection.execute(top_sql).all()
                    if n
                ]
        # The per-period counts are exact on every store that keeps them.
        exact = from_counts or dialect.distinct_exact
        return ActiveUsers(interval=interval, exact=exact, series=series, by=by, top=top)

    def _daily_users_select(self, where: EventFilter, interval: str) -> Select | None:
        """The distinct users per period of one event's calls, from the store's
        :attr:`QueryDialect.event_users_daily` (one row per event, user and day: a
        period's users are its days' distinct user keys), when it can answer: a filter
        on the event name and whole periods from ``where.since`` (already a period's
        start) to now; else None (count ``events``)."""
        daily = self.dialect.event_users_daily
        plain = msgspec.structs.replace(where, since=None, event=None) == EventFilter()
        if (
            not plain
            or where.event is None
            or where.event == rollup.NO_EVENT
            or not self.keeps(daily)
        ):
            return None
        r = daily.c  # type: ignore[union-attr]
        # A day's rows are its users (one per user): counted, not told apart.
        users = func.count() if interval == "day" else self.dialect.count_distinct(r.user_key)
        # The day's first second from its number, not from a time (month: its first's).
        day = r.day * literal_column("86400")
        period = self.period(interval, r.first, epoch=day).label("period")
        statement = (
            select(period, users)
            .where(self.dialect.equals(r.event, where.event))
            .group_by(period)
            .order_by(period)
        )
        if where.since is not None:
            statement = statement.where(r.day >= rollup.day_number(where.since))
        return statement

    def _users_seen_select(self, where: EventFilter, by: str, limit: int) -> Select | None:
        """The top values of the JSON path ``by`` by distinct users, from the store's
        :attr:`QueryDialect.users_seen` (a user counts for a value when last seen with
        it at ``where.since`` or later), when it can answer: a range ending now, no
        filter but one event, and a path it keeps complete; else None (count ``events``)."""
        dialect = self.dialect
        seen = dialect.users_seen
        plain = msgspec.structs.replace(where, since=None, event=None) == EventFilter()
        if (
            seen is None
            or not plain
            or where.event == rollup.NO_EVENT
            or by in FILTER_COLUMNS
            or not self.use_rollup
            or not dialect.users_seen_kept(by)
        ):
            return None
        c = seen.c
        scope = rollup.ALL_EVENTS if where.event is None else rollup.event_scope(where.event)
        users = func.count().label("users")
        # One row per user and value (the key), so a count is their distinct users; kept
        # values sort as the decoded ones do (SQLite's 'v' || text).
        statement = (
            select(dialect.path_rollup_value(c.value).label("value"), users)
            .where(c.path == by, c.event == scope)
            .group_by(c.value)
            .order_by(users.desc(), c.value)
            .limit(limit)
        )
        if where.since is not None:
            statement = statement.where(c.last >= dialect.time(where.since))
        return statement

    # -- the rollup (eventrouter.store.rollup) --------------------------------------------
    @property
    def _hourly(self) -> Table:
        return self.dialect.rollup  # type: ignore[return-value]

    def _has_table(self, name: str, *, remember: bool = True) -> bool:
        """Whether the store's table ``name`` exists: once found, remembered (``remember``:
        a table that is never dropped) or asked again each time; its absence asked again
        after :data:`ROLLUP_RECHECK` seconds."""
        if name in self._tables_found:
            if remember:
                return True
            self._tables_found.discard(name)
            self._tables_checked.pop(name, None)
        now = time.monotonic()
        if now < self._tables_checked.get(name, -ROLLUP_RECHECK) + ROLLUP_RECHECK:
            return False
        self._tables_checked[name] = now
        with self.engine.connect() as connection:
            if inspect(connection).has_table(name):
                self._tables_found.add(name)
        return name in self._tables_found

    def keeps(self, table: Table | None) -> bool:
        """Whether the store keeps the rollup ``table`` (one its dialect names: None,
        not kept) and it exists now, asked each time (a sink drops some when told to
        stop keeping them); False when this reader is told to read ``events`` alone."""
        return table is not None and self.use_rollup and self._has_table(table.name, remember=False)

    def has_rollup(self) -> bool:
        """Whether the store keeps the rollup and its table exists (a store not migrated
        yet has none: every aggregate reads ``events`` until it does). Once found it is
        remembered; its absence is asked again after :data:`ROLLUP_RECHECK` seconds."""
        if self.dialect.rollup is None or not self.use_rollup:
            return False
        return self._has_table(self.dialect.rollup.name)

    def _rollup_split(self, where: EventFilter, path: str | None = None) -> rollup.Split | None:
        """How the rollup answers ``where`` (None: it cannot; read ``events``); with
        ``path``, the path rollup's counts of that JSON path (its own gaps)."""
        if not rollup.usable(where):
            return None
        cut = rollup.split(where.since, where.until, datetime.now(UTC), self.dialect.rollup_unit)
        if cut is None or not self.has_rollup():
            return None
        gaps = self.dialect.rollup_gaps(cut.start, cut.end, path)
        if gaps is None:
            return None
        clipped = tuple(
            (max(low, cut.start) if cut.start is not None else low, min(high, cut.end))
            for low, high in gaps
        )
        return dataclasses.replace(cut, gaps=tuple((a, b) for a, b in clipped if a < b))

    def _edges(self, cut: rollup.Split, where: EventFilter) -> list[EventFilter]:
        """The parts of ``where`` outside the rollup's whole hours, as filters on
        ``events``: before ``cut.start`` (from ``since``), the rollup's gaps inside the
        cut, and from ``cut.end`` on."""
        edges = []
        if cut.start is not None and where.since is not None and where.since < cut.start:
            edges.append(msgspec.structs.replace(where, until=cut.start))
        edges += [msgspec.structs.replace(where, since=low, until=high) for low, high in cut.gaps]
        # Bounded on both sides, even when the range is open (no time a datetime can hold
        # is later): with one bound, SQLite's planner guesses a quarter of the table
        # matches and reads a whole index on the grouped column instead of the time range.
        edges.append(msgspec.structs.replace(where, since=cut.end, until=where.until or END))
        return edges

    def _path_kept(self, dimension: str) -> bool:
        """Whether the store keeps the JSON path ``dimension`` in its path rollup, complete
        outside the path's gaps (``QueryDialect.path_rollup_kept``; SQLite, PostgreSQL:
        listed in :data:`eventrouter.store.rollup.rollup_paths_kept`)."""
        if self.dialect.path_rollup is None or not self.use_rollup or not self.has_rollup():
            return False
        return self.dialect.path_rollup_kept(dimension)

    def _rollup_cut(
        self, where: EventFilter
    ) -> tuple[rollup.Split | None, tuple[EventFilter, str, str] | None]:
        """How a count answers ``where`` from a rollup: the hourly rollup's split, else
        the path rollup's with :meth:`_path_filter`'s ``kept`` (``(None, None)``: read
        ``events``)."""
        cut = self._rollup_split(where)
        if cut is None and (kept := self._path_filter(where)) is not None:
            return self._rollup_split(kept[0], kept[1]), kept
        return cut, None

    def _rollup_part(
        self,
        cut: rollup.Split,
        where: EventFilter,
        kept: tuple[EventFilter, str, str] | None,
        key: ColumnElement | None = None,
    ) -> Select:
        """:meth:`_rollup_select` over the hourly rollup, or with ``kept`` (from
        :meth:`_rollup_cut`) over the path rollup's rows of that path and value."""
        if kept is None:
            return self._rollup_select(cut, where, key)
        rest, path, value = kept
        return self._rollup_select(cut, rest, key, path=path, path_value=value)

    def _path_filter(self, where: EventFilter) -> tuple[EventFilter, str, str] | None:
        """For a filter whose one path condition is on a path the store keeps complete
        (:meth:`_path_kept`) and whose other conditions the rollup can answer: ``(the
        filter without it, the path, the value)``; else None."""
        if len(where.paths) != 1 or self.dialect.path_rollup is None or not self.use_rollup:
            return None
        condition = where.paths[0]
        rest = msgspec.structs.replace(where, paths=[])
        path = ".".join((condition.column, *condition.path))
        if not rollup.usable(rest) or not self._path_kept(path):
            return None
        return rest, path, condition.value

    def _rollup_select(
        self,
        cut: rollup.Split,
        where: EventFilter,
        key: ColumnElement | None = None,
        *,
        path: str | None = None,
        path_value: str | None = None,
    ) -> Select:
        """``SELECT key, sum(n) AS n`` over the rollup's hours in ``cut`` matching
        ``where``'s equality filters, grouped by ``key`` (none: one total); from the
        hourly rollup, or with ``path`` from the path rollup's rows of that JSON path
        (and only its ``path_value`` with one)."""
        dialect = self.dialect
        if path is None:
            r, chosen = self._hourly.c, dialect.rollup_select
        else:
            r, chosen = dialect.path_rollup.c, dialect.path_rollup_select  # type: ignore[union-attr]
        conditions = [r.hour < dialect.time(cut.end)]
        if path is not None:
            conditions.append(r.path == path)
        if path_value is not None:
            conditions.append(dialect.path_rollup_match(r.value, path_value))
        if cut.start is not None:
            conditions.append(r.hour >= dialect.time(cut.start))
        conditions += [
            or_(r.hour < dialect.time(low), r.hour >= dialect.time(high)) for low, high in cut.gaps
        ]
        conditions += [
            dialect.equals(r[name], value)
            for name in rollup.ROLLUP_COLUMNS
            if (value := getattr(where, name)) is not None
        ]
        total = func.sum(r.n).label("n")
        if key is None:
            return chosen(total).where(*conditions)
        return chosen(key, total).where(*conditions).group_by(key)

    def time_span(self, where: EventFilter) -> tuple[datetime, datetime] | None:
        """The oldest and newest ``timestamp`` among events matching ``where``."""
        c = self.table.c
        conditions = self.conditions(where)
        if self.dialect.indexed_extremes:
            # Two index probes (the time index, or a filter column's (column, timestamp)
            # one), where one query with a count would read every match.
            ends = [
                self.dialect.select(extreme(c.timestamp)).where(*conditions).scalar_subquery()
                for extreme in (func.min, func.max)
            ]
            statement = select(*ends)
        elif where.user_id is not None or where.anonymous_id is not None:
            if self.dialect.page_windows:
                return self._user_span(where)
            statement = self._span_of(conditions)
        else:
            statement = self.dialect.select(
                func.min(c.timestamp).label("oldest"),
                func.max(c.timestamp).label("newest"),
                func.count().label("n"),
            ).where(*conditions)
        with self.engine.connect() as connection:
            oldest, newest, *n = connection.execute(statement).one()
        if oldest is None or (n and not n[0]):
            return None
        return _aware(oldest), _aware(newest)

    def _span_of(self, conditions: Sequence[ColumnElement]) -> Select:
        """The oldest and newest time of one user's rows matching ``conditions`` and
        their count: few rows, each event once by the store's way for few rows
        (ClickHouse: ``LIMIT 1 BY``, where ``FINAL`` merges the whole table)."""
        c = self.table.c
        times = self.dialect.each_event([c.timestamp.label("t")], conditions).subquery("t")
        return select(
            func.min(times.c.t).label("oldest"),
            func.max(times.c.t).label("newest"),
            func.count().label("n"),
        )

    def _user_span(self, where: EventFilter) -> tuple[datetime, datetime] | None:
        """:meth:`time_span` of one user's events on a store that reads every row its
        filters leave (``QueryDialect.page_windows``), by windows: the newest from the
        first of the page windows back from the range's end (or now) holding any copy
        of an event, the oldest from the first of windows of the same widths forward
        from the range's start (or ``QueryDialect.oldest_hint``); each read exactly
        (each event at its latest copy's time) over that window widened to whole
        ``QueryDialect.copies_unit`` (which hold all copies of their events: an
        event's latest copy may be outside the window).
        A user busy at either end (the busiest reads an hour and a day or so of each)
        costs a few small queries where one read the user's events over every granule
        of the table (ClickHouse, the busiest of 50,000 users in 10,000,000 events:
        ~700 ms); a quiet user's windows together read the range once, as one query
        would, and two days more."""
        dialect = self.dialect
        unit = dialect.copies_unit
        conditions = self.conditions(msgspec.structs.replace(where, since=None))
        if unit is None:
            with self.engine.connect() as connection:
                oldest, newest, n = connection.execute(self._span_of(conditions)).one()
            return (_aware(oldest), _aware(newest)) if n else None
        seconds = int(unit.total_seconds())
        since = where.since
        anchor = where.until or datetime.now(UTC)
        with self.engine.connect() as connection:

            def holds(window: list[ColumnElement]) -> bool:
                statement = dialect.copies_select(self.table.c.timestamp).where(*window)
                return connection.execute(statement.limit(1)).first() is not None

            def span(lower: datetime | None, upper: datetime | None) -> tuple[datetime, datetime]:
                """The span of the events in ``[lower, upper)``, bounds the caller made
                whole units (or beyond every copy), so that each event there is read
                with all its copies."""
                if since is not None and (lower is None or lower < since):
                    lower = since
                window = self._between(conditions, lower, upper)
                oldest, newest, _ = connection.execute(self._span_of(window)).one()
                return _aware(oldest), _aware(newest)

            def around(
                lower: datetime | None, upper: datetime | None, last: bool
            ) -> tuple[datetime, datetime]:
                """The span, given the newest window holding a copy, ``[lower, upper)``."""
                if last or lower is None:  # the window reaches back to the range's start
                    return span(since, upper)
                # An event there is at its latest copy's time, in its unit: the newest
                # is an event with a copy from the start of the window's first unit.
                newest = span(rollup.floor_hour(lower, seconds), upper)
                # The oldest: windows forward from the start, up to the one found.
                start = since or dialect.oldest_hint(connection)
                older = since  # the previous window's upper bound
                for width in (*dialect.page_windows, None):
                    bound = None if width is None or start is None else start + width
                    end = bound is None or bound >= lower
                    reach = lower if end or bound is None else bound
                    if holds(self._between(conditions, older, reach)):
                        # And the oldest an event with a copy before its unit's end.
                        return span(older, rollup.ceil_hour(reach, seconds))[0], newest[1]
                    if end:
                        break
                    older = bound
                return newest

            for window, lower, upper, last in self._windows(conditions, since, anchor):
                if holds(window):
                    return around(lower, upper, last)
        return None

    def event_names(self, since: datetime | None = None, limit: int = 500) -> list[str]:
        """Distinct ``event`` names of track calls, most frequent first."""
        return [
            name
            for name, _ in self.top(EventFilter(type="track", since=since), "event", limit)
            if name
        ]

    def identify_traits(self, user_id: str, limit: int = 1000) -> dict[str, Any]:
        """A user's traits: the ``traits`` of their identify calls merged oldest first,
        as every store has them (PostgreSQL's ``users`` table is one store's copy)."""
        c = self.table.c
        calls = self.dialect.each_event(
            [c.traits.label("traits"), c.timestamp.label("t")],
            [self.dialect.equals(c.user_id, user_id), c.type == "identify"],
        ).subquery("calls")
        statement = select(calls.c.traits).order_by(calls.c.t.desc()).limit(limit)
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        traits: dict[str, Any] = {}
        for (value,) in reversed(rows):
            if isinstance(value, dict):
                traits.update(value)
        return traits

    def size(self) -> StoreSize:
        """How many events the store holds and, where the database tells, its bytes."""
        with self.engine.connect() as connection:
            rows = connection.execute(self.dialect.select(func.count())).scalar() or 0
            nbytes = self.dialect.size_bytes(connection)
        return StoreSize(dialect=self.dialect.name, events=int(rows), bytes=_int_or_none(nbytes))

    # -- the live tail (stores written at the edge: no broker to tap) ----------------------
    def tail_position(self) -> TailPosition:
        """Where a tail starts: after everything stored now."""
        order = self.dialect.insert_order
        if order is not None:
            statement = select(func.max(literal_column(order))).select_from(self.table)
            with self.engine.connect() as connection:
                return TailPosition(rowid=connection.execute(statement).scalar() or 0)
        return TailPosition(received_at=datetime.now(UTC))

    def stored_since(self, position: TailPosition, limit: int = 1000) -> list[dict[str, Any]]:
        """Events stored after ``position``, oldest first; ``position`` moves past them.

        A store with an insert order (``QueryDialect.insert_order``: SQLite's ``rowid``,
        which grows with every insert) is read by it: an index lookup however large the
        table. Other stores are read by ``received_at`` (no index of its own), within the
        last day of ``timestamp`` so that the time-ordered key bounds the scan, looking
        :data:`TAIL_LOOKBACK` back for rows committed late, and remembering which ids
        they have shown."""
        dialect, c = self.dialect, self.table.c
        if dialect.insert_order is not None:
            order = literal_column(dialect.insert_order)
            statement = (
                select(self.table, order.label("_rowid"))
                .where(order > position.rowid)
                .order_by(order)
                .limit(limit)
            )
            with self.engine.connect() as connection:
                rows = connection.execute(statement).all()
            if rows:
                position.rowid = rows[-1]._rowid
            return [{k: v for k, v in dialect.event(row).items() if k != "_rowid"} for row in rows]
        now = datetime.now(UTC)
        start = position.received_at - TAIL_LOOKBACK
        statement = (
            dialect.select()
            .where(
                c.received_at >= dialect.time(start),
                c.timestamp >= dialect.time(now - timedelta(days=1)),
            )
            .order_by(c.received_at)
            .limit(limit)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        fresh = []
        for row in rows:
            key = (row.source, row.message_id)
            if key in position.seen:
                continue
            position.seen[key] = _aware(row.received_at)
            fresh.append(dialect.event(row))
        if rows:
            position.received_at = max(position.received_at, _aware(rows[-1].received_at))
        horizon = position.received_at - 2 * TAIL_LOOKBACK
        position.seen = {k: t for k, t in position.seen.items() if t >= horizon}
        return fresh
