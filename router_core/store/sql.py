"""Erase and the admin tables for any store that SQLAlchemy speaks to.

:class:`SQLStore` is the base of such a store (SQLite and PostgreSQL are two): a subclass
says how to connect, how to insert a row unless its key exists, and how a write from
outside the sink must run; erase (:class:`SQLEraser`) and the admin tables
(:class:`eventrouter.store.admin_tables.SQLAdminTables`) are SQLAlchemy Core over the
stored columns and need nothing else. The query dialect is the subclass's own
(:meth:`Store.query_dialect`): JSON access and time functions differ from one database
to the next.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Engine, Table, case, delete, func, inspect, or_, select
from sqlalchemy.sql.dml import Insert

from eventrouter.store.interface import (
    DELETED,
    WOULD_DELETE,
    AdminTables,
    Erased,
    Eraser,
    Store,
    UserEvents,
)
from eventrouter.store.schema import events

T = TypeVar("T")


class SQLStore(Store):
    """A store at an SQLAlchemy ``url``, whose database has ``INSERT ... ON CONFLICT DO
    NOTHING ... RETURNING`` (SQLite 3.35+, PostgreSQL)."""

    def __init__(self, url: str) -> None:
        self.url = url

    @abstractmethod
    def engine(self) -> Engine:
        """A new engine on the store, for erase and the admin tables (they dispose of it)."""

    @abstractmethod
    def insert_new(self, table: Table) -> Insert:
        """``INSERT INTO table`` that skips a row whose key exists: the dialect's
        ``insert(table).on_conflict_do_nothing()``."""

    def upsert(self, table: Table) -> Insert:
        """``INSERT INTO table`` in the dialect that has ``on_conflict_do_update``
        (the data-quality tables add counts with it)."""
        raise NotImplementedError(f"{type(self).__name__} has no upsert")

    def write(self, write: Callable[[], T]) -> T:
        """Run ``write()``, a write from outside the sink (erase, the admin tables), as
        the store needs it run; by default as it is. (SQLite: under the sink's writer
        lock, retried while the database is locked.)"""
        return write()

    def present(self) -> bool:
        """Whether the database exists, found out without creating it (an SQLite file
        never written: no). Reading the admin tables of an absent one finds nothing."""
        return True

    def eraser(self) -> Eraser:
        return SQLEraser(self)

    def admin_tables(self) -> AdminTables:
        from eventrouter.store.admin_tables import SQLAdminTables

        return SQLAdminTables(self)

    def quality_tables(self) -> Any:
        from eventrouter.store.sql_quality import SQLQualityTables

        return SQLQualityTables(self)


class SQLEraser(Eraser):
    """Erase in SQLAlchemy Core over ``events``. A store whose sink never started (no
    ``events`` yet) holds nothing to delete."""

    def __init__(self, store: SQLStore) -> None:
        self.store = store
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self.store.engine()
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def has_table(self, name: str) -> bool:
        return inspect(self.engine).has_table(name)

    @property
    def empty(self) -> bool:
        """No ``events`` table yet."""
        return not self.has_table("events")

    # -- the links ------------------------------------------------------------------------
    def user_events(self, user_id: str) -> list[UserEvents]:
        if self.empty:
            return []
        c = events.c
        aliased = case((c.type == "alias", c.previous_id), else_=None)
        statement = (
            select(c.source, c.anonymous_id, aliased, func.count())
            .where(c.user_id == user_id)
            .group_by(c.source, c.anonymous_id, aliased)
        )
        with self.engine.connect() as connection:
            return [UserEvents(*row) for row in connection.execute(statement)]

    def anonymous_events(self, user_id: str, ids: Sequence[str]) -> list[tuple[str, str, int]]:
        if self.empty:
            return []
        c = events.c
        statement = (
            select(c.anonymous_id, c.source, func.count())
            .where(
                c.user_id.is_(None),
                c.anonymous_id.in_(ids),
                or_(c.previous_id.is_(None), c.previous_id != user_id),
            )
            .group_by(c.anonymous_id, c.source)
        )
        with self.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(statement)]

    def linked_events(self, user_id: str, other: str) -> dict[str, int]:
        if self.empty:
            return {}
        c = events.c
        statement = (
            select(c.source, func.count())
            .where(
                or_(
                    c.user_id == other,
                    c.previous_id == other,
                    c.user_id.is_(None) & (c.anonymous_id == other),
                ),
                or_(c.user_id.is_(None), c.user_id != user_id),
                or_(c.previous_id.is_(None), c.previous_id != user_id),
            )
            .group_by(c.source)
        )
        with self.engine.connect() as connection:
            return {source: n for source, n in connection.execute(statement)}

    # -- deleting -------------------------------------------------------------------------
    def delete(
        self, user_ids: set[str], anonymous_ids: set[str], *, dry_run: bool, wait: float
    ) -> Erased:
        result = Erased(status=WOULD_DELETE if dry_run else DELETED)
        if self.empty:
            return result
        c = events.c
        matches: list[ColumnElement] = [c.user_id.in_(user_ids), c.previous_id.in_(user_ids)]
        if anonymous_ids:
            matches.append(c.user_id.is_(None) & c.anonymous_id.in_(anonymous_ids))
        condition = or_(*matches)

        def run() -> Erased:
            with self.engine.begin() as connection:
                if dry_run:
                    count = select(func.count()).select_from(events).where(condition)
                    result.events = connection.execute(count).scalar() or 0
                else:
                    result.events = connection.execute(delete(events).where(condition)).rowcount
                self.delete_identity_rows(connection, user_ids, dry_run, result)
            return result

        return run() if dry_run else self.store.write(run)

    def delete_identity_rows(
        self, connection: Any, user_ids: set[str], dry_run: bool, result: Erased
    ) -> None:
        """With :attr:`identity_rows`: delete (count) the per-user rows of ``user_ids`` in
        the transaction that deletes their events, into ``result``."""
