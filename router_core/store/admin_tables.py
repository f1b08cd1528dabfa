"""The small tables eventrouter keeps in the admin store, beside the events.

The suppression list (:mod:`eventrouter.privacy.suppressions`), the signed-out sessions
(:mod:`eventrouter.edge.sessions`) and the used confirmation tokens (``admin/confirm.py``)
each live in one table of the admin store (``[admin] store``, else the first SQL sink),
so that every server and worker process, on every machine, reads the same rows with no
extra service to run. What each of them needs from that store is the same, and is here:

- :class:`AdminTable`: the table's engine (SQLAlchemy on SQLite and PostgreSQL), a
  ClickHouse client (its tables are written with the native client: no mutation, no
  ORM), whether the table exists yet (never creating a database or an SQLite file to find
  out), and creating it when first written, whichever process gets there first;
- :func:`write_retrying` and :func:`sqlite_writer`: a write from outside the SQLite
  sink takes the sink's own writer lock, and is retried while SQLite says "locked";
- :class:`RefreshErrors`: a background re-read that fails is counted and remembered,
  and warned about at most once a minute.

Blocking throughout: call it from a thread.
"""

from __future__ import annotations

import fcntl
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import sqlalchemy.exc
from sqlalchemy import Engine, Table, inspect
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url

from eventrouter.files import open_private
from eventrouter.store.db import make_engine, sqlite_path

T = TypeVar("T")

#: ClickHouse's UNKNOWN_DATABASE: the store's database is not created yet (queue mode's
#: edge can start before ``eventrouter migrate`` or a worker made it).
CLICKHOUSE_UNKNOWN_DATABASE = 81


@contextmanager
def sqlite_writer(url: str) -> Iterator[None]:
    """Take the SQLite sink's writer lock (``<db>.lock``) for a write from outside the
    sink, as its writers do among themselves; no-op for other stores."""
    path = sqlite_path(url) if make_url(url).get_backend_name() == "sqlite" else None
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
    """``write()`` under :func:`sqlite_writer`, retried while SQLite says "locked" (a
    deferred transaction whose snapshot went stale is refused without waiting)."""
    for attempt in range(attempts):
        try:
            with sqlite_writer(url):
                return write()
        except sqlalchemy.exc.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.02 * (1 + attempt % 5))
    raise AssertionError("unreachable")


def clickhouse_client(url: str) -> Any:
    """A clickhouse-driver client for an SQLAlchemy ``clickhouse+native://`` URL."""
    from clickhouse_driver import Client

    parsed = make_url(url).set(drivername="clickhouse")
    return Client.from_url(parsed.render_as_string(hide_password=False))


class AdminTable:
    """One small table of the admin store at ``url``: ``table`` on SQLite and
    PostgreSQL, ``clickhouse_ddl`` (``CREATE TABLE IF NOT EXISTS ...``) on ClickHouse."""

    def __init__(self, url: str, table: Table, clickhouse_ddl: str) -> None:
        self.url = url
        self.table = table
        self.clickhouse_ddl = clickhouse_ddl
        self.dialect = make_url(url).get_backend_name()
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        #: The table has been seen or created: it is never dropped, so no need to ask.
        self._seen = False

    @property
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = make_engine(self.url)
            return self._engine

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None

    @contextmanager
    def clickhouse(self) -> Iterator[Any]:
        """A native client for one short exchange, disconnected after it."""
        client = clickhouse_client(self.url)
        try:
            yield client
        finally:
            client.disconnect()

    def insert(self) -> Any:
        """The dialect's ``INSERT`` (SQLite or PostgreSQL), for ``ON CONFLICT`` clauses."""
        return (pg_insert if self.dialect == "postgresql" else sqlite_insert)(self.table)

    def exists(self) -> bool:
        """Whether the table exists. A missing SQLite file or ClickHouse database means
        no: nothing was ever written there, and neither is created to find out."""
        if self._seen:
            return True
        if self.dialect == "sqlite":
            path = sqlite_path(self.url)
            if path is not None and not path.exists():
                return False
        if self.dialect == "clickhouse":
            from clickhouse_driver.errors import ServerException

            query = (
                "SELECT count() FROM system.tables "
                "WHERE database = currentDatabase() AND name = %(name)s"
            )
            try:
                with self.clickhouse() as client:
                    self._seen = bool(client.execute(query, {"name": self.table.name})[0][0])
            except ServerException as exc:
                if exc.code != CLICKHOUSE_UNKNOWN_DATABASE:
                    raise
        else:
            self._seen = inspect(self.engine).has_table(self.table.name)
        return self._seen

    def ensure(self) -> None:
        """Create the table if it is missing (before a write)."""
        if self._seen:
            return
        if self.dialect == "clickhouse":
            with self.clickhouse() as client:
                client.execute(self.clickhouse_ddl)
        else:

            def create() -> None:
                try:
                    self.table.metadata.create_all(self.engine, tables=[self.table])
                except sqlalchemy.exc.OperationalError as exc:
                    if "already exists" not in str(exc):  # another process was first
                        raise

            write_retrying(self.url, create)
        self._seen = True

    def write(self, write: Callable[[], T]) -> T:
        """``write()``, as :func:`write_retrying` runs it for this store."""
        return write_retrying(self.url, write)


class RefreshErrors:
    """The failures of a background re-read: counted, the last one kept for ``/health``,
    and logged as a warning at most once every ``interval`` seconds."""

    def __init__(self, log: logging.Logger, what: str, interval: float = 60.0) -> None:
        self.log = log
        self.what = what
        self.interval = interval
        self.count = 0
        self.last: str | None = None
        self._warned_at = float("-inf")

    def failed(self, exc: BaseException) -> None:
        self.count += 1
        self.last = f"{type(exc).__name__}: {exc}".splitlines()[0]
        now = time.monotonic()
        if now - self._warned_at >= self.interval:
            self._warned_at = now
            self.log.warning("%s: %s", self.what, self.last)

    def succeeded(self) -> None:
        self.last = None
