"""The embedded store: SQLite (WAL) written by group commit.

Requests hand their commands to one writer thread per process and wait on a future.
The writer takes everything queued since its last commit, inserts it in one
transaction, commits (fsync), and only then resolves the futures: a request's ``200``
means its events are on disk, and a commit is shared by every request that arrived
while the previous one was being written. Several gunicorn workers write the same file;
an exclusive ``flock`` on ``<db>.lock`` serialises their transactions in the kernel,
waking the next writer the moment the lock is free instead of SQLite's sleeping
busy-retry loop.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, BinaryIO, Literal

import msgspec
from sqlalchemy import Engine, insert, text
from sqlalchemy.dialects import sqlite as sqlite_dialect

from router_core.commands import STORED_COLUMNS, Command
from router_core.db import make_engine, sqlite_path
from router_core.health import ComponentHealth
from router_core.hookspecs import hookimpl
from router_core.schema import events, metadata
from router_core.sink import Sink

log = logging.getLogger("eventrouter.sinks.sqlite")

_STOP = object()
#: Seconds between background WAL checkpoints.
CHECKPOINT_INTERVAL = 0.5
_json = msgspec.json.Encoder().encode

# The write path compiles SQLAlchemy's INSERT once and hands the driver ready-made
# tuples: SQLAlchemy's per-row bind processing (JSON, DateTime) costs more than the
# insert itself at tens of thousands of events per second. Rows go in as multi-row
# VALUES statements because Python's sqlite3 releases and re-takes the GIL around every
# sqlite3_step: with one step per row, the writer thread would queue for the GIL behind
# the event loop once per event (a convoy that costs milliseconds per row under load).
assert tuple(events.c.keys()) == STORED_COLUMNS
INSERT_SQL = str(insert(events).prefix_with("OR IGNORE").compile(dialect=sqlite_dialect.dialect()))
_INSERT_HEAD, _, _ONE_ROW = INSERT_SQL.partition(" VALUES ")
#: Rows per statement: 17 columns x 500 stays well under SQLITE_MAX_VARIABLE_NUMBER.
ROWS_PER_STATEMENT = 500


#: Statement sizes: full chunks, then a remainder split into powers of two, so a handful
#: of distinct statements (each prepared once and cached by sqlite3) cover every count.
_SIZES = (ROWS_PER_STATEMENT, 256, 128, 64, 32, 16, 8, 4, 2, 1)
_INSERTS = {n: f"{_INSERT_HEAD} VALUES {', '.join([_ONE_ROW] * n)}" for n in _SIZES}


def insert_rows(cursor: Any, rows: list[tuple]) -> None:
    """Insert ``rows`` with few statements (few GIL hand-offs)."""
    start = 0
    remaining = len(rows)
    for size in _SIZES:
        sql = _INSERTS[size]
        while remaining >= size:
            chunk = rows[start : start + size]
            cursor.execute(sql, [value for row in chunk for value in row])
            start += size
            remaining -= size


def _time(value: Any) -> str | None:
    """UTC datetime → the text SQLAlchemy's SQLite DateTime type stores and parses."""
    if value is None:
        return None
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


def _json_text(value: Any) -> str | None:
    return None if value is None else _json(value).decode()


def row_values(command: Command) -> tuple:
    """One command as a tuple in ``events`` column order."""
    return (
        command.message_id,
        command.kind,
        getattr(command, "event", None),
        getattr(command, "name", None),
        command.user_id,
        command.anonymous_id,
        getattr(command, "group_id", None),
        getattr(command, "previous_id", None),
        command.session_id,
        command.source,
        _json_text(getattr(command, "properties", None)),
        _json_text(getattr(command, "traits", None)),
        _json_text(command.context),
        _time(command.timestamp),
        _time(command.original_timestamp),
        _time(command.sent_at),
        _time(command.received_at),
    )


class SQLiteOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: SQLAlchemy URL, e.g. ``sqlite:///eventrouter-data/events.db``.
    url: str
    #: ``full``: every commit survives power loss; ``normal``: survives a process crash.
    synchronous: Literal["full", "normal"] = "full"


class SQLiteSink(Sink):
    """Stores every command into the ``events`` table of an SQLite database."""

    Options = SQLiteOptions
    queryable = True

    def __init__(self, name: str, config: Any, options: SQLiteOptions) -> None:
        super().__init__(name, config, options)
        self.url = options.url
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._checkpointer: threading.Thread | None = None
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._engine: Engine | None = None
        self._lock_file: BinaryIO | None = None
        self.committed_events = 0
        self.commits = 0
        self.last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self, bus: Any) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._open)
        self._thread = threading.Thread(
            target=self._run, name=f"sqlite-writer-{self.name}", daemon=True
        )
        self._thread.start()
        if self._lock_file is not None:
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, name=f"sqlite-checkpoint-{self.name}", daemon=True
            )
            self._checkpointer.start()

    def _open(self) -> None:
        self._engine = make_engine(self.url, synchronous=self.options.synchronous.upper())
        path = sqlite_path(self.url)
        if path is not None:
            self._lock_file = open(path.with_name(path.name + ".lock"), "a+b")  # noqa: SIM115
        with self._exclusive():
            metadata.create_all(self._engine, tables=[events])

    async def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.join)
            self._checkpointer = None
        if self._engine is not None:
            self._engine.dispose()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Serialise writers across processes (gunicorn workers) on one database file."""
        if self._lock_file is None:
            yield
            return
        fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    # -- the request path --------------------------------------------------------------
    async def write(self, commands: Sequence[Command]) -> None:
        if self._thread is None:
            raise RuntimeError(f"sink {self.name} is not running")
        future = self._loop.create_future()
        self._queue.put((commands, future))
        await future

    def _run(self) -> None:
        # The writer owns one DBAPI connection and manages its transactions itself.
        connection = self._engine.raw_connection()
        # Checkpoints run in their own thread (below), never inside a request's commit.
        connection.execute("PRAGMA wal_autocheckpoint=0")
        connection.execute("PRAGMA cache_size=-65536")
        try:
            while (pending := self._next_group()) is not None:
                error = self._commit(connection, pending)
                self._loop.call_soon_threadsafe(_resolve, pending, error)
        finally:
            connection.close()

    def _next_group(self) -> list | None:
        """Block for the next write, then take everything else already queued (up to
        ``batch.max_events``, waiting at most ``batch.timeout`` for more)."""
        item = self._queue.get()
        if item is _STOP:
            return None
        pending = [item]
        count = len(item[0])
        deadline = time.monotonic() + self.config.batch.timeout
        while count < self.config.batch.max_events:
            wait = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                self._queue.put(_STOP)  # commit this group, then stop
                break
            pending.append(item)
            count += len(item[0])
        return pending

    def _commit(self, connection: Any, pending: list) -> BaseException | None:
        rows = [row_values(command) for commands, _ in pending for command in commands]
        retry = self.config.retry
        backoff = retry.initial_backoff
        give_up = time.monotonic() + retry.max_duration
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._exclusive():
                    cursor = connection.cursor()
                    try:
                        insert_rows(cursor, rows)
                    finally:
                        cursor.close()
                    connection.commit()
            except sqlite3.OperationalError as exc:  # locked, disk full, I/O: may pass
                connection.rollback()
                self.last_error = f"OperationalError: {exc}"
                if attempt >= retry.attempts or time.monotonic() + backoff > give_up:
                    log.error("%s: commit failed after %d attempts: %s", self.name, attempt, exc)
                    return exc
                time.sleep(backoff)
                backoff *= 2
            except Exception as exc:
                connection.rollback()
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("%s: commit failed", self.name)
                return exc
            else:
                self.commits += 1
                self.committed_events += len(rows)
                return None

    def _checkpoint_loop(self) -> None:
        """Copy the WAL back into the database in the background (PASSIVE: never waits
        for, nor blocks, the writers), so commits never pay for a checkpoint."""
        connection = self._engine.raw_connection()
        try:
            while not self._stopping.wait(CHECKPOINT_INTERVAL):
                try:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.OperationalError as exc:  # another process is checkpointing
                    log.debug("%s: checkpoint skipped: %s", self.name, exc)
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            connection.close()

    # -- health ------------------------------------------------------------------------
    def health(self) -> ComponentHealth:
        component = ComponentHealth(
            name=f"sink:{self.name}",
            up=False,
            required=self.config.acknowledgements,
            stats={"commits": self.commits, "committed_events": self.committed_events},
        )
        if self._thread is None or not self._thread.is_alive():
            component.detail = "writer thread is not running"
            return component
        try:
            with self._engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as exc:
            component.detail = f"{type(exc).__name__}: {exc}"
            return component
        component.up = True
        component.detail = self.last_error or ""
        return component


def _resolve(pending: list, error: BaseException | None) -> None:
    for _, future in pending:
        if future.done():  # the request gave up (timeout) or was cancelled
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


@hookimpl
def eventrouter_sink_types() -> dict[str, type[Sink]]:
    return {"sqlite": SQLiteSink}
