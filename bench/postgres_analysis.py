"""PostgreSQL's retention views, A/B/C in one run: retention as the standard SQL computes
it (every returning event in the range grouped by user and period) against per-user
reads (``PostgresDialect.retention_statement``) through either of two indexes,
alternated call by call so that a busy machine slows all alike.

    .venv/bin/python bench/postgres_analysis.py [--runs 15] [--create-index]

It reads bench/dashboard.py's PostgreSQL database (``eventrouter_bench_dashboard``, or
``EVENTROUTER_BENCH_DASHBOARD_PG``: load it first with ``bench/dashboard.py --stores
postgres --events N``) in this process, through :class:`eventrouter.store.query.EventStore`
and :func:`eventrouter.store.analysis.retention`, with the dashboard's parameters
(``Signed Up`` then ``Product Viewed``, by day and by week, the last 30 days). Per view
and reading, one warm-up call then ``--runs`` timed ones, and prints the median and the
slowest of each, each reading's median over A's, and whether all gave the same table.

- **A, standard SQL**: the dialect answers None (the query layer's common table
  expressions, as before this change).
- **B, user_id + anonymous_id**: the same per-user reads through the two default
  indexes (``user_id = u OR (user_id IS NULL AND anonymous_id = u)``; :class:`Either`),
  the alternative the dialect does not take (it lost by week).
- **C, event_user**: the per-user reads through ``ix_events_event_user`` (the sink's
  ``indexes`` option ``event_user``); measured when the index exists, which
  ``--create-index`` makes sure of (``CREATE INDEX`` on the benchmark's own database:
  the dashboard's next load keeps it only if its sink lists it, as bench/dashboard.py's
  does).

Only 127.0.0.1 is spoken to; nothing is written but that index.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dashboard
import psycopg
from alternation import alternate, footer
from sqlalchemy import and_, or_
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import BinaryExpression
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.visitors import replacement_traverse

from eventrouter.sinks.postgres import OPTIONAL_INDEXES
from eventrouter.sinks.postgres_store import PostgresDialect, PostgresStore, postgres_engine
from eventrouter.store.analysis import retention
from eventrouter.store.query import EventStore

FIRST, RETURNING = "Signed Up", "Product Viewed"
EVENT_USER = OPTIONAL_INDEXES["event_user"].name
USER_INDEXES = frozenset({"ix_events_user_id", "ix_events_anonymous_id"})


class Either(PostgresDialect):
    """Reading B: the user matched by ``user_id = u OR (user_id IS NULL AND
    anonymous_id = u)``, which the ``user_id`` and ``anonymous_id`` indexes answer
    together (a bitmap of both per partition), instead of ``coalesce(...) = u``."""

    def _indexes(self) -> frozenset[str]:
        return frozenset({EVENT_USER})

    def retention_statement(self, *args: Any, **kwargs: Any) -> Any:
        statement = super().retention_statement(*args, **kwargs)
        c = self.table.c

        def either(element: Any) -> Any:
            if (
                isinstance(element, BinaryExpression)
                and isinstance(element.left, FunctionElement)
                and element.left.name == "coalesce"
                and element.operator is operators.eq
            ):
                u = element.right
                return or_(c.user_id == u, and_(c.user_id.is_(None), c.anonymous_id == u))
            return None

        return replacement_traverse(statement, {}, either)


class Standard(PostgresDialect):
    """Reading A: the query layer's standard SQL."""

    def _indexes(self) -> frozenset[str]:
        return frozenset()


def reader(dialect: type[PostgresDialect]) -> EventStore:
    class Store(PostgresStore):
        def query_dialect(self) -> PostgresDialect:
            return dialect(self.url)

    return EventStore(Store(dashboard.PG_URL))


def run(runs: int, create_index: bool) -> str:
    engine = postgres_engine(dashboard.PG_URL, {})
    with engine.begin() as connection:
        if create_index:
            OPTIONAL_INDEXES["event_user"].create(connection, checkfirst=True)
            connection.exec_driver_sql("ANALYZE events")
        present = {
            name
            for (name,) in connection.exec_driver_sql(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'events'"
            )
        }
    engine.dispose()
    readers = {"A": reader(Standard)}
    if present >= USER_INDEXES:
        readers["B"] = reader(Either)
    if EVENT_USER in present:
        readers["C"] = reader(PostgresDialect)
    since = datetime.now(UTC) - dashboard.RANGE_SPAN
    kinds = list(readers)
    lines = [
        "| view | A: standard SQL, median ms | B: user_id + anonymous_id | C: event_user "
        "| B / A | C / A | slowest A / B / C | same answer |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    try:
        for period in ("day", "week"):
            view = lambda store, p=period: retention(  # noqa: E731
                store, FIRST, RETURNING, p, since, None
            )
            result = alternate(view, readers, kinds, runs)
            median = result.median
            shown = {
                kind: (f"{median[kind]:.0f}", f"{median[kind] / median['A']:.2f}")
                if kind in median
                else ("-", "-")
                for kind in ("B", "C")
            }
            lines.append(
                f"| retention by {period} | {median['A']:.0f} | {shown['B'][0]} | "
                f"{shown['C'][0]} | {shown['B'][1]} | {shown['C'][1]} | "
                f"{result.slowest()} | {result.same()} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
    finally:
        for store in readers.values():
            store.close()
    with psycopg.connect(dashboard.PG_URL.replace("+psycopg", "")) as connection:
        [(rows,)] = connection.execute("SELECT count(*) FROM events").fetchall()
        [(version,)] = connection.execute("SHOW server_version").fetchall()
    lines.append("")
    lines.append(footer(rows, dashboard.PG_DATABASE, f"PostgreSQL {version}", runs))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="timed calls per reading [15]")
    parser.add_argument(
        "--create-index", action="store_true", help=f"create {EVENT_USER} if it is missing"
    )
    args = parser.parse_args(argv)
    print(run(args.runs, args.create_index))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
