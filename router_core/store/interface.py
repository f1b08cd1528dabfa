"""The store interface: what a sink that keeps events tells the core about its data.

The core never asks which database a sink writes to (tests/unit/test_store_interface.py
fails on any check of a store's name in ``router_core/``). A sink that keeps events
returns a :class:`Store` from ``Sink.store()``; any other sink returns None. Each part
of the core asks the store for its own part:

==================  =============================  ======================================
part                asked with                     used by
==================  =============================  ======================================
query dialect       :meth:`Store.query_dialect`    the query API and the dashboard
                    (None: not queryable)          (:mod:`eventrouter.store.query`)
erase               :meth:`Store.eraser`           ``eventrouter privacy delete``, the
                    (:class:`CannotErase`: why     Privacy page
                    not)                           (:mod:`eventrouter.privacy.erasure`)
admin tables        :meth:`Store.admin_tables`     the suppression list, signed-out
                    (None: keeps none)             sessions, used confirmation tokens
quality tables      :meth:`Store.quality_tables`   tracking plans' rejected events, the
                    (None: keeps none)             event catalogue, violation counts
migrations          ``Sink.migrate()``             ``eventrouter migrate``, a sink's start
==================  =============================  ======================================

Every store keeps the stored columns (:mod:`eventrouter.columns`) in a table named
``events``. :class:`eventrouter.store.sql.SQLStore` implements erase and the admin
tables for a database that SQLAlchemy speaks to with ``INSERT ... ON CONFLICT DO
NOTHING``; the built-in stores are in ``sinks/`` (``sqlite_store.py``,
``postgres_store.py``, ``clickhouse_store.py``; ``s3.py`` erases nothing and cannot be
queried). docs/plugins.md, "Adding a store", shows a store of one's own.

Everything here is blocking: call it from a thread in async code. Building a store,
a dialect, an eraser or the admin tables does no I/O; each opens its connections when
first used and closes them in ``close()``.
"""

from __future__ import annotations

import functools
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, NamedTuple

from sqlalchemy import ColumnElement, Engine, Select, Table, distinct, func, inspect, select

from eventrouter.columns import shown
from eventrouter.store.rollup import rollup_paths_kept, users_seen_kept
from eventrouter.store.schema import events


class Store(ABC):
    """A sink's store: the knowledge the core asks it for, in parts (see the module).

    A part the store lacks keeps the default here: not queryable, no admin tables. Erase
    must be answered: delete, or say why not (:class:`CannotErase`)."""

    def query_dialect(self) -> QueryDialect | None:
        """How the query layer reads this store; None: the query API and the dashboard
        cannot read it. No I/O (the dialect connects when first used)."""
        return None

    @property
    def queryable(self) -> bool:
        """Whether the query API and the dashboard can read this store."""
        return self.query_dialect() is not None

    @abstractmethod
    def eraser(self) -> Eraser:
        """This store's part of deleting a user's data.

        :raises CannotErase: the store cannot delete one user's rows (the message says
            why; the deletion reports the store as skipped with it)."""

    def admin_tables(self) -> AdminTables | None:
        """The admin's small tables in this store; None: it keeps none (then it cannot
        be the admin store of a dashboard that suppresses ids)."""
        return None

    def quality_tables(self) -> Any:
        """The data-quality tables in this store
        (:class:`eventrouter.store.quality.QualityTables`: rejected events, the event
        catalogue, violation counts); None: it keeps none."""
        return None


# -- the query dialect -----------------------------------------------------------------
class InvalidQuery(ValueError):
    """A filter value the store cannot use; ``field`` names the parameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class StoreUnavailable(Exception):
    """The store could not answer a read: down, unreachable (a ClickHouse shard with no
    replica left), or its tables not created yet. The query API and the dashboard
    answer it with 503 and ``Retry-After``, as they answer SQLAlchemy's ``DBAPIError``.

    A store whose driver raises errors that are not PEP 249 ones (which SQLAlchemy
    leaves unwrapped, so they would otherwise reach the edge as unexpected 500s)
    raises this instead, with the driver's error as its cause: ClickHouse's engine does
    so (sinks/clickhouse_store.py ``clickhouse_engine``)."""

    @property
    def cause(self) -> str:
        """The driver error's class name, for the response."""
        return type(self.__cause__).__name__ if self.__cause__ is not None else "unknown"


def row_to_event(row: Any) -> dict[str, Any]:
    """A stored row as the API shows it: JSON columns as objects, times ISO 8601 UTC."""
    return shown(dict(row._mapping))


def naive_utc(value: datetime) -> datetime:
    """An aware time as the naive UTC one that stores compare with."""
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


#: Seconds :class:`IndexNames` trusts what it last read (``migrate`` may add or drop an
#: index while a server runs).
INDEXES_RECHECK = 60.0


class IndexNames:
    """The names of the indexes on ``events`` (``read``: from a connection), read again
    after :data:`INDEXES_RECHECK` seconds: for a dialect whose statements depend on an
    optional index."""

    def __init__(self, read: Callable[[Any], Iterable[str]]) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._names: tuple[float, frozenset[str]] | None = None

    def get(self, engine: Engine) -> frozenset[str]:
        with self._lock:
            now = time.monotonic()
            if self._names is None or now - self._names[0] > INDEXES_RECHECK:
                with engine.connect() as connection:
                    self._names = (now, frozenset(self._read(connection)))
            return self._names[1]


class QueryDialect(ABC):
    """How :class:`eventrouter.store.query.EventStore` reads one store: SQLAlchemy Core
    over :attr:`table`, with this store's differences as the methods below. Each default
    suits a plain SQL database; a store overrides what differs. A store without JSON
    path access or time functions leaves :meth:`json_text` or :meth:`epoch` as they are:
    the query API then answers 400 to a path condition or a chart, naming the parameter.
    """

    #: The table of stored events (every store keeps the stored columns under their
    #: names; the types are the store's).
    table: ClassVar[Table] = events
    #: How far back from a page's newest possible event each page query looks before it
    #: looks further, the last window unbounded (EventStore.query). Empty: one query.
    #: For a store that reads every row the filters leave before it applies ``LIMIT``.
    page_windows: ClassVar[tuple[timedelta, ...]] = ()
    #: The unit of time (a whole number of hours dividing a day, UTC) within which the
    #: times of one event's copies (a redelivery the store keeps until it merges them)
    #: all are: a user's first and last seen read by windows (EventStore.time_span)
    #: read whole units. None: unknown (one query reads them).
    copies_unit: ClassVar[timedelta | None] = None
    #: A column whose value grows with every insert (SQLite's ``rowid``), which a live
    #: tail reads by; None: a tail reads by ``received_at`` (EventStore.stored_since).
    insert_order: ClassVar[str | None] = None
    #: The hourly rollup of ``events`` the store keeps (:mod:`eventrouter.store.rollup`),
    #: read whenever a filter allows; None: every aggregate reads ``events``.
    rollup: ClassVar[Table | None] = None
    #: The hourly counts per value of configured JSON paths the store may keep
    #: (:data:`eventrouter.store.rollup.events_hourly_paths`); None: never kept.
    path_rollup: ClassVar[Table | None] = None
    #: Where the rollup's part of a range may begin and end (seconds, a whole number of
    #: hours dividing a day): reading ``events`` on either side of such a boundary must
    #: count each event as reading across it does. ClickHouse: a day (the copies of a
    #: redelivered event share a day, not always an hour).
    rollup_unit: ClassVar[int] = 3600
    #: ``events`` keeps a missing ``event`` as NULL, where the rollup keeps
    #: :data:`eventrouter.store.rollup.NO_EVENT` (False: as that, ClickHouse's ``''``).
    null_event: ClassVar[bool] = True
    #: The distinct users per period the store keeps
    #: (:data:`eventrouter.store.rollup.users_active_counts`); None: counted from ``events``.
    users_rollup: ClassVar[Table | None] = None
    #: When each user was last seen with each value of a kept JSON path
    #: (:data:`eventrouter.store.rollup.users_seen`), for the active users per value;
    #: None: counted from ``events``.
    users_seen: ClassVar[Table | None] = None
    #: The distinct users per day the store keeps, read by :meth:`users_statement`
    #: (ClickHouse's ``events_users``); None: none.
    users_days: ClassVar[Table | None] = None
    #: Per-day users per value of kept JSON paths, read by :meth:`users_per_value`
    #: (ClickHouse's ``events_users_paths``); None: not kept.
    users_paths: ClassVar[Table | None] = None
    #: Each user's first and last event per event name and UTC day, kept for
    #: :meth:`retention_days` (ClickHouse's ``events_user_days``); None: not kept.
    user_days: ClassVar[Table | None] = None
    #: Each user's first and last event per event name and UTC day
    #: (:data:`eventrouter.store.rollup.event_users_daily`), from which funnels and
    #: retention read the whole days of their range; None: read from ``events``.
    event_users_daily: ClassVar[Table | None] = None
    #: ``min(timestamp)`` and ``max(timestamp)`` each read one end of an index (SQLite,
    #: PostgreSQL): :meth:`EventStore.time_span` asks for them apart, not with a count
    #: that reads every match.
    indexed_extremes: ClassVar[bool] = False
    #: Whether :meth:`count_distinct` is exact (else an estimate, which the dashboard
    #: says on the page).
    distinct_exact: ClassVar[bool] = True

    @abstractmethod
    def connect(self) -> Engine:
        """A new engine for reading (called once; :meth:`close` disposes of it)."""

    @functools.cached_property
    def engine(self) -> Engine:
        return self.connect()

    @property
    def name(self) -> str:
        """The database's name, as operators know it (shown on the status page)."""
        return self.engine.dialect.name

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()

    def ensure_schema(self) -> None:
        """Create ``events`` if readers may come before any writer (a store whose readers
        share its file); a server store is migrated instead, and does nothing here."""
        return None

    def select(self, *columns: Any) -> Select:
        """``SELECT columns`` (default: every column) ``FROM`` :attr:`table`, each event
        once (a store that may hold copies of one event reads them as one)."""
        return select(*columns).select_from(self.table) if columns else select(self.table)

    def copies_select(self, *columns: Any) -> Select:
        """``SELECT columns FROM`` :attr:`table` where the copies of a redelivered event
        that a store keeps apart until it merges them (ClickHouse) may each be a row: for
        aggregates that copies cannot change, such as distinct users or distinct values
        of a user (copies of one event differ only in their times, and share a day).
        Default: :meth:`select`."""
        return self.select(*columns)

    def each_event(self, columns: Sequence[Any], where: Sequence[ColumnElement]) -> Select:
        """``SELECT columns`` of the events matching ``where``, each event once (its
        copy received last), by the store's cheapest way when *few* rows match, such as
        one user's (use it as a subquery; ClickHouse sorts every match, which costs more
        than ``FINAL`` over a whole table). Default: :meth:`select`."""
        return self.select(*columns).where(*where)

    def rollup_select(self, *columns: Any) -> Select:
        """``SELECT columns FROM`` :attr:`rollup`, each key once (a store whose rollup
        may hold several versions of a key reads the newest)."""
        return select(*columns).select_from(self.rollup)

    def path_rollup_select(self, *columns: Any) -> Select:
        """``SELECT columns FROM`` :attr:`path_rollup`, each key once (as
        :meth:`rollup_select`)."""
        return select(*columns).select_from(self.path_rollup)

    def path_rollup_kept(self, path: str) -> bool:
        """Whether :attr:`path_rollup` keeps the JSON path ``path`` (``properties.plan``):
        its counts are complete over every range :meth:`rollup_gaps` with that ``path``
        leaves out. Default: the path is listed in
        :data:`eventrouter.store.rollup.rollup_paths_kept`, which the sink writes in the
        transaction that fills the path's counts (asked each time, two primary-key
        lookups: a migration may add or remove a path)."""
        return self._listed(path, rollup_paths_kept)

    def users_seen_kept(self, path: str) -> bool:
        """Whether :attr:`users_seen` holds the JSON path ``path`` complete: listed in
        :data:`eventrouter.store.rollup.users_seen_kept` and in
        :data:`eventrouter.store.rollup.rollup_paths_kept` (writers count the paths
        listed in both; asked each time, as :meth:`path_rollup_kept`)."""
        return self.users_seen is not None and self._listed(
            path, users_seen_kept, rollup_paths_kept
        )

    def _listed(self, path: str, *tables: Table) -> bool:
        """Whether ``path`` is listed in each of ``tables`` (each a ``path`` column)."""
        with self.engine.connect() as connection:
            found = inspect(connection)
            return all(
                found.has_table(table.name)
                and connection.execute(select(table.c.path).where(table.c.path == path)).first()
                is not None
                for table in tables
            )

    def path_rollup_value(self, column: ColumnElement) -> ColumnElement:
        """:attr:`path_rollup`'s ``value`` as :meth:`json_text` gives it (a store that
        keeps it encoded decodes it here). Default: as kept."""
        return column

    def path_rollup_match(self, column: ColumnElement, value: str) -> ColumnElement:
        """:attr:`path_rollup`'s ``value`` is the text ``value`` (a path condition).
        Default: :meth:`equals`."""
        return self.equals(column, value)

    def range_hint(self, since: datetime | None, until: datetime | None) -> list[ColumnElement]:
        """Conditions implied by ``since <= timestamp < until`` (None: unbounded) that
        let the store's index bound a range read (every read of ``events`` with a
        start: filters, the rollup's edges and gaps, funnels and retention; page
        windows). Default: none."""
        return []

    def oldest_hint(self, connection: Any) -> datetime | None:
        """A time no stored event is older than, found without reading ``events``
        (ClickHouse: the parts' partition ranges), from which one user's first event
        is looked for window by window (:meth:`EventStore.time_span`); None: none
        known, or every store whose :attr:`page_windows` are empty. Only a hint: an
        older event is still found, in the first window, which has no lower bound."""
        return None

    def rollup_gaps(
        self, start: datetime | None, end: datetime, path: str | None = None
    ) -> list[tuple[datetime, datetime]] | None:
        """The time ranges inside ``[start, end)`` (``start`` None: from the first) whose
        counts :attr:`rollup` does not hold yet (with ``path``: whose counts of that JSON
        path :attr:`path_rollup` does not hold), oldest first, to be read from ``events``
        (a store that brings its rollups up to date later, ClickHouse); None: too many to
        be worth it (read ``events`` alone). Default: none."""
        return []

    def json_text(self, column: str, path: Sequence[str]) -> ColumnElement:
        """The JSON value at ``path`` in ``column`` as text: strings as they are, numbers
        and booleans as JSON writes them, NULL for a missing key or a JSON null. Every
        segment a bound parameter, never SQL text.

        :raises InvalidQuery: the store has no JSON access."""
        raise InvalidQuery("paths", f"path conditions are not supported on {self.name}")

    def epoch(self, column: ColumnElement) -> ColumnElement:
        """``column`` (a time) as whole seconds since the epoch (UTC).

        :raises InvalidQuery: the store cannot compute it."""
        raise InvalidQuery("step", f"time buckets are not supported on {self.name}")

    def time(self, value: datetime) -> Any:
        """A time to compare ``timestamp`` with (default: naive UTC)."""
        return naive_utc(value)

    def month_start(self, column: ColumnElement) -> ColumnElement:
        """The first moment of the UTC month of ``column`` (a time), as whole seconds
        since the epoch.

        :raises InvalidQuery: the store cannot compute it."""
        raise InvalidQuery("interval", f"months are not supported on {self.name}")

    def user_key(self) -> ColumnElement:
        """Who an event is from, for counting users: ``user_id``, else ``anonymous_id``."""
        c = self.table.c
        return func.coalesce(c.user_id, c.anonymous_id)

    def users_statement(self, interval: str, since: datetime | None) -> Any:
        """Rows ``(period start, users)``: every event's distinct users per ``interval``
        (``day``, ``week`` from Monday, ``month``) from ``since`` (a period's start;
        None: from the first) on, oldest first, the period's start in seconds since the
        epoch; read from :attr:`users_days` (and ``events`` where it is behind). Only
        called when :attr:`users_days` is set and exists."""
        raise NotImplementedError

    def users_per_value(
        self, path: str, value: ColumnElement, since: datetime, limit: int
    ) -> Any | None:
        """Rows ``(value, users)``: the ``limit`` values of the JSON path ``path``
        (``value``: its expression on ``events``) with the most distinct users among
        every event from ``since`` (a UTC day's start) on, most first, then by value,
        as the scan orders them: read from per-day users per value the store keeps for
        ``path``, and ``events`` where they are behind. Called when :attr:`users_paths`
        exists. None (the default): the store keeps none for ``path`` (the caller counts
        ``events``)."""
        return None

    def count_distinct(self, expression: ColumnElement) -> ColumnElement:
        """How many distinct non-NULL values of ``expression`` (exact unless
        :attr:`distinct_exact` says otherwise)."""
        return func.count(distinct(expression))

    def equals(self, expression: ColumnElement, value: str) -> ColumnElement:
        """``expression = value``, bound (a store may know values it can never hold)."""
        return expression == value

    def page_keys(self, conditions: Sequence[ColumnElement], count: int) -> Select | None:
        """For a store that reads a page in two steps, each a query: the keys of the
        first ``count`` events matching ``conditions``, newest first (rows
        :meth:`page_rows` takes); EventStore.query takes them window by window
        (:attr:`page_windows`), then the rows of all at once. None (the default): a
        window's rows are :meth:`page`'s."""
        return None

    def page_rows(self, keys: Sequence[Any], columns: Sequence[str] = ()) -> Select:
        """The events of ``keys`` (rows of :meth:`page_keys`), newest first by
        ``(timestamp, message_id, source)``: ``columns`` (none: every column), as
        :meth:`page`'s rows."""
        raise NotImplementedError(f"{self.name} reads a page in one query")

    def page(
        self, conditions: Sequence[ColumnElement], count: int, columns: Sequence[str] = ()
    ) -> Select:
        """The first ``count`` events matching ``conditions``, newest first by
        ``(timestamp, message_id, source)``: the stored ``columns`` (none: every
        column)."""
        c = self.table.c
        return (
            self.select(*(c[name] for name in columns))
            .where(*conditions)
            .order_by(c.timestamp.desc(), c.message_id.desc(), c.source.desc())
            .limit(count)
        )

    def event(self, row: Any) -> dict[str, Any]:
        """A row of :meth:`page` (or of ``SELECT`` every column) as the API shows it."""
        return row_to_event(row)

    def text_value(self, value: Any) -> Any:
        """A text value read from the store, as shown: None for an absent one (a store
        that keeps ``''`` for absent text maps it back)."""
        return value

    def size_bytes(self, connection: Any) -> int | None:
        """The bytes the events take on disk, or None when the database does not say."""
        return None

    # -- funnels and retention (eventrouter.store.analysis defines what they compute) ----
    def funnel_statement(
        self,
        steps: Sequence[ColumnElement],
        where: Sequence[ColumnElement],
        window: int,
        by: ColumnElement | None,
    ) -> Select | None:
        """A funnel in this store's own SQL: rows ``(value, users, delay_2, ...,
        delay_n)``, the users who entered counted by the entry's value of ``by`` (NULL
        without it) and their delays, each the seconds from step k - 1 to step k (NULL
        or 0: step k not reached). ``steps`` are each step's condition, ``where`` the
        range. None (the default): the query layer's standard SQL
        (eventrouter.store.analysis)."""
        return None

    def retention_statement(
        self,
        first: ColumnElement,
        returning: ColumnElement,
        where: Sequence[ColumnElement],
        period: int,
        offset: int,
        periods: int,
    ) -> Select | None:
        """A retention table computed in the store: rows ``(cohort start second, k,
        users)`` for k = 0 .. ``periods`` - 1, and k = -1 for the cohort's size; periods
        of ``period`` seconds start at ``offset`` seconds past the epoch. None (the
        default): the query layer's standard SQL (eventrouter.store.analysis)."""
        return None

    def retention_days(
        self,
        first: str,
        returning: str,
        since: datetime | None,
        until: datetime | None,
        where: Sequence[ColumnElement],
        period: int,
        offset: int,
        periods: int,
    ) -> Select | None:
        """:meth:`retention_statement`'s rows for the events named ``first`` and
        ``returning`` in ``[since, until)`` (``where``: those bounds on ``events``),
        read from :attr:`user_days` for the days it holds up to date and from
        ``events`` for the rest. Called when :attr:`user_days` exists; None (the
        default, or no day of the range kept): :meth:`retention_statement`."""
        return None

    def user_probes(
        self,
        user: ColumnElement,
        what: ColumnElement,
        conditions: Sequence[ColumnElement],
        where: Sequence[ColumnElement],
        start: ColumnElement,
        end: ColumnElement,
    ) -> list[ColumnElement] | None:
        """For a funnel that reads each user's events alone: scalar subqueries, one per
        index through which the store finds one user's events, each the least ``what``
        among the events of ``user`` (a column of the enclosing query: the user key)
        matching ``conditions`` and the range's bounds ``where`` whose second is in
        ``[start, end)`` (epoch seconds, always narrower than the range, which the store
        may check on the rows found rather than read by). The answer is the least of
        their non-NULL results. None (the default): the store has no such index, and
        funnels join each step's events to its users."""
        return None

    def before_analysis(self, connection: Any, view: str) -> None:
        """Run in the transaction that reads a funnel or retention (``view``: ``funnel``,
        ``retention``) before its statement: settings for this store's planner.
        Default: nothing."""
        return None

    def retention_entries(self, first: ColumnElement, where: Sequence[ColumnElement]) -> Any:
        """For a :meth:`retention_statement` that reads per user: each user's entry, the
        subquery ``entries`` of ``u`` (``coalesce(user_id, anonymous_id)``) and ``t``
        (the time of their first ``first`` event matching ``where``)."""
        c = self.table.c
        user = func.coalesce(c.user_id, c.anonymous_id)
        return (
            select(user.label("u"), func.min(c.timestamp).label("t"))
            .where(first, user.isnot(None), *where)
            .group_by(user)
            .subquery("entries")
        )


# -- erase -------------------------------------------------------------------------------
#: Statuses of one store's part of a deletion.
DELETED = "deleted"
WOULD_DELETE = "would delete"
PENDING = "pending"
SKIPPED = "skipped"
FAILED = "failed"


class CannotErase(Exception):
    """The store cannot delete one user's rows; the message says why and what to do."""


class UserEvents(NamedTuple):
    """A group of a user's own events (:meth:`Eraser.user_events`)."""

    source: str
    anonymous_id: str | None
    #: The ``previous_id`` of the group's alias calls; None for other calls.
    aliased: str | None
    events: int


@dataclass
class Erased:
    """What one store deleted, or in a dry run would delete."""

    #: :data:`DELETED`, :data:`WOULD_DELETE`, or :data:`PENDING` (the store deletes in
    #: the background, and had not finished when the wait ran out: ``detail`` says so).
    status: str
    events: int = 0
    #: Per-user rows beside the events (:attr:`Eraser.identity_rows`).
    users: int = 0
    identities: int = 0
    detail: str = ""


class Eraser(ABC):
    """One store's part of deleting a user's data. :mod:`eventrouter.privacy.erasure`
    drives it: it asks every store for the user's links first, counts what following each
    would take, then deletes. Every condition below treats an absent value (NULL, or
    ``''`` in a store without NULL) as absent: "no ``user_id``" means the event has none.
    """

    #: The store keeps per-user rows beside the events (PostgreSQL's ``users`` and
    #: ``identities``): :meth:`delete` deletes and counts them too.
    identity_rows: ClassVar[bool] = False

    @abstractmethod
    def user_events(self, user_id: str) -> list[UserEvents]:
        """The events whose ``user_id`` is ``user_id``, counted by source, anonymous id
        and (alias calls) ``previous_id``. None stored yet: empty."""

    def identity_links(self, user_id: str) -> list[tuple[str, str]]:
        """``(kind, id)`` links to ``user_id`` that the store keeps besides its events
        (``anonymous_id`` or ``previous_id``), sorted."""
        return []

    @abstractmethod
    def anonymous_events(self, user_id: str, ids: Sequence[str]) -> list[tuple[str, str, int]]:
        """``(anonymous_id, source, count)``: the events with no ``user_id`` whose
        ``anonymous_id`` is in ``ids`` (at most 500) and whose ``previous_id`` is not
        ``user_id``."""

    @abstractmethod
    def linked_events(self, user_id: str, other: str) -> dict[str, int]:
        """Per source, what deleting ``other`` as a user id and as an anonymous id would
        add to ``user_id``'s deletion: the events whose ``user_id`` or ``previous_id`` is
        ``other``, or with no ``user_id`` and ``other`` as ``anonymous_id``; of those,
        only the ones whose ``user_id`` and ``previous_id`` are not ``user_id``."""

    @abstractmethod
    def delete(
        self, user_ids: set[str], anonymous_ids: set[str], *, dry_run: bool, wait: float
    ) -> Erased:
        """Delete (``dry_run``: count) the events whose ``user_id`` or ``previous_id`` is
        in ``user_ids``, and those with no ``user_id`` whose ``anonymous_id`` is in
        ``anonymous_ids``; with :attr:`identity_rows`, the per-user rows of ``user_ids``.
        A store that deletes in the background waits for it up to ``wait`` seconds."""

    def close(self) -> None:
        """Close what the eraser opened."""
        return None


# -- the admin's tables --------------------------------------------------------------------
#: The tables, by name (:meth:`AdminTables.exists` and :meth:`AdminTables.ensure`).
SUPPRESSIONS = "suppressions"
REVOKED_SESSIONS = "admin_revoked_sessions"
CONFIRMATIONS_USED = "confirmations_used"
ADMIN_TABLES = (SUPPRESSIONS, REVOKED_SESSIONS, CONFIRMATIONS_USED)


class AdminTables(ABC):
    """The admin's small tables in one store (:mod:`eventrouter.store.admin_tables`):

    - ``suppressions``: ``(kind, id)`` with a reason and a time; unsuppressing removes it;
    - ``admin_revoked_sessions``: signed-out session ids until they would have expired;
    - ``confirmations_used``: each confirmation token's nonce, recorded once.

    Every server and worker process reads and writes the same rows, so every write must
    hold however many processes make it at once. Times are aware UTC datetimes (whole
    seconds). Callers :meth:`ensure` a table before they write it (whichever process
    comes first creates it), and read one only once :meth:`exists` says it is there.
    """

    @abstractmethod
    def exists(self, table: str) -> bool:
        """Whether ``table`` exists; a database that does not exist yet (an SQLite file
        never written, a ClickHouse database not created) means no, and is not created to
        find out."""

    @abstractmethod
    def ensure(self, table: str) -> None:
        """Create ``table`` if it is missing (before a write)."""

    # -- suppressions
    @abstractmethod
    def suppress(self, kind: str, ident: str, reason: str, at: datetime) -> bool:
        """Record ``(kind, ident)``; False when it is there already (its reason stays)."""

    @abstractmethod
    def unsuppress(self, kind: str, ident: str, at: datetime) -> bool:
        """Remove ``(kind, ident)``; False when it was not there."""

    @abstractmethod
    def suppressions(self) -> list[tuple[str, str, str, datetime]]:
        """``(kind, id, reason, suppressed_at)`` of every suppression, newest first (then
        by kind and id)."""

    def suppressed_ids(self) -> list[tuple[str, str]]:
        """``(kind, id)`` of every suppression, in any order."""
        return [(kind, ident) for kind, ident, _, _ in self.suppressions()]

    # -- signed-out sessions
    @abstractmethod
    def revoke_session(self, sid: str, expires_at: datetime) -> None:
        """Record ``sid`` as signed out until ``expires_at`` (rows past their expiry may
        go meanwhile)."""

    @abstractmethod
    def revoked_sessions(self) -> dict[str, float]:
        """Signed-out session ids that have not expired, with their expiry (Unix time)."""

    # -- used confirmation tokens
    @abstractmethod
    def use_confirmation(self, nonce: str, expires_at: datetime) -> bool:
        """Record ``nonce`` as used; False when it was used already (by any process:
        of two uses at once, one wins). Expired nonces may be removed meanwhile."""

    def close(self) -> None:
        """Close what the tables opened."""
        return None
