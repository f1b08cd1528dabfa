"""The data-quality tables of a store SQLAlchemy speaks to (SQLite, PostgreSQL).

Each write is one statement: ``INSERT ... ON CONFLICT DO NOTHING`` for rejected events
(kept once per source and message id), ``INSERT ... ON CONFLICT DO UPDATE`` adding the
counts for the catalogue and the violation counts, so any number of processes may
write at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy.exc
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    case,
    func,
    inspect,
    select,
)

from eventrouter.store.db import StoreEngine
from eventrouter.store.interface import naive_utc
from eventrouter.store.quality import (
    CATALOGUE,
    REJECTED,
    VIOLATIONS,
    CatalogueCount,
    QualityTables,
    Rejected,
    ViolationCount,
)

if TYPE_CHECKING:
    from eventrouter.store.sql import SQLStore

T = TypeVar("T")

metadata = MetaData()
rejected_events = Table(
    REJECTED,
    metadata,
    Column("source", Text, nullable=False),
    Column("message_id", String(100), nullable=False),
    Column("type", String(16), nullable=False),
    Column("name", Text, nullable=False),
    Column("received_at", DateTime, nullable=False),
    Column("rejected_at", DateTime, nullable=False),
    Column("plan_version", String(64), nullable=False),
    Column("violations", Text, nullable=False),
    Column("command", Text, nullable=False),
    PrimaryKeyConstraint("source", "message_id", name="rejected_events_pkey"),
)
event_catalogue = Table(
    CATALOGUE,
    metadata,
    Column("source", Text, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("name", Text, nullable=False),
    Column("path", Text, nullable=False),
    Column("json_type", String(16), nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("first_seen", DateTime, nullable=False),
    Column("last_seen", DateTime, nullable=False),
    PrimaryKeyConstraint(
        "source", "kind", "name", "path", "json_type", name="event_catalogue_pkey"
    ),
)
violation_counts = Table(
    VIOLATIONS,
    metadata,
    Column("hour", DateTime, nullable=False),
    Column("source", Text, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("name", Text, nullable=False),
    Column("rule", String(64), nullable=False),
    Column("path", Text, nullable=False),
    Column("policy", String(16), nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("example", Text, nullable=False),
    Column("last_seen", DateTime, nullable=False),
    PrimaryKeyConstraint(
        "hour", "source", "kind", "name", "rule", "path", "policy", name="violation_counts_pkey"
    ),
)


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class SQLQualityTables(StoreEngine, QualityTables):
    """The quality tables of an :class:`~eventrouter.store.sql.SQLStore`, on one engine
    (opened when first used)."""

    def __init__(self, store: SQLStore) -> None:
        super().__init__(store)
        self._creating = threading.Lock()
        self._ready = False
        #: Tables seen to exist (never dropped): a process that only reads (the
        #: dashboard's) asks the database once per table, not on every page.
        self._seen: set[str] = set()

    def _ensure(self) -> None:
        if self._ready:
            return

        def create() -> None:
            # Two processes creating the tables at once: the loser's CREATE fails (on
            # PostgreSQL as a duplicate row of pg_type); the tables are there then.
            for attempt in range(3):
                try:
                    metadata.create_all(self.engine)
                    return
                except (
                    sqlalchemy.exc.OperationalError,
                    sqlalchemy.exc.ProgrammingError,
                    sqlalchemy.exc.IntegrityError,
                ) as exc:
                    text = str(exc)
                    if "already exists" not in text and "duplicate key" not in text:
                        raise
                    if attempt == 2:
                        raise

        with self._creating:  # the threads of one process: one CREATE at a time
            if not self._ready:
                self.store.write(create)
                self._ready = True

    def _exists(self, table: Table) -> bool:
        if self._ready or table.name in self._seen:
            return True
        if self.store.present() and inspect(self.engine).has_table(table.name):
            self._seen.add(table.name)
            return True
        return False

    def _write(self, write: Callable[[], T]) -> T:
        self._ensure()
        return self.store.write(write)

    # -- rejected events
    def record_rejected(self, rows: Sequence[Rejected]) -> None:
        if not rows:
            return
        values = [
            {
                "source": r.source,
                "message_id": r.message_id,
                "type": r.type,
                "name": r.name,
                "received_at": naive_utc(r.received_at),
                "rejected_at": naive_utc(r.rejected_at),
                "plan_version": r.plan_version,
                "violations": r.violations,
                "command": r.command,
            }
            for r in rows
        ]
        statement = self.store.insert_new(rejected_events)

        def write() -> None:
            with self.engine.begin() as connection:
                connection.execute(statement, values)

        self._write(write)

    def rejected(
        self, source: str | None, since: datetime | None, limit: int, offset: int = 0
    ) -> list[Rejected]:
        if not self._exists(rejected_events):
            return []
        c = rejected_events.c
        statement = select(rejected_events).order_by(c.rejected_at, c.source, c.message_id)
        if source is not None:
            statement = statement.where(c.source == source)
        if since is not None:
            statement = statement.where(c.rejected_at >= naive_utc(since))
        statement = statement.limit(limit).offset(offset)
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [
            Rejected(
                source=r.source,
                message_id=r.message_id,
                type=r.type,
                name=r.name,
                received_at=_aware(r.received_at),
                rejected_at=_aware(r.rejected_at),
                plan_version=r.plan_version,
                violations=r.violations,
                command=r.command,
            )
            for r in rows
        ]

    # -- catalogue
    def add_catalogue(self, rows: Sequence[CatalogueCount]) -> None:
        if not rows:
            return
        values = [
            {
                "source": r.source,
                "kind": r.kind,
                "name": r.name,
                "path": r.path,
                "json_type": r.json_type,
                "count": r.count,
                "first_seen": naive_utc(r.first_seen),
                "last_seen": naive_utc(r.last_seen),
            }
            for r in rows
        ]
        insert = self.store.upsert(event_catalogue)
        c = event_catalogue.c
        statement = insert.on_conflict_do_update(
            index_elements=[c.source, c.kind, c.name, c.path, c.json_type],
            set_={
                "count": c.count + insert.excluded.count,
                "first_seen": _least(c.first_seen, insert.excluded.first_seen),
                "last_seen": _greatest(c.last_seen, insert.excluded.last_seen),
            },
        )

        def write() -> None:
            with self.engine.begin() as connection:
                connection.execute(statement, values)

        self._write(write)

    def catalogue(self, source: str | None, search: str | None) -> list[CatalogueCount]:
        if not self._exists(event_catalogue):
            return []
        c = event_catalogue.c
        statement = select(
            c.source,
            c.kind,
            c.name,
            c.path,
            c.json_type,
            func.sum(c.count),
            func.min(c.first_seen),
            func.max(c.last_seen),
        ).group_by(c.source, c.kind, c.name, c.path, c.json_type)
        if source is not None:
            statement = statement.where(c.source == source)
        if search:
            statement = statement.where(
                func.lower(c.name).contains(search.lower(), autoescape=True)
            )
        statement = statement.order_by(c.source, c.kind, c.name, c.path, c.json_type)
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [
            CatalogueCount(s, k, n, p, t, int(count), _aware(first), _aware(last))
            for s, k, n, p, t, count, first, last in rows
        ]

    # -- violation counts
    def add_violations(self, rows: Sequence[ViolationCount]) -> None:
        if not rows:
            return
        values = [
            {
                "hour": naive_utc(r.hour),
                "source": r.source,
                "kind": r.kind,
                "name": r.name,
                "rule": r.rule,
                "path": r.path,
                "policy": r.policy,
                "count": r.count,
                "example": r.example,
                "last_seen": naive_utc(r.last_seen),
            }
            for r in rows
        ]
        insert = self.store.upsert(violation_counts)
        c = violation_counts.c
        statement = insert.on_conflict_do_update(
            index_elements=[c.hour, c.source, c.kind, c.name, c.rule, c.path, c.policy],
            set_={
                "count": c.count + insert.excluded.count,
                "last_seen": _greatest(c.last_seen, insert.excluded.last_seen),
            },
        )

        def write() -> None:
            with self.engine.begin() as connection:
                connection.execute(statement, values)

        self._write(write)

    def violations(self, source: str | None, since: datetime | None) -> list[ViolationCount]:
        if not self._exists(violation_counts):
            return []
        c = violation_counts.c
        statement = select(violation_counts).order_by(
            c.hour.desc(), c.source, c.kind, c.name, c.rule, c.path, c.policy
        )
        if source is not None:
            statement = statement.where(c.source == source)
        if since is not None:
            statement = statement.where(c.hour >= naive_utc(since))
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [
            ViolationCount(
                hour=_aware(r.hour),
                source=r.source,
                kind=r.kind,
                name=r.name,
                rule=r.rule,
                path=r.path,
                policy=r.policy,
                count=int(r.count),
                example=r.example,
                last_seen=_aware(r.last_seen),
            )
            for r in rows
        ]


def _least(a: Any, b: Any) -> Any:
    """The earlier of two times as a CASE: SQLite's two-argument ``min`` is
    PostgreSQL's ``least``."""
    return case((b < a, b), else_=a)


def _greatest(a: Any, b: Any) -> Any:
    return case((b > a, b), else_=a)
