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
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any, Literal

import msgspec
from sqlalchemy import insert, text
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import OperationalError

from router_core.commands import STORED_COLUMNS, Command
from router_core.db import make_engine, sqlite_path
from router_core.health import ComponentHealth
from router_core.hookspecs import hookimpl
from router_core.schema import events, metadata
from router_core.sink import Sink

log = logging.getLogger("eventrouter.sinks.sqlite")

_STOP = object()
_json = msgspec.json.Encoder().encode

# The write path compiles SQLAlchemy's INSERT once and hands the driver ready-made
# tuples: SQLAlchemy's per-row bind processing (JSON, DateTime) costs more than the
# insert itself at tens of thousands of events per second.
assert tuple(events.c.keys()) == STORED_COLUMNS
INSERT_SQL = str(insert(events).prefix_with("OR IGNORE").compile(dialect=sqlite_dialect.dialect()))


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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._engine = None
        self._lock_path = None
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

    def _open(self) -> None:
        self._engine = make_engine(self.url, synchronous=self.options.synchronous.upper())
        path = sqlite_path(self.url)
        self._lock_path = path.with_name(path.name + ".lock") if path else None
        with self._exclusive():
            metadata.create_all(self._engine, tables=[events])

    async def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._engine is not None:
            self._engine.dispose()

    @contextmanager
    def _exclusive(self):
        if self._lock_path is None:
            yield
            return
        with open(self._lock_path, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- the request path --------------------------------------------------------------
    async def write(self, commands: Sequence[Command]) -> None:
        if self._thread is None:
            raise RuntimeError(f"sink {self.name} is not running")
        future = self._loop.create_future()
        self._queue.put((commands, future))
        await future

    def _run(self) -> None:
        max_events = self.config.batch.max_events
        linger = self.config.batch.timeout
        with self._engine.connect() as connection:
            stopping = False
            while not stopping:
                item = self._queue.get()
                if item is _STOP:
                    break
                pending = [item]
                count = len(item[0])
                deadline = time.monotonic() + linger
                while count < max_events:
                    try:
                        wait = deadline - time.monotonic()
                        item = (
                            self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                        )
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stopping = True
                        break
                    pending.append(item)
                    count += len(item[0])
                error = self._commit(connection, pending)
                self._loop.call_soon_threadsafe(_resolve, pending, error)

    def _commit(self, connection: Any, pending: list) -> BaseException | None:
        # INSERT OR IGNORE: a redelivered message_id is stored once.
        rows = [row_values(command) for commands, _ in pending for command in commands]
        retry = self.config.retry
        backoff = retry.initial_backoff
        give_up = time.monotonic() + retry.max_duration
        for attempt in range(1, retry.attempts + 1):
            try:
                with self._exclusive():
                    connection.exec_driver_sql(INSERT_SQL, rows)
                    connection.commit()
            except OperationalError as exc:  # locked, disk I/O: worth another try
                connection.rollback()
                self.last_error = str(exc.orig)
                if attempt == retry.attempts or time.monotonic() + backoff > give_up:
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
        return None

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
