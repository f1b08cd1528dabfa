"""The embedded store: SQLite (WAL) written by one writer thread per process.

The framework group-commits on a writer thread of its own (``dedicated_writer``;
``eventrouter.bus.outlet``: every request that arrives while a commit runs joins the
next one, per ``batch``) and retries a failed commit (per ``retry``;
:meth:`SQLiteSink.is_retryable` says which errors may pass). Each write builds its row
values, takes the write lock, inserts them in one transaction, counts the rows it
inserted into the rollups (one statement per rollup, not a trigger per row) and commits;
only then does the write return: a request's ``200``
means its events are committed (in the OS with ``synchronous = "normal"``, fsynced with
``"full"``). Several gunicorn workers write the same file; an exclusive ``flock`` on
``<db>.lock`` serialises their transactions in the kernel, waking the next writer the
moment the lock is free instead of SQLite's sleeping busy-retry loop. A second thread
fsyncs and checkpoints the WAL in the background. docs/architecture.md explains each
choice and what it bought.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Literal

import msgspec
from sqlalchemy import Engine, insert
from sqlalchemy.dialects import sqlite as sqlite_dialect

from eventrouter.bus.hookspecs import hookimpl
from eventrouter.bus.sink import Sink
from eventrouter.columns import JSON_COLUMNS, TIME_COLUMNS
from eventrouter.events.commands import STORED_COLUMNS, Command
from eventrouter.files import open_private
from eventrouter.health import ComponentHealth
from eventrouter.sinks.sqlite_store import (
    INDEXES_SQL,
    LAST_ROWID,
    SQLiteStore,
    count_statements,
    ensure_rollup,
    sqlite_engine,
    sqlite_path,
)
from eventrouter.store.db import select_one
from eventrouter.store.rollup import check_rollup_paths
from eventrouter.store.schema import (
    EVENT_USER_INDEXES,
    LEGACY_INDEXES,
    OPTIONAL_INDEXES,
    events,
    metadata,
)

log = logging.getLogger("eventrouter.sinks.sqlite")

#: Seconds between background WAL checkpoints.
CHECKPOINT_INTERVAL = 0.25
#: GIL switch interval (seconds) while a writer holds the write lock (Python's is 5 ms).
LOCKED_SWITCH_INTERVAL = 0.0005
#: Commits slower than this (seconds) are logged with where the time went.
SLOW_COMMIT = 0.5
#: Seconds between checkpoints that pause writers to let the WAL start over.
WAL_REWIND_INTERVAL = 5.0
#: Seconds between background fsyncs of the WAL.
WAL_SYNC_INTERVAL = 0.05

# The write path compiles SQLAlchemy's INSERT once and hands the driver ready-made
# tuples: SQLAlchemy's per-row bind processing (JSON, DateTime) costs more than the
# insert itself at tens of thousands of events per second. Rows go in as multi-row
# VALUES statements because Python's sqlite3 releases and re-takes the GIL around every
# sqlite3_step: with one step per row, the writer thread would queue for the GIL behind
# the event loop once per event (a convoy that costs milliseconds per row under load).
assert tuple(events.c.keys()) == STORED_COLUMNS
# flat_values() names Command.values() in this order; message_id, type and source are
# required (never None).
assert (
    "message_id",
    "type",
    "event",
    "name",
    "user_id",
    "anonymous_id",
    "group_id",
    "previous_id",
    "session_id",
    "source",
    *JSON_COLUMNS,
    *TIME_COLUMNS,
) == STORED_COLUMNS
INSERT_SQL = str(insert(events).prefix_with("OR IGNORE").compile(dialect=sqlite_dialect.dialect()))
_INSERT_HEAD, _, _ONE_ROW = INSERT_SQL.partition(" VALUES ")
#: Rows per statement: 17 columns x 500 stays well under SQLITE_MAX_VARIABLE_NUMBER.
ROWS_PER_STATEMENT = 500


#: Statement sizes: full chunks, then a remainder split into powers of two, so a handful
#: of distinct statements (each prepared once and cached by sqlite3) cover every count.
_SIZES = (ROWS_PER_STATEMENT, 256, 128, 64, 32, 16, 8, 4, 2, 1)
_INSERTS = {n: f"{_INSERT_HEAD} VALUES {', '.join([_ONE_ROW] * n)}" for n in _SIZES}
_WIDTH = len(STORED_COLUMNS)


def insert_values(cursor: Any, values: list, rows: int) -> None:
    """Insert ``rows`` rows given as one flat list of column values (row-major), in a
    few multi-row statements: few GIL hand-offs, no per-row Python work."""
    start = 0
    for size in _SIZES:
        sql = _INSERTS[size]
        while rows >= size:
            end = start + size * _WIDTH
            cursor.execute(sql, values[start:end])
            start = end
            rows -= size


#: What the write path binds for SQL NULL. Python's sqlite3 binds an exact ``str``,
#: ``int`` or ``float`` directly, but sends every other value (``None`` too) through its
#: adapter registry first: 0.46 µs per ``None`` against 0.03 µs per float, with the GIL
#: held, and an event has five or more NULL columns. SQLite stores a bound NaN as NULL
#: (``sqlite3_bind_double``), whatever the column's affinity: the stored row is the same.
NULL = float("nan")


def _json_text(value: Any) -> str | float:
    """A JSON column's raw text (:class:`msgspec.Raw`, as the client sent it) as the
    ``str`` sqlite3 binds as TEXT (``bytes`` would be a BLOB, which SQLite's JSON
    functions read as its binary JSONB): one UTF-8 decode of a buffer, no re-encoding.
    :data:`NULL` for none."""
    return NULL if value is None else str(value, "utf-8")


class _TimeText(dict):
    """UTC datetime → the text SQLAlchemy's SQLite DateTime type stores and parses
    (``YYYY-MM-DD HH:MM:SS.ffffff``), memoised: the events of one request share their
    ``received_at`` and often ``sent_at``. :data:`NULL` for none."""

    def __missing__(self, value: Any) -> str | float:
        text = (
            NULL
            if value is None
            else "%04d-%02d-%02d %02d:%02d:%02d.%06d"  # noqa: UP031 - fastest here
            % (
                value.year,
                value.month,
                value.day,
                value.hour,
                value.minute,
                value.second,
                value.microsecond,
            )
        )
        self[value] = text
        return text


def flat_values(commands: Sequence[Command]) -> list:
    """The commands as one flat list of ``events`` column values, row after row, in
    the form the driver stores: JSON columns as the text the client sent (never
    decoded here), times as SQLAlchemy's text, :data:`NULL` for a missing value."""
    times = _TimeText()
    values: list = []
    extend = values.extend
    for command in commands:
        (
            message_id,
            kind,
            event,
            name,
            user_id,
            anonymous_id,
            group_id,
            previous_id,
            session_id,
            source,
            properties,
            traits,
            context,
            timestamp,
            original,
            sent_at,
            received_at,
        ) = command.values()
        extend(
            (
                message_id,
                kind,
                NULL if event is None else event,
                NULL if name is None else name,
                NULL if user_id is None else user_id,
                NULL if anonymous_id is None else anonymous_id,
                NULL if group_id is None else group_id,
                NULL if previous_id is None else previous_id,
                NULL if session_id is None else session_id,
                source,
                _json_text(properties),
                _json_text(traits),
                _json_text(context),
                times[timestamp],
                times[original],
                times[sent_at],
                times[received_at],
            )
        )
    return values


IndexName = Literal[
    "message_id", "user_id", "anonymous_id", "session_id", "event", "type", "source", "event_user"
]


class SQLiteOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: SQLAlchemy URL, e.g. ``sqlite:///eventrouter-data/events.db``.
    url: str
    #: ``normal`` (default): a commit is in the OS before the 200, so it survives any
    #: crash of eventrouter itself; an OS crash or power loss may lose the last moments.
    #: ``full``: every commit is fsynced before the 200 and survives power loss too, at a
    #: cost in throughput and in tail latency on disks with slow fsyncs.
    synchronous: Literal["full", "normal"] = "normal"
    #: Indexes besides the always-present ``(timestamp, message_id)`` one. Each index on
    #: a high-cardinality column costs write throughput once the table outgrows memory
    #: (about 10-25 µs per event for random keys); ``message_id`` (a unique index on
    #: ``(message_id, source)``) makes the store idempotent: a redelivered event is
    #: stored once, and the same id from another source is another event.
    #: ``event_user``: two indexes (``(event, user_id, timestamp)``, and ``(event,
    #: anonymous_id, timestamp)`` of events without a user id) through which retention
    #: reads each cohort user's returning events instead of every returning event.
    indexes: list[IndexName] = msgspec.field(default_factory=lambda: ["user_id", "event"])
    #: Keep the distinct users per day, week and month at write time
    #: (``users_active``), for the Active users page: read in milliseconds instead of
    #: counted from ``events``, at about three index writes per stored event
    #: (bench/rollups.py: 57-65 k → 22-27 k events/s). Off: counted from events.
    #: With the ``event_user`` indexes too, also each user's first and last event per
    #: event name and day (``event_users_daily``), from which funnels and retention
    #: read the whole days of their range.
    unique_users: bool = False
    #: JSON paths (``properties.plan``, ``context.page.path``: as the breakdown's
    #: ``dimension`` takes them, at most 8) whose values are counted per hour at write
    #: time (``events_hourly_paths``), so that the dashboard's breakdown by one reads
    #: the rollup instead of every event in the range (docs/configuration.md has the
    #: measured cost). A path added is counted from ``events`` at the next start or
    #: ``eventrouter migrate``; one removed loses its counts.
    rollup_paths: list[str] = []

    def __post_init__(self) -> None:
        check_rollup_paths(self.rollup_paths)


class SQLiteSink(Sink):
    """Stores every command into the ``events`` table of an SQLite database."""

    Options = SQLiteOptions
    #: Commits are serialised by the write lock anyway: one writer thread per process
    #: takes each group as soon as the previous commit is done.
    dedicated_writer = True

    def __init__(self, name: str, config: Any, options: SQLiteOptions) -> None:
        super().__init__(name, config, options)
        self.url = options.url
        self._running = False
        #: Each writing thread's own connection (the edge's writer thread, the worker's
        #: pool threads), all closed at stop.
        self._local = threading.local()
        self._connections: list[Any] = []
        self._checkpointer: threading.Thread | None = None
        self._stopping = threading.Event()
        self._engine: Engine | None = None
        self._lock_file: BinaryIO | None = None
        self._thread_lock = threading.Lock()
        self.committed_events = 0
        self.commits = 0
        self.last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self, bus: Any) -> None:
        await asyncio.to_thread(self._open)
        self._running = True
        if self._lock_file is not None:
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, name=f"sqlite-checkpoint-{self.name}", daemon=True
            )
            self._checkpointer.start()

    def _open(self) -> tuple[list[str], list[str]]:
        """Open the database, create ``events``, sync its indexes and the rollups: what
        changed in each."""
        self._engine = sqlite_engine(self.url, synchronous=self.options.synchronous.upper())
        path = sqlite_path(self.url)
        if path is not None:
            self._lock_file = open_private(path.with_name(path.name + ".lock"), "a+b")
        with self._exclusive():
            metadata.create_all(self._engine, tables=[events])
            changes = self._sync_indexes()
            with self._engine.begin() as connection:
                rollups = ensure_rollup(
                    connection,
                    users=self.options.unique_users,
                    paths=self.options.rollup_paths,
                    daily=self.options.unique_users and "event_user" in self.options.indexes,
                )
            for change in rollups:
                log.info("%s: %s (eventrouter.store.rollup)", self.name, change)
            return changes, rollups

    def store(self) -> SQLiteStore:
        return SQLiteStore(self.url)

    def migrate(self) -> str:
        """Create ``events`` and bring its indexes and rollups to the configured ones
        (what the sink does at every start; ``eventrouter migrate`` runs it ahead of
        time)."""
        try:
            changes, rollups = self._open()
        finally:
            self._close_files()
        done = "indexes " + (", ".join(changes) if changes else "up to date")
        return "; ".join([done, *rollups])

    def _sync_indexes(self) -> list[str]:
        """Create the configured optional indexes and drop the ones no longer configured
        or of an earlier schema (indexes are derived data: dropping one loses nothing),
        in one transaction; return what changed.

        The upgrade from the unique ``message_id`` index to ``(message_id, source)`` is
        one of these: both hold the same rows, so the new one cannot fail on a
        duplicate, and SQLite's DDL is transactional, so the store never has neither."""
        wanted = set(self.options.indexes)
        changes = []
        with self._engine.begin() as connection:
            existing = set(connection.exec_driver_sql(INDEXES_SQL).scalars())
            for name in LEGACY_INDEXES:
                if name in existing:
                    log.info("%s: dropping index %s (earlier schema)", self.name, name)
                    connection.exec_driver_sql(f"DROP INDEX {name}")
                    changes.append(f"dropped {name}")
            optional = [*OPTIONAL_INDEXES.items()]
            optional += [("event_user", index) for index in EVENT_USER_INDEXES]
            for column, index in optional:
                if column in wanted and index.name not in existing:
                    log.info("%s: creating index %s", self.name, index.name)
                    index.create(connection)
                    changes.append(f"created {index.name}")
                elif column not in wanted and index.name in existing:
                    log.info("%s: dropping index %s (not in indexes)", self.name, index.name)
                    index.drop(connection)
                    changes.append(f"dropped {index.name}")
        return changes

    async def stop(self) -> None:
        self._stopping.set()
        self._running = False
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.join)
            self._checkpointer = None
        self._close_files()

    def _close_files(self) -> None:
        with self._thread_lock:  # not while a write holds one
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        if self._engine is not None:
            self._engine.dispose()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Serialise writers: threads of this process, then processes (gunicorn workers)
        on one database file. ``flock`` alone would not do for the first: its lock
        belongs to the open file, which this process's threads share."""
        with self._thread_lock:
            if self._lock_file is None:
                yield
                return
            fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    # -- the write path ----------------------------------------------------------------
    def write(self, commands: Sequence[Command]) -> None:
        """Commit ``commands`` (one group of requests, or a worker's batch) in one
        transaction; return once committed. Runs on a writer thread (the edge's own, or
        the worker's pool), never on the event loop."""
        if not self._running:
            raise RuntimeError(f"sink {self.name} is not running")
        error = self._commit(self._connection(), len(commands), flat_values(commands))
        if error is not None:
            raise error

    @property
    def at_least_once(self) -> bool:  # type: ignore[override]
        """Without the unique ``message_id`` index (``indexes``), a redelivered event is
        stored again (docs/plugins.md, "Idempotent and append-only destinations")."""
        return "message_id" not in self.options.indexes

    def is_retryable(self, error: BaseException) -> bool:
        """``OperationalError`` ("database is locked", disk I/O, disk full) and timeouts
        may pass; any other error (a constraint, a bad value) fails the write at once."""
        return isinstance(error, sqlite3.OperationalError | TimeoutError)

    def _connection(self) -> Any:
        """This thread's connection, opened on its first write."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._engine.raw_connection()
            # Checkpoints run in their own thread (below), never inside a commit.
            connection.execute("PRAGMA wal_autocheckpoint=0")
            connection.execute("PRAGMA cache_size=-65536")
            connection.execute("PRAGMA mmap_size=268435456")
            # No journal_size_limit: truncating the WAL at each rewind, only for commits
            # to regrow it block by block, costs more (p99 x2 in bench/) than the disk it
            # saves.
            with self._thread_lock:
                self._connections.append(connection)
            self._local.connection = connection
        return connection

    def _commit(self, connection: Any, rows: int, values: list) -> BaseException | None:
        """Insert and commit one write's rows; return the error, if any (the framework
        decides whether to try again)."""
        try:
            started = time.monotonic()
            with self._exclusive(), _gil_priority():
                locked = time.monotonic()
                cursor = connection.cursor()
                try:
                    counts = self._count_statements(cursor)
                    if counts:
                        (last,) = cursor.execute(LAST_ROWID).fetchone()
                    insert_values(cursor, values, rows)
                    for sql in counts:
                        cursor.execute(sql, (last,))
                finally:
                    cursor.close()
                inserted = time.monotonic()
                connection.commit()
            done = time.monotonic()
            if done - started > SLOW_COMMIT:
                log.warning(
                    "%s: slow commit of %d events: %.0f ms waiting for the write lock, "
                    "%.0f ms inserting, %.0f ms committing",
                    self.name,
                    rows,
                    1000 * (locked - started),
                    1000 * (inserted - locked),
                    1000 * (done - inserted),
                )
        except Exception as exc:
            connection.rollback()
            self.last_error = f"{type(exc).__name__}: {exc}"
            return exc
        self.commits += 1
        self.committed_events += rows
        return None

    def _count_statements(self, cursor: Any) -> tuple[str, ...]:
        """The statements that count this commit's inserts into the rollups
        (:func:`eventrouter.sinks.sqlite_store.count_statements`), looked up again only
        when the schema changed (a migration, another process's start); read under the
        writers' lock, which every schema change takes too."""
        (version,) = cursor.execute("PRAGMA schema_version").fetchone()
        local = self._local
        if getattr(local, "schema_version", None) != version:
            local.counts = count_statements(cursor)
            local.schema_version = version
        return local.counts

    def _checkpoint_loop(self) -> None:
        """Keep the WAL short and flushed without making commits pay for either.

        Every ``WAL_SYNC_INTERVAL`` the WAL is fsynced from here, outside any lock: with
        ``synchronous = "normal"`` commits do not fsync, and otherwise dirty WAL pages
        would pile up in the page cache until a checkpoint had to flush hundreds of MB
        at once. (It also bounds what an OS crash can take to about that interval.)

        Every ``CHECKPOINT_INTERVAL`` a PASSIVE checkpoint copies WAL frames into the
        database while writers go on. Under constant writes it never reaches the end
        of the WAL, and SQLite rewinds the WAL only once every frame is copied; so every
        ``WAL_REWIND_INTERVAL`` a second pass holds the writers' lock for the frames
        written meanwhile, and the next commit starts the WAL over instead of growing
        it. That pause (tens of ms on a busy disk) holds every in-flight request, so it
        is kept rare; the WAL stays within about that interval's worth of writes.
        """
        connection = self._engine.raw_connection()
        path = sqlite_path(self.url)
        wal = path.with_name(path.name + "-wal")
        next_checkpoint = time.monotonic() + CHECKPOINT_INTERVAL
        next_rewind = time.monotonic() + WAL_REWIND_INTERVAL
        try:
            while not self._stopping.wait(WAL_SYNC_INTERVAL):
                try:
                    _fsync(wal)
                    now = time.monotonic()
                    if now < next_checkpoint:
                        continue
                    next_checkpoint = now + CHECKPOINT_INTERVAL
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    if now < next_rewind:
                        continue
                    # Held writers up for the duration: rare enough to stay out of p99.
                    next_rewind = now + WAL_REWIND_INTERVAL
                    _fsync(wal)
                    with self._exclusive():
                        connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.OperationalError as exc:  # e.g. another process checkpointing
                    log.debug("%s: checkpoint skipped: %s", self.name, exc)
            with self._exclusive():
                connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            connection.close()

    # -- health ------------------------------------------------------------------------
    def health(self) -> ComponentHealth:
        stats = {"commits": self.commits, "committed_events": self.committed_events}
        return self.probed_health(
            lambda: select_one(self._engine),
            stats,
            last_error=self.last_error,
            not_running=None if self._running else "not started",
        )


_priority_lock = threading.Lock()
_priority_holders = 0
_normal_switch_interval = sys.getswitchinterval()


@contextmanager
def _gil_priority() -> Iterator[None]:
    """Shorten the GIL switch interval while a writer holds the write lock.

    Inside the lock the writer gives up the GIL for every SQLite call and must win it
    back from a busy event loop, which yields only every switch interval: at Python's
    5 ms, each hand-off kept the lock (and so every other worker's writer) waiting.
    Outside it the default is better: a 0.5 ms interval throughout cost single-event
    throughput 20-25 % in bench/ through needless switches. Process-wide, so counted.
    """
    global _priority_holders
    with _priority_lock:
        _priority_holders += 1
        if _priority_holders == 1:
            sys.setswitchinterval(LOCKED_SWITCH_INTERVAL)
    try:
        yield
    finally:
        with _priority_lock:
            _priority_holders -= 1
            if _priority_holders == 0:
                sys.setswitchinterval(_normal_switch_interval)


def _fsync(path: Path) -> None:
    """fsync a file another connection writes: Linux flushes the file, not the descriptor."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@hookimpl
def eventrouter_sink_types() -> dict[str, type[Sink]]:
    return {"sqlite": SQLiteSink}
