"""PostgreSQL sink: ``events`` partitioned by range on ``timestamp``, written with COPY,
and the normalised ``users``, ``groups`` and ``identities`` tables kept current.

Schema (``eventrouter migrate`` or the sink's start-up creates it, idempotently):

- ``events``: the stored columns (:mod:`eventrouter.columns`; JSON as ``jsonb``, times as
  ``timestamptz``), ``PARTITION BY RANGE (timestamp)``, primary key
  ``(message_id, source, timestamp)`` so that a redelivered event is stored once, and a
  messageId is unique per source only (schema version 2; version 1's key
  ``(message_id, timestamp)`` let one source's event hide another's: ``migrate``
  upgrades it, see :meth:`PostgresSink.migrate`). One partition
  per day or month (``partition``), created ``partitions_ahead`` in advance and on
  demand for late or early events, plus ``events_default`` so that no insert ever fails
  for want of a partition. Partitions entirely older than ``retention`` are dropped.
- ``users``, ``groups``, ``identities``: see docs/postgres.md (ER diagram, reasoning).
- ``event_claims`` (schema version 3): one row per ``(source, message_id)`` stored in
  the last :data:`CLAIM_WINDOW`, unpartitioned; see :data:`event_claims`.

A batch is COPYed (binary format) straight into ``events``; one of 10,000 rows or more
is cut into ``parallel`` parts, COPYed at once on as many connections, each part one
transaction. The rows already stored (a redelivery: the same source and message id) are
skipped first; the rest are claimed in ``event_claims`` (``ON CONFLICT DO NOTHING``), and
only those claimed here are COPYed, so that two writers of copies of one event at once
store it once even when the copies' timestamps differ; a COPY that meets
rows another writer committed meanwhile (one that claims nothing: an older version)
goes through a temporary staging table and
``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` instead (COPY itself cannot skip
duplicates); the identity tables are upserted set-wise from the batch in the first
part's transaction. The ``200`` (embedded mode) or the broker acknowledgement
(``eventrouter worker``) waits for every part's commit. docs/postgres.md, "How a batch
is written", has the steps.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
import psycopg
import sqlalchemy.exc
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
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from eventrouter.bus.hookspecs import hookimpl
from eventrouter.bus.sink import Sink
from eventrouter.columns import JSON_COLUMNS
from eventrouter.config import Duration
from eventrouter.events.commands import STORED_COLUMNS, Command
from eventrouter.health import ComponentHealth
from eventrouter.sinks.postgres_store import PostgresStore, postgres_engine
from eventrouter.store.db import select_one
from eventrouter.store.query import InvalidQuery, PathCondition
from eventrouter.store.rollup import ALL_EVENTS, check_rollup_paths, day_number, event_scope
from eventrouter.store.schema import event_columns

log = logging.getLogger("eventrouter.sinks.postgres")

#: Schema version this code creates; ``eventrouter_schema`` records what a database has.
#: 2: the primary key holds ``source`` (a messageId is unique per source).
#: 3: ``event_claims``, which serialises concurrent writers of one event.
#: 4: ``events_hourly``, the hourly rollup kept by triggers (eventrouter.store.rollup).
#: 5: the sink counts the rows it inserts into ``events_hourly`` (no insert trigger).
SCHEMA_VERSION = 5
#: Seconds between partition maintenance runs (ahead-of-time creation, retention).
MAINTENANCE_INTERVAL = 3600.0
#: On-demand partitions are created for events at most this far from now; events
#: further out (a client clock set to 1970) go to the default partition instead of
#: creating one table each.
ON_DEMAND_PAST = timedelta(days=5 * 366)
ON_DEMAND_FUTURE = timedelta(days=366)
_LOCK_KEY = 0x6576_656E_7472  # pg_advisory_xact_lock key serialising DDL ("eventr")
#: Session advisory lock serialising key upgrades: held while partition indexes are built
#: concurrently, during which writers must still be able to create partitions.
_UPGRADE_LOCK_KEY = _LOCK_KEY + 1
#: The primary key of ``events``: an event is one per source and message id (its
#: ``timestamp`` is there because a unique key of a partitioned table must hold the
#: partition key). ``message_id`` first: an id without a source is a prefix probe.
PRIMARY_KEY = ("message_id", "source", "timestamp")
#: The primary key of schema version 1, which :meth:`PostgresSink.migrate` upgrades.
PRIMARY_KEY_V1 = ("message_id", "timestamp")
#: How long the key upgrade waits for its brief exclusive lock, and how often it tries.
UPGRADE_LOCK_TIMEOUT = "5s"
UPGRADE_LOCK_ATTEMPTS = 5

metadata = MetaData()
_TZ = DateTime(timezone=True)

events = Table(
    "events",
    metadata,
    *event_columns(JSONB, _TZ),
    PrimaryKeyConstraint(*PRIMARY_KEY, name="events_pkey"),
    # Newest-first keyset pages and time ranges; the others are OPTIONAL_INDEXES.
    Index("ix_events_timestamp", "timestamp", "message_id"),
    postgresql_partition_by="RANGE (timestamp)",
)
assert tuple(events.c.keys()) == STORED_COLUMNS

#: One row per ``(source, message_id)`` a writer stored in the last
#: :data:`CLAIM_WINDOW`: inserted in the same transaction as the rows, before them, with
#: ``ON CONFLICT DO NOTHING``, so that of two writers storing copies of one event at once
#: (copies whose ``timestamp``s differ, which the primary key of ``events`` would both
#: take) only the first stores it; the second waits for the first's commit and skips it.
#: Unpartitioned, so that its key is the id alone; ``claimed_at`` (the server's clock)
#: is what :meth:`PostgresSink.prune_claims` deletes by. No personal data: ids only.
event_claims = Table(
    "event_claims",
    metadata,
    Column("source", Text, nullable=False),
    Column("message_id", String(100), nullable=False),
    Column("claimed_at", _TZ, nullable=False, server_default=text("now()")),
    PrimaryKeyConstraint("source", "message_id", name="event_claims_pkey"),
    Index("ix_event_claims_claimed_at", "claimed_at"),
    # No WAL: a claim matters only while the transactions that could race with its own
    # run, and a crash ends them all. After one (or a failover) the table is empty, and
    # the check for stored rows catches later copies, as before claims.
    prefixes=["UNLOGGED"],
)

IndexName = Literal[
    "user_id", "anonymous_id", "session_id", "event", "type", "source", "event_user"
]
#: The filter columns an index may lead with (and a ``path_indexes`` entry may hold).
INDEX_COLUMNS = ("user_id", "anonymous_id", "session_id", "event", "type", "source")
#: Indexes for the query API's and dashboard's filters, each ``(column, timestamp)``,
#: chosen with the ``indexes`` option: each costs write throughput. ``event_user`` is
#: ``(event, coalesce(user_id, anonymous_id), timestamp)``: one user's events of one
#: name, which retention reads per user of a cohort (``PostgresDialect.retention_statement``)
#: instead of every returning event in the range, and which funnels and retention read
#: without the table (it holds the user; the ``event`` index does not).
OPTIONAL_INDEXES = {
    **{
        column: Index(f"ix_events_{column}", events.c[column], events.c.timestamp)
        for column in INDEX_COLUMNS
    },
    "event_user": Index(
        "ix_events_event_user",
        events.c.event,
        func.coalesce(events.c.user_id, events.c.anonymous_id),
        events.c.timestamp,
        # The columns of the expression too: PostgreSQL reads an expression index alone
        # (an index-only scan) only when it holds the columns the expression is made of.
        postgresql_include=["user_id", "anonymous_id"],
    ),
}
for _index in OPTIONAL_INDEXES.values():  # created by migrate() as configured
    events.indexes.discard(_index)

#: Name prefix of the indexes made from the ``path_indexes`` option (migrate() drops the
#: ones of this prefix no longer configured).
PATH_INDEX_PREFIX = "ix_events_path_"
#: Most parts (columns and paths) of one path index, ``timestamp`` not counted.
MAX_PATH_INDEX_PARTS = 4


def path_index_part(part: str) -> str:
    """One part of a ``path_indexes`` entry as an index expression: a filter column as
    is, a JSON path (``properties.plan``) as the expression the query layer filters with
    (``properties #>> '{plan}'``), so that the planner matches the two.

    :raises ValueError: neither a filter column nor a valid path."""
    if part in INDEX_COLUMNS:
        return part
    try:
        condition = PathCondition.parse(part, "")
    except InvalidQuery as exc:
        raise ValueError(
            f"path_indexes: {part!r} is neither a column ({', '.join(INDEX_COLUMNS)}) "
            f"nor a JSON path ({exc})"
        ) from None
    # Segments are letters, digits and _$@:- only (PathCondition): safe inside quotes.
    array = "{" + ",".join(f'"{segment}"' for segment in condition.path) + "}"
    return f"({condition.column} #>> '{array}'::text[])"


def path_index(parts: Sequence[str]) -> tuple[str, str]:
    """``(name, CREATE INDEX statement)`` for one ``path_indexes`` entry: its parts, then
    ``timestamp`` (newest-first pages and time ranges read the index in order)."""
    expressions = [path_index_part(part) for part in parts]
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]
    name = f"{PATH_INDEX_PREFIX}{digest}"
    columns = ", ".join([*expressions, '"timestamp"'])
    return name, f"CREATE INDEX IF NOT EXISTS {name} ON events ({columns})"


def _traits_table(name: str, key: str) -> Table:
    """``users`` and ``groups``: one row per id, traits merged across its calls."""
    return Table(
        name,
        metadata,
        Column(key, Text, primary_key=True),
        Column("traits", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
        Column("traits_updated_at", _TZ),
        Column("first_seen", _TZ, nullable=False),
        Column("last_seen", _TZ, nullable=False),
    )


users = _traits_table("users", "user_id")
groups = _traits_table("groups", "group_id")

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
    #: Indexes besides the primary key and ``(timestamp, message_id)``, each on
    #: ``(column, timestamp)``; created and dropped by ``migrate`` to match.
    indexes: list[IndexName] = msgspec.field(
        default_factory=lambda: ["user_id", "anonymous_id", "event"]
    )
    #: Indexes that hold JSON paths, for the filters the dashboard is used with most:
    #: each entry a list of filter columns and paths, ``["event", "properties.plan"]``,
    #: indexed with ``timestamp`` last; created and dropped by ``migrate`` to match.
    path_indexes: list[list[str]] = []
    #: Connections a large batch is COPYed on at once, each with a share of its rows
    #: and a transaction of its own (PostgreSQL runs one backend per connection: the
    #: server's part of a COPY, the indexes and the jsonb parsing, then uses that many
    #: cores). A batch of fewer than ``PARALLEL_MIN_ROWS`` rows uses one.
    parallel: Annotated[int, msgspec.Meta(ge=1, le=16)] = 2
    #: Keep ``users``, ``groups`` and ``identities`` current from the identity calls.
    normalise: bool = True
    #: Create or upgrade the schema when the sink starts (else: ``eventrouter migrate``).
    migrate_on_start: bool = True
    #: Keep the distinct users per day, week and month at write time
    #: (``users_active``), for the Active users page: read in milliseconds instead of
    #: counted from ``events``, at the cost of an upsert per user and period in every
    #: batch (bench/rollups.py: 35-54 k → 19-21 k events/s). Off: counted from events.
    #: With ``rollup_paths`` too, also when each user was last seen with each value of
    #: those paths (``users_seen``), for the page's breakdown by one: an upsert per
    #: user, value and scope (every event's, the event's own) in every batch
    #: (docs/postgres.md, "users_seen").
    unique_users: bool = False
    #: JSON paths (``properties.plan``, ``context.page.path``: as the breakdown's
    #: ``dimension`` takes them, at most 8) whose values are counted per hour at write
    #: time (``events_hourly_paths``), so that the dashboard's breakdown by one reads
    #: the rollup instead of every event in the range (docs/configuration.md has the
    #: measured cost). A path added is counted from ``events`` by ``migrate`` (at start
    #: with ``migrate_on_start``); one removed loses its counts.
    rollup_paths: list[str] = []

    def __post_init__(self) -> None:
        check_rollup_paths(self.rollup_paths)
        for parts in self.path_indexes:
            if not 1 <= len(parts) <= MAX_PATH_INDEX_PARTS:
                raise ValueError(
                    f"path_indexes: an entry holds 1 to {MAX_PATH_INDEX_PARTS} columns or paths"
                )
            if all(part in INDEX_COLUMNS for part in parts):
                raise ValueError(
                    f"path_indexes: {parts!r} holds no JSON path (columns go in indexes)"
                )
            path_index(parts)  # each part valid


# -- the hourly rollup (eventrouter.store.rollup) ------------------------------------------
_HOUR = "date_trunc('hour', timestamp AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
_ROLLUP_ROWS = (
    f"SELECT {_HOUR} AS hour, type, coalesce(event, '') AS event, source, count(*) AS n "
    "FROM {rows} GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
)
#: The table, and the statement trigger (with a transition table) that takes the rows a
#: statement deleted (erasure) off it. The rows a batch inserts are counted by the sink
#: itself, in the batch's transaction (:func:`_add_hourly`): since schema version 5 no
#: insert trigger, whose transition table (a copy of every inserted row, jsonb and all)
#: and aggregate cost PostgreSQL 2.4-3.7 µs of its 30-36 per row, for about 1 µs of the
#: sink's (bench/README.md, "PostgreSQL: where the server's time goes").
ROLLUP_DDL = (
    "CREATE TABLE IF NOT EXISTS events_hourly (hour timestamptz NOT NULL, "
    "type varchar(16) NOT NULL, event text NOT NULL, source text NOT NULL, "
    "n bigint NOT NULL, PRIMARY KEY (hour, type, event, source))",
    "CREATE OR REPLACE FUNCTION events_hourly_remove() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN UPDATE events_hourly h SET n = h.n - r.n FROM ("
    + _ROLLUP_ROWS.format(rows="removed")
    + ") r WHERE h.hour = r.hour AND h.type = r.type AND h.event = r.event "
    "AND h.source = r.source; "
    "DELETE FROM events_hourly WHERE n <= 0; RETURN NULL; END $$",
    "CREATE OR REPLACE TRIGGER events_hourly_delete AFTER DELETE ON events "
    "REFERENCING OLD TABLE AS removed FOR EACH STATEMENT "
    "EXECUTE FUNCTION events_hourly_remove()",
)
#: The insert trigger of schema version 4, which a sink of this version finds (one of
#: the older version recreated it at its start, during a rolling upgrade) and leaves the
#: counting to (:data:`_COUNTS_HOURLY`); ``migrate`` drops it.
ROLLUP_INSERT_TRIGGER = "events_hourly_insert"
ROLLUP_RETIRED = (
    f"DROP TRIGGER IF EXISTS {ROLLUP_INSERT_TRIGGER} ON events",
    "DROP FUNCTION IF EXISTS events_hourly_add()",
)
#: The sink's own count of the rows a part inserted: one upsert of a few rows per hour,
#: type, event and source, in key order, so that two writers' transactions lock them in
#: one order (one waits for the other's commit; they cannot deadlock).
_ADD_HOURLY = (
    "INSERT INTO events_hourly (hour, type, event, source, n) "
    "SELECT * FROM unnest(%s::timestamptz[], %s::text[], %s::text[], %s::text[], "
    "%s::bigint[]) AS r(hour, type, event, source, n) ORDER BY 1, 2, 3, 4 "
    "ON CONFLICT (hour, type, event, source) DO UPDATE SET n = events_hourly.n + EXCLUDED.n"
)
#: Whether this transaction counts its rows into ``events_hourly`` itself: the table
#: exists (a database not yet migrated to schema version 4 has none) and no insert
#: trigger of schema version 4 does. Asked once ``events`` is locked against DDL (a
#: ``migrate`` creating the table or an older writer recreating the trigger waits for
#: this transaction, and this one for theirs), so the answer holds until it commits.
#: The second column: whether ``events_hourly_paths_kept`` exists (then the transaction
#: counts its rows for the paths listed there, read after the same lock: a migration
#: that lists a path holds a lock on ``events`` that excludes this one's). The third:
#: whether ``users_seen_kept`` exists (then it keeps ``users_seen`` for the paths listed
#: in both, the same way: :func:`_add_paths`).
_COUNTS_HOURLY = (
    "SELECT to_regclass('events_hourly') IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "
    f"pg_trigger WHERE tgrelid = 'events'::regclass AND tgname = '{ROLLUP_INSERT_TRIGGER}'), "
    "to_regclass('events_hourly_paths_kept') IS NOT NULL, "
    "to_regclass('users_seen_kept') IS NOT NULL"
)
#: Distinct users per UTC day (``d``), week from Monday (``w``) and month (``m``): one row
#: per period and user with their events (so that a deletion knows when a user's last
#: event of a period went), and the users per period. A user is ``user_id``, else
#: ``anonymous_id``.
_KINDS = "(VALUES ('d', 'day'), ('w', 'week'), ('m', 'month')) AS k(kind, unit)"
_USER_PERIODS = (
    "SELECT k.kind, date_trunc(k.unit, r.timestamp AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' "
    "AS start, coalesce(r.user_id, r.anonymous_id) AS user_key, count(*) AS n "
    f"FROM {{rows}} r CROSS JOIN {_KINDS} "
    "WHERE coalesce(r.user_id, r.anonymous_id) IS NOT NULL {where}"
    "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
)
USERS_DDL = (
    "CREATE TABLE IF NOT EXISTS users_active (kind char(1) NOT NULL, start timestamptz "
    "NOT NULL, user_key text NOT NULL, n bigint NOT NULL, PRIMARY KEY (kind, start, user_key))",
    "CREATE TABLE IF NOT EXISTS users_active_counts (kind char(1) NOT NULL, "
    "start timestamptz NOT NULL, users bigint NOT NULL, PRIMARY KEY (kind, start))",
    # Rows whose last event went: found without reading the table.
    "CREATE INDEX IF NOT EXISTS ix_users_active_gone ON users_active (kind) WHERE n <= 0",
    "CREATE OR REPLACE FUNCTION users_active_add() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN WITH up AS (INSERT INTO users_active (kind, start, user_key, n) "
    + _USER_PERIODS.format(rows="added", where="")
    + " ON CONFLICT (kind, start, user_key) DO UPDATE SET n = users_active.n + EXCLUDED.n "
    "RETURNING kind, start, (xmax = 0) AS fresh) "
    "INSERT INTO users_active_counts (kind, start, users) "
    "SELECT kind, start, count(*) FROM up WHERE fresh GROUP BY 1, 2 ORDER BY 1, 2 "
    "ON CONFLICT (kind, start) DO UPDATE SET users = users_active_counts.users + "
    "EXCLUDED.users; RETURN NULL; END $$",
    "CREATE OR REPLACE FUNCTION users_active_remove() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN UPDATE users_active a SET n = a.n - p.n FROM ("
    + _USER_PERIODS.format(rows="removed", where="")
    + ") p WHERE a.kind = p.kind AND a.start = p.start AND a.user_key = p.user_key; "
    "WITH gone AS (DELETE FROM users_active WHERE n <= 0 RETURNING kind, start) "
    "UPDATE users_active_counts c SET users = c.users - g.users FROM (SELECT kind, start, "
    "count(*) AS users FROM gone GROUP BY 1, 2) g WHERE c.kind = g.kind AND c.start = g.start; "
    "DELETE FROM users_active_counts WHERE users <= 0; RETURN NULL; END $$",
    "CREATE OR REPLACE TRIGGER users_active_insert AFTER INSERT ON events "
    "REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION users_active_add()",
    "CREATE OR REPLACE TRIGGER users_active_delete AFTER DELETE ON events "
    "REFERENCING OLD TABLE AS removed FOR EACH STATEMENT "
    "EXECUTE FUNCTION users_active_remove()",
)
#: Counting ``users_active`` again from ``events`` for the periods of kind ``:kind``
#: starting in ``[:low, :high)``: after a whole partition is dropped (retention), the
#: periods it overlapped lose users only ``events`` can tell.
USERS_RECOUNT = (
    "DELETE FROM users_active WHERE kind = :kind AND start >= :low AND start < :high",
    "INSERT INTO users_active (kind, start, user_key, n) "
    "SELECT * FROM ("
    + _USER_PERIODS.format(
        rows="events",
        where="AND r.timestamp >= :low AND r.timestamp < :high ",
    )
    + ") p WHERE p.kind = :kind",
    "DELETE FROM users_active_counts WHERE kind = :kind AND start >= :low AND start < :high",
    "INSERT INTO users_active_counts (kind, start, users) SELECT kind, start, count(*) "
    "FROM users_active WHERE kind = :kind AND start >= :low AND start < :high GROUP BY 1, 2",
)
USERS_DROP = (
    "DROP TRIGGER IF EXISTS users_active_insert ON events",
    "DROP TRIGGER IF EXISTS users_active_delete ON events",
    "DROP TABLE IF EXISTS users_active, users_active_counts",
)
USERS_BACKFILL = (
    "INSERT INTO users_active (kind, start, user_key, n) "
    + _USER_PERIODS.format(rows="events", where=""),
    "INSERT INTO users_active_counts (kind, start, users) "
    "SELECT kind, start, count(*) FROM users_active GROUP BY 1, 2",
)
# -- each user's first and last event per event name and day (rollup.event_users_daily) --
#: The groups of the rows of ``{rows}`` (a relation ``r``): per event name, user and UTC
#: day, the first and last time and how many, in key order.
_DAILY_GROUPS = (
    "SELECT r.event, coalesce(r.user_id, r.anonymous_id) AS user_key, "
    "(r.timestamp AT TIME ZONE 'UTC')::date - DATE '1970-01-01' AS day, "
    "min(r.timestamp) AS first, "
    "max(r.timestamp) AS last, count(*) AS n FROM {rows} r WHERE r.event IS NOT NULL "
    "AND coalesce(r.user_id, r.anonymous_id) IS NOT NULL GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
)
_DAILY_ADD = (
    "INSERT INTO event_users_daily (event, user_key, day, first, last, n) {groups} "
    "ON CONFLICT (event, user_key, day) DO UPDATE SET "
    "first = least(event_users_daily.first, EXCLUDED.first), "
    "last = greatest(event_users_daily.last, EXCLUDED.last), "
    "n = event_users_daily.n + EXCLUDED.n"
)
_DAILY_KEY = "d.event = x.event AND d.user_key = x.user_key AND d.day = x.day"
#: The groups a statement deleted from, counted again from the events left (their
#: first and last times may have gone with them): ``event_user`` finds a group's events
#: where kept, else the day's events of that name.
_DAILY_REMOVE = (
    "CREATE OR REPLACE FUNCTION event_users_daily_remove() RETURNS trigger "
    "LANGUAGE plpgsql AS $$ BEGIN "
    "WITH c AS (SELECT DISTINCT event, user_key, day FROM ("
    + _DAILY_GROUPS.format(rows="removed")
    + ") g), x AS (SELECT c.event, c.user_key, c.day, min(e.timestamp) AS first, "
    "max(e.timestamp) AS last, count(e.timestamp) AS n FROM c LEFT JOIN events e "
    "ON e.event = c.event AND coalesce(e.user_id, e.anonymous_id) = c.user_key "
    "AND e.timestamp >= (DATE '1970-01-01' + c.day) AT TIME ZONE 'UTC' "
    "AND e.timestamp < (DATE '1970-01-01' + c.day + 1) AT TIME ZONE 'UTC' GROUP BY 1, 2, 3), "
    f"gone AS (DELETE FROM event_users_daily d USING x WHERE {_DAILY_KEY} AND x.n = 0) "
    "UPDATE event_users_daily d SET first = x.first, last = x.last, n = x.n FROM x "
    f"WHERE {_DAILY_KEY} AND x.n > 0; RETURN NULL; END $$"
)
DAILY_DDL = (
    "CREATE TABLE IF NOT EXISTS event_users_daily (event text NOT NULL, "
    "user_key text NOT NULL, day integer NOT NULL, first timestamptz NOT NULL, "
    "last timestamptz NOT NULL, n bigint NOT NULL, PRIMARY KEY (event, user_key, day))",
    "CREATE OR REPLACE FUNCTION event_users_daily_add() RETURNS trigger LANGUAGE plpgsql "
    "AS $$ BEGIN "
    + _DAILY_ADD.format(groups=_DAILY_GROUPS.format(rows="added"))
    + "; RETURN NULL; END $$",
    _DAILY_REMOVE,
    "CREATE OR REPLACE TRIGGER event_users_daily_insert AFTER INSERT ON events "
    "REFERENCING NEW TABLE AS added FOR EACH STATEMENT "
    "EXECUTE FUNCTION event_users_daily_add()",
    "CREATE OR REPLACE TRIGGER event_users_daily_delete AFTER DELETE ON events "
    "REFERENCING OLD TABLE AS removed FOR EACH STATEMENT "
    "EXECUTE FUNCTION event_users_daily_remove()",
)
DAILY_BACKFILL = _DAILY_ADD.format(groups=_DAILY_GROUPS.format(rows="events"))
#: The index funnels and retention read their entries by: one event's groups of a range
#: of days, with each group's user and first time, read from the index alone (a funnel's
#: entries on 10,000,000 events: 1.32 M of 7.3 M rows, 0.3 s where reading the table
#: took 1.2-1.7 s). Without ``last``: the writers' updates of ``last`` and ``n`` change
#: no indexed column and stay HOT (only an earlier event of a group moves ``first``).
DAILY_INDEX_NAME = "event_users_daily_event_day"
DAILY_INDEX = (
    f"CREATE INDEX IF NOT EXISTS {DAILY_INDEX_NAME} ON event_users_daily "
    "(event, day, user_key) INCLUDE (first)"
)
DAILY_DROP = (
    "DROP TRIGGER IF EXISTS event_users_daily_insert ON events",
    "DROP TRIGGER IF EXISTS event_users_daily_delete ON events",
    "DROP FUNCTION IF EXISTS event_users_daily_add(), event_users_daily_remove()",
    "DROP TABLE IF EXISTS event_users_daily",
)
#: Filled from ``events`` once, when the table is made (schema 3 → 4), in the migration's
#: transaction, which holds a lock that keeps writers out until it commits.
ROLLUP_BACKFILL = "INSERT INTO events_hourly (hour, type, event, source, n) " + _ROLLUP_ROWS.format(
    rows="events"
)


# -- hourly counts per value of configured JSON paths (eventrouter.store.rollup) ----------
#: The document a kept path ``k`` reads in the row ``r`` (its ``col``).
_PATH_DOCUMENT = "CASE k.col " + " ".join(f"WHEN '{c}' THEN r.{c}" for c in JSON_COLUMNS) + " END"
#: The counts per kept path, hour, type, event, source and value of the rows of
#: ``{rows}`` (a relation ``r`` with the stored columns' names: ``events``, a trigger's
#: transition table, a batch's arrays) matching ``{where}``, in key order. ``value`` is
#: ``#>>``, which ``PostgresDialect.json_text`` reads with; ``digest`` keys it (a btree
#: key cannot hold a long string): its sha-256, and the empty string (no sha-256 is)
#: for no value (a missing key, a JSON null: NULL, as ``#>>`` gives them).
_PATH_COUNTS = (
    "SELECT path, hour, type, event, source, "
    "coalesce(sha256(convert_to(value, 'UTF8')), ''::bytea) AS digest, value, count(*) AS n "
    "FROM (SELECT k.path, date_trunc('hour', r.timestamp AT TIME ZONE 'UTC') AT TIME ZONE "
    "'UTC' AS hour, r.type, coalesce(r.event, '') AS event, r.source, "
    f"({_PATH_DOCUMENT}) #>> k.segs AS value "
    "FROM {rows} CROSS JOIN events_hourly_paths_kept k{where}) x "
    "GROUP BY path, hour, type, event, source, value ORDER BY 1, 2, 3, 4, 5, 6"
)
_PATHS_KEY = "(path, hour, type, event, source, digest)"
_PATHS_INSERT = (
    "INSERT INTO events_hourly_paths (path, hour, type, event, source, digest, value, n) "
)
#: The delete trigger's function: takes the deleted rows' counts off.
_PATHS_FUNCTION = (
    "CREATE OR REPLACE FUNCTION events_hourly_paths_remove() RETURNS trigger "
    "LANGUAGE plpgsql AS $$ BEGIN UPDATE events_hourly_paths h SET n = h.n - c.n FROM ("
    + _PATH_COUNTS.format(rows="removed r", where="")
    + ") c WHERE h.path = c.path AND h.hour = c.hour AND h.type = c.type "
    "AND h.event = c.event AND h.source = c.source AND h.digest = c.digest; "
    "DELETE FROM events_hourly_paths WHERE n <= 0; RETURN NULL; END $$"
)
PATHS_DDL = (
    "CREATE TABLE IF NOT EXISTS events_hourly_paths (path text NOT NULL, "
    "hour timestamptz NOT NULL, type varchar(16) NOT NULL, event text NOT NULL, "
    "source text NOT NULL, digest bytea NOT NULL, value text, n bigint NOT NULL, "
    f"PRIMARY KEY {_PATHS_KEY})",
    # ``segs``: the path as ``#>>`` takes it.
    "CREATE TABLE IF NOT EXISTS events_hourly_paths_kept (path text PRIMARY KEY, "
    "col text NOT NULL, segs text[] NOT NULL)",
    # Rows whose last event went (erasure): found without reading the table.
    "CREATE INDEX IF NOT EXISTS ix_events_hourly_paths_gone ON events_hourly_paths (path) "
    "WHERE n <= 0",
    _PATHS_FUNCTION,
    "CREATE OR REPLACE TRIGGER events_hourly_paths_delete AFTER DELETE ON events "
    "REFERENCING OLD TABLE AS removed FOR EACH STATEMENT "
    "EXECUTE FUNCTION events_hourly_paths_remove()",
)
PATHS_DROP = (
    "DROP TRIGGER IF EXISTS events_hourly_paths_delete ON events",
    "DROP FUNCTION IF EXISTS events_hourly_paths_remove()",
    "DROP TABLE IF EXISTS events_hourly_paths, events_hourly_paths_kept",
)
#: Filling a path just listed in ``events_hourly_paths_kept`` from ``events``.
PATHS_BACKFILL = _PATHS_INSERT + _PATH_COUNTS.format(rows="events r", where=" WHERE k.path = :path")
#: The batch's counts per kept path (:func:`_add_paths`), grouped by the sink: per hour,
#: type, event, source and path, the value the sink read from the JSON itself (``doc``
#: NULL), or the JSON text of the column for PostgreSQL to read (``doc``: a value that
#: is not a string, or a path through something other than objects), as
#: :data:`_PATH_COUNTS` reads it; summed again after that (two documents may give one
#: value) and upserted in key order, as :data:`_ADD_HOURLY` (two writers cannot
#: deadlock).
_ADD_PATHS = (
    _PATHS_INSERT + "SELECT path, hour, type, event, source, "
    "coalesce(sha256(convert_to(value, 'UTF8')), ''::bytea) AS digest, value, sum(n) AS n "
    "FROM (SELECT r.path, r.hour, r.type, r.event, r.source, r.n, "
    "CASE WHEN r.doc IS NULL THEN r.value ELSE r.doc::jsonb #>> k.segs END AS value "
    "FROM unnest(%s::timestamptz[], %s::text[], %s::text[], %s::text[], %s::text[], "
    "%s::text[], %s::text[], %s::bigint[]) AS r(hour, type, event, source, path, value, "
    "doc, n) JOIN events_hourly_paths_kept k ON k.path = r.path) x "
    "GROUP BY path, hour, type, event, source, value ORDER BY 1, 2, 3, 4, 5, 6 "
    f"ON CONFLICT {_PATHS_KEY} DO UPDATE SET n = events_hourly_paths.n + EXCLUDED.n"
)
#: :data:`_ADD_PATHS` when the sink read every value itself (no ``doc``): its rows, one
#: per key with the value's ``digest`` computed by the sink, upserted as they are.
_ADD_PATHS_READ = (
    _PATHS_INSERT + "SELECT * FROM unnest(%s::text[], %s::timestamptz[], %s::text[], "
    "%s::text[], %s::text[], %s::bytea[], %s::text[], %s::bigint[]) ORDER BY 1, 2, 3, 4, 5, 6 "
    f"ON CONFLICT {_PATHS_KEY} DO UPDATE SET n = events_hourly_paths.n + EXCLUDED.n"
)
#: The kept paths, with the column and segments each reads and whether ``users_seen``
#: keeps it too (``{seen}``: ``false`` where there is no ``users_seen_kept``,
#: :data:`_SEEN_LISTED` where there is); and no JIT for the rest of the transaction:
#: the planner cannot know how many rows the batch's arrays hold, and with JIT,
#: compiling :data:`_ADD_PATHS` took 0.6 s of a 0.9 s statement over 5,000 rows
#: (EXPLAIN ANALYZE), 120 µs per event.
_KEPT_PATHS = (
    "SELECT k.path, k.col, k.segs, {seen}, set_config('jit', 'off', true) "
    "FROM events_hourly_paths_kept k"
)
_SEEN_LISTED = "EXISTS (SELECT 1 FROM users_seen_kept u WHERE u.path = k.path)"


def ensure_paths(connection: Any, paths: Sequence[str]) -> list[str]:
    """Keep hourly counts of exactly the JSON ``paths`` (``rollup_paths``, validated):
    a path not kept yet is listed in ``events_hourly_paths_kept`` and counted from
    ``events`` in the caller's transaction (after any rows left by an earlier listing
    are cleared), a path no longer wanted loses its rows and listing, and no path at all
    drops the tables, the trigger and its function. Every change first takes a lock on
    ``events`` that keeps writers out until the transaction commits (writers count the
    listed paths, read after they lock ``events``: see :data:`_COUNTS_HOURLY`). What
    changed."""
    kept_table = connection.execute(text("SELECT to_regclass('events_hourly_paths_kept')")).scalar()
    if not paths:
        if (
            kept_table is None
            and not connection.execute(text("SELECT to_regclass('events_hourly_paths')")).scalar()
        ):
            return []
        connection.execute(text("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE"))
        for statement in PATHS_DROP:
            connection.execute(text(statement))
        return ["dropped events_hourly_paths"]
    wanted = dict(zip(paths, check_rollup_paths(list(paths)), strict=True))
    kept = set()
    if kept_table is not None:
        kept = set(connection.execute(text("SELECT path FROM events_hourly_paths_kept")).scalars())
    if kept_table is not None and kept == set(wanted):
        connection.execute(text(_PATHS_FUNCTION))  # the function follows this release's
        return []
    connection.execute(text("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE"))
    for statement in PATHS_DDL:
        connection.execute(text(statement))
    changes = []
    for path in sorted(kept - set(wanted)):
        _forget_seen(connection, path)
        for table in ("events_hourly_paths", "events_hourly_paths_kept"):
            connection.execute(text(f"DELETE FROM {table} WHERE path = :path"), {"path": path})
        changes.append(f"events_hourly_paths: dropped {path}")
    for path, (column, segments) in wanted.items():
        if path in kept:
            continue
        _forget_seen(connection, path)  # filled again by ensure_seen, after this
        connection.execute(
            text("DELETE FROM events_hourly_paths WHERE path = :path"), {"path": path}
        )
        connection.execute(
            text(
                "INSERT INTO events_hourly_paths_kept (path, col, segs) VALUES (:path, :col, :segs)"
            ),
            {"path": path, "col": column, "segs": list(segments)},
        )
        connection.execute(text(PATHS_BACKFILL), {"path": path})
        changes.append(f"events_hourly_paths: counted {path}")
    if any(change.startswith("events_hourly_paths: counted") for change in changes):
        analyze(connection, "events_hourly_paths")
    return changes


# -- when each user was last seen with each value of a kept path (rollup.users_seen) -------
#: The user a row ``r`` counts for (none: the row counts nowhere).
_USER_KEY = "coalesce(r.user_id, r.anonymous_id)"
#: The paths ``users_seen`` keeps: listed in ``users_seen_kept`` and kept hourly (whose
#: listing says which column and segments a path reads).
_SEEN_PATHS = "users_seen_kept u JOIN events_hourly_paths_kept k ON k.path = u.path"
#: Each row counts in two scopes: every event's (rollup.ALL_EVENTS) and its own event's
#: (rollup.event_scope).
_SCOPES = "LATERAL (VALUES (''), ('e' || coalesce(r.event, ''))) AS s(event)"
#: ``digest`` as ``events_hourly_paths`` keeps it (:data:`_PATH_COUNTS`, :func:`_digest`).
_VALUE_DIGEST = "coalesce(sha256(convert_to(value, 'UTF8')), ''::bytea)"
_SEEN_KEY = "(path, event, digest, user_key)"
_SEEN_INSERT = "INSERT INTO users_seen (path, event, digest, value, user_key, last, n) "
_SEEN_UPSERT = (
    f"ON CONFLICT {_SEEN_KEY} DO UPDATE SET last = greatest(users_seen.last, EXCLUDED.last), "
    "n = users_seen.n + EXCLUDED.n"
)
#: Per kept path, scope, value and user, the latest time and the number of the rows of
#: ``{rows}`` (a relation ``r`` with the stored columns' names: ``events``, a trigger's
#: transition table, a partition) matching ``{where}``, in key order; ``value`` and
#: ``digest`` as in :data:`_PATH_COUNTS`.
_SEEN_GROUPS = (
    f"SELECT path, event, {_VALUE_DIGEST} AS digest, value, user_key, max(t) AS last, "
    "count(*) AS n FROM (SELECT k.path, s.event, "
    f"({_PATH_DOCUMENT}) #>> k.segs AS value, {_USER_KEY} AS user_key, r.timestamp AS t "
    f"FROM {{rows}} CROSS JOIN {_SEEN_PATHS} CROSS JOIN {_SCOPES} "
    f"WHERE {_USER_KEY} IS NOT NULL{{where}}) x "
    "GROUP BY path, event, value, user_key ORDER BY 1, 2, 3, 5"
)
#: The latest time of the events a ``users_seen`` row ``s`` counts (its path's listing
#: ``k``), read from ``events``: its user's through the ``user_id`` index, and the
#: anonymous id's events without a user id through the ``anonymous_id`` index (the
#: user is their coalesce); then the scope and the value.
_SEEN_LAST = (
    "greatest("
    + ", ".join(
        f"(SELECT max(r.timestamp) FROM events r WHERE {who} "
        "AND (s.event = '' OR 'e' || coalesce(r.event, '') = s.event) "
        f"AND ({_PATH_DOCUMENT}) #>> k.segs IS NOT DISTINCT FROM s.value)"
        for who in (
            "r.user_id = s.user_key",
            "r.user_id IS NULL AND r.anonymous_id = s.user_key",
        )
    )
    + ")"
)


def _take_seen(groups: str) -> str:
    """The statement that takes rows gone from ``events`` off ``users_seen``, given
    their :data:`_SEEN_GROUPS` as ``groups`` (a query): a row all of whose events went
    is deleted; any other has its ``n`` lowered, and, where its latest event may have
    gone (its ``last`` at or before theirs), reads its ``last`` again from ``events``
    (which no longer holds them). Rows are found by key (no index on ``n``, which would
    make every upsert of the writers a non-HOT update); the two parts touch different
    rows, as a statement's parts must."""
    key = (
        "s.path = c.path AND s.event = c.event AND s.digest = c.digest AND s.user_key = c.user_key"
    )
    return (
        f"WITH c AS MATERIALIZED ({groups}), "
        f"gone AS (DELETE FROM users_seen s USING c WHERE {key} AND s.n <= c.n) "
        "UPDATE users_seen s SET n = s.n - c.n, last = CASE WHEN s.last <= c.last "
        f"THEN coalesce({_SEEN_LAST}, s.last) ELSE s.last END "
        f"FROM c JOIN events_hourly_paths_kept k ON k.path = c.path WHERE {key} AND s.n > c.n"
    )


#: ``users_seen``'s fillfactor (see :data:`SEEN_DDL`).
SEEN_FILLFACTOR = 85
#: The delete trigger's function: takes the deleted rows off (erasure may delete some
#: of a user's events only: an anonymous id's events without a user id).
_SEEN_FUNCTION = (
    "CREATE OR REPLACE FUNCTION users_seen_remove() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN " + _take_seen(_SEEN_GROUPS.format(rows="removed r", where="")) + "; RETURN NULL; END $$"
)
SEEN_DDL = (
    # Room on each page for the upserts' new row versions (HOT updates: no new index
    # entry when the row's new version fits on its page).
    # The key's text compared bytewise (COLLATE "C": memcmp, where a database's
    # C.UTF-8 or en_US calls strcoll on PostgreSQL before 17); it is only matched
    # for equality. ``value`` keeps the database's collation (the reader sorts by it).
    'CREATE TABLE IF NOT EXISTS users_seen (path text COLLATE "C" NOT NULL, '
    'event text COLLATE "C" NOT NULL, digest bytea NOT NULL, value text, '
    'user_key text COLLATE "C" NOT NULL, last timestamptz NOT NULL, '
    f"n bigint NOT NULL, PRIMARY KEY {_SEEN_KEY}) WITH (fillfactor = {SEEN_FILLFACTOR})",
    "CREATE TABLE IF NOT EXISTS users_seen_kept (path text PRIMARY KEY)",
    _SEEN_FUNCTION,
    "CREATE OR REPLACE TRIGGER users_seen_delete AFTER DELETE ON events "
    "REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION users_seen_remove()",
)
SEEN_DROP = (
    "DROP TRIGGER IF EXISTS users_seen_delete ON events",
    "DROP FUNCTION IF EXISTS users_seen_remove()",
    "DROP TABLE IF EXISTS users_seen, users_seen_kept",
)
#: Filling a path just listed in ``users_seen_kept`` from ``events``.
SEEN_BACKFILL = _SEEN_INSERT + _SEEN_GROUPS.format(rows="events r", where=" AND k.path = :path")
#: Where a part's ``users_seen`` rows go first (:func:`_add_seen`): its own session's
#: table, emptied at commit. A binary COPY costs the sink about 0.7 µs per row where
#: the same rows as ``unnest`` arrays cost 10 (psycopg adapts each array element).
_SEEN_STAGING = (
    'CREATE TEMP TABLE IF NOT EXISTS users_seen_batch (path text COLLATE "C", '
    'event text COLLATE "C", digest bytea, value text, doc text, user_key text COLLATE "C", '
    "last timestamptz, n bigint) ON COMMIT DELETE ROWS"
)
_SEEN_COPY = (
    "COPY users_seen_batch (path, event, digest, value, doc, user_key, last, n) "
    "FROM STDIN (FORMAT BINARY)"
)
_SEEN_COPY_TYPES = ("text", "text", "bytea", "text", "text", "text", "timestamptz", "int8")
#: The staged rows, grouped by the sink per path, scope, value it read (``doc`` NULL)
#: or JSON text for PostgreSQL to read (as :data:`_ADD_PATHS`) and user; grouped again
#: after that (two documents may give one value) and upserted in key order (two
#: writers cannot deadlock).
_ADD_SEEN = (
    _SEEN_INSERT + f"SELECT path, event, {_VALUE_DIGEST} AS digest, value, user_key, "
    "max(last) AS last, sum(n) AS n FROM (SELECT r.path, r.event, r.user_key, r.last, r.n, "
    "CASE WHEN r.doc IS NULL THEN r.value ELSE r.doc::jsonb #>> k.segs END AS value "
    "FROM users_seen_batch r JOIN events_hourly_paths_kept k ON k.path = r.path) x "
    "GROUP BY path, event, value, user_key ORDER BY 1, 2, 3, 5 " + _SEEN_UPSERT
)
#: :data:`_ADD_SEEN` when the sink read every value itself: the staged rows, one per
#: key with the ``digest`` computed by the sink, upserted as they are.
_ADD_SEEN_READ = (
    _SEEN_INSERT + "SELECT path, event, digest, value, user_key, last, n "
    "FROM users_seen_batch ORDER BY 1, 2, 3, 5 " + _SEEN_UPSERT
)


def _unlist_seen(connection: Any, path: str) -> None:
    """Unlist ``path`` from ``users_seen`` and drop its rows."""
    for table in ("users_seen", "users_seen_kept"):
        connection.execute(text(f"DELETE FROM {table} WHERE path = :path"), {"path": path})


def _forget_seen(connection: Any, path: str) -> None:
    """:func:`_unlist_seen`, where ``users_seen`` is kept (a path whose hourly counts
    are dropped or made again: :func:`ensure_seen` fills it again)."""
    if connection.execute(text("SELECT to_regclass('users_seen_kept')")).scalar():
        _unlist_seen(connection, path)


def drop_seen(connection: Any) -> list[str]:
    """Drop ``users_seen``, its listing, its trigger and function, if there (no
    ``unique_users`` or no ``rollup_paths``); what changed."""
    found = connection.execute(
        text(
            "SELECT to_regclass('users_seen') IS NOT NULL OR to_regclass('users_seen_kept') "
            "IS NOT NULL OR to_regprocedure('users_seen_remove()') IS NOT NULL"
        )
    ).scalar()
    if not found:
        return []
    connection.execute(text("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE"))
    for statement in SEEN_DROP:
        connection.execute(text(statement))
    return ["dropped users_seen"]


def ensure_seen(connection: Any, paths: Sequence[str]) -> list[str]:
    """Keep ``users_seen`` for exactly the kept JSON ``paths`` (``unique_users`` on and
    ``rollup_paths``, after :func:`ensure_paths` listed them): a path not listed in
    ``users_seen_kept`` yet is listed and filled from ``events`` in the caller's
    transaction (rows an interrupted run left cleared first), one no longer kept loses
    its rows and its listing. Every change first takes the lock on ``events`` that
    :func:`ensure_paths` takes (writers count the paths listed in both, read after they
    lock ``events``: see :data:`_COUNTS_HOURLY`). What changed."""
    listed_table = connection.execute(text("SELECT to_regclass('users_seen_kept')")).scalar()
    table = connection.execute(text("SELECT to_regclass('users_seen')")).scalar()
    listed = set()
    if listed_table is not None:
        listed = set(connection.execute(text("SELECT path FROM users_seen_kept")).scalars())
    if listed_table is not None and table is not None and listed == set(paths):
        connection.execute(text(_SEEN_FUNCTION))  # the function follows this release's
        return []
    connection.execute(text("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE"))
    for statement in SEEN_DDL:
        connection.execute(text(statement))
    changes = []
    for path in sorted(listed - set(paths)):
        _unlist_seen(connection, path)
        changes.append(f"users_seen: dropped {path}")
    for path in paths:
        if path in listed:
            continue
        _unlist_seen(connection, path)  # rows an interrupted run left
        connection.execute(
            text("INSERT INTO users_seen_kept (path) VALUES (:path)"), {"path": path}
        )
        connection.execute(text(SEEN_BACKFILL), {"path": path})
        changes.append(f"users_seen: filled {path}")
    if any(change.startswith("users_seen: filled") for change in changes):
        analyze(connection, "users_seen")
    return changes


def _drop_seen_partition(connection: Any, partition: str) -> None:
    """Drop ``partition`` (retention: no trigger fires), taking its rows off
    ``users_seen`` in the caller's transaction: grouped before the drop, under a lock
    on ``events`` that keeps writers out until the transaction commits (a row a writer
    added to it meanwhile would stay counted), then taken off as erasure takes rows
    off (:func:`_take_seen`). The rows left are all later than the partition's but for
    ``events_default``'s strays, so a ``last`` is read again only for those."""
    connection.execute(text("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE"))
    exists = connection.execute(text("SELECT to_regclass(:name)"), {"name": partition}).scalar()
    if exists is not None:
        # The name is one partition_name made (digits), never input.
        groups = _SEEN_GROUPS.format(rows=f"{partition} r", where="")
        connection.execute(text(f"CREATE TEMP TABLE users_seen_dropped ON COMMIT DROP AS {groups}"))
    connection.execute(text(f"DROP TABLE IF EXISTS {partition}"))
    if exists is not None:
        connection.execute(text(_take_seen("SELECT * FROM users_seen_dropped")))
        connection.execute(text("DROP TABLE users_seen_dropped"))


def ensure_rollup(connection: Any, users: bool = False) -> list[str]:
    """Create ``events_hourly`` and its delete trigger (idempotent), filling the table
    from ``events`` when it is new, and drop schema version 4's insert trigger; with
    ``users``, the same for ``users_active`` and ``users_active_counts``, and without,
    drop those. What changed. In the caller's
    transaction: an exclusive lock on ``events`` keeps every writer out until it
    commits, so no row is counted twice or missed."""
    hourly = connection.execute(text("SELECT to_regclass('events_hourly')")).scalar()
    counted = connection.execute(text("SELECT to_regclass('users_active_counts')")).scalar()
    changes = []
    insert_trigger = connection.execute(
        text("SELECT 1 FROM pg_trigger WHERE tgrelid = 'events'::regclass AND tgname = :name"),
        {"name": ROLLUP_INSERT_TRIGGER},
    ).scalar()
    if insert_trigger:
        # Schema 4 → 5: writers count their rows from now on (see _COUNTS_HOURLY).
        for statement in ROLLUP_RETIRED:
            connection.execute(text(statement))
        changes.append("the sink counts events_hourly (insert trigger dropped)")
    if hourly is not None and (counted is not None) == users:
        # The functions follow this release's.
        for statement in (*ROLLUP_DDL[1:], *(USERS_DDL[3:] if users else ())):
            connection.execute(text(statement))
        return changes + ensure_daily(connection, users)
    connection.execute(text("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE"))
    if hourly is None:
        for statement in (*ROLLUP_DDL, ROLLUP_BACKFILL):
            connection.execute(text(statement))
        analyze(connection, "events_hourly")
        changes.append("created events_hourly")
    if users and counted is None:
        connection.execute(text("DROP TABLE IF EXISTS users_active"))
        for statement in (*USERS_DDL, *USERS_BACKFILL):
            connection.execute(text(statement))
        analyze(connection, "users_active", "users_active_counts")
        changes.append("created users_active")
    elif not users and counted is not None:
        for statement in USERS_DROP:
            connection.execute(text(statement))
        changes.append("dropped users_active")
    return changes + ensure_daily(connection, users)


def analyze(connection: Any, *tables: str) -> None:
    """``ANALYZE`` tables a migration just filled, in its transaction (which ``ANALYZE``
    samples, its own rows included): until then the planner has no statistics of
    them, and with autovacuum off (or before it comes round) took an index scan over
    1.3 M rows of ``event_users_daily`` for a few hundred (retention on 10,000,000
    events: 2.2 s, with statistics 1.3 s; bench/README.md)."""
    for table in tables:
        connection.execute(text(f"ANALYZE {table}"))


def ensure_daily(connection: Any, keep: bool) -> list[str]:
    """Keep ``event_users_daily`` (with ``keep``: created and filled from ``events``
    with every writer locked out, else its functions and triggers brought to this
    release's), or drop it. In the caller's transaction; what changed."""
    daily = connection.execute(text("SELECT to_regclass('event_users_daily')")).scalar()
    if keep and daily is None:
        connection.execute(text("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE"))
        for statement in (*DAILY_DDL, DAILY_BACKFILL, DAILY_INDEX):
            connection.execute(text(statement))
        analyze(connection, "event_users_daily")
        return ["created event_users_daily"]
    if keep:
        for statement in DAILY_DDL[1:]:
            connection.execute(text(statement))
        index = connection.execute(text(f"SELECT to_regclass('{DAILY_INDEX_NAME}')")).scalar()
        if index is None:  # a table made before the index
            connection.execute(text(DAILY_INDEX))
            return [f"created index {DAILY_INDEX_NAME}"]
        return []
    if daily is None:
        return []
    for statement in DAILY_DROP:
        connection.execute(text(statement))
    return ["dropped event_users_daily"]


def _recount_users(connection: Any, start: datetime, end: datetime) -> None:
    """Count the users of every day, week and month that overlaps ``[start, end)`` again
    from ``events`` (:data:`USERS_RECOUNT`), in the caller's transaction."""
    for kind, unit in (("d", "day"), ("w", "week"), ("m", "month")):
        low = connection.execute(
            text(
                "SELECT date_trunc(:unit, CAST(:t AS timestamptz) AT TIME ZONE 'UTC') "
                "AT TIME ZONE 'UTC'"
            ),
            {"unit": unit, "t": start},
        ).scalar()
        high = connection.execute(
            text(
                "SELECT (date_trunc(:unit, CAST(:t AS timestamptz) AT TIME ZONE 'UTC') "
                "+ CAST('1 ' || :unit AS interval)) AT TIME ZONE 'UTC'"
            ),
            {"unit": unit, "t": end - timedelta(microseconds=1)},
        ).scalar()
        for statement in USERS_RECOUNT:
            connection.execute(text(statement), {"kind": kind, "low": low, "high": high})


# -- partitions ----------------------------------------------------------------------------
_PARTITIONS_SQL = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = to_regclass('events') ORDER BY c.relname"
)
_PRIMARY_KEY_SQL = (
    "SELECT a.attname FROM pg_constraint c "
    "CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, n) "
    "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum "
    "WHERE c.conrelid = to_regclass('events') AND c.contype = 'p' ORDER BY k.n"
)


def _leaf_partitions(connection: Any) -> list[str]:
    """The partitions of ``events`` (``events_default`` among them)."""
    return list(connection.execute(text(_PARTITIONS_SQL)).scalars())


def _primary_key(connection: Any) -> tuple[str, ...]:
    """The columns of the primary key of ``events``, in order (none: no table yet)."""
    return tuple(connection.execute(text(_PRIMARY_KEY_SQL)).scalars())


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

    def __init__(self, name: str, config: Any, options: PostgresOptions) -> None:
        super().__init__(name, config, options)
        self.url = options.url
        self.engine = None
        self._partitions: set[str] = set()
        self._partitions_lock = threading.Lock()
        self._next_maintenance = 0.0
        self.written = 0
        self.duplicates = 0
        #: Parts that met rows another writer stored since their check for stored rows
        #: (its claims, or, from a writer that claims nothing, its committed rows).
        self.races = 0
        #: Whether ``event_claims`` exists (a database not yet migrated to schema 3 when
        #: ``migrate_on_start`` is off: written without claims until it does).
        self._claims = True
        self.last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def store(self) -> PostgresStore:
        return PostgresStore(self.url)

    def start(self, bus: Any) -> None:
        self.engine = postgres_engine(self.url)
        if self.options.migrate_on_start:
            self.migrate()
        else:
            self._load_partitions()
            self._check_claims()

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.dispose()

    def migrate(self) -> str:
        """Create or upgrade the schema (idempotent; ``eventrouter migrate`` calls it).

        An ``events`` table of schema version 1 gets its primary key upgraded to
        :data:`PRIMARY_KEY` by :meth:`_upgrade_primary_key`, keeping every row."""
        if self.engine is None:
            self.engine = postgres_engine(self.url)
        upgraded = self._upgrade_primary_key()
        with self.engine.begin() as connection:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
            metadata.create_all(
                connection, tables=[events, users, groups, identities, event_claims]
            )
            connection.execute(
                text("CREATE TABLE IF NOT EXISTS events_default PARTITION OF events DEFAULT")
            )
            connection.execute(
                text("CREATE TABLE IF NOT EXISTS eventrouter_schema (version integer NOT NULL)")
            )
            for column, index in OPTIONAL_INDEXES.items():
                if column in self.options.indexes:
                    index.create(connection, checkfirst=True)
                else:
                    index.drop(connection, checkfirst=True)
            self._migrate_path_indexes(connection)
            rollups = ensure_rollup(connection, users=self.options.unique_users)
            paths = self.options.rollup_paths
            # users_seen: with unique_users, for the rollup_paths (its trigger reads
            # their listing: dropped before that may go).
            seen = paths if self.options.unique_users else []
            if not seen:
                rollups += drop_seen(connection)
            rollups += ensure_paths(connection, paths)
            if seen:
                rollups += ensure_seen(connection, seen)
            for change in rollups:
                log.info("%s: %s (eventrouter.store.rollup)", self.name, change)
            current = connection.execute(text("SELECT max(version) FROM eventrouter_schema"))
            if (current.scalar() or 0) < SCHEMA_VERSION:
                connection.execute(
                    text("INSERT INTO eventrouter_schema (version) VALUES (:v)"),
                    {"v": SCHEMA_VERSION},
                )
        self._load_partitions()
        self._claims = True
        self.maintain(force=True)
        done = f"schema version {SCHEMA_VERSION}, {len(self._partitions)} partitions"
        return "; ".join(filter(None, [done, upgraded, ", ".join(rollups)]))

    def _upgrade_primary_key(self) -> str | None:
        """Schema 1 → 2: the primary key ``(message_id, timestamp)`` becomes
        ``(message_id, source, timestamp)``; what was done, or None (nothing to do).

        No row is rewritten, and writes go on for all but a moment:

        1. on every partition, ``CREATE UNIQUE INDEX CONCURRENTLY`` builds the new key's
           index while the sink reads and writes (an interrupted build leaves an
           invalid index, which the next run drops and builds again);
        2. one transaction swaps the keys: it drops the old primary key, makes each
           partition's new index its primary key (``USING INDEX``) and adds the parent's,
           which attaches those instead of building anything. It holds an exclusive lock
           on ``events`` for as long as that takes (milliseconds), and waits at most
           :data:`UPGRADE_LOCK_TIMEOUT` for it (a long dashboard query), retrying.

        The old key's rows are unique on it, so they are unique on the wider new one:
        no build can fail on a duplicate."""
        with self.engine.connect() as connection:
            if _primary_key(connection) != PRIMARY_KEY_V1:
                return None
        started = time.monotonic()
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as session:
            session.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _UPGRADE_LOCK_KEY})
            try:
                if _primary_key(session) != PRIMARY_KEY_V1:
                    return None  # another migrate upgraded it meanwhile
                partitions = _leaf_partitions(session)
                for partition in partitions:
                    self._build_key_index(session, partition, concurrently=True)
                built = time.monotonic()
                locked = self._swap_primary_key()
            finally:
                session.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _UPGRADE_LOCK_KEY})
        done = (
            f"primary key upgraded to ({', '.join(PRIMARY_KEY)}): {len(partitions)} "
            f"partition indexes built in {built - started:.1f} s, events locked for "
            f"{1000 * locked:.0f} ms"
        )
        log.info("%s: %s", self.name, done)
        return done

    def _build_key_index(self, connection: Any, partition: str, *, concurrently: bool) -> str:
        """The unique index of :data:`PRIMARY_KEY` on one partition, built unless a valid
        one exists (an invalid one, left by an interrupted concurrent build, is
        dropped first); its name."""
        name = f"{partition}_key_v2"
        valid = connection.execute(
            text(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.oid = to_regclass(:name)"
            ),
            {"name": name},
        ).scalar()
        if valid:
            return name
        quote = self.engine.dialect.identifier_preparer.quote
        how = " CONCURRENTLY" if concurrently else ""
        if valid is not None:
            connection.execute(text(f"DROP INDEX{how} IF EXISTS {quote(name)}"))
        columns = ", ".join(f'"{column}"' for column in PRIMARY_KEY)
        connection.execute(
            text(f"CREATE UNIQUE INDEX{how} {quote(name)} ON {quote(partition)} ({columns})")
        )
        return name

    def _swap_primary_key(self) -> float:
        """Step 2 of :meth:`_upgrade_primary_key`; the seconds ``events`` was locked."""
        quote = self.engine.dialect.identifier_preparer.quote
        columns = "(" + ", ".join(f'"{column}"' for column in PRIMARY_KEY) + ")"
        for attempt in range(1, UPGRADE_LOCK_ATTEMPTS + 1):
            try:
                with self.engine.begin() as connection:
                    connection.execute(text(f"SET LOCAL lock_timeout = '{UPGRADE_LOCK_TIMEOUT}'"))
                    # No partition is created while the keys change.
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY}
                    )
                    if _primary_key(connection) != PRIMARY_KEY_V1:
                        return 0.0
                    connection.execute(text("ALTER TABLE events DROP CONSTRAINT events_pkey"))
                    locked = time.monotonic()
                    # Partitions created since step 1 (few, and new) are built here.
                    for partition in _leaf_partitions(connection):
                        index = self._build_key_index(connection, partition, concurrently=False)
                        connection.execute(
                            text(
                                f"ALTER TABLE {quote(partition)} ADD CONSTRAINT "
                                f"{quote(partition + '_pkey')} PRIMARY KEY USING INDEX "
                                f"{quote(index)}"
                            )
                        )
                    connection.execute(
                        text(f"ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY {columns}")
                    )
                return time.monotonic() - locked
            except sqlalchemy.exc.OperationalError as exc:
                if not isinstance(exc.orig, psycopg.errors.LockNotAvailable):
                    raise
                log.warning(
                    "%s: events is busy (attempt %d of %d to lock it for the key upgrade)",
                    self.name,
                    attempt,
                    UPGRADE_LOCK_ATTEMPTS,
                )
        raise RuntimeError(
            f"sinks.{self.name}: could not lock events for the primary key upgrade "
            f"{UPGRADE_LOCK_ATTEMPTS} times in {UPGRADE_LOCK_TIMEOUT} (long queries running?); "
            "the new indexes are built: run eventrouter migrate again"
        )

    def _migrate_path_indexes(self, connection: Any) -> None:
        """Create the configured ``path_indexes`` (on the parent: every partition gets
        one); drop those made for entries no longer configured."""
        wanted = dict(path_index(parts) for parts in self.options.path_indexes)
        existing = connection.execute(
            text(
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
                "AND tablename = 'events' AND starts_with(indexname, :prefix)"
            ),
            {"prefix": PATH_INDEX_PREFIX},
        ).scalars()
        for name in set(existing) - set(wanted):
            connection.execute(text(f"DROP INDEX IF EXISTS {name}"))
        for statement in wanted.values():
            connection.execute(text(statement))

    def _load_partitions(self) -> None:
        with self.engine.connect() as connection:
            partitions = _leaf_partitions(connection)
        with self._partitions_lock:
            self._partitions = set(partitions)

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
        if not self._claims:
            self._check_claims()
        if self._claims:
            self.prune_claims()

    def _check_claims(self) -> None:
        """Whether ``event_claims`` exists yet (see ``_claims``)."""
        with self.engine.connect() as connection:
            found = connection.execute(text("SELECT to_regclass('event_claims')")).scalar()
        self._claims = found is not None
        if not self._claims:
            log.warning(
                "%s: no event_claims table (schema older than version %d): two copies of "
                "one event written at once may both be stored until eventrouter migrate runs",
                self.name,
                SCHEMA_VERSION,
            )

    def prune_claims(self) -> int:
        """Delete the claims older than :data:`CLAIM_WINDOW` (by the server's clock); how
        many. Rows in ``events`` are never touched."""
        with self.engine.begin() as connection:
            result = connection.execute(
                text(
                    "DELETE FROM event_claims WHERE claimed_at < now() - make_interval(secs => :s)"
                ),
                {"s": CLAIM_WINDOW.total_seconds()},
            )
        if result.rowcount:
            log.info("%s: pruned %d claims older than %s", self.name, result.rowcount, CLAIM_WINDOW)
        return result.rowcount

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
                if connection.execute(text("SELECT to_regclass('users_seen_kept')")).scalar():
                    _drop_seen_partition(connection, name)
                else:
                    connection.execute(text(f"DROP TABLE IF EXISTS {name}"))
                # Dropping a partition fires no trigger: its hours leave the rollup here,
                # in the same transaction (partitions hold whole UTC days or months).
                if connection.execute(text("SELECT to_regclass('events_hourly')")).scalar():
                    connection.execute(
                        text("DELETE FROM events_hourly WHERE hour >= :start AND hour < :end"),
                        {"start": start.replace(tzinfo=UTC), "end": end},
                    )
                if connection.execute(text("SELECT to_regclass('events_hourly_paths')")).scalar():
                    connection.execute(
                        text(
                            "DELETE FROM events_hourly_paths WHERE hour >= :start AND hour < :end"
                        ),
                        {"start": start.replace(tzinfo=UTC), "end": end},
                    )
                if connection.execute(text("SELECT to_regclass('users_active_counts')")).scalar():
                    _recount_users(connection, start.replace(tzinfo=UTC), end)
                if connection.execute(text("SELECT to_regclass('event_users_daily')")).scalar():
                    connection.execute(
                        text("DELETE FROM event_users_daily WHERE day >= :start AND day < :end"),
                        {"start": day_number(start), "end": day_number(end)},
                    )
            with self._partitions_lock:
                self._partitions.discard(name)
            dropped.append(name)
            log.info("%s: dropped partition %s (older than retention)", self.name, name)
        return dropped

    # -- writing -----------------------------------------------------------------------
    def write(self, commands: Sequence[Command]) -> None:
        """Store ``commands``; return once every row is committed.

        A large batch is cut into ``parallel`` parts, COPYed at once on as many
        connections, each part in a transaction of its own. Should one part fail, the
        others may have committed: the write raises, and the batch is written again
        (the worker retries it), when the rows already stored are skipped, as for any
        redelivery."""
        self.maintain()
        self.ensure_partitions(self._ranges(commands))
        fresh = list({(c.source, c.message_id): c for c in reversed(commands)}.values())[::-1]
        identities = commands if self.options.normalise else ()
        parts = min(self.options.parallel, max(1, len(fresh) // PARALLEL_MIN_ROWS))
        if parts == 1:
            outcomes = [self._write_part(fresh, identities)]
        else:
            size = -(-len(fresh) // parts)
            pieces = [fresh[i : i + size] for i in range(0, len(fresh), size)]
            with ThreadPoolExecutor(len(pieces), thread_name_prefix=f"{self.name}-copy") as pool:
                outcomes = list(
                    pool.map(self._write_part, pieces, [identities] + [()] * (len(pieces) - 1))
                )
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        done = [o for o in outcomes if not isinstance(o, BaseException)]
        inserted = sum(rows for rows, _ in done)
        self.races += sum(raced for _, raced in done)
        self.written += inserted
        if errors:
            self.last_error = f"{type(errors[0]).__name__}: {errors[0]}"
            raise errors[0]
        self.duplicates += len(commands) - inserted

    def _write_part(
        self, fresh: list[Command], identities: Sequence[Command]
    ) -> tuple[int, bool] | Exception:
        """COPY ``fresh`` (no source and message id twice) in one transaction, skipping the rows
        stored already and those another writer claimed, and upsert the identity tables
        from ``identities``: ``(rows inserted, whether another writer's rows were
        met)``, or the error it failed with (returned, so that every part ends before
        :meth:`write` raises)."""
        raw = self.engine.raw_connection()
        try:
            with raw.cursor() as cursor:
                # Locked before anything is read: see _COUNTS_HOURLY.
                cursor.execute("LOCK TABLE ONLY events IN ROW EXCLUSIVE MODE")
                counting, paths, seen = cursor.execute(_COUNTS_HOURLY).fetchone()
                stored = _already_stored(cursor, fresh)
                if stored:
                    fresh = [c for c in fresh if (c.source, c.message_id) not in stored]
                raced = False
                if self._claims:
                    claimed = _claim(cursor, fresh)
                    if claimed is not None:
                        # Another writer stored (or is storing) some of them since the
                        # check above.
                        fresh = [c for c in fresh if (c.source, c.message_id) in claimed]
                        raced = True
                try:
                    # The common case: nothing stored yet, one pass straight into the
                    # partitions.
                    with raw.driver_connection.transaction():
                        copy_rows(cursor, _copy_sql("events"), fresh)
                except psycopg.errors.UniqueViolation:
                    # A writer that claims nothing (an older version, during a rolling
                    # upgrade) stored some of them meanwhile: through the staging table,
                    # skipping those.
                    fresh, raced = _insert_skipping_stored(cursor, fresh), True
                inserted = len(fresh)
                if counting:
                    _add_hourly(cursor, fresh)
                if paths:
                    _add_paths(cursor, fresh, seen)
                if identities:
                    _upsert_identities(cursor, identities)
            raw.commit()
        except Exception as exc:
            raw.rollback()
            return exc
        finally:
            raw.close()
        return inserted, raced

    def _ranges(self, commands: Sequence[Command]) -> set[tuple[datetime, datetime]]:
        """The partitions ``commands`` fall in (those within the on-demand window).

        Bounds are computed once per distinct UTC day, not per event: a batch of 50,000
        spent 0.4 s of its 2.7 s write here."""
        now = datetime.now(UTC)
        low, high = now - ON_DEMAND_PAST, now + ON_DEMAND_FUTURE
        size = self.options.partition
        days = {c.timestamp.astimezone(UTC).date() for c in commands}
        ranges = set()
        for day in days:
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            # The day overlaps the window: some of its events may be inside it.
            if low - timedelta(days=1) < start <= high:
                ranges.add(partition_bounds(start, size))
        return ranges

    # -- health ------------------------------------------------------------------------
    def health(self) -> ComponentHealth:
        stats = {"written": self.written, "duplicates": self.duplicates, "races": self.races}
        return self.probed_health(
            lambda: select_one(self.engine), stats, last_error=self.last_error
        )


#: An SDK's retry of an event is normalised again, and its skew-corrected ``timestamp``
#: moves with the new ``receivedAt``: the primary key ``(message_id, source,
#: timestamp)`` (it must contain the partition key) would take both copies. So an event
#: whose source and message id are already stored with a timestamp within
#: ``REDELIVERY_WINDOW`` of the batch's is skipped; the bounds let PostgreSQL probe only
#: those partitions' primary keys.
REDELIVERY_WINDOW = timedelta(days=1)
#: How long a claim in ``event_claims`` is kept (from its transaction's start): a copy
#: of an event written within it is skipped whatever its ``timestamp``; past it,
#: ``_already_stored`` and the primary key still skip copies within
#: ``REDELIVERY_WINDOW`` of each other, as before claims. Pruned with the partitions
#: (every ``MAINTENANCE_INTERVAL``), so a claim lives this long to an hour more.
CLAIM_WINDOW = REDELIVERY_WINDOW
_COLUMNS = ", ".join(f'"{c}"' for c in STORED_COLUMNS)
#: Below this many rows per part, a batch is COPYed on one connection (``parallel``).
PARALLEL_MIN_ROWS = 5_000


def _copy_sql(table: str) -> str:
    """The binary COPY of the stored columns into ``table`` (:func:`copy_rows`)."""
    return f"COPY {table} ({_COLUMNS}) FROM STDIN (FORMAT BINARY)"


#: ``source = ANY`` beside ``message_id = ANY``: both are conditions of the primary key's
#: index scan (a batch holds few sources), and the pairs it finds are matched exactly
#: in Python (a row-value ``IN`` would not be an index condition).
_ALREADY_STORED = (
    "SELECT source, message_id FROM events WHERE message_id = ANY(%s) AND source = ANY(%s) "
    "AND timestamp BETWEEN %s AND %s"
)
_MOVE_STAGED = (
    f"INSERT INTO events ({_COLUMNS}) SELECT {_COLUMNS} FROM events_staging ON CONFLICT DO NOTHING "
    "RETURNING source, message_id"
)


def _already_stored(cursor: Any, commands: Sequence[Command]) -> set[tuple[str, str]]:
    """The ``(source, message_id)`` of ``commands`` stored already (near their times)."""
    if not commands:
        return set()
    stamps = [c.timestamp for c in commands]
    # Never prepared: psycopg prepares a statement after its fifth run, and PostgreSQL's
    # generic plan for it scans the whole time window and searches the 10,000-id array
    # linearly for every row (seconds per batch once the table is large); a custom plan
    # probes the primary key once per id (bench/README.md, "Dashboard queries").
    cursor.execute(
        _ALREADY_STORED,
        (
            [c.message_id for c in commands],
            list({c.source for c in commands}),
            min(stamps) - REDELIVERY_WINDOW,
            max(stamps) + REDELIVERY_WINDOW,
        ),
        prepare=False,
    )
    return {(source, message_id) for source, message_id in cursor.fetchall()}


#: The claim's common case: no pair claimed by anyone else, one binary COPY (a plain
#: insert, two to four times faster than ``INSERT ... ON CONFLICT``, which inserts each
#: row speculatively: bench/README.md, "PostgreSQL: what ``event_claims`` costs"). A
#: pair another writer claimed makes it fail with a unique violation, once that writer
#: has committed (until then the COPY waits for it).
_CLAIM_COPY = "COPY event_claims (source, message_id) FROM STDIN (FORMAT BINARY)"
#: The claim when the COPY failed: the pairs no one else claimed, claimed and returned.
_CLAIM_REST = (
    "INSERT INTO event_claims (source, message_id) "
    "SELECT s, m FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS c(s, m, n) ORDER BY n "
    "ON CONFLICT DO NOTHING RETURNING source, message_id"
)


def _claim(cursor: Any, commands: Sequence[Command]) -> set[tuple[str, str]] | None:
    """Claim the ``(source, message_id)`` of ``commands`` (none twice) in the cursor's
    transaction: None when every one was claimed here (the common case), else the pairs
    claimed here (the others another writer has claimed: it stored or is storing them,
    and this call waited for its commit).

    The pairs go in sorted (``ORDER BY n`` keeps the order given), so that two writers
    of overlapping batches take the pairs' locks in one order: one waits for the other,
    and they cannot deadlock."""
    if not commands:
        return None
    keys = sorted((c.source, c.message_id) for c in commands)
    try:
        with cursor.connection.transaction(), cursor.copy(_CLAIM_COPY) as copy:
            copy.set_types(("text", "text"))
            for key in keys:
                copy.write_row(key)
        return None
    except psycopg.errors.UniqueViolation:
        pass  # undone to the savepoint: claim what no one else has
    cursor.execute(_CLAIM_REST, ([s for s, _ in keys], [m for _, m in keys]))
    return set(cursor.fetchall())


def _insert_skipping_stored(cursor: Any, commands: Sequence[Command]) -> list[Command]:
    """Insert ``commands`` (no source and message id twice) but those stored already,
    through a staging table; the ones inserted."""
    cursor.execute(
        "CREATE TEMP TABLE IF NOT EXISTS events_staging "
        "(LIKE events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    cursor.execute("TRUNCATE events_staging")
    copy_rows(cursor, _copy_sql("events_staging"), commands)
    cursor.execute(_MOVE_STAGED)
    inserted = set(cursor.fetchall())
    return [c for c in commands if (c.source, c.message_id) in inserted]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_HOUR = timedelta(hours=1)


def hourly_counts(commands: Iterable[Command]) -> dict[tuple[int, str, str, str], int]:
    """How many of ``commands`` fall in each ``events_hourly`` row: by (UTC hour as hours
    since 1970, ``type``, ``event`` or ``''``, ``source``), the grouping of
    :data:`_ROLLUP_ROWS`. Exact integer arithmetic on the time (no float rounding at an
    hour's edge)."""
    return Counter(
        ((c.timestamp - _EPOCH) // _ONE_HOUR, c.kind, getattr(c, "event", None) or "", c.source)
        for c in commands
    )


def _add_hourly(cursor: Any, commands: Sequence[Command]) -> None:
    """Add the rows of ``commands`` (just inserted, in the cursor's transaction) to
    ``events_hourly``: one upsert (:data:`_ADD_HOURLY`)."""
    counts = hourly_counts(commands)
    if not counts:
        return
    rows = [(_EPOCH + hour * _ONE_HOUR, *rest, n) for (hour, *rest), n in counts.items()]
    cursor.execute(_ADD_HOURLY, _columns(rows))


_STORED_INDEX = {name: i for i, name in enumerate(STORED_COLUMNS)}
_EVENT = _STORED_INDEX["event"]
_USER_ID = _STORED_INDEX["user_id"]
_ANONYMOUS_ID = _STORED_INDEX["anonymous_id"]
#: A JSON object's members, each value left as JSON text.
_OBJECT = msgspec.json.Decoder(dict[str, msgspec.Raw])


def path_value(document: Any, segments: Sequence[str]) -> tuple[str | None, bool]:
    """The text ``#>>`` gives for ``segments`` in a JSON ``document`` (raw bytes; None:
    no column), read here where that is certain: ``(text, True)`` for a string (JSON
    unescaped, as PostgreSQL unescapes it), ``(None, True)`` for no value (a missing key,
    a JSON null, no column); ``(None, False)`` for anything else (numbers, booleans,
    objects and arrays, which PostgreSQL spells its own way; a path through an array or
    a scalar, which ``#>>`` may index), for PostgreSQL to read from the document.
    Duplicate keys: the last one wins, in msgspec as in jsonb."""
    if document is None:
        return None, True
    node = document
    try:
        for segment in segments:
            child = _OBJECT.decode(node).get(segment)
            if child is None:
                return None, True
            node = child
        text = bytes(node).lstrip()
        if text.startswith(b'"'):
            value = msgspec.json.decode(text, type=str)
            value.encode()  # a lone surrogate: for PostgreSQL to judge
            return value, True
        if text == b"null" or text.rstrip() == b"null":
            return None, True
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeEncodeError):
        pass
    return None, False


def _add_paths(cursor: Any, commands: Sequence[Command], seen: bool = False) -> None:
    """Add the rows of ``commands`` (just inserted, in the cursor's transaction) to
    ``events_hourly_paths``, per kept path: counted here by hour, type, event, source
    and value, then one statement (:data:`_ADD_PATHS`). A string value (the common
    case) is read here from the batch's JSON (:func:`path_value`); any other goes as the
    column's JSON text, which PostgreSQL parses as it parsed the stored copy, so the
    value is ``#>>``'s text either way. (Sending every row's JSON for PostgreSQL to
    parse and group cost the writes about half their rate: bench/README.md.)

    With ``seen`` (``users_seen_kept`` exists), the same values also go to
    ``users_seen`` for the paths listed there, grouped here per path, scope, value and
    user (:func:`_add_seen`)."""
    if not commands:
        return
    query = _KEPT_PATHS.format(seen=_SEEN_LISTED if seen else "false")
    kept = [
        (path, _STORED_INDEX[col], segs, listed)
        for path, col, segs, listed, _ in cursor.execute(query)
    ]
    if not kept:
        return
    counts: Counter = Counter()
    #: (path, scope, value, doc, user) → [latest time, events]
    users: dict[tuple, list] = {}
    for command in commands:
        row = command.values()
        hour = (command.timestamp - _EPOCH) // _ONE_HOUR
        name = row[_EVENT]
        key = (hour, command.kind, name or "", command.source)
        user = row[_USER_ID] if row[_USER_ID] is not None else row[_ANONYMOUS_ID]
        moment = command.timestamp
        for path, column, segments, listed in kept:
            document = row[column]
            text, certain = path_value(document, segments)
            doc = None if certain else bytes(document).decode()
            counts[(*key, path, text, doc)] += 1
            if not listed or user is None:
                continue
            for scope in (ALL_EVENTS, event_scope(name)):
                group = (path, scope, text, doc, user)
                found = users.get(group)
                if found is None:
                    users[group] = [moment, 1]
                else:
                    found[1] += 1
                    if moment > found[0]:
                        found[0] = moment
    if any(doc is not None for *_, doc in counts):
        rows = [(_EPOCH + hour * _ONE_HOUR, *rest, n) for (hour, *rest), n in counts.items()]
        cursor.execute(_ADD_PATHS, _columns(rows))
    else:
        rows = [
            (path, _EPOCH + hour * _ONE_HOUR, kind, event, source, _digest(text), text, n)
            for (hour, kind, event, source, path, text, _), n in counts.items()
        ]
        cursor.execute(_ADD_PATHS_READ, _columns(rows))
    if users:
        _add_seen(cursor, users)


def _add_seen(cursor: Any, users: dict[tuple, list]) -> None:
    """Upsert a batch's ``users_seen`` rows, grouped by :func:`_add_paths` (``(path,
    scope, value, doc, user)`` → ``[latest time, events]``): COPYed into
    :data:`_SEEN_STAGING`, then one statement, :data:`_ADD_SEEN_READ` when the sink
    read every value (the common case), else :data:`_ADD_SEEN` (PostgreSQL reads the
    values the sink left to it)."""
    read = all(doc is None for (*_, doc, _) in users)
    cursor.execute(_SEEN_STAGING)
    with cursor.copy(_SEEN_COPY) as copy:
        copy.set_types(_SEEN_COPY_TYPES)
        for (path, scope, text, doc, user), (last, n) in users.items():
            digest = _digest(text) if read else None
            copy.write_row((path, scope, digest, text, doc, user, last, n))
    cursor.execute(_ADD_SEEN_READ if read else _ADD_SEEN)


def _digest(text: str | None) -> bytes:
    """``events_hourly_paths.digest`` of a value, as :data:`_PATH_COUNTS` computes it."""
    return b"" if text is None else hashlib.sha256(text.encode()).digest()


#: jsonb's binary form: a version byte, then the JSON text.
_JSONB_VERSION = b"\x01"


def _copy_type(column: Column) -> str:
    """How psycopg dumps ``column`` in a binary COPY: a time as ``timestamptz``; JSON as
    ``bytea``, whose dumper sends bytes unchanged (a binary COPY names no types:
    PostgreSQL reads each field with its column's own binary input function, here
    ``jsonb_recv``, so the bytes are jsonb's binary form); anything else as ``text``."""
    if isinstance(column.type, JSONB):
        return "bytea"
    return "timestamptz" if isinstance(column.type, DateTime) else "text"


_COPY_TYPES = [_copy_type(events.c[name]) for name in STORED_COLUMNS]
_JSON_INDEXES = tuple(i for i, kind in enumerate(_COPY_TYPES) if kind == "bytea")


def copy_rows(cursor: Any, sql: str, commands: Sequence[Command]) -> None:
    """COPY ``commands`` in PostgreSQL's binary format (``sql`` says ``FORMAT BINARY``):
    the JSON columns as jsonb's binary form, the raw JSON text the client sent
    (:meth:`Command.values`, never decoded here) behind a version byte; the other
    values dumped by psycopg's C dumpers, without the text format's
    quoting and escaping. On the benchmark's events this takes about a third of the
    client CPU of a text COPY (bench/README.md, "PostgreSQL: binary COPY and parallel
    parts")."""
    with cursor.copy(sql) as copy:
        copy.set_types(_COPY_TYPES)
        for command in commands:
            row = list(command.values())
            for i in _JSON_INDEXES:
                if row[i] is not None:
                    row[i] = _JSONB_VERSION + row[i]  # bytes + msgspec.Raw's buffer
            copy.write_row(row)


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

    As in Segment's warehouse schema, the identity tables come from the identity calls:
    identify upserts the user and merges its traits (newer calls win key by key,
    whatever order batches arrive in; ``first_seen``/``last_seen`` span the user's
    identify calls); group does the same for the group; an identify carrying an
    anonymous id links it to the user, and alias links ``previous_id`` to the user.
    Track, page and screen events leave them alone: one upsert per event would double
    the write volume, and a user's activity is in ``events`` already.
    """
    identify = _merge_traits((c for c in commands if c.kind == "identify"), "user_id")
    if identify:
        rows = [
            (uid, Jsonb(t), updated, first, last)
            for uid, (t, updated, first, last) in identify.items()
        ]
        cursor.execute(_UPSERT_TRAITS.format(table="users", key="user_id"), _columns(rows))
    group = _merge_traits((c for c in commands if c.kind == "group"), "group_id")
    if group:
        rows = [(gid, Jsonb(t), upd, first, last) for gid, (t, upd, first, last) in group.items()]
        cursor.execute(_UPSERT_TRAITS.format(table="groups", key="group_id"), _columns(rows))
    links: dict[tuple[str, str, str], tuple] = {}
    for command in commands:
        if command.user_id is None or command.kind not in ("identify", "alias"):
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
