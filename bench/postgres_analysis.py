"""PostgreSQL's funnel and retention views, A/B in one run: retention as the standard SQL
computes it (every returning event in the range grouped by user and period, from the
table) against the join of the cohorts' users to the returning events read from the
``event_user`` index alone (``PostgresDialect.retention_statement``), and the funnel's
statement as the planner joins it against hash joins only
(``PostgresDialect.before_analysis``), alternated call by call so that a busy machine
slows both alike.

    .venv/bin/python bench/postgres_analysis.py [--runs 15] [--create-index]

It reads bench/dashboard.py's PostgreSQL database (``eventrouter_bench_dashboard``, or
``EVENTROUTER_BENCH_DASHBOARD_PG``: load it first with ``bench/dashboard.py --stores
postgres --events N``) in this process, through :class:`eventrouter.store.query.EventStore`
and :func:`eventrouter.store.analysis.retention`, with the dashboard's parameters
(``Signed Up`` then ``Product Viewed``, by day and by week; the 3-step funnel with a
one-day window, and by ``properties.plan``; the last 30 days). Per view
and reading, one warm-up call then ``--runs`` timed ones, and prints the median and the
slowest of each, B's median over A's, and whether both gave the same table.

- **A, standard SQL**: the dialect answers None (the query layer's common table
  expressions), and leaves the planner's settings as they are.
- **B, event_user**: the dialect's statement through ``ix_events_event_user`` (the
  sink's ``indexes`` option ``event_user``); measured when the index exists, which
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dashboard
import psycopg
from alternation import alternate, footer

from eventrouter.sinks.postgres import OPTIONAL_INDEXES
from eventrouter.sinks.postgres_store import PostgresDialect, PostgresStore, postgres_engine
from eventrouter.store.analysis import Step, funnel, parse_window, retention
from eventrouter.store.query import EventStore

FIRST, RETURNING = "Signed Up", "Product Viewed"
FUNNEL_WINDOW = parse_window(dashboard.FUNNEL_WINDOW)
EVENT_USER = OPTIONAL_INDEXES["event_user"].name


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
    if EVENT_USER in present:
        readers["B"] = reader(PostgresDialect)
    since = datetime.now(UTC) - dashboard.RANGE_SPAN
    kinds = list(readers)
    lines = [
        "| view | A: standard SQL, planner's joins, median ms | B: event_user, hash joins "
        "| B / A | slowest A / B "
        "| same answer |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    try:
        steps = [Step(name) for name in dashboard.FUNNEL_STEPS]
        views = {
            f"retention by {period}": lambda store, p=period: retention(
                store, FIRST, RETURNING, p, since, None
            )
            for period in ("day", "week")
        }
        views[f"funnel, {len(steps)} steps"] = lambda store: funnel(
            store, steps, FUNNEL_WINDOW, since, None
        )
        views["funnel by properties.plan"] = lambda store: funnel(
            store, steps, FUNNEL_WINDOW, since, None, "properties.plan"
        )
        for label, view in views.items():
            result = alternate(view, readers, kinds, runs)
            median = result.median
            b = median.get("B")
            lines.append(
                f"| {label} | {median['A']:.0f} | "
                + (f"{b:.0f} | {b / median['A']:.2f}" if b is not None else "- | -")
                + f" | {result.slowest()} | {result.same()} |"
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
