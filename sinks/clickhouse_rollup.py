"""The hourly rollup on ClickHouse: ``events_hourly`` kept exactly equal to what
``events FINAL`` counts, through redeliveries, erasure and concurrent writers.

Why not a plain materialized view: a view counts what is inserted, and a redelivered
copy is inserted like any event, so it would count the copies that ``FINAL`` reads as
one. Instead, ten objects (created by ``eventrouter migrate``, :func:`ddl`):

- ``events_dirty`` (``day``, ``mark``): a ``ReplacingMergeTree(mark)`` ordered by
  ``day``, written by the materialized view ``events_dirty_mv`` on ``events``: each
  inserted block writes, per UTC day of its ``timestamp``, the server's ``now()``
  (evaluated after the block's part is visible). "This day changed at ``mark``." The
  unit is the *day* because the sorting key holds ``toDate(timestamp)``: all copies of
  one event share a day (they may not share an hour, an SDK's retry gets another
  skew-corrected timestamp), so recounting a day from ``events FINAL`` is exact whatever
  copy wins. The eraser marks the days of the rows it deletes (:func:`mark_days_sql`).
- ``events_compacted`` (``day``, ``through``): a ``ReplacingMergeTree(through)``; the
  compactor's record that the day's counts in ``events_hourly`` hold every change
  marked before ``through``.
- ``events_hourly`` (``hour``, ``type``, ``event``, ``source``, ``n_events``,
  ``version``; the count is not named ``n`` as on the other stores: ClickHouse would
  read ``sum(n) AS n`` as an aggregate of itself): a
  ``ReplacingMergeTree(version)``: each compaction writes every key of the day with
  ``version = through``, and readers take the rows of the day's latest recorded
  ``through`` alone (:data:`RECORDED`), with ``FINAL`` (two runs of the same second
  write the same version). A key that vanished from a day (erased) is simply not in
  the newest version; the rows of a run that failed before recording are never read
  (the day stays dirty until a later run records a later version).

- ``events_users`` (``day``, ``users``, ``n_users``, ``version``): a
  ``ReplacingMergeTree(version)`` written by the same compaction with the same
  ``version``: the day's distinct users (``user_id``, else ``anonymous_id``) as a
  ``uniqExact`` state of their ``sipHash64`` (the set of 64-bit hashes) and their number
  (``uniqExact`` of the text, as a scan counts). Daily active users read ``n_users``;
  weekly and monthly ones merge the days' states (``uniqExactMerge``: the union of the
  sets), so a user active on several days counts once
  (``ClickHouseDialect.users_statement``). Read in the same time whatever the events:
  it grows with the users per day, not with the events. 64-bit hashes, not the 128-bit
  ones ``uniqExact`` keeps of a ``String``: merging 30 days' sets took a third of the
  time (45 against 130 ms on 1,000,000 events), and two of N users share a hash with a
  chance of about N² / 2⁶⁵ (10,000,000 users in a month: 3 in a million), when a week or
  a month would count one user fewer.

- ``events_hourly_paths`` (``path``, ``hour``, ``type``, ``event``, ``source``,
  ``value``, ``n_events``, ``version``): the sink's ``rollup_paths`` (a few JSON paths,
  ``properties.plan``), counted per hour and value by the same compaction with the same
  ``version``, ordered by ``(path, hour, ...)``: a breakdown by one path reads its own
  rows. ``value`` is ``''`` for no value (a missing key or a JSON null) and ``'v'`` and
  the text otherwise, the text exactly what ``ClickHouseDialect.json_text`` gives for
  the path (18.16 allows no ``Nullable`` in a sorting key; SQLite keeps the same
  encoding). Beside it ``events_paths_compacted`` (``day``, ``path``, ``version``): the
  compaction's record that it wrote that path's rows of the day with that version.

- ``events_users_paths`` (``path``, ``day``, ``value``, ``users``, ``version``): with
  ``rollup_paths``, each day's distinct users per path and value (the value encoded as
  in ``events_hourly_paths``; the users a ``uniqExact`` state of their ``sipHash64``, as
  in ``events_users``), written by the same compaction with the same ``version`` from
  ``events`` without ``FINAL`` (as the scan it replaces: a user counts for each value
  their events carry). The Active users page's top values of a kept path merge the
  states of the range's days (``ClickHouseDialect.users_per_value``). Optional: a
  compactor writes it when the table exists (``migrate`` creates it), and a day whose
  latest compaction had events but wrote no row of a configured path
  (:func:`users_paths_missing_sql`: compacted before the table existed) is recounted.

- ``events_user_days`` (``day``, ``event``, ``user_hash``, ``first``, ``last``,
  ``version``): each day's users per event name (``sipHash64`` of the user's key) with
  the second of their first and last event of that name, written by the same
  compaction with the same ``version`` from ``events`` without ``FINAL`` (as retention
  read ``events``: every copy's time counts), ordered by ``(day, event, user_hash)``;
  beside it ``events_user_days_compacted`` (``day``, ``version``), the compaction's
  record that it wrote the day. Retention reads the clean whole days of its range
  whose latest compaction has that record from here, each user's groups instead of
  their events, grouped by an 8-byte key (``ClickHouseDialect.retention_days``); a day
  compacted without it (before the table existed) is recounted
  (:func:`user_days_sql` with ``missing``) and read from ``events`` until then.

A day is **clean** when its latest ``through`` is later than its latest ``mark``; the
query layer reads clean days' whole hours from ``events_hourly`` and the rest (dirty
days, and the partial hours at both ends of a range) from ``events FINAL``
(:func:`dirty_days_sql`, ``ClickHouseDialect.rollup_gaps``). A path's day is read from
``events_hourly_paths`` when the day is clean *and* its latest ``through`` has that
path's record in ``events_paths_compacted`` (:func:`paths_missing_sql`); otherwise it is
a gap of that path, read from ``events``. The reader needs no knowledge of the sink's
configuration: a path taken out of ``rollup_paths`` is not recorded for the days
compacted after that (they become its gaps), and a path added is missing from every
compacted day until the next compaction counts them.

**The compactor** (:func:`compact`; the sink runs it every ``rollup_interval``):

1. ``through`` = the server's ``now()`` minus :data:`CLOCK_MARGIN` (clock skew between
   the servers of a cluster), and no later than the creation of any mutation of
   ``events`` still running (a delete whose rows are not gone yet);
2. the dirty days (and those a compactor of an earlier release recorded without their
   users, :func:`users_missing_sql`, and those whose latest compaction counted not every
   configured path, :func:`paths_missing_sql`: a path just added): each recounted from
   ``events FINAL WHERE toDate(timestamp) = day`` (a key prefix: it reads that day
   alone), written with ``version = through``, its distinct users from ``events`` (no
   ``FINAL``: copies of an event carry one user) into ``events_users`` with the same
   version, every configured path's counts (one more read of the day for all of them)
   into ``events_hourly_paths`` and ``(day, path, through)`` into
   ``events_paths_compacted``, its users' first and last second per event name into
   ``events_user_days`` and ``(day, through)`` into ``events_user_days_compacted``
   (when the tables exist), then ``(day, through)`` recorded.

It is idempotent and safe from several processes at once: every count it writes holds
every insert whose part was visible before ``through`` (a mark is evaluated after its
part is visible, and ``through`` is at or before the compactor's reads), and an insert
that lands while it runs carries a mark at or after ``through``: its day stays dirty,
and is read from ``events`` until the next run recounts it. Two runs that record the
same day write the same counts for everything marked before their ``through``; the
later ``through`` wins, and readers take its rows alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    DateTime,
    MetaData,
    String,
    Table,
    func,
    literal,
)
from sqlalchemy.types import NullType

from eventrouter.sinks.clickhouse_cluster import ClusterLayout, quote_string
from eventrouter.store import rollup

log = logging.getLogger("eventrouter.sinks.clickhouse")

DIRTY = "events_dirty"
COMPACTED = "events_compacted"
HOURLY = "events_hourly"
USERS = "events_users"
PATHS = "events_hourly_paths"
PATHS_COMPACTED = "events_paths_compacted"
USERS_PATHS = "events_users_paths"
USER_DAYS = "events_user_days"
USER_DAYS_COMPACTED = "events_user_days_compacted"


def latest_versions_sql(where: str = "") -> str:
    """Each day (of ``events_compacted``, ``where`` a ``WHERE`` clause or empty) with its
    latest recorded compaction's ``through`` as the ``version`` its rows carry
    (seconds): ``SELECT day, v``."""
    return f"SELECT day, toUInt64(toUInt32(max(through))) AS v FROM {COMPACTED}{where} GROUP BY day"


def _recorded(day: str, version: str) -> str:
    """The condition that keeps a rollup table's rows of each day's latest recorded
    compaction (its ``day`` and ``version`` expressions)."""
    return f"({day}, {version}) IN ({latest_versions_sql()})"


#: The condition on ``events_hourly`` that keeps the rows of each day's latest recorded
#: compaction (``version`` is that compaction's ``through``, in seconds).
RECORDED = _recorded(f"toDate({HOURLY}.hour)", f"{HOURLY}.version")
#: The same condition on ``events_users``.
USERS_RECORDED = _recorded("day", "version")
#: The same condition on ``events_hourly_paths`` (a day whose latest compaction did not
#: count a path is that path's gap, ``ClickHouseDialect.rollup_gaps``, and not read here).
PATHS_RECORDED = _recorded(f"toDate({PATHS}.hour)", f"{PATHS}.version")
#: The same condition on ``events_users_paths``.
USERS_PATHS_RECORDED = _recorded("day", "version")
#: The same condition on ``events_user_days``.
USER_DAYS_RECORDED = _recorded(f"{USER_DAYS}.day", f"{USER_DAYS}.version")
#: The materialized view that marks the days of every insert into ``events``.
MARKER = "events_dirty_mv"
#: The rollup's tables, in the order they are created; a rollup holds them all (a
#: compactor writes :data:`USERS_PATHS` and :data:`USER_DAYS`, created after them, when
#: they exist).
TABLES = (DIRTY, COMPACTED, HOURLY, USERS, PATHS, PATHS_COMPACTED)
#: Seconds ``through`` stays behind the server's clock: the servers of a cluster mark
#: with their own clocks.
CLOCK_MARGIN = 5


def _counts_table(name: str, generic: Table) -> Table:
    """``generic`` (a rollup table of :mod:`eventrouter.store.rollup`) as ClickHouse
    keeps it under ``name``: the same columns, NOT NULL, the count under ``n_events``
    (read as ``n``)."""
    return Table(
        name,
        MetaData(),
        *(
            Column(column.name, column.type, nullable=False)
            for column in generic.columns
            if column.name != "n"
        ),
        Column("n_events", BigInteger, nullable=False, key="n"),
    )


#: ``events_hourly`` as the query layer reads it (:data:`eventrouter.store.rollup.events_hourly`).
hourly_table = _counts_table(HOURLY, rollup.events_hourly)
#: ``events_hourly_paths`` as the query layer reads it
#: (:data:`eventrouter.store.rollup.events_hourly_paths`; ``value`` encoded, see the
#: module's doc).
hourly_paths_table = _counts_table(PATHS, rollup.events_hourly_paths)
#: ``events_users`` for the query layer (which asks whether it exists); read by SQL
#: of its own (``ClickHouseDialect.users_statement``).
users_table = Table(USERS, MetaData(), Column("day", Date), Column("n_users", BigInteger))
#: The sorting key item that makes a day the unit of change (the default key's first).
DAY_KEY = "toDate(timestamp)"
#: Seconds in a day.
DAY = 86400

DIRTY_DDL = (
    f"CREATE TABLE IF NOT EXISTS {DIRTY} (day Date, mark DateTime('UTC')) "
    "ENGINE = ReplacingMergeTree(mark) ORDER BY day"
)
COMPACTED_DDL = (
    f"CREATE TABLE IF NOT EXISTS {COMPACTED} (day Date, through DateTime('UTC')) "
    "ENGINE = ReplacingMergeTree(through) ORDER BY day"
)
HOURLY_DDL = (
    f"CREATE TABLE IF NOT EXISTS {HOURLY} (hour DateTime('UTC'), type String, event String, "
    "source String, n_events UInt64, version UInt64) ENGINE = ReplacingMergeTree(version) "
    "PARTITION BY toYYYYMM(hour) ORDER BY (hour, type, event, source)"
)
USERS_DDL = (
    f"CREATE TABLE IF NOT EXISTS {USERS} (day Date, users AggregateFunction(uniqExact, UInt64), "
    "n_users UInt64, version UInt64) ENGINE = ReplacingMergeTree(version) "
    "PARTITION BY toYYYYMM(day) ORDER BY day"
)
PATHS_DDL = (
    f"CREATE TABLE IF NOT EXISTS {PATHS} (path String, hour DateTime('UTC'), type String, "
    "event String, source String, value String, n_events UInt64, version UInt64) "
    "ENGINE = ReplacingMergeTree(version) PARTITION BY toYYYYMM(hour) "
    "ORDER BY (path, hour, type, event, source, value)"
)
PATHS_COMPACTED_DDL = (
    f"CREATE TABLE IF NOT EXISTS {PATHS_COMPACTED} (day Date, path String, version UInt64) "
    "ENGINE = ReplacingMergeTree(version) ORDER BY (day, path)"
)
USERS_PATHS_DDL = (
    f"CREATE TABLE IF NOT EXISTS {USERS_PATHS} (path String, day Date, value String, "
    "users AggregateFunction(uniqExact, UInt64), version UInt64) "
    "ENGINE = ReplacingMergeTree(version) PARTITION BY toYYYYMM(day) ORDER BY (path, day, value)"
)
USER_DAYS_DDL = (
    f"CREATE TABLE IF NOT EXISTS {USER_DAYS} (day Date, event String, user_hash UInt64, "
    "first DateTime('UTC'), last DateTime('UTC'), version UInt64) "
    "ENGINE = ReplacingMergeTree(version) PARTITION BY toYYYYMM(day) "
    "ORDER BY (day, event, user_hash)"
)
USER_DAYS_COMPACTED_DDL = (
    f"CREATE TABLE IF NOT EXISTS {USER_DAYS_COMPACTED} (day Date, version UInt64) "
    "ENGINE = ReplacingMergeTree(version) ORDER BY day"
)
#: ``events_user_days`` for the query layer (``ClickHouseDialect.retention_days``).
user_days_table = Table(
    USER_DAYS,
    MetaData(),
    Column("day", Date),
    Column("event", String),
    Column("user_hash", BigInteger),
    Column("first", DateTime),
    Column("last", DateTime),
    Column("version", BigInteger),
)
#: ``events_users_paths`` for the query layer; its ``users`` states are only merged.
users_paths_table = Table(
    USERS_PATHS,
    MetaData(),
    Column("path", String),
    Column("day", Date),
    Column("value", String),
    Column("users", NullType),
    Column("version", BigInteger),
)
#: Who an ``events`` row is from, ``''`` for nobody (as ``ClickHouseDialect.user_key``).
USER_KEY = "if(user_id != '', user_id, anonymous_id)"
#: One day's distinct users, written by a compaction.
USERS_SQL = (
    f"INSERT INTO {USERS} (day, users, n_users, version) SELECT toDate(%(day)s), "
    "uniqExactState(sipHash64(u)), uniqExact(u), toUInt64(%(version)s) FROM (SELECT "
    f"{USER_KEY} AS u FROM events WHERE toDate(timestamp) = toDate(%(day)s)) WHERE u != ''"
)
#: One day's users per event name, written by a compaction (no ``FINAL``, as retention
#: read ``events``: every copy's time counts).
USER_DAYS_SQL = (
    f"INSERT INTO {USER_DAYS} (day, event, user_hash, first, last, version) SELECT "
    "toDate(%(day)s), event, h, min(t), max(t), toUInt64(%(version)s) FROM (SELECT event, "
    f"sipHash64({USER_KEY}) AS h, toDateTime(timestamp) AS t FROM events WHERE "
    f"toDate(timestamp) = toDate(%(day)s) AND {USER_KEY} != '') GROUP BY event, h"
)
#: The view's query (the source table named by :func:`marker_ddl`).
MARKER_SELECT = "SELECT toDate(timestamp) AS day, max(now()) AS mark FROM {source} GROUP BY day"


def ttl_clause(column: str, seconds: float | None) -> str:
    """The rollup table's ``TTL``: the same retention as ``events`` (None: none)."""
    if not seconds:
        return ""
    return f" TTL toDateTime({column}) + INTERVAL {int(seconds)} SECOND"


def ddl(ttl: float | None = None) -> list[str]:
    """The one-server ``CREATE TABLE`` statements of the rollup's tables (the view
    apart: :func:`marker_ddl`)."""
    return [
        DIRTY_DDL + ttl_clause("day", ttl),
        COMPACTED_DDL + ttl_clause("day", ttl),
        HOURLY_DDL + ttl_clause("hour", ttl),
        USERS_DDL + ttl_clause("day", ttl),
        PATHS_DDL + ttl_clause("hour", ttl),
        PATHS_COMPACTED_DDL + ttl_clause("day", ttl),
        USERS_PATHS_DDL + ttl_clause("day", ttl),
        USER_DAYS_DDL + ttl_clause("day", ttl),
        USER_DAYS_COMPACTED_DDL + ttl_clause("day", ttl),
    ]


def marker_ddl(layout: ClusterLayout | None = None) -> str:
    """``CREATE MATERIALIZED VIEW events_dirty_mv``: on one server on ``events``, on a
    cluster on each server's ``events_local`` into its ``events_dirty_local``."""
    if layout is None:
        select = MARKER_SELECT.format(source="events")
        return f"CREATE MATERIALIZED VIEW IF NOT EXISTS {MARKER} TO {DIRTY} AS {select}"
    select = MARKER_SELECT.format(source=layout.qualified(layout.local("events")))
    return (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {layout.qualified(MARKER)} "
        f"{layout.on_cluster} TO {layout.qualified(layout.local(DIRTY))} AS {select}"
    )


def keeps_days(order_by: str, split_keys: Any) -> bool:
    """Whether a sorting key lets the rollup recount by day (its copies share a day)."""
    return any(item.replace(" ", "") == DAY_KEY for item in split_keys(order_by))


#: Every day marked before this insert, as changed now (the backfill of ``migrate``).
BACKFILL_SQL = (
    f"INSERT INTO {DIRTY} (day, mark) SELECT DISTINCT toDate(timestamp), now() FROM events"
)


def _day_bounds(first: date | None, last: date | None) -> list[str]:
    """``day`` from ``first`` to ``last`` (inclusive; None: unbounded), as conditions."""
    bounds = []
    if first is not None:
        bounds.append(f"day >= toDate({quote_string(first.isoformat())})")
    if last is not None:
        bounds.append(f"day <= toDate({quote_string(last.isoformat())})")
    return bounds


def dirty_days_sql(first: date | None = None, last: date | None = None) -> str:
    """The days (``first`` to ``last``, inclusive; None: unbounded) whose latest mark is
    not older than their latest compaction, oldest first."""
    bounds = _day_bounds(first, last)
    where = f" WHERE {' AND '.join(bounds)}" if bounds else ""
    return (
        f"SELECT d.day FROM (SELECT day, max(mark) AS m FROM {DIRTY}{where} GROUP BY day) AS d "
        f"ANY LEFT JOIN (SELECT day, max(through) AS t FROM {COMPACTED}{where} GROUP BY day) "
        "AS c USING day WHERE m >= t ORDER BY day"
    )


def users_missing_sql(first: date | None = None) -> str:
    """The days (from ``first``; None: all) whose latest recorded compaction wrote no
    ``events_users`` row: recorded by a compactor of a release before ``events_users``
    (a process not upgraded yet). Read from ``events`` like the dirty days."""
    where = f" WHERE day >= toDate({quote_string(first.isoformat())})" if first else ""
    return (
        f"SELECT d.day FROM ({latest_versions_sql(where)}) AS d WHERE (d.day, d.v) NOT IN "
        f"(SELECT day, version FROM {USERS}{where})"
    )


def paths_array(paths: Sequence[str]) -> str:
    """``paths`` as a ClickHouse array of quoted literals, for :func:`paths_missing_sql`
    run by the native client (the SQL goes through no other parser)."""
    if not paths:
        raise ValueError("paths_array: no path")
    return "[" + ", ".join(map(quote_string, paths)) + "]"


def paths_missing_sql(paths: str, first: date | None = None, last: date | None = None) -> str:
    """The days (``first`` to ``last``, inclusive; None: unbounded) whose latest recorded
    compaction did not count every path of ``paths`` (an SQL array: :func:`paths_array`,
    or a bound parameter's placeholder) into ``events_hourly_paths`` (no
    ``events_paths_compacted`` record of that day, path and version): the compactor
    recounts them (a path just configured), and a reader of one path reads them from
    ``events`` (``ClickHouseDialect.rollup_gaps``)."""
    bounds = _day_bounds(first, last)
    where = f" WHERE {' AND '.join(bounds)}" if bounds else ""
    recorded = " AND ".join([*bounds, f"has({paths}, path)"])
    return (
        f"SELECT DISTINCT d.day FROM ({latest_versions_sql(where)}) AS d ARRAY JOIN {paths} AS p "
        f"WHERE (d.day, p, d.v) NOT IN (SELECT day, path, version FROM {PATHS_COMPACTED} "
        f"WHERE {recorded}) ORDER BY d.day"
    )


def users_paths_missing_sql(paths: str) -> str:
    """The days whose latest recorded compaction counted events (``events_hourly`` holds
    rows of its version) but wrote no ``events_users_paths`` row of some path of
    ``paths`` (an SQL array, :func:`paths_array`) with its version: compacted before the
    table existed, or by a process without the path. A day without events writes no
    row, and is not listed (it would be, at every compaction)."""
    return (
        f"SELECT DISTINCT d.day FROM ({latest_versions_sql()}) AS d ARRAY JOIN {paths} AS p "
        f"WHERE (d.day, d.v) IN (SELECT toDate(hour), version FROM {HOURLY}) "
        f"AND (d.day, p, d.v) NOT IN (SELECT day, path, version FROM {USERS_PATHS} "
        f"WHERE has({paths}, path)) ORDER BY d.day"
    )


def user_days_sql(
    first: date | None = None, last: date | None = None, *, missing: bool = False
) -> str:
    """The days (``first`` to ``last``, inclusive; None: unbounded) whose latest recorded
    compaction wrote ``events_user_days`` (an ``events_user_days_compacted`` record of
    its version), oldest first; with ``missing``, those whose latest compaction did not
    (compacted before the table existed: the compactor recounts them, and retention
    reads them from ``events``)."""
    bounds = _day_bounds(first, last)
    where = f" WHERE {' AND '.join(bounds)}" if bounds else ""
    operator = "NOT IN" if missing else "IN"
    return (
        f"SELECT d.day FROM ({latest_versions_sql(where)}) AS d WHERE (d.day, d.v) {operator} "
        f"(SELECT day, version FROM {USER_DAYS_COMPACTED}{where}) ORDER BY d.day"
    )


def mark_days_sql(where: str) -> str:
    """Mark the days of the ``events`` rows matching ``where`` as changed now."""
    return (
        f"INSERT INTO {DIRTY} (day, mark) SELECT DISTINCT toDate(timestamp), now() "
        f"FROM events WHERE {where}"
    )


def _holds(client: Any, names: Sequence[str]) -> bool:
    """Whether the client's database holds every table of ``names``."""
    rows = client.execute(
        "SELECT count() FROM system.tables WHERE database = currentDatabase() "
        f"AND name IN ({', '.join(map(quote_string, names))})"
    )
    return rows[0][0] == len(names)


def has_rollup(client: Any) -> bool:
    """Whether the database holds the rollup's tables (``migrate`` created them)."""
    return _holds(client, TABLES)


def _through(client: Any, layout: ClusterLayout | None, margin: int) -> int:
    """The compaction's ``through``, seconds since the epoch (see the module's doc)."""
    [(now,)] = client.execute("SELECT toUInt32(now())")
    if layout is None:
        mutations = (
            "SELECT min(toUInt32(create_time)), count() FROM system.mutations "
            "WHERE database = currentDatabase() AND table = 'events' AND is_done = 0"
        )
    else:
        mutations = (
            f"SELECT min(toUInt32(create_time)), count() FROM {layout.everywhere('mutations')} "
            f"WHERE database = {quote_string(layout.database)} AND table = "
            f"{quote_string(layout.local('events'))} AND is_done = 0"
        )
    [(oldest, running)] = client.execute(mutations)
    through = int(now) - margin
    if running:
        through = min(through, int(oldest))
    return through


def has_users_paths(client: Any) -> bool:
    """Whether the database holds ``events_users_paths`` (a ``migrate`` of this release
    created it)."""
    return _holds(client, [USERS_PATHS])


def has_user_days(client: Any) -> bool:
    """Whether the database holds ``events_user_days`` and its record (a ``migrate`` of
    this release created them)."""
    return _holds(client, [USER_DAYS, USER_DAYS_COMPACTED])


def paths_counts_sql(
    client: Any, paths: Sequence[str], users: bool = False
) -> tuple[str, str | None, dict[str, Any]]:
    """The statement that writes one day's counts of every path of ``paths`` (validated
    ``rollup_paths``) into ``events_hourly_paths``, and its parameters (``day`` and
    ``version`` to add): one read of the day from ``events FINAL``, each row joined to
    its ``(path, value)`` pairs. Each value is ``ClickHouseDialect.json_text``'s
    expression for the path on this server (``JSONExtract*``, or ``visitParamExtract*``
    before 19.x), compiled with every path and segment a bound parameter, and encoded
    (``''`` no value, ``'v' || text``). An ``INSERT ... SELECT``: the values never leave
    the server (nor are decoded on the way). With ``users``, also the statement that
    writes the day's distinct users per path and value into ``events_users_paths`` (no
    ``FINAL``; else None), with the same parameters."""
    from clickhouse_sqlalchemy.drivers.native.base import dialect

    from eventrouter.sinks.clickhouse_store import JSON_EXTRACT_SQL, json_text_of
    from eventrouter.store.schema import events

    [(functions,)] = client.execute(JSON_EXTRACT_SQL)
    pairs = []
    for path, (column, segments) in zip(paths, rollup.check_rollup_paths(list(paths)), strict=True):
        text = json_text_of(events.c[column], segments, json_extract=bool(functions))
        value = func.ifNull(func.concat(literal("v"), text), literal(""))
        pairs.append(func.tuple(literal(path), value))
    compiled = func.array(*pairs).compile(dialect=dialect())
    sql = (
        f"INSERT INTO {PATHS} (path, hour, type, event, source, value, n_events, version) "
        "SELECT pv.1 AS path, toStartOfHour(toDateTime(timestamp)) AS hour, type, event, "
        "source, pv.2 AS value, count(), toUInt64(%(version)s) FROM events FINAL "
        f"ARRAY JOIN {compiled} AS pv WHERE toDate(timestamp) = toDate(%(day)s) "
        "GROUP BY path, hour, type, event, source, value"
    )
    users_sql = None
    if users:
        users_sql = (
            f"INSERT INTO {USERS_PATHS} (path, day, value, users, version) SELECT pv.1 AS path, "
            "toDate(%(day)s), pv.2 AS value, uniqExactState(sipHash64(u)), "
            f"toUInt64(%(version)s) FROM (SELECT {USER_KEY} AS u, {compiled} AS pvs "
            "FROM events WHERE toDate(timestamp) = toDate(%(day)s)) ARRAY JOIN pvs AS pv "
            "WHERE u != '' GROUP BY path, value"
        )
    return sql, users_sql, dict(compiled.params)


def compact(
    client: Any,
    layout: ClusterLayout | None = None,
    days: Sequence[date] | None = None,
    *,
    margin: int = CLOCK_MARGIN,
    paths: Sequence[str] = (),
) -> list[date]:
    """Recount the dirty days (or ``days``) from ``events FINAL`` into ``events_hourly``,
    and into ``events_hourly_paths`` the counts of ``paths`` (the sink's validated
    ``rollup_paths``), and record them compacted; the days recounted. Without ``days``,
    the days whose latest compaction counted not every path of ``paths`` too (each such
    day recounted once, for every path). See the module's doc (``margin``:
    :data:`CLOCK_MARGIN`; 0 is safe on one server)."""
    through = _through(client, layout, margin)
    users = bool(paths) and has_users_paths(client)
    user_days = has_user_days(client)
    if days is None:
        # And the days a compactor of an earlier release recorded without their users.
        changed = {row[0] for row in client.execute(dirty_days_sql())}
        changed |= {row[0] for row in client.execute(users_missing_sql())}
        if paths:
            # And those counted before a path was configured (or by a process without it).
            changed |= {row[0] for row in client.execute(paths_missing_sql(paths_array(paths)))}
        if users:
            # And those whose users per value a compactor before the table did not count.
            missing = users_paths_missing_sql(paths_array(paths))
            changed |= {row[0] for row in client.execute(missing)}
        if user_days:
            # And those compacted before events_user_days existed.
            changed |= {row[0] for row in client.execute(user_days_sql(missing=True))}
        days = sorted(changed)
    moment = datetime.fromtimestamp(through, UTC)
    counts = paths_counts_sql(client, paths, users) if paths and days else None
    for day in days:
        _compact_day(client, day, through, moment, paths, counts, user_days)
    return list(days)


def _compact_day(
    client: Any,
    day: date,
    through: int,
    moment: datetime,
    paths: Sequence[str],
    counts: tuple[str, str | None, dict[str, Any]] | None,
    user_days: bool = False,
) -> None:
    params = {"day": day.isoformat()}
    hourly = client.execute(
        "SELECT toUInt32(toStartOfHour(toDateTime(timestamp))) AS hour, type, event, source, "
        "count() FROM events FINAL WHERE toDate(timestamp) = toDate(%(day)s) "
        "GROUP BY hour, type, event, source",
        params,
    )
    rows = [
        (datetime.fromtimestamp(hour, UTC), kind, name, source, n, through)
        for hour, kind, name, source, n in hourly
    ]
    if rows:
        columns = "hour, type, event, source, n_events, version"
        client.execute(f"INSERT INTO {HOURLY} ({columns}) VALUES", rows)
    client.execute(USERS_SQL, {**params, "version": through})
    if user_days:
        client.execute(USER_DAYS_SQL, {**params, "version": through})
        client.execute(f"INSERT INTO {USER_DAYS_COMPACTED} (day, version) VALUES", [(day, through)])
    if counts is not None:
        sql, users_sql, values = counts
        client.execute(sql, {**values, **params, "version": through})
        if users_sql is not None:
            client.execute(users_sql, {**values, **params, "version": through})
        client.execute(
            f"INSERT INTO {PATHS_COMPACTED} (day, path, version) VALUES",
            [(day, path, through) for path in paths],
        )
    client.execute(f"INSERT INTO {COMPACTED} (day, through) VALUES", [(day, moment)])
