"""What the SQLite store tells the core (eventrouter.store.interface): its engine, its
query dialect, and how a write from outside the sink takes the sink's writer lock.

The sink (``sinks/sqlite.py``) writes; this module is the rest of the store's knowledge:

- the engine: WAL, a busy timeout, the database and its companions private (0600);
- the query dialect: ``json_extract`` for JSON paths, ``strftime('%s')`` for time
  buckets, the ``rowid`` for a live tail (it grows with every insert: an index lookup
  however large the table), the page count for sizes, and ``events`` created by the
  first reader (a queued edge may serve queries before any worker created it);
- erase and the admin tables: SQLAlchemy Core (:class:`eventrouter.store.sql.SQLStore`),
  each write under the sink's writer lock (``<db>.lock``), retried while SQLite says
  "locked".
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy.exc
from sqlalchemy import (
    ColumnElement,
    Engine,
    Integer,
    Table,
    Text,
    and_,
    case,
    cast,
    create_engine,
    event,
    func,
    literal,
    literal_column,
    select,
    union,
    union_all,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql import operators
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import BinaryExpression, UnaryExpression

from eventrouter.columns import JSON_COLUMNS
from eventrouter.files import is_data_dir, open_private, private_dir, private_sqlite
from eventrouter.store.db import json_options
from eventrouter.store.interface import IndexNames, QueryDialect
from eventrouter.store.rollup import (
    check_rollup_paths,
    event_users_daily,
    events_hourly,
    events_hourly_paths,
    users_active_counts,
    users_seen,
)
from eventrouter.store.schema import EVENT_USER_INDEXES, events, metadata
from eventrouter.store.sql import SQLStore

T = TypeVar("T")
#: The names of the indexes on ``events``.
INDEXES_SQL = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'"
#: The ``event_user`` option's indexes (:meth:`SQLiteDialect.retention_statement`).
EVENT_USER_NAMES = frozenset(index.name for index in EVENT_USER_INDEXES)


def sqlite_path(url: str) -> Path | None:
    """The database file of an SQLite URL, or None for an in-memory database."""
    database = make_url(url).database
    if database in (None, "", ":memory:"):
        return None
    return Path(database)


def sqlite_engine(url: str, *, synchronous: str = "NORMAL") -> Engine:
    """An engine on the SQLite database at ``url``, JSON columns through msgspec.

    In WAL mode ``synchronous=NORMAL`` makes a commit durable against any crash of the
    process (the WAL frames are in the OS before ``commit()`` returns); ``FULL`` also
    fsyncs each commit, so it survives power loss."""
    path = sqlite_path(url)
    kwargs: dict[str, Any] = json_options()
    if path is None:
        # An in-memory database exists per connection: share one across threads.
        kwargs["poolclass"] = StaticPool
        kwargs["connect_args"] = {"check_same_thread": False}
    else:
        private_dir(path.parent, own=is_data_dir(path.parent))
    engine = create_engine(make_url(url), **kwargs)
    if path is not None:

        @event.listens_for(engine, "do_connect")
        def _private(*_: Any) -> None:
            # Before SQLite creates the file: 0600 whatever the umask (its -wal and -shm
            # files take the database's mode), companions left from before tightened.
            private_sqlite(path)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # The busy timeout first: switching a new file to WAL takes an exclusive
        # lock, and several server processes open the same file at start-up (two
        # gunicorn workers failed to boot with "database is locked" otherwise).
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.close()

    return engine


@contextmanager
def writer_lock(url: str) -> Iterator[None]:
    """Take the SQLite sink's writer lock (``<db>.lock``) for a write from outside the
    sink, as its writers do among themselves (no file, no lock: nothing writes there)."""
    path = sqlite_path(url)
    if path is None or not path.parent.exists():
        yield
        return
    with open_private(path.with_name(path.name + ".lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_retrying(url: str, write: Callable[[], T], attempts: int = 50) -> T:
    """``write()`` under :func:`writer_lock`, retried while SQLite says "locked" (a
    deferred transaction whose snapshot went stale is refused without waiting)."""
    for attempt in range(attempts):
        try:
            with writer_lock(url):
                return write()
        except sqlalchemy.exc.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.02 * (1 + attempt % 5))
    raise AssertionError("unreachable")


# -- the hourly rollup (eventrouter.store.rollup) ------------------------------------------
#: The hour of a stored ``timestamp`` in the text SQLAlchemy's DateTime keeps
#: (``YYYY-MM-DD HH:MM:SS.ffffff``): its first 13 characters, then the hour's start.
_HOUR = "substr({row}timestamp, 1, 13) || ':00:00.000000'"
_KEY = (
    "hour = {hour} AND type = {row}type AND event = coalesce({row}event, '') "
    "AND source = {row}source"
)
#: The key of the rollup row an old row counts in (delete and update triggers).
_OLD_KEY = _KEY.format(hour=_HOUR.format(row="OLD."), row="OLD.")
ROLLUP_DDL = (
    "CREATE TABLE events_hourly (hour TEXT NOT NULL, type VARCHAR(16) NOT NULL, "
    "event TEXT NOT NULL, source TEXT NOT NULL, n INTEGER NOT NULL, "
    "PRIMARY KEY (hour, type, event, source)) WITHOUT ROWID",
    # From the rows there already (a database of an earlier release), in the same
    # transaction as the triggers: no row is counted twice or missed.
    "INSERT INTO events_hourly (hour, type, event, source, n) "
    f"SELECT {_HOUR.format(row='')}, type, coalesce(event, ''), source, count(*) "
    "FROM events GROUP BY 1, 2, 3, 4",
    # Inserts are counted by the sink, once per commit (ROLLUP_COUNT), not by a trigger.
    "CREATE TRIGGER events_hourly_delete AFTER DELETE ON events BEGIN "
    f"UPDATE events_hourly SET n = n - 1 WHERE {_OLD_KEY}; "
    f"DELETE FROM events_hourly WHERE {_OLD_KEY} "
    "AND n <= 0; END",
    # Rows are never updated by eventrouter; should anyone, the counts follow.
    "CREATE TRIGGER events_hourly_update AFTER UPDATE OF timestamp, type, event, source "
    "ON events BEGIN "
    f"UPDATE events_hourly SET n = n - 1 WHERE {_OLD_KEY}; "
    f"DELETE FROM events_hourly WHERE {_OLD_KEY} "
    "AND n <= 0; "
    "INSERT INTO events_hourly (hour, type, event, source, n) VALUES "
    f"({_HOUR.format(row='NEW.')}, NEW.type, coalesce(NEW.event, ''), NEW.source, 1) "
    "ON CONFLICT (hour, type, event, source) DO UPDATE SET n = n + 1; END",
)


# -- distinct users per day, week and month (eventrouter.store.rollup) ---------------------
#: ``(kind, period start)`` of the row ``{row}``: ``d`` its UTC day, ``w`` its week from
#: Monday, ``m`` its month, each as SQLAlchemy's DateTime text.
_PERIOD_START = {
    "d": "substr({row}timestamp, 1, 10) || ' 00:00:00.000000'",
    "w": "date({row}timestamp, 'weekday 0', '-6 days') || ' 00:00:00.000000'",
    "m": "substr({row}timestamp, 1, 7) || '-01 00:00:00.000000'",
}
_USER = "coalesce({row}user_id, {row}anonymous_id)"
#: The ``users_active`` rows of the old row ``OLD``: one key lookup per period. (A row
#: value ``(kind, start) IN (SELECT ...)`` read the whole table for each deleted event:
#: 0.6 s each at 10,000,000 events.)
_OLD_PERIODS = " OR ".join(
    f"(kind = '{kind}' AND start = {start.format(row='OLD.')} "
    f"AND user_key = {_USER.format(row='OLD.')})"
    for kind, start in _PERIOD_START.items()
)
USERS_DELETE_TRIGGER = (
    "CREATE TRIGGER users_active_delete AFTER DELETE ON events "
    f"WHEN {_USER.format(row='OLD.')} IS NOT NULL BEGIN "
    f"UPDATE users_active SET n = n - 1 WHERE {_OLD_PERIODS}; "
    f"DELETE FROM users_active WHERE ({_OLD_PERIODS}) AND n <= 0; END"
)
USERS_DDL = (
    # One row per period and user with how many events (so that a deletion knows when
    # the user's last event of the period went), and the users per period.
    "CREATE TABLE users_active (kind TEXT NOT NULL, start TEXT NOT NULL, "
    "user_key TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (kind, start, user_key)) "
    "WITHOUT ROWID",
    "CREATE TABLE users_active_counts (kind TEXT NOT NULL, start TEXT NOT NULL, "
    "users INTEGER NOT NULL, PRIMARY KEY (kind, start)) WITHOUT ROWID",
    *(
        "INSERT INTO users_active (kind, start, user_key, n) "
        f"SELECT '{kind}', {start.format(row='')}, {_USER.format(row='')}, count(*) "
        f"FROM events WHERE {_USER.format(row='')} IS NOT NULL GROUP BY 2, 3"
        for kind, start in _PERIOD_START.items()
    ),
    "INSERT INTO users_active_counts (kind, start, users) "
    "SELECT kind, start, count(*) FROM users_active GROUP BY kind, start",
    # A user's first event of a period counts them in; their last one's deletion out.
    "CREATE TRIGGER users_active_new AFTER INSERT ON users_active BEGIN "
    "INSERT INTO users_active_counts (kind, start, users) VALUES (NEW.kind, NEW.start, 1) "
    "ON CONFLICT (kind, start) DO UPDATE SET users = users + 1; END",
    "CREATE TRIGGER users_active_gone AFTER DELETE ON users_active BEGIN "
    "UPDATE users_active_counts SET users = users - 1 "
    "WHERE kind = OLD.kind AND start = OLD.start; "
    "DELETE FROM users_active_counts WHERE kind = OLD.kind AND start = OLD.start "
    "AND users <= 0; END",
    # Inserts are counted by the sink, once per commit (USERS_COUNT), not by a trigger.
    USERS_DELETE_TRIGGER,
)
# -- hourly counts per value of configured JSON paths (eventrouter.store.rollup) ----------
#: A kept path's value in the row ``{row}`` as ``QueryDialect.json_text`` gives it
#: (:meth:`SQLiteDialect.json_text`, with the path read from the kept path ``k``),
#: encoded for a NOT NULL key: ``''`` for no value (a missing key, a JSON null), else
#: ``'v'`` and the text.
_DOCUMENT = "CASE k.col " + " ".join(f"WHEN '{c}' THEN {{row}}{c}" for c in JSON_COLUMNS) + " END"
_PATH_VALUE = (
    "coalesce('v' || CASE json_type({doc}, k.json_path) WHEN 'true' THEN 'true' "
    "WHEN 'false' THEN 'false' ELSE CAST(json_extract({doc}, k.json_path) AS TEXT) END, '')"
)


def _path_value(row: str) -> str:
    return _PATH_VALUE.format(doc=_DOCUMENT.format(row=row))


#: The counts per kept path of the rows of ``events e`` matching ``{where}``, added in.
#: ``CROSS JOIN`` keeps the (few) kept paths the outer loop: ``events`` is read by the
#: condition's index (the rowid range, or every row for a backfill) once per path.
_PATHS_ADD = (
    "INSERT INTO events_hourly_paths (path, hour, type, event, source, value, n) "
    f"SELECT k.path, {_HOUR.format(row='e.')}, e.type, coalesce(e.event, ''), e.source, "
    f"{_path_value('e.')}, count(*) "
    "FROM events_hourly_paths_kept k CROSS JOIN events e WHERE {where} "
    "GROUP BY 1, 2, 3, 4, 5, 6 "
    "ON CONFLICT (path, hour, type, event, source, value) DO UPDATE SET n = n + excluded.n"
)
#: A commit's inserts (the rows past rowid ``?``), as :data:`ROLLUP_COUNT`.
PATHS_COUNT = _PATHS_ADD.format(where="e.rowid > ?1")
_OLD_PATHS = (
    f"{_OLD_KEY} AND (path, value) IN "
    f"(SELECT k.path, {_path_value('OLD.')} FROM events_hourly_paths_kept k)"
)
PATHS_DDL = (
    "CREATE TABLE IF NOT EXISTS events_hourly_paths (path TEXT NOT NULL, hour TEXT NOT NULL, "
    "type VARCHAR(16) NOT NULL, event TEXT NOT NULL, source TEXT NOT NULL, "
    "value TEXT NOT NULL, n INTEGER NOT NULL, "
    "PRIMARY KEY (path, hour, type, event, source, value)) WITHOUT ROWID",
    # ``json_path``: the path as json_extract takes it (SQLiteDialect.json_text's).
    "CREATE TABLE IF NOT EXISTS events_hourly_paths_kept (path TEXT PRIMARY KEY, "
    "col TEXT NOT NULL, json_path TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TRIGGER IF NOT EXISTS events_hourly_paths_delete AFTER DELETE ON events BEGIN "
    f"UPDATE events_hourly_paths SET n = n - 1 WHERE {_OLD_PATHS}; "
    f"DELETE FROM events_hourly_paths WHERE {_OLD_PATHS} AND n <= 0; END",
    # Rows are never updated by eventrouter; should anyone, the counts follow.
    "CREATE TRIGGER IF NOT EXISTS events_hourly_paths_update AFTER UPDATE OF "
    f"timestamp, type, event, source, {', '.join(JSON_COLUMNS)} ON events BEGIN "
    f"UPDATE events_hourly_paths SET n = n - 1 WHERE {_OLD_PATHS}; "
    f"DELETE FROM events_hourly_paths WHERE {_OLD_PATHS} AND n <= 0; "
    "INSERT INTO events_hourly_paths (path, hour, type, event, source, value, n) "
    f"SELECT k.path, {_HOUR.format(row='NEW.')}, NEW.type, coalesce(NEW.event, ''), "
    f"NEW.source, {_path_value('NEW.')}, 1 FROM events_hourly_paths_kept k WHERE true "
    "ON CONFLICT (path, hour, type, event, source, value) DO UPDATE SET n = n + 1; END",
)
PATHS_TRIGGERS = ("events_hourly_paths_delete", "events_hourly_paths_update")
PATHS_TABLES = ("events_hourly_paths", "events_hourly_paths_kept")

# -- when each user was last seen with each value of a kept path (rollup.users_seen) -------
#: The paths ``users_seen`` keeps: listed in ``users_seen_kept`` and still kept hourly.
_SEEN_PATHS = "users_seen_kept u JOIN events_hourly_paths_kept k ON k.path = u.path"
#: Each event counts in two rows: every event's (``''``) and its own event's.
_SCOPES = "(SELECT 0 AS own UNION ALL SELECT 1)"
_SCOPE = "CASE s.own WHEN 0 THEN '' ELSE 'e' || coalesce({row}event, '') END"
#: Adds the rows of ``events e`` matching ``{where}`` into ``users_seen``: the latest
#: time per path, scope, value and user, and how many.
_SEEN_ADD = (
    "INSERT INTO users_seen (path, event, value, user_key, last, n) "
    f"SELECT k.path, {_SCOPE.format(row='e.')}, {_path_value('e.')}, "
    f"{_USER.format(row='e.')}, max(e.timestamp), count(*) "
    f"FROM {_SEEN_PATHS} CROSS JOIN events e CROSS JOIN {_SCOPES} s "
    f"WHERE {{where}} AND {_USER.format(row='e.')} IS NOT NULL "
    "GROUP BY 1, 2, 3, 4 "
    "ON CONFLICT (path, event, value, user_key) DO UPDATE SET "
    "last = max(last, excluded.last), n = n + excluded.n"
)
#: A commit's inserts (the rows past rowid ``?``), as :data:`ROLLUP_COUNT`.
SEEN_COUNT = _SEEN_ADD.format(where="e.rowid > ?1")
#: The ``users_seen`` rows the old row ``OLD`` counts in.
_OLD_SEEN = (
    f"user_key = {_USER.format(row='OLD.')} AND (path, event, value) IN "
    f"(SELECT k.path, {_SCOPE.format(row='OLD.')}, {_path_value('OLD.')} "
    f"FROM {_SEEN_PATHS} CROSS JOIN {_SCOPES} s)"
)
#: The times of a ``users_seen`` row's events whose user is ``{who}``.
_TIMES_OF = (
    "SELECT e.timestamp AS t FROM events e, events_hourly_paths_kept k "
    "WHERE k.path = users_seen.path AND {who} "
    "AND (users_seen.event = '' OR 'e' || coalesce(e.event, '') = users_seen.event) "
    f"AND {_path_value('e.')} = users_seen.value"
)
#: The latest time of the rows the old row ``OLD`` counts in, read again where it was
#: the latest: through the ``user_id`` index, and the anonymous ids (``anonymous_id``'s
#: index, where kept) of the events without one (the user is their coalesce).
_RECOUNT_LAST = (
    "UPDATE users_seen SET last = (SELECT max(t) FROM ("
    + " UNION ALL ".join(
        _TIMES_OF.format(who=who)
        for who in (
            "e.user_id = users_seen.user_key",
            "e.user_id IS NULL AND e.anonymous_id = users_seen.user_key",
        )
    )
    + f")) WHERE {_OLD_SEEN} AND last <= OLD.timestamp"
)
#: Taking the old row ``OLD`` off: one event fewer; a row without events goes; a row
#: whose latest event it was reads its latest time again.
_SEEN_REMOVE = (
    f"UPDATE users_seen SET n = n - 1 WHERE {_OLD_SEEN}; "
    f"DELETE FROM users_seen WHERE {_OLD_SEEN} AND n <= 0; "
    f"{_RECOUNT_LAST}; "
)
SEEN_DDL = (
    "CREATE TABLE IF NOT EXISTS users_seen (path TEXT NOT NULL, event TEXT NOT NULL, "
    "value TEXT NOT NULL, user_key TEXT NOT NULL, last TEXT NOT NULL, n INTEGER NOT NULL, "
    "PRIMARY KEY (path, event, value, user_key)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS users_seen_kept (path TEXT PRIMARY KEY) WITHOUT ROWID",
    "CREATE TRIGGER IF NOT EXISTS users_seen_delete AFTER DELETE ON events "
    f"WHEN {_USER.format(row='OLD.')} IS NOT NULL BEGIN {_SEEN_REMOVE}END",
    # Rows are never updated by eventrouter; should anyone, the rows follow.
    "CREATE TRIGGER IF NOT EXISTS users_seen_update AFTER UPDATE OF timestamp, event, "
    f"user_id, anonymous_id, {', '.join(JSON_COLUMNS)} ON events BEGIN "
    + _SEEN_REMOVE  # an old row without a user matches none (user_key = NULL)
    + "INSERT INTO users_seen (path, event, value, user_key, last, n) "
    f"SELECT k.path, {_SCOPE.format(row='NEW.')}, {_path_value('NEW.')}, "
    f"{_USER.format(row='NEW.')}, NEW.timestamp, 1 FROM {_SEEN_PATHS} CROSS JOIN {_SCOPES} s "
    f"WHERE {_USER.format(row='NEW.')} IS NOT NULL "
    "ON CONFLICT (path, event, value, user_key) DO UPDATE SET "
    "last = max(last, excluded.last), n = n + 1; END",
)
SEEN_TRIGGERS = ("users_seen_delete", "users_seen_update")
SEEN_TABLES = ("users_seen", "users_seen_kept")


# -- each user's first and last event per event name and day (rollup.event_users_daily) --
#: The UTC day (days since 1970-01-01) of the date ``{date}`` (``YYYY-MM-DD``).
_DAY_NUMBER = "CAST(julianday({date}) - 2440587.5 AS INTEGER)"
#: The group of the row ``{row}``: its event, user and UTC day.
_DAILY_KEY = (
    "event = {row}event AND user_key = "
    + _USER
    + " AND day = "
    + _DAY_NUMBER.format(date="substr({row}timestamp, 1, 10)")
)
#: Adds the rows of ``events`` matching ``{where}`` into ``event_users_daily``: grouped
#: by the day's text, each group's day number computed once.
_DAILY_ADD = (
    "INSERT INTO event_users_daily (event, user_key, day, first, last, n) "
    f"SELECT event, user_key, {_DAY_NUMBER.format(date='d')}, first, last, n FROM ("
    f"SELECT event, {_USER.format(row='')} AS user_key, substr(timestamp, 1, 10) AS d, "
    "min(timestamp) AS first, max(timestamp) AS last, count(*) AS n FROM events "
    f"WHERE {{where}} AND event IS NOT NULL AND {_USER.format(row='')} IS NOT NULL "
    "GROUP BY 1, 2, 3) WHERE true "
    "ON CONFLICT (event, user_key, day) DO UPDATE SET first = min(first, excluded.first), "
    "last = max(last, excluded.last), n = n + excluded.n"
)
#: A commit's inserts (the rows past rowid ``?``), as :data:`ROLLUP_COUNT`.
DAILY_COUNT = _DAILY_ADD.format(where="rowid > ?1")
#: The times of a group's events, through the ``event_user`` indexes where kept: the
#: ``user_id`` half, and the events without one whose ``anonymous_id`` is the user.
_DAILY_DAY = (
    "{t} >= date(event_users_daily.day * 86400, 'unixepoch') "
    "AND {t} < date((event_users_daily.day + 1) * 86400, 'unixepoch')"
)
_DAILY_TIMES = (
    "SELECT e.timestamp AS t FROM events e WHERE e.event = event_users_daily.event "
    "AND e.user_id = event_users_daily.user_key AND "
    + _DAILY_DAY.format(t="e.timestamp")
    + " UNION ALL SELECT e.timestamp AS t FROM events e WHERE e.event = event_users_daily.event "
    "AND e.user_id IS NULL AND e.anonymous_id = event_users_daily.user_key AND "
    # The anonymous half's day on +timestamp, which no index serves: otherwise SQLite's
    # planner read every event without a user id that day through (user_id, timestamp)
    # instead of the anonymous id's few through the partial event_user index.
     + _DAILY_DAY.format(t="+e.timestamp")
)
#: Taking the old row ``OLD`` off: one event fewer; a group without events goes; a
#: group whose first or last event it was reads that time again.
_DAILY_REMOVE = (
    "UPDATE event_users_daily SET n = n - 1 WHERE {key}; "
    "DELETE FROM event_users_daily WHERE {key} AND n <= 0; "
    f"UPDATE event_users_daily SET first = (SELECT min(t) FROM ({_DAILY_TIMES})), "
    f"last = (SELECT max(t) FROM ({_DAILY_TIMES})) "
    "WHERE {key} AND (first >= OLD.timestamp OR last <= OLD.timestamp); "
).format(key=_DAILY_KEY.format(row="OLD."))
DAILY_DDL = (
    "CREATE TABLE event_users_daily (event TEXT NOT NULL, user_key TEXT NOT NULL, "
    "day INTEGER NOT NULL, first TEXT NOT NULL, last TEXT NOT NULL, n INTEGER NOT NULL, "
    "PRIMARY KEY (event, user_key, day)) WITHOUT ROWID",
    # From the rows there already, in the same transaction as the triggers.
    _DAILY_ADD.format(where="true"),
    "CREATE TRIGGER event_users_daily_delete AFTER DELETE ON events "
    f"WHEN OLD.event IS NOT NULL AND {_USER.format(row='OLD.')} IS NOT NULL "
    f"BEGIN {_DAILY_REMOVE}END",
    # Rows are never updated by eventrouter; should anyone, the groups follow.
    "CREATE TRIGGER event_users_daily_update AFTER UPDATE OF timestamp, event, user_id, "
    "anonymous_id ON events BEGIN "
    + _DAILY_REMOVE  # an old row without a name or a user matches no group
    + "INSERT INTO event_users_daily (event, user_key, day, first, last, n) "
    f"SELECT NEW.event, {_USER.format(row='NEW.')}, "
    f"{_DAY_NUMBER.format(date='substr(NEW.timestamp, 1, 10)')}, NEW.timestamp, NEW.timestamp, 1 "
    f"WHERE NEW.event IS NOT NULL AND {_USER.format(row='NEW.')} IS NOT NULL "
    "ON CONFLICT (event, user_key, day) DO UPDATE SET first = min(first, excluded.first), "
    "last = max(last, excluded.last), n = n + 1; END",
)
DAILY_TRIGGERS = ("event_users_daily_delete", "event_users_daily_update")


def _refresh_triggers(connection: Any, ddl: Sequence[str], table: str) -> list[str]:
    """Create again each trigger of ``ddl`` (``CREATE TRIGGER name ...``) whose stored
    SQL differs from it (an earlier release's): a trigger keeps no data."""
    changes = []
    for statement in ddl:
        name = statement.split()[2]
        stored = connection.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?", (name,)
        ).scalar()
        if stored != statement:
            connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
            connection.exec_driver_sql(statement)
            changes.append(f"{table}: trigger {name} made again")
    return changes


def ensure_daily(connection: Any, keep: bool) -> list[str]:
    """Keep ``event_users_daily`` (with ``keep``: created and filled from ``events``
    with its triggers, unless all of them exist; a table found without every trigger,
    a crash between Python's sqlite3 committing the table and its triggers, is made
    again), or drop it. Under the writers' lock; what changed.

    The sink keeps it with ``unique_users`` and the ``event_user`` indexes: a deleted
    row that was its group's first or last reads the group's times again (erasure
    deletes a user's rows oldest first: nearly every row does), and those indexes make
    that two index ranges; without them, the anonymous half would read every event of
    the name that day."""
    found = {
        name
        for (name,) in connection.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE name IN (?, ?, ?)",
            ("event_users_daily", *DAILY_TRIGGERS),
        )
    }
    if keep and found == {"event_users_daily", *DAILY_TRIGGERS}:
        return _refresh_triggers(connection, DAILY_DDL[2:], "event_users_daily")
    if not keep and not found:
        return []
    _drop(connection, DAILY_TRIGGERS, ("event_users_daily",))
    if not keep:
        return ["dropped event_users_daily"]
    for statement in DAILY_DDL:
        connection.exec_driver_sql(statement)
    return ["created event_users_daily"]


def _unlist_seen(connection: Any, path: str) -> None:
    """Unlist ``path`` from ``users_seen`` and drop its rows."""
    connection.exec_driver_sql("DELETE FROM users_seen WHERE path = ?", (path,))
    connection.exec_driver_sql("DELETE FROM users_seen_kept WHERE path = ?", (path,))


def _forget_seen(connection: Any, path: str) -> None:
    """:func:`_unlist_seen`, where ``users_seen`` is kept (a path whose hourly counts
    are dropped or made again: :func:`ensure_seen` fills it again)."""
    if connection.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'users_seen_kept'"
    ).first():
        _unlist_seen(connection, path)


def drop_seen(connection: Any) -> list[str]:
    """Drop ``users_seen``, its listing and its triggers, if there."""
    found = {
        name
        for (name,) in connection.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE name IN (?, ?, ?, ?)",
            (*SEEN_TRIGGERS, *SEEN_TABLES),
        )
    }
    if not found:
        return []
    _drop(connection, SEEN_TRIGGERS, SEEN_TABLES)
    return ["dropped users_seen"]


def _drop(connection: Any, triggers: Sequence[str], tables: Sequence[str]) -> None:
    """Drop ``triggers``, then ``tables``, those that exist."""
    for trigger in triggers:
        connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS {trigger}")
    for table in tables:
        connection.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")


def ensure_seen(connection: Any, paths: Sequence[str]) -> list[str]:
    """Keep ``users_seen`` for exactly the kept JSON ``paths`` (after :func:`ensure_paths`
    listed them): a path not listed yet is listed and filled from ``events`` in one
    transaction (rows an interrupted run left cleared first), one no longer kept loses
    its rows and its listing. Under the writers' lock; what changed."""
    for statement in SEEN_DDL:
        connection.exec_driver_sql(statement)
    listed = {path for (path,) in connection.exec_driver_sql("SELECT path FROM users_seen_kept")}
    changes = []
    for path in sorted(listed - set(paths)):
        _unlist_seen(connection, path)
        changes.append(f"users_seen: dropped {path}")
    for path in paths:
        if path in listed:
            continue
        _unlist_seen(connection, path)  # rows an interrupted run left
        connection.exec_driver_sql("INSERT INTO users_seen_kept (path) VALUES (?)", (path,))
        connection.exec_driver_sql(_SEEN_ADD.format(where="u.path = ?"), (path,))
        changes.append(f"users_seen: filled {path}")
    return changes


def json_path_of(segments: Sequence[str]) -> str:
    """The JSON path ``json_extract`` takes for ``segments`` (:meth:`SQLiteDialect.json_text`)."""
    return "$" + "".join(f'."{segment}"' for segment in segments)


def ensure_paths(connection: Any, paths: Sequence[str]) -> list[str]:
    """Keep hourly counts of exactly the JSON ``paths`` (``rollup_paths``, validated):
    a path not kept yet is listed in ``events_hourly_paths_kept`` and counted from
    ``events`` in one transaction (after any rows an interrupted run left are cleared),
    a path no longer wanted loses its rows and its listing, and no path at all drops
    both tables and the triggers. Under the writers' lock; what changed."""
    tables = {
        name
        for (name,) in connection.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE name LIKE 'events_hourly_paths%'"
        )
    }
    if not paths:
        if not tables:
            return []
        _drop(connection, PATHS_TRIGGERS, PATHS_TABLES)
        return ["dropped events_hourly_paths"]
    # DDL first: Python's sqlite3 commits it on its own; the rows below are one
    # transaction, so a path is listed exactly when its counts are complete.
    for statement in PATHS_DDL:
        connection.exec_driver_sql(statement)
    kept = {
        path for (path,) in connection.exec_driver_sql("SELECT path FROM events_hourly_paths_kept")
    }
    wanted = dict(zip(paths, check_rollup_paths(list(paths)), strict=True))
    changes = []
    for path in sorted(kept - set(wanted)):
        _forget_seen(connection, path)
        connection.exec_driver_sql("DELETE FROM events_hourly_paths WHERE path = ?", (path,))
        connection.exec_driver_sql("DELETE FROM events_hourly_paths_kept WHERE path = ?", (path,))
        changes.append(f"events_hourly_paths: dropped {path}")
    for path, (column, segments) in wanted.items():
        if path in kept:
            continue
        _forget_seen(connection, path)
        connection.exec_driver_sql("DELETE FROM events_hourly_paths WHERE path = ?", (path,))
        connection.exec_driver_sql(
            "INSERT INTO events_hourly_paths_kept (path, col, json_path) VALUES (?, ?, ?)",
            (path, column, json_path_of(segments)),
        )
        connection.exec_driver_sql(_PATHS_ADD.format(where="k.path = ?"), (path,))
        changes.append(f"events_hourly_paths: counted {path}")
    return changes


ROLLUP_TRIGGERS = ("events_hourly_delete", "events_hourly_update")
USERS_TRIGGERS = ("users_active_delete",)
USERS_TABLES = ("users_active", "users_active_counts")
#: The per-row insert triggers of earlier releases, by the table they counted into:
#: dropped by :func:`ensure_rollup` (the counts they kept stay right; the sink counts
#: from then on), and while one is found the sink leaves that table to it.
INSERT_TRIGGERS = {"events_hourly": "events_hourly_insert", "users_active": "users_active_insert"}

# -- counting a commit's inserts ---------------------------------------------------------
# The sink counts the rows it inserted once per commit, in the same transaction, instead
# of a trigger per row (which ran an upsert for every event: about 4-5 µs of the
# writer's time each, bench/README.md "Per-commit rollups"). The rows a commit inserted
# are exactly those past the largest ``rowid`` before its first insert: SQLite gives a
# new row the largest rowid + 1, the writers' lock keeps every other writer out, and a
# redelivered copy that the unique key refuses (INSERT OR IGNORE) is no row at all, so
# it is not counted. (Only a table whose largest rowid reached 2**63 - 1 would get
# random rowids; at a million events a second that takes 290,000 years.)
#: The largest rowid of ``events`` before a commit's inserts (0: an empty table).
LAST_ROWID = "SELECT coalesce(max(rowid), 0) FROM events"
#: The hourly counts of the rows past rowid ``?``, added into ``events_hourly``.
ROLLUP_COUNT = (
    "INSERT INTO events_hourly (hour, type, event, source, n) "
    f"SELECT {_HOUR.format(row='')}, type, coalesce(event, ''), source, count(*) "
    "FROM events WHERE rowid > ?1 GROUP BY 1, 2, 3, 4 "
    "ON CONFLICT (hour, type, event, source) DO UPDATE SET n = n + excluded.n"
)
#: The users of the rows past rowid ``?`` with their events, per day, week and month,
#: added into ``users_active``; a user new to a period fires ``users_active_new``
#: (an upsert that updates fires no insert trigger), which counts them in.
USERS_COUNT = (
    "INSERT INTO users_active (kind, start, user_key, n) "
    "SELECT kind, start, user_key, count(*) FROM ("
    + " UNION ALL ".join(
        f"SELECT '{kind}' AS kind, {start.format(row='')} AS start, "
        f"{_USER.format(row='')} AS user_key FROM events "
        f"WHERE rowid > ?1 AND {_USER.format(row='')} IS NOT NULL"
        for kind, start in _PERIOD_START.items()
    )
    + ") WHERE true GROUP BY 1, 2, 3 "
    "ON CONFLICT (kind, start, user_key) DO UPDATE SET n = n + excluded.n"
)
_COUNTS = {
    "events_hourly": ROLLUP_COUNT,
    "users_active": USERS_COUNT,
    "events_hourly_paths_kept": PATHS_COUNT,
    "users_seen_kept": SEEN_COUNT,
    "event_users_daily": DAILY_COUNT,
}


def count_statements(connection: Any) -> tuple[str, ...]:
    """The statements that count a commit's inserts into the rollups this database keeps
    (:data:`ROLLUP_COUNT`, :data:`USERS_COUNT`, :data:`PATHS_COUNT`), each run with the rowid
    :data:`LAST_ROWID` read before the commit's first insert. A rollup still kept by an
    earlier release's insert trigger (a process of that release created it again) is
    left to its trigger: counted once, never twice. ``connection``: a DB-API one."""
    schema = {
        name
        for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE name IN "
            f"({', '.join('?' * (len(_COUNTS) + len(INSERT_TRIGGERS)))})",
            (*_COUNTS, *INSERT_TRIGGERS.values()),
        )
    }
    return tuple(
        sql
        for table, sql in _COUNTS.items()
        if table in schema and INSERT_TRIGGERS.get(table) not in schema
    )


def ensure_rollup(
    connection: Any, users: bool = False, paths: Sequence[str] = (), daily: bool = False
) -> list[str]:
    """Create ``events_hourly``, fill it from ``events`` and create its triggers unless
    they all exist; with ``users``, the same for ``users_active`` and
    ``users_active_counts``, and without, drop those; the JSON ``paths`` kept in
    ``events_hourly_paths`` made those (:func:`ensure_paths`); with ``daily``,
    ``event_users_daily`` (:func:`ensure_daily`), else none. Run under the writers' lock (no row
    can arrive meanwhile). What changed. Python's sqlite3 may commit a table before its
    triggers: a rollup found without every trigger (a crash in between) is dropped and
    made again, and so is a rollup whose table was dropped (the way to count it again
    from ``events``, e.g. after rows were written there by other means than the sink).
    The triggers keep deletes and updates; inserts are counted by the sink once per
    commit (:func:`count_statements`), and an earlier release's insert trigger is
    dropped where found."""
    found = {
        name
        for (name,) in connection.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'events'"
        )
    }
    hourly = connection.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events_hourly'"
    ).first()
    changes = []
    if hourly is None or not found.issuperset(ROLLUP_TRIGGERS):
        for name in (*ROLLUP_TRIGGERS, INSERT_TRIGGERS["events_hourly"]):
            connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
        connection.exec_driver_sql("DROP TABLE IF EXISTS events_hourly")
        for statement in ROLLUP_DDL:
            connection.exec_driver_sql(statement)
        changes.append("created events_hourly")
    elif INSERT_TRIGGERS["events_hourly"] in found:
        connection.exec_driver_sql(f"DROP TRIGGER {INSERT_TRIGGERS['events_hourly']}")
        changes.append("events_hourly counted per commit")
    tables = {
        name
        for (name,) in connection.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'users_active%'"
        )
    }
    complete = found.issuperset(USERS_TRIGGERS) and tables.issuperset(USERS_TABLES)
    leftover = bool(found & {*USERS_TRIGGERS, INSERT_TRIGGERS["users_active"]} or tables)
    if complete != users or (not users and leftover):
        for name in (*USERS_TRIGGERS, INSERT_TRIGGERS["users_active"]):
            connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
        for table in USERS_TABLES:
            connection.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
        if users:
            for statement in USERS_DDL:
                connection.exec_driver_sql(statement)
            changes.append("created users_active")
        else:
            changes.append("dropped users_active")
    elif users and INSERT_TRIGGERS["users_active"] in found:
        connection.exec_driver_sql(f"DROP TRIGGER {INSERT_TRIGGERS['users_active']}")
        changes.append("users_active counted per commit")
    if users:
        changes += _refresh_triggers(connection, [USERS_DELETE_TRIGGER], "users_active")
    # users_seen's triggers read the paths' listing: dropped before it may go.
    changes += ensure_daily(connection, daily)
    seen = users and bool(paths)
    if not seen:
        changes += drop_seen(connection)
    changes += ensure_paths(connection, paths)
    return changes + (ensure_seen(connection, paths) if seen else [])


def _whole_seconds(column: ColumnElement) -> ColumnElement:
    """A stored time's text (``YYYY-MM-DD HH:MM:SS.ffffff``) without its fraction."""
    return func.substr(column, 1, 19)


def _unindexed(condition: ColumnElement, column: ColumnElement) -> ColumnElement:
    """``condition`` (``column <op> value``) on ``+column``, which SQLite's planner reads
    by no index (any other condition as it is)."""
    if isinstance(condition, BinaryExpression) and condition.left is column:
        plus = UnaryExpression(column, operator=operators.custom_op("+"), type_=column.type)
        return condition.operator(plus, condition.right)
    return condition


class SQLiteStore(SQLStore):
    """The SQLite database at ``url`` (an ``sqlite:///`` SQLAlchemy URL)."""

    def engine(self) -> Engine:
        return sqlite_engine(self.url)

    def insert_new(self, table: Table) -> Insert:
        return sqlite_insert(table).on_conflict_do_nothing()

    def upsert(self, table: Table) -> Insert:
        return sqlite_insert(table)

    def write(self, write: Callable[[], T]) -> T:
        return write_retrying(self.url, write)

    def present(self) -> bool:
        path = sqlite_path(self.url)
        return path is None or path.exists()

    def query_dialect(self) -> SQLiteDialect:
        return SQLiteDialect(self.url)


class SQLiteDialect(QueryDialect):
    insert_order = "rowid"
    rollup = events_hourly
    path_rollup = events_hourly_paths
    users_rollup = users_active_counts
    users_seen = users_seen
    event_users_daily = event_users_daily
    indexed_extremes = True

    def __init__(self, url: str) -> None:
        self.url = url
        self._indexes = IndexNames(
            lambda connection: connection.exec_driver_sql(INDEXES_SQL).scalars()
        )

    def connect(self) -> Engine:
        return sqlite_engine(self.url)

    def retention_statement(
        self,
        first: ColumnElement,
        returning: ColumnElement,
        where: Sequence[ColumnElement],
        period: int,
        offset: int,
        periods: int,
    ) -> Any:
        """Retention that reads the returning events of the cohorts' users alone, where
        the standard SQL reads every returning event in the range: each user's entry
        (their first ``first`` event), then their returning events from the entry (to
        the second, as the other stores compare) to the cohort's last period, through
        the ``event_user`` indexes (the sink's ``indexes`` option): ``(event, user_id,
        timestamp)`` for a user id, and ``(event, anonymous_id, timestamp)`` of the
        events without one for an anonymous id, an index range per user each. Without
        them, the standard SQL (None). Over 1,000,000 events: bench/README.md,
        "Retention on SQLite: the event_user indexes"."""
        if not self._indexes.get(self.engine) >= EVENT_USER_NAMES:
            return None
        c = self.table.c
        # Literal ints in the SQL text, as the standard SQL's.
        size, shift = literal_column(str(int(period))), literal_column(str(int(offset)))
        entries = self.retention_entries(first, where)
        entry_second = self.epoch(entries.c.t)
        cohort = entry_second - (entry_second - shift) % size
        cohorts = (
            select(
                entries.c.u,
                # The entry's second as text: a time in it compares >= (a longer text).
                func.substr(entries.c.t, 1, 19).label("entry"),
                cohort.label("cohort"),
                func.datetime(
                    cohort + literal_column(str(int(period) * int(periods))), "unixepoch"
                ).label("last"),
            )
            .cte("cohorts")
            .prefix_with("MATERIALIZED")
        )
        second = self.epoch(c.timestamp)
        in_periods = [
            returning,
            *where,
            c.timestamp >= cohorts.c.entry,
            c.timestamp < cohorts.c.last,
        ]
        back = union(
            *(
                select(
                    cohorts.c.u,
                    cohorts.c.cohort,
                    (second - (second - shift) % size).label("p"),
                ).select_from(cohorts.join(self.table, and_(who, *in_periods)))
                for who in (
                    c.user_id == cohorts.c.u,
                    and_(c.user_id.is_(None), c.anonymous_id == cohorts.c.u),
                )
            )
        ).subquery("back")
        k = ((back.c.p - back.c.cohort) / size).label("k")
        sizes = select(cohorts.c.cohort, literal_column("-1").label("k"), func.count())
        returned = select(back.c.cohort, k, func.count()).group_by(back.c.cohort, k)
        return union_all(sizes.group_by(cohorts.c.cohort), returned)

    def user_probes(
        self,
        user: ColumnElement,
        what: ColumnElement,
        conditions: Sequence[ColumnElement],
        where: Sequence[ColumnElement],
        start: ColumnElement,
        end: ColumnElement,
    ) -> list[ColumnElement] | None:
        """Through the ``event_user`` indexes (none: None): the user id's events, a
        range of ``(event, user_id, timestamp)``, and the events without one whose
        anonymous id is the user, of ``(event, anonymous_id, timestamp) WHERE user_id IS
        NULL``. Seconds are compared as times (the stored text against
        ``datetime(second, 'unixepoch')``: a time within a second sorts after it), so
        that the index range ends at them. The range's bounds are compared on
        ``+timestamp``, which no index serves: given a constant bound, SQLite's planner
        took it for the index range (a month of events per user) over the per-user one,
        or ``(event, timestamp)`` over ``event_user`` for a breakdown's value."""
        if not self._indexes.get(self.engine) >= EVENT_USER_NAMES:
            return None
        c = self.table.c
        lo, hi = func.datetime(start, "unixepoch"), func.datetime(end, "unixepoch")
        bounds = [_unindexed(bound, c.timestamp) for bound in where]
        return [
            select(func.min(what))
            .where(who, *conditions, *bounds, c.timestamp >= lo, c.timestamp < hi)
            .scalar_subquery()
            for who in (user == c.user_id, and_(c.user_id.is_(None), c.anonymous_id == user))
        ]

    def path_rollup_value(self, column: ColumnElement) -> ColumnElement:
        """``''`` (no value) as NULL, ``'v' || text`` as the text (:data:`PATHS_DDL`)."""
        return case((column == "", None), else_=func.substr(column, 2))

    def path_rollup_match(self, column: ColumnElement, value: str) -> ColumnElement:
        return column == "v" + value

    def ensure_schema(self) -> None:
        """Create ``events`` if it is missing: a queued edge may serve queries before any
        worker created it."""
        # Several processes start at once on one new file. "already exists": another
        # created it meanwhile. "locked": SQLite refuses, without waiting, to upgrade a
        # read (create_all's table check) to a write while another process writes.
        for attempt in range(50):
            try:
                metadata.create_all(self.engine, tables=[events])
                return
            except sqlalchemy.exc.OperationalError as exc:
                if "already exists" in str(exc):
                    return
                if "locked" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.02 * (1 + attempt % 5))

    def json_text(self, column: str, path: Sequence[str]) -> ColumnElement:
        """``json_extract`` with a JSON-path string (a bound parameter), booleans spelled
        as JSON spells them (``json_extract`` alone gives 1 and 0)."""
        target = self.table.c[column]
        json_path = literal(json_path_of(path))
        kind = func.json_type(target, json_path)
        return case(
            (kind == "true", "true"),
            (kind == "false", "false"),
            else_=cast(func.json_extract(target, json_path), Text),
        )

    def epoch(self, column: ColumnElement) -> ColumnElement:
        """Whole seconds, the fraction cut off as the other stores do: ``strftime('%s')``
        of the full text rounds it to milliseconds first, so that ``…:59.9997`` counted
        in the next second (hour, day) while ``substr`` puts it in its own (as the
        rollups and the per-user reads compare the text)."""
        return cast(func.strftime("%s", _whole_seconds(column)), Integer)

    def month_start(self, column: ColumnElement) -> ColumnElement:
        return cast(func.strftime("%s", _whole_seconds(column), "start of month"), Integer)

    def size_bytes(self, connection: Any) -> int | None:
        page_count = connection.exec_driver_sql("PRAGMA page_count").scalar()
        page_size = connection.exec_driver_sql("PRAGMA page_size").scalar()
        return page_count * page_size
