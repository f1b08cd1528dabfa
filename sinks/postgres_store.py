"""What the PostgreSQL store tells the core (eventrouter.store.interface): its engine,
its query dialect, and the ``users`` and ``identities`` rows that erase takes with a
user's events.

The sink (``sinks/postgres.py``) writes and migrates; this module is the rest:

- the engine: times in UTC on every connection, connections checked before use;
- the query dialect: ``column #>> :path`` (a bound text array) for JSON paths,
  ``extract(epoch ...)`` for time buckets, the size of ``events`` with its partitions
  and indexes; a value holding a NUL character matches nothing (PostgreSQL text cannot
  hold one, and the driver refuses to send one), and no JIT for the dashboard's reads;
- erase: SQLAlchemy Core (:class:`eventrouter.store.sql.SQLEraser`), plus the user's
  ``users`` row, their ``identities`` rows and the alias links that name them, and the
  links ``identities`` holds (docs/privacy.md, "Linked ids");
- the admin tables: SQLAlchemy Core with ``INSERT ... ON CONFLICT DO NOTHING``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Engine,
    Table,
    Text,
    cast,
    create_engine,
    false,
    func,
    literal,
    literal_column,
    select,
    text,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.sql.dml import Insert

from eventrouter.store.db import json_options
from eventrouter.store.interface import Erased, Eraser, IndexNames, QueryDialect
from eventrouter.store.rollup import (
    event_users_daily,
    events_hourly,
    events_hourly_paths,
    users_active_counts,
    users_seen,
)
from eventrouter.store.sql import SQLEraser, SQLStore

#: Settings of the query layer's connections. No JIT: compiling a dashboard query whose
#: cost estimate passes jit_above_cost adds 60-75 ms to a query of ~250 (bench/README.md,
#: "Dashboard queries"); the store's reads are short, and JIT never pays for itself here.
READER_SETTINGS = {"jit": "off"}
#: The least ``work_mem`` a funnel or retention runs with (its transaction alone: a
#: server's larger setting stays): their hash joins and aggregates hold a row per user
#: of the range, and spill to temporary files under PostgreSQL's default 4 MB
#: (bench/README.md, "PostgreSQL and ClickHouse at 10,000,000 events, again").
ANALYSIS_WORK_MEM = "64MB"

SIZE_SQL = (
    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
    "WHERE c.relkind = 'r' AND (c.relname = 'events' OR c.relname LIKE 'events\\_%') "
    "AND c.relnamespace = to_regnamespace(current_schema())"
)
#: The indexes of ``events`` (the parent's: each partition has its own copy) by name.
INDEXES_SQL = (
    "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = 'events'"
)


def postgres_engine(url: str, settings: dict[str, str] | None = None) -> Engine:
    """An engine on the PostgreSQL database at ``url``, JSON columns through msgspec;
    ``settings`` are set on every connection (``-c name=value``), after ``timezone=UTC``
    (times are UTC everywhere; a naive bound parameter means UTC too)."""
    settings = {"timezone": "UTC", **(settings or {})}
    return create_engine(
        url,
        **json_options(),
        connect_args={"options": " ".join(f"-c {k}={v}" for k, v in settings.items())},
        pool_pre_ping=True,
    )


class PostgresStore(SQLStore):
    """The PostgreSQL database at ``url`` (a ``postgresql+psycopg://`` SQLAlchemy URL)."""

    def engine(self) -> Engine:
        return postgres_engine(self.url)

    def insert_new(self, table: Table) -> Insert:
        return pg_insert(table).on_conflict_do_nothing()

    def upsert(self, table: Table) -> Insert:
        return pg_insert(table)

    def query_dialect(self) -> PostgresDialect:
        return PostgresDialect(self.url)

    def eraser(self) -> Eraser:
        return PostgresEraser(self)


class PostgresDialect(QueryDialect):
    rollup = events_hourly
    path_rollup = events_hourly_paths
    users_rollup = users_active_counts
    users_seen = users_seen
    event_users_daily = event_users_daily
    indexed_extremes = True
    #: :data:`ANALYSIS_WORK_MEM` (None: the server's own, whatever it is).
    analysis_work_mem: str | None = ANALYSIS_WORK_MEM

    def __init__(self, url: str) -> None:
        self.url = url
        self._index_names = IndexNames(
            lambda connection: connection.execute(text(INDEXES_SQL)).scalars()
        )

    def connect(self) -> Engine:
        return postgres_engine(self.url, READER_SETTINGS)

    def json_text(self, column: str, path: Sequence[str]) -> ColumnElement:
        """``column #>> :path``, the path a bound text array (the expression
        ``path_indexes`` index, so that the planner matches the two)."""
        return self.table.c[column].op("#>>")(literal(list(path), ARRAY(Text)))

    def epoch(self, column: ColumnElement) -> ColumnElement:
        """``floor(date_part('epoch', column))::bigint``: ``date_part`` is a double,
        where ``EXTRACT`` is a ``numeric`` since PostgreSQL 14 (numeric arithmetic per
        row: the 3-step funnel on 10,000,000 events spent ~0.5 s of ~4.8 s on it). A
        double holds a microsecond time of this era to within 2.4e-7 s: its floor is the
        second. ``'epoch'`` is SQL text, not a parameter, so that a ``GROUP BY`` matches
        the selected expression."""
        return cast(func.floor(func.date_part(literal_column("'epoch'"), column)), BigInteger)

    def month_start(self, column: ColumnElement) -> ColumnElement:
        month = func.date_trunc("month", func.timezone("UTC", column))
        return cast(func.extract("epoch", func.timezone("UTC", month)), BigInteger)

    def equals(self, expression: ColumnElement, value: str) -> ColumnElement:
        """PostgreSQL text cannot hold a NUL character, so no stored value has one, and
        the driver refuses to send one (a 500 for a query string with ``%00``): such a
        value is a condition nothing meets."""
        if "\x00" in value:
            return false()
        return expression == value

    def size_bytes(self, connection: Any) -> int | None:
        """``events`` with every partition and index."""
        return connection.execute(text(SIZE_SQL)).scalar()

    def _indexes(self) -> frozenset[str]:
        """The names of the indexes on ``events``, read again after
        :data:`eventrouter.store.interface.INDEXES_RECHECK` seconds."""
        return self._index_names.get(self.engine)

    def retention_statement(
        self,
        first: ColumnElement,
        returning: ColumnElement,
        where: Sequence[ColumnElement],
        period: int,
        offset: int,
        periods: int,
    ) -> Any:
        """Retention that joins the cohorts' users to the returning events, read from
        the index ``event_user`` alone (the sink's ``indexes`` option: ``(event,
        coalesce(user_id, anonymous_id), timestamp)`` with both ids included): each
        user's entry (their first ``first`` event), then the periods in which they did
        ``returning`` from their entry (to the second, as the other stores compare) to
        the cohort's last period, by a hash join of the returning events in the range
        (an index-only scan) against the cohorts (:meth:`before_analysis` keeps the
        planner to it). Without the index, the standard SQL (None).

        Measured on 1,000,000 events over 30 days (bench/postgres_analysis.py;
        bench/README.md, "Funnels and retention on PostgreSQL"): a ``LATERAL`` read per
        cohort user through the same index probed each daily partition of the user's
        periods (by week about 15 per user) and took about 500 ms by week, where this
        takes about 120; the standard SQL reads the table for both ids."""
        if "ix_events_event_user" not in self._indexes():
            return None
        c = self.table.c
        user = func.coalesce(c.user_id, c.anonymous_id)
        # Literal ints in the SQL text (GROUP BY matches expressions by their text).
        size, shift = literal_column(str(int(period))), literal_column(str(int(offset)))
        entries = self.retention_entries(first, where)
        entry_second = self.epoch(entries.c.t)
        cohorts = (
            select(
                entries.c.u,
                func.date_trunc("second", entries.c.t).label("entry"),
                (entry_second - (entry_second - shift) % size).label("cohort"),
            )
            .cte("cohorts")
            .prefix_with("MATERIALIZED")
        )
        second = self.epoch(c.timestamp)
        last = literal_column(str(int(period) * int(periods)))
        k = ((second - (second - shift) % size - cohorts.c.cohort) / size).label("k")
        returned = (
            select(cohorts.c.u, cohorts.c.cohort, k)
            .distinct()
            .select_from(self.table.join(cohorts, user == cohorts.c.u))
            .where(
                returning,
                *where,
                c.timestamp >= cohorts.c.entry,
                c.timestamp < func.to_timestamp(cohorts.c.cohort + last),
            )
            .subquery("returned")
        )
        sizes = select(cohorts.c.cohort, literal_column("-1").label("k"), func.count())
        back = select(returned.c.cohort, returned.c.k, func.count()).group_by(
            returned.c.cohort, returned.c.k
        )
        return union_all(sizes.group_by(cohorts.c.cohort), back)

    def before_analysis(self, connection: Any, view: str) -> None:
        """With ``event_user``, funnels and retention join users to events by hash: no
        nested loop or merge join for this transaction. Left to itself, the planner
        takes the cohorts (a few thousand users) or a step's users for few rows and
        probes the index once per user and daily partition, or sorts every returning
        event for a merge join. On 1,000,000 events over 30 days, retention by week took
        500 ms (nested loop) and 370 (merge join) where the hash join takes 120
        (EXPLAIN ANALYZE); the 3-step funnel 576 → 369 ms, by ``properties.plan`` 1,953
        → 1,186 (alternated in one process; the same answers).

        And ``work_mem`` at least :attr:`analysis_work_mem` for this transaction."""
        if view in ("funnel", "retention") and self.analysis_work_mem is not None:
            connection.execute(
                text(
                    "SELECT set_config('work_mem', (greatest(pg_size_bytes("
                    "current_setting('work_mem')), pg_size_bytes(:least)) / 1024)::bigint "
                    "|| 'kB', true)"
                ),
                {"least": self.analysis_work_mem},
            )
        if view in ("funnel", "retention") and "ix_events_event_user" in self._indexes():
            connection.execute(
                text(
                    "SELECT set_config('enable_nestloop', 'off', true), "
                    "set_config('enable_mergejoin', 'off', true)"
                )
            )


class PostgresEraser(SQLEraser):
    """Erase with the ``users`` and ``identities`` rows of the normalised tables."""

    identity_rows = True

    def identity_links(self, user_id: str) -> list[tuple[str, str]]:
        if self.empty or not self.has_table("identities"):
            return []
        linked = text(
            "SELECT kind, identity FROM identities WHERE user_id = :user ORDER BY kind, identity"
        )
        with self.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(linked, {"user": user_id})]

    def delete_identity_rows(
        self, connection: Any, user_ids: set[str], dry_run: bool, result: Erased
    ) -> None:
        """The ``users`` row and ``identities`` links of ``user_ids``, and the alias
        links that name them."""
        ids = {"users": sorted(user_ids)}
        tables = {
            "users": "users WHERE user_id = ANY(:users)",
            "identities": (
                "identities WHERE user_id = ANY(:users) "
                "OR (kind = 'previous_id' AND identity = ANY(:users))"
            ),
        }
        for table, where in tables.items():
            if not self.has_table(table):
                continue
            if dry_run:
                n = connection.execute(text(f"SELECT count(*) FROM {where}"), ids).scalar()
            else:
                n = connection.execute(text(f"DELETE FROM {where}"), ids).rowcount
            setattr(result, table, n or 0)
