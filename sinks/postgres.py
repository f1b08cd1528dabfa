"""PostgreSQL sink: ``events`` partitioned by range on ``timestamp``, written with COPY,
and the normalised ``users``, ``groups`` and ``identities`` tables kept current.

Schema (``eventrouter migrate`` or the sink's start-up creates it, idempotently):

- ``events``: the stored columns of DESIGN.md (JSON as ``jsonb``, times as
  ``timestamptz``), ``PARTITION BY RANGE (timestamp)``, primary key
  ``(message_id, timestamp)`` so that a redelivered event is stored once. One partition
  per day or month (``partition``), created ``partitions_ahead`` in advance and on
  demand for late or early events, plus ``events_default`` so that no insert ever fails
  for want of a partition. Partitions entirely older than ``retention`` are dropped.
- ``users``, ``groups``, ``identities``: see docs/postgres.md (ER diagram, reasoning).

A write is one transaction: the batch is COPYed into a temporary staging table, moved
into ``events`` with one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` (COPY itself
cannot skip duplicates), then the identity tables are upserted set-wise from the batch.
The ``200`` (embedded mode) or the broker acknowledgement (``eventrouter worker``)
waits for the commit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
from psycopg.types.json import Jsonb
from sqlalchemy import (
    Column,
    DateTime,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from router_core.commands import STORED_COLUMNS, Command
from router_core.config import Duration
from router_core.db import make_engine
from router_core.health import ComponentHealth
from router_core.hookspecs import hookimpl
from router_core.sink import Sink

log = logging.getLogger("eventrouter.sinks.postgres")

#: Schema version this code creates; ``eventrouter_schema`` records what a database has.
SCHEMA_VERSION = 1
#: Seconds between partition maintenance runs (ahead-of-time creation, retention).
MAINTENANCE_INTERVAL = 3600.0
#: On-demand partitions are created for events at most this far from now; events
#: further out (a client clock set to 1970) go to the default partition instead of
#: creating one table each.
ON_DEMAND_PAST = timedelta(days=5 * 366)
ON_DEMAND_FUTURE = timedelta(days=366)
_LOCK_KEY = 0x6576_656E_7472  # pg_advisory_xact_lock key serialising DDL ("eventr")

metadata = MetaData()
_TZ = DateTime(timezone=True)

events = Table(
    "events",
    metadata,
    Column("message_id", String(100), nullable=False),
    Column("type", String(16), nullable=False),
    Column("event", Text),
    Column("name", Text),
    Column("user_id", Text),
    Column("anonymous_id", Text),
    Column("group_id", Text),
    Column("previous_id", Text),
    Column("session_id", Text),
    Column("source", Text, nullable=False),
    Column("properties", JSONB),
    Column("traits", JSONB),
    Column("context", JSONB),
    Column("timestamp", _TZ, nullable=False),
    Column("original_timestamp", _TZ),
    Column("sent_at", _TZ),
    Column("received_at", _TZ, nullable=False),
    PrimaryKeyConstraint("message_id", "timestamp", name="events_pkey"),
    # Newest-first keyset pages, and the filters of the query API and dashboard.
    Index("ix_events_timestamp", "timestamp", "message_id"),
    # Redelivered events are recognised by their message id (see _MOVE_STAGED).
    Index("ix_events_message_id", "message_id"),
    Index("ix_events_user_id", "user_id", "timestamp"),
    Index("ix_events_anonymous_id", "anonymous_id", "timestamp"),
    Index("ix_events_event", "event", "timestamp"),
    Index("ix_events_session_id", "session_id", "timestamp"),
    Index("ix_events_properties", "properties", postgresql_using="gin"),
    postgresql_partition_by="RANGE (timestamp)",
)
assert tuple(events.c.keys()) == STORED_COLUMNS

users = Table(
    "users",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("traits", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("traits_updated_at", _TZ),
    Column("first_seen", _TZ, nullable=False),
    Column("last_seen", _TZ, nullable=False),
)

groups = Table(
    "groups",
    metadata,
    Column("group_id", Text, primary_key=True),
    Column("traits", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("traits_updated_at", _TZ),
    Column("first_seen", _TZ, nullable=False),
    Column("last_seen", _TZ, nullable=False),
)

identities = Table(
    "identities",
    metadata,
    #: ``anonymous_id`` (an anonymous id seen with the user) or ``previous_id`` (alias).
    Column("kind", String(16), nullable=False),
    Column("identity", Text, nullable=False),
    Column("user_id", Text, nullable=False),
    Column("first_seen", _TZ, nullable=False),
    Column("last_seen", _TZ, nullable=False),
    PrimaryKeyConstraint("kind", "identity", "user_id", name="identities_pkey"),
    Index("ix_identities_user_id", "user_id"),
)


class PostgresOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: SQLAlchemy URL, e.g. ``postgresql+psycopg://user:pass@host:5432/analytics``.
    url: str
    #: Partition size: one table per ``day`` or per ``month`` of event time.
    partition: Literal["day", "month"] = "day"
    #: Partitions created ahead of the current one (in days or months).
    partitions_ahead: Annotated[int, msgspec.Meta(ge=0)] = 3
    #: Drop partitions whose whole range is older than this (``"90d"``); none by default.
    retention: Duration | None = None
    #: Keep ``users``, ``groups`` and ``identities`` current from the events.
    normalise: bool = True
    #: Create or upgrade the schema when the sink starts (else: ``eventrouter migrate``).
    migrate_on_start: bool = True


# -- partitions ----------------------------------------------------------------------------
def partition_bounds(moment: datetime, size: str) -> tuple[datetime, datetime]:
    """The ``[start, end)`` range (UTC) of the partition holding ``moment``."""
    moment = moment.astimezone(UTC)
    if size == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


def partition_name(start: datetime, size: str) -> str:
    return f"events_p{start:%Y%m%d}" if size == "day" else f"events_p{start:%Y%m}"


class PostgresSink(Sink):
    """Stores every command into the partitioned ``events`` table of a PostgreSQL database."""

    Options = PostgresOptions
    queryable = True

    def __init__(self, name: str, config: Any, options: PostgresOptions) -> None:
        super().__init__(name, config, options)
        self.url = options.url
        self.engine = None
        self._partitions: set[str] = set()
        self._partitions_lock = threading.Lock()
        self._next_maintenance = 0.0
        self.written = 0
        self.duplicates = 0
        self.last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, bus: Any) -> None:
        self.engine = make_engine(self.url)
        if self.options.migrate_on_start:
            self.migrate()
        else:
            self._load_partitions()

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.dispose()

    def migrate(self) -> str:
        """Create or upgrade the schema (idempotent; ``eventrouter migrate`` calls it)."""
        if self.engine is None:
            self.engine = make_engine(self.url)
        with self.engine.begin() as connection:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
            metadata.create_all(connection, tables=[events, users, groups, identities])
            connection.execute(
                text("CREATE TABLE IF NOT EXISTS events_default PARTITION OF events DEFAULT")
            )
            connection.execute(
                text("CREATE TABLE IF NOT EXISTS eventrouter_schema (version integer NOT NULL)")
            )
            current = connection.execute(text("SELECT max(version) FROM eventrouter_schema"))
            if (current.scalar() or 0) < SCHEMA_VERSION:
                connection.execute(
                    text("INSERT INTO eventrouter_schema (version) VALUES (:v)"),
                    {"v": SCHEMA_VERSION},
                )
        self._load_partitions()
        self.maintain(force=True)
        return f"schema version {SCHEMA_VERSION}, {len(self._partitions)} partitions"

    def _load_partitions(self) -> None:
        with self.engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT c.relname FROM pg_inherits i "
                    "JOIN pg_class c ON c.oid = i.inhrelid "
                    "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'events'"
                )
            )
            with self._partitions_lock:
                self._partitions = {row[0] for row in rows}

    def maintain(self, force: bool = False) -> None:
        """Create the partitions ahead of time and drop those past ``retention``."""
        now = time.monotonic()
        if not force and now < self._next_maintenance:
            return
        self._next_maintenance = now + MAINTENANCE_INTERVAL
        size = self.options.partition
        moment = datetime.now(UTC)
        wanted = []
        start, _ = partition_bounds(moment, size)
        for _ in range(self.options.partitions_ahead + 1):
            bounds = partition_bounds(start, size)
            wanted.append(bounds)
            start = bounds[1]
        self.ensure_partitions(wanted)
        if self.options.retention is not None:
            self.drop_partitions_before(moment - timedelta(seconds=self.options.retention))

    def ensure_partitions(self, ranges: Iterable[tuple[datetime, datetime]]) -> None:
        """Create the partitions for ``ranges`` that do not exist yet."""
        size = self.options.partition
        missing = []
        with self._partitions_lock:
            for start, end in ranges:
                name = partition_name(start, size)
                if name not in self._partitions:
                    missing.append((name, start, end))
        if not missing:
            return
        for name, start, end in missing:
            try:
                with self.engine.begin() as connection:
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY}
                    )
                    # Names and bounds come from datetimes formatted here, never from input.
                    connection.execute(
                        text(
                            f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF events "
                            f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
                        )
                    )
            except Exception as exc:
                # e.g. rows for this range already sit in events_default: they stay
                # there (stored and queryable); later rows go there too.
                log.warning("%s: partition %s not created: %s", self.name, name, exc)
            with self._partitions_lock:
                self._partitions.add(name)

    def drop_partitions_before(self, cutoff: datetime) -> list[str]:
        """Drop every partition whose whole range ends at or before ``cutoff``."""
        size = self.options.partition
        dropped = []
        with self._partitions_lock:
            names = sorted(self._partitions)
        for name in names:
            if not name.startswith("events_p"):
                continue
            stamp = name.removeprefix("events_p")
            try:
                start = datetime.strptime(stamp, "%Y%m%d" if size == "day" else "%Y%m")
            except ValueError:  # a partition of the other size: leave it
                continue
            _, end = partition_bounds(start.replace(tzinfo=UTC), size)
            if end > cutoff:
                continue
            with self.engine.begin() as connection:
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
                connection.execute(text(f"DROP TABLE IF EXISTS {name}"))
            with self._partitions_lock:
                self._partitions.discard(name)
            dropped.append(name)
            log.info("%s: dropped partition %s (older than retention)", self.name, name)
        return dropped

    # -- writing -----------------------------------------------------------------------
    def write(self, commands: Sequence[Command]) -> None:
        self.maintain()
        self.ensure_partitions(self._ranges(commands))
        rows = [_copy_row(command.values()) for command in commands]
        raw = self.engine.raw_connection()
        try:
            with raw.cursor() as cursor:
                cursor.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS events_staging "
                    "(LIKE events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                )
                columns = ", ".join(f'"{c}"' for c in STORED_COLUMNS)
                with cursor.copy(f"COPY events_staging ({columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                cursor.execute(_MOVE_STAGED.format(columns=columns))
                inserted = cursor.rowcount
                if self.options.normalise:
                    _upsert_identities(cursor, commands)
            raw.commit()
        except Exception as exc:
            raw.rollback()
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            raw.close()
        self.written += inserted
        self.duplicates += len(rows) - inserted

    def _ranges(self, commands: Sequence[Command]) -> set[tuple[datetime, datetime]]:
        now = datetime.now(UTC)
        low, high = now - ON_DEMAND_PAST, now + ON_DEMAND_FUTURE
        size = self.options.partition
        return {
            partition_bounds(c.timestamp, size)
            for c in commands
            if low <= c.timestamp.astimezone(UTC) <= high
        }

    # -- health ------------------------------------------------------------------------
    def health(self) -> ComponentHealth:
        component = ComponentHealth(
            name=f"sink:{self.name}",
            up=False,
            required=self.config.acknowledgements,
            stats={"written": self.written, "duplicates": self.duplicates},
        )
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as exc:
            component.detail = f"{type(exc).__name__}: {exc}"
            return component
        component.up = True
        component.detail = f"last error: {self.last_error}" if self.last_error else ""
        return component


#: Staged rows into ``events``, once per ``message_id``: the primary key must include the
#: partition key, and an SDK's retry of an event gets another skew-corrected
#: ``timestamp`` (``receivedAt`` moved on), so the key alone would let it in twice. An
#: event already stored with a timestamp within ``REDELIVERY_WINDOW`` of the new copy's
#: is skipped (the timestamp bounds let PostgreSQL look only at those partitions, through
#: ``ix_events_message_id``); repeats within the batch keep their first copy.
REDELIVERY_WINDOW = "1 day"
_MOVE_STAGED = (
    "INSERT INTO events ({columns}) "
    "SELECT DISTINCT ON (s.message_id) {columns} FROM events_staging s "
    "WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.message_id = s.message_id "
    f"AND e.timestamp BETWEEN s.timestamp - interval '{REDELIVERY_WINDOW}' "
    f"AND s.timestamp + interval '{REDELIVERY_WINDOW}') "
    "ORDER BY s.message_id "
    "ON CONFLICT DO NOTHING"
)

_JSON_COLUMNS = frozenset(("properties", "traits", "context"))
_JSON_INDEXES = tuple(i for i, c in enumerate(STORED_COLUMNS) if c in _JSON_COLUMNS)


def _copy_row(values: tuple) -> list:
    row = list(values)
    for i in _JSON_INDEXES:
        if row[i] is not None:
            row[i] = Jsonb(row[i])
    return row


def _merge_traits(commands: Iterable[Command], key: str) -> dict[str, tuple]:
    """Per id: (traits merged in event-time order, latest traits time, first, last seen)."""
    merged: dict[str, tuple] = {}
    for command in sorted(commands, key=lambda c: c.timestamp):
        ident = getattr(command, key)
        if ident is None:
            continue
        traits = getattr(command, "traits", None) or {}
        if ident in merged:
            old_traits, _, first, _ = merged[ident]
            merged[ident] = ({**old_traits, **traits}, command.timestamp, first, command.timestamp)
        else:
            merged[ident] = (dict(traits), command.timestamp, command.timestamp, command.timestamp)
    return merged


_UPSERT_TRAITS = """
INSERT INTO {table} ({key}, traits, traits_updated_at, first_seen, last_seen)
SELECT * FROM unnest(%s::text[], %s::jsonb[], %s::timestamptz[], %s::timestamptz[],
                     %s::timestamptz[])
ON CONFLICT ({key}) DO UPDATE SET
    traits = CASE WHEN {table}.traits_updated_at IS NULL
                    OR EXCLUDED.traits_updated_at >= {table}.traits_updated_at
                  THEN {table}.traits || EXCLUDED.traits
                  ELSE EXCLUDED.traits || {table}.traits END,
    traits_updated_at = GREATEST({table}.traits_updated_at, EXCLUDED.traits_updated_at),
    first_seen = LEAST({table}.first_seen, EXCLUDED.first_seen),
    last_seen = GREATEST({table}.last_seen, EXCLUDED.last_seen)
"""

_UPSERT_IDENTITIES = """
INSERT INTO identities (kind, identity, user_id, first_seen, last_seen)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[],
                     %s::timestamptz[])
ON CONFLICT (kind, identity, user_id) DO UPDATE SET
    first_seen = LEAST(identities.first_seen, EXCLUDED.first_seen),
    last_seen = GREATEST(identities.last_seen, EXCLUDED.last_seen)
"""


def _columns(rows: list[tuple]) -> list[list]:
    """Rows as one list per column: the arrays ``unnest`` turns back into rows."""
    return [list(column) for column in zip(*rows, strict=True)]


def _upsert_identities(cursor: Any, commands: Sequence[Command]) -> None:
    """Keep ``users``, ``groups`` and ``identities`` current from one batch, set-wise.

    Every event with a user id counts as the user being seen; identify merges its
    traits into the user's (newer calls win key by key, whatever order batches arrive
    in); group does the same for the group; an event carrying both an anonymous id and a
    user id links them, and alias links ``previous_id`` to the user.
    """
    seen_users: dict[str, tuple] = {}
    for command in commands:
        if command.user_id is None:
            continue
        first, last = seen_users.get(command.user_id, (command.timestamp, command.timestamp))
        seen_users[command.user_id] = (min(first, command.timestamp), max(last, command.timestamp))
    identify = _merge_traits((c for c in commands if c.kind == "identify"), "user_id")
    user_rows = []
    for user_id, (first, last) in seen_users.items():
        traits, updated, _, _ = identify.get(user_id, ({}, None, None, None))
        user_rows.append((user_id, Jsonb(traits), updated, first, last))
    if user_rows:
        cursor.execute(_UPSERT_TRAITS.format(table="users", key="user_id"), _columns(user_rows))
    group = _merge_traits((c for c in commands if c.kind == "group"), "group_id")
    if group:
        rows = [(gid, Jsonb(t), upd, first, last) for gid, (t, upd, first, last) in group.items()]
        cursor.execute(_UPSERT_TRAITS.format(table="groups", key="group_id"), _columns(rows))
    links: dict[tuple[str, str, str], tuple] = {}
    for command in commands:
        if command.user_id is None:
            continue
        pairs = []
        if command.anonymous_id is not None:
            pairs.append(("anonymous_id", command.anonymous_id))
        if command.kind == "alias":
            pairs.append(("previous_id", command.previous_id))
        for kind, identity in pairs:
            key = (kind, identity, command.user_id)
            first, last = links.get(key, (command.timestamp, command.timestamp))
            links[key] = (min(first, command.timestamp), max(last, command.timestamp))
    if links:
        rows = [(*key, first, last) for key, (first, last) in links.items()]
        cursor.execute(_UPSERT_IDENTITIES, _columns(rows))


@hookimpl
def eventrouter_sink_types() -> dict[str, type[Sink]]:
    return {"postgres": PostgresSink}
