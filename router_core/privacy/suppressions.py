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

import time
from datetime import UTC, datetime

import msgspec
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
    select,
)

from eventrouter.store.admin_tables import AdminTable

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


class SuppressionList:
    """The ``suppressions`` table of one store. Blocking: call it from a thread."""

    def __init__(self, url: str) -> None:
        self.store = AdminTable(url, suppressions, CLICKHOUSE_DDL)
        self.url = url
        self.dialect = self.store.dialect

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> SuppressionList:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def engine(self) -> Engine:
        return self.store.engine

    # -- writing ------------------------------------------------------------------------
    def ensure(self) -> None:
        """Create the table if it is missing."""
        self.store.ensure()

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
        statement = (
            self.store.insert()
            .values(kind=kind, id=ident, reason=reason, suppressed_at=now)
            .on_conflict_do_nothing()
            .returning(suppressions.c.id)  # psycopg's rowcount is -1 here
        )

        def write() -> bool:
            with self.engine.begin() as connection:
                return connection.execute(statement).first() is not None

        return self.store.write(write)

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

        return self.store.write(write)

    # -- reading ------------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether the table exists (no SQLite file or database is created to find out)."""
        return self.store.exists()

    def list(self) -> list[Suppression]:
        """Every suppression, newest first."""
        if not self.exists():
            return []
        if self.dialect == "clickhouse":
            with self.store.clickhouse() as client:
                rows = client.execute(CLICKHOUSE_ACTIVE)
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
                with self.store.clickhouse() as client:
                    rows = client.execute(
                        "SELECT kind, id FROM suppressions FINAL WHERE active = 1"
                    )
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
        with self.store.clickhouse() as client:
            rows = client.execute(
                "SELECT active FROM suppressions FINAL WHERE kind = %(kind)s AND id = %(id)s",
                {"kind": kind, "id": ident},
            )
        return bool(rows and rows[0][0])

    def _clickhouse_insert(
        self, kind: str, ident: str, reason: str, at: datetime, *, active: int
    ) -> None:
        with self.store.clickhouse() as client:
            client.execute(
                "INSERT INTO suppressions (kind, id, reason, suppressed_at, active, version) "
                "VALUES",
                [(kind, ident, reason, at.replace(tzinfo=UTC), active, time.time_ns())],
            )


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
