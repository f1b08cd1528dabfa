"""The suppression list: user ids and anonymous ids whose new events are never stored.

It lives in one place, the admin store (``[admin] store``, else the first SQL sink), in
a ``suppressions`` table that ``eventrouter privacy suppress`` and the dashboard's
Privacy page write, and that every server and worker process reads every
``[privacy] refresh`` seconds (``plugins/suppress.py``). One table, read by all: a
suppression made on one machine reaches every edge and every worker, and survives
restarts, with no extra service to run.

- SQLite and PostgreSQL: a plain table, primary key ``(kind, id)``; unsuppressing
  deletes the row.
- ClickHouse: a ``ReplacingMergeTree(version)`` ordered by ``(kind, id)``: a change is
  an insert (``active`` 1 or 0) and the newest version of a key wins, read with
  ``FINAL``. Valid on 18.16 and on current servers, with no mutation needed.
"""

from __future__ import annotations

import fcntl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
import sqlalchemy.exc
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    delete,
    inspect,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url

from router_core.db import make_engine, sqlite_path
from router_core.files import open_private

T = TypeVar("T")
USER_ID = "user_id"
ANONYMOUS_ID = "anonymous_id"
KINDS = (USER_ID, ANONYMOUS_ID)
MAX_ID_LENGTH = 1000
MAX_REASON_LENGTH = 500

metadata = MetaData()
suppressions = Table(
    "suppressions",
    metadata,
    Column("kind", String(16), nullable=False),
    Column("id", Text, nullable=False),
    Column("reason", Text, nullable=False),
    #: UTC, naive.
    Column("suppressed_at", DateTime, nullable=False),
    PrimaryKeyConstraint("kind", "id", name="suppressions_pkey"),
)

CLICKHOUSE_DDL = (
    "CREATE TABLE IF NOT EXISTS suppressions (kind String, id String, reason String, "
    "suppressed_at DateTime('UTC'), active UInt8, version UInt64) "
    "ENGINE = ReplacingMergeTree(version) ORDER BY (kind, id)"
)
CLICKHOUSE_ACTIVE = (
    "SELECT kind, id, reason, suppressed_at FROM suppressions FINAL WHERE active = 1 "
    "ORDER BY suppressed_at DESC, kind, id"
)
CLICKHOUSE_EXISTS = (
    "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'suppressions'"
)


class Suppression(msgspec.Struct, frozen=True):
    kind: str
    id: str
    reason: str
    suppressed_at: datetime


class InvalidId(ValueError):
    """A kind or an id the list cannot hold; the message names the field."""


def check(kind: str, ident: str, reason: str = "") -> None:
    """:raises InvalidId: an unknown kind, an empty or overlong id or reason."""
    if kind not in KINDS:
        raise InvalidId(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    if not ident or not ident.strip():
        raise InvalidId(f"{kind}: must not be empty")
    if len(ident) > MAX_ID_LENGTH:
        raise InvalidId(f"{kind}: longer than {MAX_ID_LENGTH} characters")
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidId(f"reason: longer than {MAX_REASON_LENGTH} characters")


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


#: ClickHouse's UNKNOWN_DATABASE: the store's database is not created yet (queue mode's
#: edge can start before ``eventrouter migrate`` or a worker made it).
CLICKHOUSE_UNKNOWN_DATABASE = 81


def clickhouse_table_exists(url: str, exists_sql: str) -> bool:
    """``exists_sql`` (a count over ``system.tables``) on the store at ``url``; False
    when its database does not exist yet: no table, so nothing in it."""
    from clickhouse_driver.errors import ServerException

    client = clickhouse_client(url)
    try:
        return bool(client.execute(exists_sql)[0][0])
    except ServerException as exc:
        if exc.code == CLICKHOUSE_UNKNOWN_DATABASE:
            return False
        raise
    finally:
        client.disconnect()


class SuppressionList:
    """The ``suppressions`` table of one store. Blocking: call it from a thread."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.dialect = make_url(url).get_backend_name()
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> SuppressionList:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = make_engine(self.url)
            return self._engine

    # -- writing ------------------------------------------------------------------------
    def ensure(self) -> None:
        """Create the table if it is missing."""
        if self.dialect == "clickhouse":
            client = clickhouse_client(self.url)
            try:
                client.execute(CLICKHOUSE_DDL)
            finally:
                client.disconnect()
            return

        def create() -> None:
            try:
                metadata.create_all(self.engine, tables=[suppressions])
            except sqlalchemy.exc.OperationalError as exc:
                if "already exists" not in str(exc):  # another process created it meanwhile
                    raise

        write_retrying(self.url, create)

    def add(self, kind: str, ident: str, reason: str = "") -> bool:
        """Suppress ``ident``; False when it was suppressed already (its reason stays)."""
        check(kind, ident, reason)
        self.ensure()
        now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
        if self.dialect == "clickhouse":
            if self._clickhouse_active(kind, ident):
                return False
            self._clickhouse_insert(kind, ident, reason, now, active=1)
            return True
        insert = pg_insert if self.dialect == "postgresql" else sqlite_insert
        statement = (
            insert(suppressions)
            .values(kind=kind, id=ident, reason=reason, suppressed_at=now)
            .on_conflict_do_nothing()
            .returning(suppressions.c.id)  # psycopg's rowcount is -1 here
        )

        def write() -> bool:
            with self.engine.begin() as connection:
                return connection.execute(statement).first() is not None

        return write_retrying(self.url, write)

    def remove(self, kind: str, ident: str) -> bool:
        """Lift a suppression; False when ``ident`` was not suppressed."""
        check(kind, ident)
        if not self.exists():
            return False
        if self.dialect == "clickhouse":
            if not self._clickhouse_active(kind, ident):
                return False
            now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
            self._clickhouse_insert(kind, ident, "", now, active=0)
            return True
        statement = delete(suppressions).where(
            suppressions.c.kind == kind, suppressions.c.id == ident
        )

        def write() -> bool:
            with self.engine.begin() as connection:
                returned = connection.execute(statement.returning(suppressions.c.id))
                return returned.first() is not None

        return write_retrying(self.url, write)

    # -- reading ------------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether the table exists (a new SQLite file is not created to find out)."""
        if self.dialect == "sqlite":
            path = sqlite_path(self.url)
            if path is not None and not path.exists():
                return False
        if self.dialect == "clickhouse":
            return clickhouse_table_exists(self.url, CLICKHOUSE_EXISTS)
        return inspect(self.engine).has_table("suppressions")

    def list(self) -> list[Suppression]:
        """Every suppression, newest first."""
        if not self.exists():
            return []
        if self.dialect == "clickhouse":
            client = clickhouse_client(self.url)
            try:
                rows = client.execute(CLICKHOUSE_ACTIVE)
            finally:
                client.disconnect()
        else:
            statement = select(suppressions).order_by(
                suppressions.c.suppressed_at.desc(), suppressions.c.kind, suppressions.c.id
            )
            with self.engine.connect() as connection:
                rows = connection.execute(statement).all()
        return [Suppression(kind, ident, reason, _utc(at)) for kind, ident, reason, at in rows]

    def ids(self) -> dict[str, frozenset[str]]:
        """``{"user_id": {...}, "anonymous_id": {...}}``: what the pipeline drops."""
        found: dict[str, set[str]] = {kind: set() for kind in KINDS}
        if self.exists():
            if self.dialect == "clickhouse":
                client = clickhouse_client(self.url)
                try:
                    rows = client.execute(
                        "SELECT kind, id FROM suppressions FINAL WHERE active = 1"
                    )
                finally:
                    client.disconnect()
            else:
                statement = select(suppressions.c.kind, suppressions.c.id)
                with self.engine.connect() as connection:
                    rows = connection.execute(statement).all()
            for kind, ident in rows:
                if kind in found:
                    found[kind].add(ident)
        return {kind: frozenset(values) for kind, values in found.items()}

    # -- ClickHouse -----------------------------------------------------------------------
    def _clickhouse_active(self, kind: str, ident: str) -> bool:
        client = clickhouse_client(self.url)
        try:
            rows = client.execute(
                "SELECT active FROM suppressions FINAL WHERE kind = %(kind)s AND id = %(id)s",
                {"kind": kind, "id": ident},
            )
        finally:
            client.disconnect()
        return bool(rows and rows[0][0])

    def _clickhouse_insert(
        self, kind: str, ident: str, reason: str, at: datetime, *, active: int
    ) -> None:
        client = clickhouse_client(self.url)
        try:
            client.execute(
                "INSERT INTO suppressions (kind, id, reason, suppressed_at, active, version) "
                "VALUES",
                [(kind, ident, reason, at.replace(tzinfo=UTC), active, time.time_ns())],
            )
        finally:
            client.disconnect()


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
