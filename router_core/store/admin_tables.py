"""The small tables eventrouter keeps in the admin store, beside the events.

The suppression list (:mod:`eventrouter.privacy.suppressions`), the signed-out sessions
(:mod:`eventrouter.edge.sessions`) and the used confirmation tokens (the admin's
``confirm.py``) each live in one table of the admin store (``[admin] store``, else the
first queryable store), so that every server and worker process, on every machine, reads
the same rows with no extra service to run. Each store keeps them its own way, behind
``Store.admin_tables()`` (:class:`eventrouter.store.interface.AdminTables`). Here:

- :class:`SQLAdminTables`: the tables of a store SQLAlchemy speaks to
  (:class:`eventrouter.store.sql.SQLStore`: SQLite, PostgreSQL), plain tables each
  written with one statement, ``INSERT ... ON CONFLICT DO NOTHING`` where a row must be
  recorded once, atomic whatever the number of processes:

  - ``suppressions``: primary key ``(kind, id)``; unsuppressing deletes the row;
  - ``admin_revoked_sessions``: primary key ``sid``; expired rows are deleted by the
    next sign-out;
  - ``confirmations_used``: primary key ``nonce``; expired rows are deleted by the next
    use;

- :class:`RefreshErrors`: a background re-read that fails is counted and remembered,
  and warned about at most once a minute.

Blocking throughout: call it from a thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

import sqlalchemy.exc
from sqlalchemy import (
    Column,
    DateTime,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    delete,
    inspect,
    select,
)

from eventrouter.store.db import StoreEngine
from eventrouter.store.interface import (
    CONFIRMATIONS_USED,
    REVOKED_SESSIONS,
    SUPPRESSIONS,
    AdminTables,
    Store,
    naive_utc,
)

if TYPE_CHECKING:
    from eventrouter.store.sql import SQLStore

T = TypeVar("T")

metadata = MetaData()
suppressions = Table(
    SUPPRESSIONS,
    metadata,
    Column("kind", String(16), nullable=False),
    Column("id", Text, nullable=False),
    Column("reason", Text, nullable=False),
    #: UTC, naive.
    Column("suppressed_at", DateTime, nullable=False),
    PrimaryKeyConstraint("kind", "id", name="suppressions_pkey"),
)
revoked_sessions = Table(
    REVOKED_SESSIONS,
    metadata,
    Column("sid", String(64), primary_key=True),
    #: UTC, naive: when the session would have expired.
    Column("expires_at", DateTime, nullable=False),
)
used_tokens = Table(
    CONFIRMATIONS_USED,
    metadata,
    Column("nonce", String(64), primary_key=True),
    #: UTC, naive: when the token expires (the row may go then).
    Column("expires_at", DateTime, nullable=False),
)
TABLES = {table.name: table for table in (suppressions, revoked_sessions, used_tokens)}


class NoAdminTables(ValueError):
    """A store that keeps no admin tables (``Store.admin_tables()`` is None)."""


def admin_tables_of(store: Store) -> AdminTables:
    """``store``'s admin tables.

    :raises NoAdminTables: it keeps none."""
    tables = store.admin_tables()
    if tables is None:
        raise NoAdminTables(f"{type(store).__name__} keeps no admin tables")
    return tables


def _now() -> datetime:
    """Now, naive UTC (as the tables store times)."""
    return datetime.now(UTC).replace(tzinfo=None)


class SQLAdminTables(StoreEngine, AdminTables):
    """The admin tables of an SQL store, on one engine (opened when first used)."""

    def __init__(self, store: SQLStore) -> None:
        super().__init__(store)
        #: Tables seen or created: they are never dropped, so no need to ask again.
        self._seen: set[str] = set()

    def exists(self, table: str) -> bool:
        if table in self._seen:
            return True
        if not self.store.present():
            return False
        if inspect(self.engine).has_table(table):
            self._seen.add(table)
        return table in self._seen

    def ensure(self, table: str) -> None:
        if table in self._seen:
            return
        definition = TABLES[table]

        def create() -> None:
            try:
                metadata.create_all(self.engine, tables=[definition])
            except sqlalchemy.exc.OperationalError as exc:
                if "already exists" not in str(exc):  # another process was first
                    raise

        self.store.write(create)
        self._seen.add(table)

    def _write(self, write: Callable[[], T]) -> T:
        return self.store.write(write)

    # -- suppressions
    def suppress(self, kind: str, ident: str, reason: str, at: datetime) -> bool:
        statement = (
            self.store.insert_new(suppressions)
            .values(kind=kind, id=ident, reason=reason, suppressed_at=naive_utc(at))
            .returning(suppressions.c.id)  # psycopg's rowcount is -1 here
        )

        def write() -> bool:
            with self.engine.begin() as connection:
                return connection.execute(statement).first() is not None

        return self._write(write)

    def unsuppress(self, kind: str, ident: str, at: datetime) -> bool:
        statement = delete(suppressions).where(
            suppressions.c.kind == kind, suppressions.c.id == ident
        )

        def write() -> bool:
            with self.engine.begin() as connection:
                returned = connection.execute(statement.returning(suppressions.c.id))
                return returned.first() is not None

        return self._write(write)

    def suppressions(self) -> list[tuple[str, str, str, datetime]]:
        statement = select(suppressions).order_by(
            suppressions.c.suppressed_at.desc(), suppressions.c.kind, suppressions.c.id
        )
        with self.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(statement)]

    def suppressed_ids(self) -> list[tuple[str, str]]:
        statement = select(suppressions.c.kind, suppressions.c.id)
        with self.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(statement)]

    # -- signed-out sessions
    def revoke_session(self, sid: str, expires_at: datetime) -> None:
        now = _now().replace(microsecond=0)
        add = self.store.insert_new(revoked_sessions).values(
            sid=sid, expires_at=naive_utc(expires_at)
        )

        def write() -> None:
            with self.engine.begin() as connection:
                connection.execute(add)
                connection.execute(
                    delete(revoked_sessions).where(revoked_sessions.c.expires_at < now)
                )

        self._write(write)

    def revoked_sessions(self) -> dict[str, float]:
        now = _now().replace(microsecond=0)
        statement = select(revoked_sessions.c.sid, revoked_sessions.c.expires_at).where(
            revoked_sessions.c.expires_at > now
        )
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        return {sid: at.replace(tzinfo=UTC).timestamp() for sid, at in rows}

    # -- used confirmation tokens
    def use_confirmation(self, nonce: str, expires_at: datetime) -> bool:
        now = _now()
        statement = (
            self.store.insert_new(used_tokens)
            .values(nonce=nonce, expires_at=naive_utc(expires_at))
            .returning(used_tokens.c.nonce)
        )

        def write() -> bool:
            with self.engine.begin() as connection:
                connection.execute(delete(used_tokens).where(used_tokens.c.expires_at < now))
                return connection.execute(statement).first() is not None

        return self._write(write)


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
