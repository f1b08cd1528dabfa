"""What the ClickHouse store tells the core (eventrouter.store.interface): how the query
layer reads it, how a user's rows are deleted, and how the admin's tables are kept.

The sink (``sinks/clickhouse.py``) writes and migrates ``events``; this module is the
rest of the store's knowledge. Every statement is valid on 18.16 (Debian's) and on
current servers (tests/integration/test_clickhouse.py runs them on a current engine too).

**Reading** (the query API, the dashboard). Text columns are ``String``, ``''`` where
absent, shown as None. ``events`` is a ``ReplacingMergeTree(received_at)``: copies of a
redelivered event that no merge has collapsed yet are read as one (``FINAL``, or on
pages ``LIMIT 1 BY`` the sorting key). JSON paths use ``JSONExtract*``, or on servers
without it (before 19.x) ``visitParamExtract*``; times compare as the column's own type
(``DateTime64(3)`` or ``DateTime``). Both are probed once the table exists. ClickHouse
reads every row the filters leave before it applies ``LIMIT``, so a page is looked for in
widening time windows (:data:`PAGE_WINDOWS`).

**Erasing**: ``ALTER TABLE events DELETE WHERE ...``, a mutation. It runs in the
background; :meth:`ClickHouseEraser.delete` waits for it up to ``wait`` seconds
(``system.mutations``) and reports it pending after that.

**The admin tables** are written with the native client (no mutation, no ORM):

- ``suppressions``: a ``ReplacingMergeTree(version)`` ordered by ``(kind, id)``: a change
  is an insert (``active`` 1 or 0) and the newest version of a key wins, read with
  ``FINAL``;
- ``admin_revoked_sessions``: a ``MergeTree`` ordered by ``sid``, read with
  ``expires_at > now()``; one small row per sign-out is kept (18.16 has no TTL);
- ``confirmations_used``: ClickHouse has no insert-if-absent. Each use inserts a row
  stamped by the server's clock (``now()``), waits :data:`CONFIRMATION_SETTLE` seconds,
  then reads the nonce's rows; the earliest wins (ties: the smaller random claim). A use
  that started after the wait began sorts after, and one before it is visible, so a
  later replay always loses; only two uses racing within the same moment and whose
  inserts take longer than the wait could both pass, and both would then run the same
  idempotent change. Old rows go with their daily partition (no TTL on 18.16).

A database not created yet (a queue-mode edge may start before ``eventrouter migrate``)
holds no admin rows: reading finds nothing, rather than failing.

**On a cluster** (``cluster`` on the sink, :class:`ClusterLayout`), every table named
above is a ``Distributed`` table over local ones (``events_local``, ...): reads and
inserts go through it unchanged (inserts with ``insert_distributed_sync = 1``; ``FINAL``
and ``LIMIT 1 BY`` run on each shard, which holds every copy of its events since rows
are sharded by their key), and what changes rows in place goes ``ON CLUSTER`` to the
local tables: the erasure's ``DELETE`` mutation (waited for in ``system.mutations`` of
every shard) and the admin tables' ``DROP PARTITION``.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import (
    BindParameter,
    Column,
    ColumnElement,
    Engine,
    case,
    create_engine,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    text,
    tuple_,
    union_all,
)
from sqlalchemy import (
    event as sqlalchemy_event,
)
from sqlalchemy.engine import make_url
from sqlalchemy.sql import operators

from eventrouter.columns import OPTIONAL_TEXT_COLUMNS
from eventrouter.sinks.clickhouse_cluster import (
    INSERT_SETTINGS,
    QUERY_SETTINGS,
    ClusterLayout,
    quote_string,
)
from eventrouter.sinks.clickhouse_rollup import (
    DAY,
    DIRTY,
    PATHS,
    PATHS_COMPACTED,
    PATHS_RECORDED,
    RECORDED,
    USER_DAYS_RECORDED,
    USER_KEY,
    USERS,
    USERS_PATHS,
    USERS_PATHS_RECORDED,
    USERS_RECORDED,
    dirty_days_sql,
    hourly_paths_table,
    hourly_table,
    mark_days_sql,
    paths_missing_sql,
    user_days_sql,
    user_days_table,
    users_missing_sql,
    users_paths_table,
    users_table,
)
from eventrouter.store import rollup as rollups
from eventrouter.store.db import json_dumps
from eventrouter.store.interface import (
    CONFIRMATIONS_USED,
    DELETED,
    PENDING,
    REVOKED_SESSIONS,
    SUPPRESSIONS,
    WOULD_DELETE,
    AdminTables,
    Erased,
    Eraser,
    QueryDialect,
    Store,
    StoreUnavailable,
    UserEvents,
    naive_utc,
)

#: ClickHouse's UNKNOWN_DATABASE: the store's database is not created yet.
UNKNOWN_DATABASE = 81
#: ClickHouse's UNKNOWN_TABLE: a database migrated without the rollup.
UNKNOWN_TABLE = 60


def driver_url(url: str) -> str:
    """The clickhouse-driver URL for an SQLAlchemy ``clickhouse+native://`` URL."""
    return make_url(url).set(drivername="clickhouse").render_as_string(hide_password=False)


def client_for(
    url: str, layout: ClusterLayout | None = None, *, database: str | None = None
) -> Any:
    """A clickhouse-driver client for an SQLAlchemy ``clickhouse+native://`` URL (on
    ``database`` instead of the URL's); on a cluster its inserts wait for every shard."""
    from clickhouse_driver import Client

    if database is not None:
        url = make_url(url).set(database=database).render_as_string(hide_password=False)
    client = Client.from_url(driver_url(url))
    if layout is not None:
        client.settings.update(INSERT_SETTINGS)
    return client


def _json_or_none(value: str) -> Any:
    return msgspec.json.decode(value) if value else None


def clickhouse_engine(url: str) -> Engine:
    """An SQLAlchemy engine on ``url``. clickhouse-sqlalchemy's engine takes no JSON
    hooks: JSON columns are ``String`` there (``''`` when absent), decoded by the generic
    JSON type with the dialect's ``_json_deserializer``, which that dialect leaves unset."""
    engine = create_engine(url, pool_pre_ping=True)
    engine.dialect.statement_compiler = _compiler_class()
    engine.dialect._json_serializer = json_dumps
    engine.dialect._json_deserializer = _json_or_none
    sqlalchemy_event.listen(engine, "handle_error", _unavailable)
    return engine


def _unavailable(context: Any) -> StoreUnavailable | None:
    """SQLAlchemy's ``handle_error`` hook: clickhouse-sqlalchemy raises its own
    ``DatabaseException`` (not a PEP 249 error, so SQLAlchemy leaves it unwrapped) for
    whatever the server or the connection said, e.g. "All connection tries failed"
    with a shard down. Raised as :class:`StoreUnavailable` instead, with it as the
    cause, so readers answer 503 as they do for the other stores' ``DBAPIError``."""
    from clickhouse_driver.errors import Error as DriverError
    from clickhouse_sqlalchemy.exceptions import DatabaseException

    original = context.original_exception
    if isinstance(original, DatabaseException | DriverError):
        unavailable = StoreUnavailable(str(original))
        unavailable.__cause__ = original
        return unavailable
    return None


class ClickHouseStore(Store):
    """The ClickHouse database at ``url`` (a ``clickhouse+native://`` SQLAlchemy URL),
    on one server or, with a ``layout``, over a cluster."""

    def __init__(self, url: str, layout: ClusterLayout | None = None) -> None:
        self.url = url
        self.layout = layout

    def query_dialect(self) -> ClickHouseDialect:
        return ClickHouseDialect(self.url, self.layout)

    def eraser(self) -> ClickHouseEraser:
        return ClickHouseEraser(self.url, self.layout)

    def admin_tables(self) -> ClickHouseAdminTables:
        return ClickHouseAdminTables(self.url, self.layout)

    def quality_tables(self) -> Any:
        from eventrouter.sinks.clickhouse_quality import ClickHouseQualityTables

        return ClickHouseQualityTables(self.url)


# -- reading -------------------------------------------------------------------------------
TIME_TYPE_SQL = (
    "SELECT type FROM system.columns WHERE database = currentDatabase() "
    "AND table = 'events' AND name = 'timestamp'"
)
JSON_EXTRACT_SQL = "SELECT count() FROM system.functions WHERE name = 'JSONExtractRaw'"
#: How many of the path rollup's two tables exist (a database migrated before them has none).
PATHS_TABLES_SQL = (
    "SELECT count() FROM system.tables WHERE database = currentDatabase() "
    f"AND name IN ({quote_string(PATHS)}, {quote_string(PATHS_COMPACTED)})"
)
SIZE_SQL = (
    "SELECT sum(bytes) FROM system.parts WHERE database = currentDatabase() "
    "AND table = 'events' AND active"
)


def parts_of(layout: ClusterLayout | None, table: str) -> tuple[str, str]:
    """Where the active parts of ``table`` are listed: ``system.parts`` of this server
    (on a cluster, of every server, for the local table) and the condition that picks
    them, as SQL text."""
    if layout is None:
        where = f"database = currentDatabase() AND table = {quote_string(table)}"
        return "system.parts", where + " AND active"
    where = f"database = {quote_string(layout.database)} AND table = "
    return layout.everywhere("parts"), where + f"{quote_string(layout.local(table))} AND active"


def cluster_size_sql(layout: ClusterLayout) -> str:
    """The size of ``events_local`` on every shard (one replica each)."""
    return (
        f"SELECT sum(bytes) FROM {layout.everywhere('parts')} WHERE "
        f"database = {quote_string(layout.database)} AND table = "
        f"{quote_string(layout.local('events'))} AND active"
    )


#: How far back from a page's newest possible event each page query looks before it
#: looks further (EventStore.query); the last window is unbounded. They grow about
#: threefold from an hour: a page's keys come from every event in the window (18.16
#: sorts them all before ``LIMIT``), so a window should hold not much more than a
#: page, wherever the newest events are. On 10,000,000 events over 30 days a day's
#: window (333,000 events) made the unfiltered explorer page take 774 ms in one process,
#: an hour's 209; with the newest events two hours old, the hour's window is empty and
#: the next one decides: a day's 596 ms, three hours' 193 (bench/README.md,
#: "PostgreSQL and ClickHouse at 10,000,000 events, again"). An empty window costs one
#: small query.
PAGE_WINDOWS = tuple(timedelta(hours=hours) for hours in (1, 3, 9, 24, 72, 168, 840))


class Flavour(msgspec.Struct, frozen=True):
    """What the query layer adapts to on one ClickHouse database."""

    #: ``events.timestamp`` is ``DateTime64(3)`` (else ``DateTime``: whole seconds).
    datetime64: bool
    #: The server has ``JSONExtract*`` (19.x on), else only ``visitParamExtract*``.
    json_extract: bool


@functools.cache
def _select_class() -> type:
    """clickhouse-sqlalchemy's ``Select`` (it has ``.final()`` and ``.limit_by()``),
    imported on first use. Its compiled form is not cached: its cache key would leave
    ``FINAL`` out."""
    from clickhouse_sqlalchemy.sql.selectable import Select

    return type("ClickHouseSelect", (Select,), {"inherit_cache": False})


#: The start of the period of ``day`` (a ``Date``), seconds since the epoch (``toUInt32``
#: of a ``Date``: days since the epoch); weeks from Monday, as ``EventStore.period``.
USERS_PERIODS = {
    "day": "toUInt32(day) * 86400",
    "week": "toUInt32(toMonday(day)) * 86400",
    "month": "toUInt32(toStartOfMonth(day)) * 86400",
}
#: Columns every copy of a redelivered event holds alike (the default sorting key's),
#: whose equality conditions under ``FINAL`` are also read as ``PREWHERE``.
PREWHERE_COLUMNS = frozenset({"type", "event", "source"})


def _prewhere(condition: Any) -> bool:
    """Whether ``condition`` is ``events.<PREWHERE_COLUMNS> = <bound value>``."""
    left, right = getattr(condition, "left", None), getattr(condition, "right", None)
    return (
        getattr(condition, "operator", None) is operators.eq
        and isinstance(left, Column)
        and getattr(left.table, "name", None) == "events"
        and left.name in PREWHERE_COLUMNS
        and isinstance(right, BindParameter)
    )


@functools.cache
def _compiler_class() -> type:
    """clickhouse-sqlalchemy's compiler, with ``FINAL`` followed by ``PREWHERE`` and the
    select's equality conditions on :data:`PREWHERE_COLUMNS` (they stay in ``WHERE``).

    18.16 moves no condition to ``PREWHERE`` under ``FINAL``: it reads every column the
    query names for every row in range and merges them all, then filters. With the
    condition in ``PREWHERE`` it reads the rest of the columns for the matching rows
    alone (the chart of one event and a property over 30 days of 1,000,000 events:
    bench/clickhouse_views.py). The answers are the same: copies of one event share
    these columns, so every copy or none passes, before ``FINAL`` as after it."""
    from clickhouse_sqlalchemy.drivers.compilers.sqlcompiler import ClickHouseSQLCompiler

    class PrewhereCompiler(ClickHouseSQLCompiler):
        def _compose_select_body(self, text: str, select: Any, *args: Any) -> Any:
            # The select being written, for final_clause (subqueries nest).
            selects = self.__dict__.setdefault("_selects", [])
            selects.append(select)
            try:
                return super()._compose_select_body(text, select, *args)
            finally:
                selects.pop()

        def final_clause(self) -> str:
            clause = super().final_clause()
            selects = self.__dict__.get("_selects")
            if not selects:
                return clause
            shared = [c for c in selects[-1]._where_criteria if _prewhere(c)]
            if shared:
                clause += " \nPREWHERE " + " AND ".join(self.process(c) for c in shared)
            return clause

    return PrewhereCompiler


def json_text_of(
    target: ColumnElement, path: Sequence[str], *, json_extract: bool
) -> ColumnElement:
    """The JSON value at ``path`` in ``target`` as text (``ClickHouseDialect.json_text``),
    on a server with ``JSONExtract*`` (``json_extract``) or only ``visitParamExtract*``;
    every segment a bound parameter."""
    segments = [literal(segment) for segment in path]
    if json_extract:
        kind = func.JSONType(target, *segments)
        return case(
            (kind == literal("String"), func.JSONExtractString(target, *segments)),
            (kind == literal("Null"), null()),
            else_=func.JSONExtractRaw(target, *segments),
        )
    parent = target
    for segment in segments[:-1]:
        parent = func.visitParamExtractRaw(parent, segment)
    raw = func.visitParamExtractRaw(parent, segments[-1])
    string = func.visitParamExtractString(parent, segments[-1])
    return case(
        (func.substring(raw, 1, 1) == literal('"'), string),
        (raw == literal("null"), null()),
        # Empty: a missing key, or a string whose raw extraction failed (18.x finds
        # no end to ``"\\"``, a string ending in a backslash) but which unescapes fine.
        (raw == literal(""), func.nullIf(string, literal(""))),
        else_=raw,
    )


#: The last second a ``DateTime`` holds (2106-02-07 06:28:15 UTC), minus a margin.
LAST_DATETIME = datetime(2105, 12, 31, 23, 59, 59)
#: The most separate runs of days not compacted yet that a count reads from ``events``
#: beside the rollup (more: it reads ``events`` alone).
MAX_GAPS = 8


class ClickHouseDialect(QueryDialect):
    page_windows = PAGE_WINDOWS
    #: Copies of one event share their UTC day (the first item of the sorting key that
    #: names an event, :meth:`sort_key`).
    copies_unit = timedelta(days=1)
    #: Kept by a compactor (sinks/clickhouse_rollup.py), read with ``FINAL``.
    rollup = hourly_table
    #: 18.16 filters each copy before ``FINAL`` collapses them: a range read apart from
    #: its neighbour counts an event whose copies straddle the boundary on both sides.
    #: Copies share a day (the sorting key's): the rollup's part begins and ends on one.
    rollup_unit = 86400
    #: A missing ``event`` is ``''`` in ``events`` as in the rollup.
    null_event = False
    #: Kept by the same compactor: each day's distinct users (``users_statement``).
    users_days = users_table
    users_paths = users_paths_table
    #: Kept by the same compactor: each user's first and last event per event name and
    #: day (``retention_days``).
    user_days = user_days_table
    #: Kept by the same compactor for the sink's ``rollup_paths``, each day and path
    #: recorded apart (``rollup_gaps`` with a path).
    path_rollup = hourly_paths_table

    def __init__(self, url: str, layout: ClusterLayout | None = None) -> None:
        self.url = url
        self.layout = layout
        self._flavour: Flavour | None = None
        #: Paths found with counts in ``events_hourly_paths`` (``path_rollup_kept``).
        self._paths_found: set[str] = set()

    def connect(self) -> Engine:
        if self.layout is None:
            return clickhouse_engine(self.url)
        # Settings in the URL's query: clickhouse-driver sends them with every query.
        url = make_url(self.url).update_query_dict(QUERY_SETTINGS)
        return clickhouse_engine(url.render_as_string(hide_password=False))

    def flavour(self) -> Flavour:
        """Probed once the ``events`` table exists (until then, every query fails)."""
        if self._flavour is not None:
            return self._flavour
        with self.engine.connect() as connection:
            column = connection.execute(text(TIME_TYPE_SQL)).scalar()
            functions = connection.execute(text(JSON_EXTRACT_SQL)).scalar()
        flavour = Flavour(
            datetime64=bool(column and column.startswith("DateTime64")),
            json_extract=bool(functions),
        )
        if column is not None:
            self._flavour = flavour
        return flavour

    def select(self, *columns: Any) -> Any:
        """``FROM events FINAL``: copies of a redelivered event that no merge has
        collapsed yet are read (and counted) as one."""
        if columns:
            return _select_class()(*columns).select_from(self.table).final()
        return _select_class()(self.table).final()

    def copies_select(self, *columns: Any) -> Any:
        """``FROM events`` without ``FINAL``: ``FINAL`` merges the sorting key's columns
        of every row in range, single-threaded on 18.16, and cost distinct users by day
        over 1,000,000 events 390 ms of their 520 ms (without it: 130 ms; bench/README.md,
        "Dashboard queries"). Distinct users, and distinct users per value, come out the
        same either way: copies of one event carry the same user and properties."""
        return _select_class()(*columns).select_from(self.table)

    def each_event(self, columns: Sequence[Any], where: Sequence[ColumnElement]) -> Any:
        """:meth:`latest`: the rows matching ``where`` alone are sorted and collapsed,
        where ``FINAL`` merges every row of the table (one user's first and last times
        over 1,000,000 events: 150 ms with ``FINAL``, 15 ms this way)."""
        return self.latest(columns, list(where))

    def rollup_select(self, *columns: Any) -> Any:
        """``FROM events_hourly FINAL``, the rows of each day's latest recorded
        compaction alone (sinks/clickhouse_rollup.py)."""
        recorded = literal_column(RECORDED)
        return _select_class()(*columns).select_from(self.rollup).final().where(recorded)

    def path_rollup_select(self, *columns: Any) -> Any:
        """``FROM events_hourly_paths FINAL``, the rows of each day's latest recorded
        compaction alone (a day whose latest compaction did not count the path is a
        gap of that path, read from ``events``: ``rollup_gaps``)."""
        recorded = literal_column(PATHS_RECORDED)
        return _select_class()(*columns).select_from(self.path_rollup).final().where(recorded)

    def path_rollup_kept(self, path: str) -> bool:
        """Whether some compaction counted ``path`` (a record in
        ``events_paths_compacted``): the days whose latest compaction did not are that
        path's gaps (``rollup_gaps``), so no more is needed here, nor the sink's
        configuration. Once found, remembered (records go with their days only); a path
        never counted (a breakdown by any other JSON path) is asked again each time,
        a lookup in a table of a row per day and path."""
        if path in self._paths_found:
            return True
        with self.engine.connect() as connection:
            tables = connection.execute(text(PATHS_TABLES_SQL)).scalar()
            if tables != 2:
                return False
            found = connection.execute(
                text(f"SELECT 1 FROM {PATHS_COMPACTED} WHERE path = :path LIMIT 1"),
                {"path": path},
            ).first()
        if found is not None:
            self._paths_found.add(path)
        return found is not None

    def path_rollup_value(self, column: ColumnElement) -> ColumnElement:
        """``''`` (no value) as NULL, ``'v' || text`` as the text (sinks/clickhouse_rollup.py)."""
        return case((column == literal(""), null()), else_=func.substring(column, 2))

    def path_rollup_match(self, column: ColumnElement, value: str) -> ColumnElement:
        """``value = 'v' || :value``, the concatenation bound as one parameter."""
        return column == "v" + value

    def range_hint(self, since: datetime | None, until: datetime | None) -> list[ColumnElement]:
        """``toDate(timestamp)`` between the two ends' days: 18.16 does not bound the
        sorting key's ``toDate(timestamp)`` from conditions on ``timestamp`` alone under
        ``FINAL`` (a partial day of 1,000,000 events over 30 days read in 125-200 ms,
        with this in 9-13 ms)."""
        day = func.toDate(self.table.c.timestamp)
        hint = [day >= func.toDate(self.time(since))] if since is not None else []
        if until is not None:
            # The day of the last moment before ``until`` (a millisecond, the column's
            # finest unit, before it): the rollup's edges end at midnight, and a bound
            # on that midnight's own day read a whole day more (the first partial day of
            # a 30-day breakdown on 10,000,000 events: 100 ms, bounded so 12 ms).
            hint.append(day <= func.toDate(self.time(until - timedelta(milliseconds=1))))
        return hint

    def rollup_gaps(
        self, start: datetime | None, end: datetime, path: str | None = None
    ) -> list[tuple[datetime, datetime]] | None:
        """The days changed since their last compaction (sinks/clickhouse_rollup.py),
        and with ``path`` those whose latest compaction did not count that path
        (:func:`paths_missing_sql`), consecutive ones as one range; None: more than
        :data:`MAX_GAPS` ranges."""
        first = start.astimezone(UTC).date() if start is not None else None
        last = end.astimezone(UTC).date()
        with self.engine.connect() as connection:
            days = set(connection.execute(text(dirty_days_sql(first, last))).scalars())
            if path is not None:
                missing = text(paths_missing_sql("[:path]", first, last))
                days |= set(connection.execute(missing, {"path": path}).scalars())
        gaps: list[tuple[datetime, datetime]] = []
        for day in sorted(days):
            low = datetime(day.year, day.month, day.day, tzinfo=UTC)
            if gaps and gaps[-1][1] == low:
                gaps[-1] = (gaps[-1][0], low + timedelta(days=1))
            else:
                gaps.append((low, low + timedelta(days=1)))
        return gaps if len(gaps) <= MAX_GAPS else None

    def users_statement(self, interval: str, since: datetime | None) -> Any:
        """Clean days from ``events_users`` (the latest recorded compaction's row), the
        days changed since (:func:`dirty_days_sql`) or compacted without their users
        (:func:`users_missing_sql`) from ``events``, as one series:
        daily, each day's ``n_users``; weekly and monthly, ``uniqExactMerge`` of the
        days' ``uniqExact`` states of ``sipHash64(user)``, the union of their users
        (sinks/clickhouse_rollup.py).
        Over 1,000,000 events in 30 days: bench/README.md, "Dashboard queries". The SQL
        holds no request text: dates formatted here, the interval one of three."""
        period = USERS_PERIODS[interval]
        first = since.astimezone(UTC).date() if since is not None else None
        with self.engine.connect() as connection:
            changed = set(connection.execute(text(dirty_days_sql(first, None))).scalars())
            changed |= set(connection.execute(text(users_missing_sql(first))).scalars())
        dirty = sorted(changed)
        bounds = [USERS_RECORDED]
        if first is not None:
            bounds.append(f"day >= toDate({quote_string(first.isoformat())})")
        days = ", ".join(f"toDate({quote_string(day.isoformat())})" for day in dirty)
        if dirty:
            bounds.append(f"day NOT IN ({days})")
        if interval == "day":
            kept, counted, total = "n_users", "uniqExact(u)", "max(n)"
        else:
            kept, counted, total = "users", "uniqExactState(sipHash64(u))", "uniqExactMerge(n)"
        parts = [f"SELECT day, {kept} AS n FROM {USERS} WHERE {' AND '.join(bounds)}"]
        if dirty:
            parts.append(
                f"SELECT day, {counted} AS n FROM (SELECT toDate(timestamp) AS day, "
                f"{USER_KEY} AS u FROM events WHERE toDate(timestamp) IN ({days})) "
                "WHERE u != '' GROUP BY day"
            )
        return text(
            f"SELECT {period} AS start, {total} AS users FROM "
            f"({' UNION ALL '.join(parts)}) GROUP BY start ORDER BY start"
        )

    def users_per_value(
        self, path: str, value: ColumnElement, since: datetime, limit: int
    ) -> Any | None:
        """The days from ``since`` whose latest recorded compaction wrote
        ``events_users_paths`` rows of ``path`` and that have not changed since, from
        their ``uniqExact`` states of ``sipHash64(user)`` per value; every other day
        with events (a mark in ``events_dirty``) from ``events`` (no ``FINAL``, as the
        scan); merged per value (``uniqExactMerge``: a user counts once per value across
        days). None when no day of the range holds ``path``'s
        rows (the path is not kept): the caller scans. Exact up to the 64-bit hashes, as
        weekly and monthly users (sinks/clickhouse_rollup.py)."""
        first = since.astimezone(UTC).date()
        bound = {"first": first, "path": path}
        with self.engine.connect() as connection:
            kept = set(
                connection.execute(
                    text(
                        f"SELECT DISTINCT day FROM {USERS_PATHS} WHERE path = :path "
                        f"AND day >= :first AND {USERS_PATHS_RECORDED}"
                    ),
                    bound,
                ).scalars()
            )
            if not kept:
                return None
            kept -= set(connection.execute(text(dirty_days_sql(first, None))).scalars())
            marked = connection.execute(
                text(f"SELECT DISTINCT day FROM {DIRTY} WHERE day >= :first"), bound
            ).scalars()
            gaps = sorted(set(marked) - kept)
        r, c = users_paths_table.c, self.table.c
        parts = [
            select(r.value.label("value"), r.users.label("s")).where(
                r.path == path, r.day.in_(sorted(kept)), text(USERS_PATHS_RECORDED)
            )
        ]
        if gaps:
            rows = (
                select(
                    self._user().label("u"),
                    func.ifNull(func.concat(literal("v"), value), literal("")).label("value"),
                )
                .where(func.toDate(c.timestamp).in_(gaps))
                .subquery("gap_rows")
            )
            parts.append(
                select(rows.c.value, func.uniqExactState(func.sipHash64(rows.c.u)).label("s"))
                .where(rows.c.u != literal(""))
                .group_by(rows.c.value)
            )
        both = (union_all(*parts) if len(parts) > 1 else parts[0]).subquery("per_day")
        decoded = self.path_rollup_value(both.c.value).label("value")
        users = func.uniqExactMerge(both.c.s).label("users")
        return (
            select(decoded, users)
            .group_by(both.c.value)
            .order_by(users.desc(), decoded)
            .limit(limit)
        )

    def json_text(self, column: str, path: Sequence[str]) -> ColumnElement:
        """Strings unquoted, numbers and booleans as the stored JSON writes them, NULL for
        a missing key or a JSON null: the text the other stores give. ``JSONExtract*``
        with one argument per segment, or a chain of ``visitParamExtract*`` before 19.x.

        ``visitParamExtract*`` looks a key up at any depth and takes its first
        occurrence: ``properties.id`` of ``{"items": [{"id": 1}], "id": 2}`` is 1 there.
        Nested segments are a chain of ``visitParamExtractRaw``, each searching the
        object text the previous one returned. The compactor counts
        ``events_hourly_paths`` with the same expression (:func:`json_text_of`)."""
        return json_text_of(self.table.c[column], path, json_extract=self.flavour().json_extract)

    def epoch(self, column: ColumnElement) -> ColumnElement:
        return func.toUInt32(func.toDateTime(column))

    def month_start(self, column: ColumnElement) -> ColumnElement:
        # toUInt32 of a Date: days since the epoch.
        return func.toUInt32(func.toStartOfMonth(column)) * literal_column("86400")

    def user_key(self) -> ColumnElement:
        """``user_id``, else ``anonymous_id`` (``''`` when absent: NULL, not counted)."""
        c = self.table.c
        key = getattr(func, "if")(c.user_id != literal(""), c.user_id, c.anonymous_id)
        return func.nullIf(key, literal(""))

    def count_distinct(self, expression: ColumnElement) -> ColumnElement:
        """``uniqExact``: exact (its memory grows with the users counted)."""
        return func.uniqExact(expression)

    def time(self, value: datetime) -> Any:
        """Converted to the column's type: compared with a string, 18.16 fails on a key
        holding ``toDate(timestamp)``, and clickhouse-driver drops the milliseconds of a
        ``datetime`` parameter. A later time than ``DateTime`` holds (the query layer's
        open end, year 9999) is its last second: converted, it would wrap around."""
        value = min(naive_utc(value), LAST_DATETIME)
        if self.flavour().datetime64:
            moment = literal(value.isoformat(sep=" ", timespec="milliseconds"))
            return func.toDateTime64(moment, 3, "UTC")
        return func.toDateTime(literal(value.isoformat(sep=" ", timespec="seconds")), "UTC")

    def sort_key(self) -> list[ColumnElement]:
        """The ``events`` sorting key (sinks/clickhouse.py): a tuple of it names a row
        and lets the server skip every granule that cannot hold it."""
        c = self.table.c
        return [func.toDate(c.timestamp), c.source, c.type, c.event, c.message_id]

    def latest(self, columns: Sequence[ColumnElement], where: list[ColumnElement]) -> Any:
        """``SELECT columns FROM events WHERE where``, one row per sorting key: the copy
        received last, as ``FINAL`` would keep it (``ReplacingMergeTree(received_at)``).

        ``FINAL`` merges every row the filters leave, single-threaded on 18.16, whatever
        the ``LIMIT``: it cost the explorer's page ~100 ms of its ~210 ms on 1M events.
        ``ORDER BY received_at DESC LIMIT 1 BY (sorting key)`` keeps the same copy of each
        event (bench/README.md, "Dashboard queries"). The filters are applied to every
        copy before that; copies of one event differ only in their times, so the one
        difference from ``FINAL`` is at the edge of a time filter: an event whose copies
        straddle it is shown (with its latest copy) when any copy is inside.
        """
        # 18.16 fails such a subquery without WHERE here ("Column 'toDate(timestamp)'
        # already exists"): an unfiltered page gets a condition that always holds.
        where = where or [literal_column("1") == literal_column("1")]
        return (
            _select_class()(*columns)
            .select_from(self.table)
            .where(*where)
            .order_by(self.table.c.received_at.desc())
            .limit_by(self.sort_key(), 1)
        )

    def page_keys(self, conditions: Sequence[ColumnElement], count: int) -> Any:
        """The sorting keys and times (``t``) of the first ``count`` events matching
        ``conditions``, newest first, from the key columns and those the filters need:
        the first of a page's two steps (:meth:`page_rows` reads every column of the
        page's events alone: the whole rows of all matches would be ~250 MB on 1M
        events). The page's rows are read once for all its windows: in a day's part
        of the sort order, one user's events are spread over every granule of the day
        (reading their ``context`` cost ~100 ms per window on 10,000,000 events)."""
        return self._keys(conditions, count)

    def _keys(self, conditions: Sequence[ColumnElement], count: int) -> Any:
        key = self.sort_key()
        copies = self.latest(
            [k.label(f"k{i}") for i, k in enumerate(key)] + [self.table.c.timestamp.label("t")],
            list(conditions),
        ).subquery("copies")
        message_id, source = copies.c[f"k{len(key) - 1}"], copies.c["k1"]
        return (
            select(*(copies.c[f"k{i}"] for i in range(len(key))), copies.c.t)
            .order_by(copies.c.t.desc(), message_id.desc(), source.desc())
            .limit(count)
        )

    def page_rows(self, keys: Sequence[Any], columns: Sequence[str] = ()) -> Any:
        """``columns`` (none: every column) of the events of ``keys`` (:meth:`page_keys`'
        rows, each a bound parameter), each event's latest copy, newest first. By key
        alone: the keys met the filters. The keys of a page of one user's events are
        spread over every granule of their day (its sort order): ``context`` and
        ``properties`` there are most of what a page's rows cost (a page of the busiest
        user on 10,000,000 events: 210 ms with them, 40 without)."""
        key = self.sort_key()
        return self._rows_of([tuple(row[: len(key)]) for row in keys], columns)

    def page(
        self, conditions: Sequence[ColumnElement], count: int, columns: Sequence[str] = ()
    ) -> Any:
        """:meth:`page_keys` and :meth:`page_rows` in one statement (a page of one
        window)."""
        keys = self._keys(conditions, count).subquery("keys")
        return self._rows_of(
            select(*(keys.c[f"k{i}"] for i in range(len(self.sort_key())))), columns
        )

    def _rows_of(self, keys: Any, columns: Sequence[str]) -> Any:
        """``columns`` (none: all) of the latest copy of each event whose sorting key is
        in ``keys`` (a list of tuples or a query of them), newest first."""
        chosen = [self.table.c[name] for name in columns] or [self.table]
        rows = self.latest(chosen, [tuple_(*self.sort_key()).in_(keys)]).subquery("page")
        return select(rows).order_by(
            rows.c.timestamp.desc(), rows.c.message_id.desc(), rows.c.source.desc()
        )

    def event(self, row: Any) -> dict[str, Any]:
        event = super().event(row)
        for column in OPTIONAL_TEXT_COLUMNS:
            if event.get(column) == "":
                event[column] = None
        return event

    def text_value(self, value: Any) -> Any:
        return None if value == "" else value

    def oldest_hint(self, connection: Any) -> datetime | None:
        """The least ``min_time`` of the active parts of ``events`` (of every shard on
        a cluster): the partition key's range of each part, kept by the server, no
        row read (``min(timestamp)`` reads the column: 40 ms on 10,000,000 events).
        None when no part has one (a ``partition_by`` without ``timestamp``: 0)."""
        parts, where = parts_of(self.layout, "events")
        oldest = connection.execute(
            text(f"SELECT toUInt32(min(min_time)) FROM {parts} WHERE {where}")
        ).scalar()
        return datetime.fromtimestamp(oldest, UTC) if oldest else None

    def size_bytes(self, connection: Any) -> int | None:
        sql = SIZE_SQL if self.layout is None else cluster_size_sql(self.layout)
        return connection.execute(text(sql)).scalar()

    # -- funnels and retention: each user's path in arrays, in one pass over the events --
    def _user(self) -> ColumnElement:
        c = self.table.c
        return getattr(func, "if")(c.user_id != literal(""), c.user_id, c.anonymous_id)

    def funnel_statement(
        self,
        steps: Sequence[ColumnElement],
        where: Sequence[ColumnElement],
        window: int,
        by: ColumnElement | None,
    ) -> Any:
        """Per user (``GROUP BY``): the entry (``minIf``), the entry's ``by`` value
        (``argMinIf``) and each later step's times (``groupArrayIf``); then step k's time
        is the least of its times strictly after step k - 1's and within the window
        (``arrayFilter``), 0 when none; then the users counted by value and delays (0: not
        reached). No ``FINAL``: copies of an event share
        its time, and a user counts once per step whatever the copies."""
        user, epoch = self._user(), self.epoch(self.table.c.timestamp)
        steps = [_not_null(step) for step in steps]
        columns = [func.minIf(epoch, steps[0]).label("t1")]
        columns.append(
            (
                func.argMinIf(func.ifNull(by, literal("")), epoch, steps[0])
                if by is not None
                else literal("")
            ).label("bv")
        )
        columns += [
            func.groupArrayIf(epoch, step).label(f"a{k}") for k, step in enumerate(steps[1:], 2)
        ]
        per_user = (
            _select_class()(*columns)
            .select_from(self.table)
            .where(*where, or_(*steps), user != literal(""))
            .group_by(user)
            .having(func.countIf(steps[0]) > 0)
            .subquery("per_user")
        )
        window = int(window)
        times = [per_user.c.t1, per_user.c.bv]
        for k in range(2, len(steps) + 1):
            # Text of our own: column names and an int, never a value from a request.
            later = (
                f"arrayReduce('min', arrayFilter(x -> x > t{k - 1} AND x <= t1 + {window}, a{k}))"
            )
            expression = later if k == 2 else f"if(t{k - 1} = 0, 0, {later})"
            times.append(literal_column(expression).label(f"t{k}"))
        paths = select(*times).select_from(per_user).subquery("paths")
        delays = [
            literal_column(f"if(t{k} > 0, t{k} - t{k - 1}, 0)").label(f"d{k}")
            for k in range(2, len(steps) + 1)
        ]
        return (
            select(paths.c.bv, func.count().label("users"), *delays)
            .select_from(paths)
            .group_by(paths.c.bv, *(literal_column(f"d{k}") for k in range(2, len(steps) + 1)))
        )

    def retention_statement(
        self,
        first: ColumnElement,
        returning: ColumnElement,
        where: Sequence[ColumnElement],
        period: int,
        offset: int,
        periods: int,
    ) -> Any:
        """Per user (``GROUP BY``): the entry (``minIf``: their earliest ``first``
        second) and the seconds of their ``returning`` events (``groupArrayIf``); then
        each user's periods k (``arrayFilter``: a returning second at or after the entry
        and before the cohort's last period ends) joined out (``arrayJoin``) beside k =
        -1 for the cohort's size, and counted. No ``FINAL`` (as for funnels).

        One ``GROUP BY`` by the user's text: grouping by user and period first, then by
        user, took twice as long on 10,000,000 events (2.1 M rows of the two events in
        30 days; bench/README.md, "PostgreSQL and ClickHouse at 10,000,000 events,
        again")."""
        c = self.table.c
        user, epoch = self._user(), self.epoch(c.timestamp)
        period, offset, periods = int(period), int(offset), int(periods)
        first, returning = _not_null(first), _not_null(returning)
        per_user = (
            _select_class()(
                func.minIf(epoch, first).label("entry"),
                func.groupArrayIf(epoch, returning).label("ts"),
            )
            .select_from(self.table)
            .where(*where, or_(first, returning), user != literal(""))
            .group_by(user)
            .having(func.countIf(first) > 0)
            .subquery("per_user")
        )
        return _cohorts(per_user, period, offset, periods)

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
    ) -> Any:
        """As :meth:`retention_statement`, each user a ``sipHash64`` of their key: the
        whole days of the range that ``events_user_days`` holds up to date (rows of the
        day's latest recorded compaction, the day not changed since) give each user's
        groups of the two events per day (the entry from a group's ``first``, a
        returning group's period from its ``last``: the day's returning events count
        when the latest is at or after the entry), the other days (the range's partial
        ends, days changed or compacted before the table) every event from ``events``;
        only the users with a ``first`` group or event are grouped. None when the
        range holds no such day. Exact up to the 64-bit hashes (two users sharing one
        would count once: about N² / 2⁶⁵ for N users, as weekly active users), and
        ``GROUP BY`` over 8-byte keys: twice as fast as :meth:`retention_statement` on
        10,000,000 events on a quiet machine, 3-4 times under load (bench/README.md)."""
        now = datetime.now(UTC)
        whole = rollups.split(since, until, now, unit=DAY)  # the range's whole days
        if whole is None:
            return None
        first_day = whole.start.date() if whole.start is not None else None
        kept = self.user_days_kept(first_day, (whole.end - timedelta(days=1)).date())
        if not kept:
            return None
        r, c = user_days_table.c, self.table.c
        names = sorted({first, returning})
        kept_days = sorted(kept)
        rest_days = _other_days(func.toDate(c.timestamp), since, until or now, kept)
        user, epoch = func.sipHash64(self._user()), self.epoch(c.timestamp)
        kept_rows = [r.day.in_(kept_days), text(USER_DAYS_RECORDED)]
        rows = [
            select(
                r.user_hash.label("u"),
                (r.event == first).label("a"),
                func.toUInt32(r.first).label("at"),
                (r.event == returning).label("b"),
                func.toUInt32(r.last).label("bt"),
            ).where(*kept_rows, r.event.in_(names))
        ]
        entrants = [select(r.user_hash.label("u")).where(*kept_rows, r.event == first)]
        if rest_days is not None:
            events_rows = [*where, rest_days, self._user() != literal("")]
            rows.append(
                select(
                    user.label("u"),
                    (c.event == first).label("a"),
                    epoch.label("at"),
                    (c.event == returning).label("b"),
                    epoch.label("bt"),
                ).where(*events_rows, c.event.in_(names))
            )
            entrants.append(select(user.label("u")).where(*events_rows, c.event == first))
        both = union_all(*rows).subquery("groups")
        entered = union_all(*entrants) if len(entrants) > 1 else entrants[0]
        per_user = (
            _select_class()(
                func.minIf(both.c.at, both.c.a).label("entry"),
                func.groupArrayIf(both.c.bt, both.c.b).label("ts"),
            )
            .select_from(both)
            .where(both.c.u.in_(entered))
            .group_by(both.c.u)
            .having(func.countIf(both.c.a) > 0)
            .subquery("per_user")
        )
        return _cohorts(per_user, int(period), int(offset), int(periods))

    def user_days_kept(self, first: date | None, last: date | None) -> set[date]:
        """The days from ``first`` to ``last`` (inclusive; None: unbounded) that
        ``events_user_days`` holds up to date: their latest recorded compaction wrote
        it, and they have not changed since."""
        kept = (
            f"SELECT day FROM ({user_days_sql(first, last)}) "
            f"WHERE day NOT IN ({dirty_days_sql(first, last)})"
        )
        with self.engine.connect() as connection:
            return set(connection.execute(text(kept)).scalars())


#: The most days of a range that retention names one by one (``retention_days``).
MAX_NAMED_DAYS = 400


def _other_days(
    day: ColumnElement, since: datetime | None, until: datetime, kept: set[date]
) -> ColumnElement | None:
    """The condition on ``day`` (an ``events`` row's) for the days of ``[since,
    until)`` outside ``kept``: named one by one (an index range each; ``NOT IN`` reads
    every day the range's bounds leave), up to :data:`MAX_NAMED_DAYS`; None: no such day."""
    if since is None:
        return day.notin_(sorted(kept))
    first, last = since.astimezone(UTC).date(), until.astimezone(UTC).date()
    if (last - first).days > MAX_NAMED_DAYS:
        return day.notin_(sorted(kept))
    other = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    other = [d for d in other if d not in kept]
    return day.in_(other) if other else None


def _cohorts(per_user: Any, period: int, offset: int, periods: int) -> Any:
    """Retention's rows from ``per_user`` (each user's ``entry`` second and the seconds
    ``ts`` that count as returning): each user's periods k (``arrayFilter``: a second at
    or after the entry and before the cohort's last period ends) joined out
    (``arrayJoin``) beside k = -1 for the cohort's size, and counted."""
    # Text of our own: column names and ints, never a value from a request.
    cohort = literal_column(f"entry - (entry - {offset}) % {period}")
    k = literal_column(
        f"arrayJoin(arrayPushFront(arrayDistinct(arrayMap("
        f"x -> intDiv(x - (x - {offset}) % {period} - cohort, {period}), "
        f"arrayFilter(x -> x >= entry AND x < cohort + {period * periods}, ts))), -1))"
    )
    return (
        select(cohort.label("cohort"), k.label("k"), func.count().label("users"))
        .select_from(per_user)
        .group_by(literal_column("cohort"), literal_column("k"))
    )


def _not_null(condition: ColumnElement) -> ColumnElement:
    """A condition as ``UInt8``, NULL as false: a JSON path of 18.x (``visitParam*``)
    makes it ``Nullable``, and ``-If`` aggregates then give ``Nullable`` results that
    ``arrayFilter`` refuses."""
    return func.ifNull(condition, literal(0))


# -- erasing -------------------------------------------------------------------------------
#: Seconds between looks at ``system.mutations`` while a delete runs.
MUTATION_POLL = 0.2


class ClickHouseEraser(Eraser):
    """Erase with the native client: mutations are not SQLAlchemy statements. Text
    columns are ``String``: ``''`` where absent, never NULL."""

    def __init__(self, url: str, layout: ClusterLayout | None = None) -> None:
        self.url = url
        self.layout = layout
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = client_for(self.url, self.layout)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()

    def user_events(self, user_id: str) -> list[UserEvents]:
        rows = self.client.execute(
            "SELECT source, anonymous_id, if(type = 'alias', previous_id, '') AS aliased, "
            "count() FROM events WHERE user_id = %(user)s "
            "GROUP BY source, anonymous_id, aliased",
            {"user": user_id},
        )
        return [
            UserEvents(source, anonymous or None, aliased or None, n)
            for source, anonymous, aliased, n in rows
        ]

    def anonymous_events(self, user_id: str, ids: Sequence[str]) -> list[tuple[str, str, int]]:
        return self.client.execute(
            "SELECT anonymous_id, source, count() FROM events WHERE user_id = '' "
            "AND anonymous_id IN %(ids)s AND previous_id != %(user)s "
            "GROUP BY anonymous_id, source",
            {"ids": tuple(ids), "user": user_id},
        )

    def linked_events(self, user_id: str, other: str) -> dict[str, int]:
        rows = self.client.execute(
            "SELECT source, count() FROM events WHERE (user_id = %(other)s "
            "OR previous_id = %(other)s OR (user_id = '' AND anonymous_id = %(other)s)) "
            "AND user_id != %(user)s AND previous_id != %(user)s GROUP BY source",
            {"other": other, "user": user_id},
        )
        return {source: n for source, n in rows}

    def _mark_days(self, where: str, params: dict[str, Any]) -> bool:
        """Mark the days of the rows matching ``where`` changed, in the rollup's
        ``events_dirty``; False: the database keeps no rollup."""
        from clickhouse_driver.errors import ServerException

        try:
            self.client.execute(mark_days_sql(where), params)
        except ServerException as exc:
            if exc.code != UNKNOWN_TABLE:
                raise
            return False
        return True

    def delete(
        self, user_ids: set[str], anonymous_ids: set[str], *, dry_run: bool, wait: float
    ) -> Erased:
        where = "user_id IN %(users)s OR previous_id IN %(users)s"
        params: dict[str, Any] = {"users": tuple(sorted(user_ids))}
        if anonymous_ids:
            where += " OR (user_id = '' AND anonymous_id IN %(anonymous)s)"
            params["anonymous"] = tuple(sorted(anonymous_ids))
        client = self.client
        count = client.execute(f"SELECT count() FROM events WHERE {where}", params)[0][0]
        result = Erased(status=WOULD_DELETE, events=count)
        if dry_run or not count:
            result.status = WOULD_DELETE if dry_run else DELETED
            return result
        layout = self.layout
        # The rollup's days of these rows, marked changed before the mutation (readers
        # count them from events at once) and after it is created (the compactor
        # recounts them once it is done: sinks/clickhouse_rollup.py).
        marked = self._mark_days(where, params)
        if layout is None:
            client.execute(f"ALTER TABLE events DELETE WHERE {where}", params)
            mutations = (
                "SELECT count() FROM system.mutations WHERE database = currentDatabase() "
                "AND table = 'events' AND is_done = 0"
            )
        else:
            # A Distributed table has no rows to mutate: each server's local table
            # (returns once every server has queued its mutation).
            client.execute(layout.alter("events", f"DELETE WHERE {where}"), params)
            mutations = (
                f"SELECT count() FROM {layout.everywhere('mutations')} WHERE database = "
                f"{quote_string(layout.database)} AND table = "
                f"{quote_string(layout.local('events'))} AND is_done = 0"
            )
        if marked:
            self._mark_days(where, params)
        result.status = PENDING
        deadline = time.monotonic() + wait
        while True:
            running = client.execute(mutations)[0][0]
            if not running:
                result.status = DELETED
                return result
            if time.monotonic() >= deadline:
                result.detail = (
                    "the mutation is still running: the rows disappear when it finishes "
                    "(see system.mutations)"
                )
                return result
            time.sleep(MUTATION_POLL)


# -- the admin tables ----------------------------------------------------------------------
SUPPRESSIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS suppressions (kind String, id String, reason String, "
    "suppressed_at DateTime('UTC'), active UInt8, version UInt64) "
    "ENGINE = ReplacingMergeTree(version) ORDER BY (kind, id)"
)
REVOKED_SESSIONS_DDL = (
    f"CREATE TABLE IF NOT EXISTS {REVOKED_SESSIONS} (sid String, expires_at DateTime('UTC')) "
    "ENGINE = MergeTree ORDER BY sid"
)
CONFIRMATIONS_USED_DDL = (
    "CREATE TABLE IF NOT EXISTS confirmations_used (nonce String, claim String, "
    "expires_at DateTime('UTC'), used_at DateTime('UTC') DEFAULT now()) "
    "ENGINE = MergeTree PARTITION BY toYYYYMMDD(expires_at) ORDER BY (nonce, used_at, claim)"
)
DDL = {
    SUPPRESSIONS: SUPPRESSIONS_DDL,
    REVOKED_SESSIONS: REVOKED_SESSIONS_DDL,
    CONFIRMATIONS_USED: CONFIRMATIONS_USED_DDL,
}
ACTIVE_SUPPRESSIONS = (
    "SELECT kind, id, reason, suppressed_at FROM suppressions FINAL WHERE active = 1 "
    "ORDER BY suppressed_at DESC, kind, id"
)
#: Seconds a confirmation's use waits between recording its nonce and reading who won.
CONFIRMATION_SETTLE = 1.1


class ClickHouseAdminTables(AdminTables):
    """The admin tables, each exchange on a native client of its own."""

    def __init__(self, url: str, layout: ClusterLayout | None = None) -> None:
        self.url = url
        self.layout = layout
        #: Tables seen or created: they are never dropped, so no need to ask again.
        self._seen: set[str] = set()

    @contextmanager
    def client(self) -> Iterator[Any]:
        """A native client for one short exchange, disconnected after it."""
        client = client_for(self.url, self.layout)
        try:
            yield client
        finally:
            client.disconnect()

    def exists(self, table: str) -> bool:
        if table in self._seen:
            return True
        from clickhouse_driver.errors import ServerException

        query = (
            "SELECT count() FROM system.tables WHERE database = currentDatabase() "
            "AND name = %(name)s"
        )
        try:
            with self.client() as client:
                if client.execute(query, {"name": table})[0][0]:
                    self._seen.add(table)
        except ServerException as exc:
            if exc.code != UNKNOWN_DATABASE:
                raise
        return table in self._seen

    def ensure(self, table: str) -> None:
        if table in self._seen:
            return
        statements = [DDL[table]] if self.layout is None else self.layout.create(DDL[table])
        with self.client() as client:
            for statement in statements:
                client.execute(statement)
        self._seen.add(table)

    # -- suppressions
    def _active(self, kind: str, ident: str) -> bool:
        with self.client() as client:
            rows = client.execute(
                "SELECT active FROM suppressions FINAL WHERE kind = %(kind)s AND id = %(id)s",
                {"kind": kind, "id": ident},
            )
        return bool(rows and rows[0][0])

    def _record(self, kind: str, ident: str, reason: str, at: datetime, *, active: int) -> None:
        with self.client() as client:
            client.execute(
                "INSERT INTO suppressions (kind, id, reason, suppressed_at, active, version) "
                "VALUES",
                [(kind, ident, reason, at.astimezone(UTC), active, time.time_ns())],
            )

    def suppress(self, kind: str, ident: str, reason: str, at: datetime) -> bool:
        if self._active(kind, ident):
            return False
        self._record(kind, ident, reason, at, active=1)
        return True

    def unsuppress(self, kind: str, ident: str, at: datetime) -> bool:
        if not self._active(kind, ident):
            return False
        self._record(kind, ident, "", at, active=0)
        return True

    def suppressions(self) -> list[tuple[str, str, str, datetime]]:
        with self.client() as client:
            return [tuple(row) for row in client.execute(ACTIVE_SUPPRESSIONS)]

    def suppressed_ids(self) -> list[tuple[str, str]]:
        with self.client() as client:
            return client.execute("SELECT kind, id FROM suppressions FINAL WHERE active = 1")

    # -- signed-out sessions
    def revoke_session(self, sid: str, expires_at: datetime) -> None:
        with self.client() as client:
            client.execute(
                f"INSERT INTO {REVOKED_SESSIONS} (sid, expires_at) VALUES",
                [(sid, expires_at.astimezone(UTC))],
            )

    def revoked_sessions(self) -> dict[str, float]:
        with self.client() as client:
            rows = client.execute(
                f"SELECT sid, toUInt32(expires_at) FROM {REVOKED_SESSIONS} WHERE expires_at > now()"
            )
        return {sid: float(at) for sid, at in rows}

    # -- used confirmation tokens
    def use_confirmation(self, nonce: str, expires_at: datetime) -> bool:
        claim = secrets.token_hex(16)
        with self.client() as client:
            client.execute(
                "INSERT INTO confirmations_used (nonce, claim, expires_at) VALUES",
                [(nonce, claim, expires_at.astimezone(UTC))],
            )
            time.sleep(CONFIRMATION_SETTLE)
            rows = client.execute(
                "SELECT claim FROM confirmations_used WHERE nonce = %(nonce)s "
                "ORDER BY used_at, claim LIMIT 1",
                {"nonce": nonce},
            )
            self._drop_old_partitions(client)
        return bool(rows) and rows[0][0] == claim

    def _drop_old_partitions(self, client: Any) -> None:
        """Days whose every token expired before yesterday began (on a cluster: of the
        local tables of every server)."""
        cutoff = int((datetime.now(UTC) - timedelta(days=1)).strftime("%Y%m%d"))
        layout = self.layout
        parts, where = parts_of(layout, CONFIRMATIONS_USED)
        partitions = client.execute(f"SELECT DISTINCT partition FROM {parts} WHERE {where}")
        for (partition,) in partitions:
            if partition.isdigit() and int(partition) < cutoff:
                action = f"DROP PARTITION {int(partition)}"
                if layout is None:
                    client.execute(f"ALTER TABLE {CONFIRMATIONS_USED} {action}")
                else:
                    client.execute(layout.alter(CONFIRMATIONS_USED, action))
