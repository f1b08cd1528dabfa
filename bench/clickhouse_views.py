"""ClickHouse's slowest dashboard views, A/B in one run: the reads as they were (every
statement ``FROM events FINAL``) against the reads now (distinct users and a user's
times without ``FINAL``, active users from ``events_users``), alternated call by call so
that a busy machine slows both alike.

    .venv/bin/python bench/clickhouse_views.py [--runs 15]

It reads bench/dashboard.py's ClickHouse database (``bench_dashboard``: load it first
with ``bench/dashboard.py --stores clickhouse --events N``) in this process, through
:class:`eventrouter.store.query.EventStore`, the calls each admin view makes (the user
page's three: its timeline page, traits and first and last times). Per view and reading,
one warm-up call then ``--runs`` timed ones, A and B alternated, and prints the median
and the slowest of each, B's median over A's, and whether both gave the same answer
(the chart: one event and one property over 30 days, in the explorer's step).

- **A, before**: :class:`Before`, the ClickHouse dialect with the hooks of this change
  switched back to the interface's defaults (``copies_select`` and ``each_event`` read
  ``FINAL``, no ``users_days``) and clickhouse-sqlalchemy's own compiler (no
  ``PREWHERE`` after ``FINAL``): exactly the statements sent before.
- **B, after**: the store as it is.
- **scan** (active users only): ``EventStore(use_rollup=False)``, ``events`` without
  ``FINAL`` and without ``events_users``: what each part of the change brings.

Only 127.0.0.1 is spoken to; nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dashboard
from alternation import alternate, clickhouse_footer
from clickhouse_sqlalchemy.drivers.compilers.sqlcompiler import ClickHouseSQLCompiler
from sqlalchemy import Engine

from eventrouter.admin import explorer
from eventrouter.sinks.clickhouse_store import ClickHouseDialect, ClickHouseStore
from eventrouter.store.interface import QueryDialect
from eventrouter.store.query import EventFilter, EventStore, PathCondition


class Before(ClickHouseDialect):
    """The reads before this change: the interface's defaults, ``FINAL`` everywhere."""

    users_days = None
    copies_select = QueryDialect.copies_select
    each_event = QueryDialect.each_event

    def connect(self) -> Engine:
        """clickhouse-sqlalchemy's own compiler: no ``PREWHERE`` after ``FINAL``."""
        engine = super().connect()
        engine.dialect.statement_compiler = ClickHouseSQLCompiler
        return engine


class BeforeStore(ClickHouseStore):
    def query_dialect(self) -> Before:
        return Before(self.url, self.layout)


def user_page(store: EventStore) -> Any:
    """What ``/admin/user`` asks (admin/views.py, UserView)."""
    where = EventFilter(user_id=dashboard.BUSY_USER)
    page = store.query(where, explorer.PAGE_SIZE, None, explorer.ROW_COLUMNS)
    return page, store.identify_traits(dashboard.BUSY_USER), store.time_span(where)


def views(since: datetime) -> dict[str, Callable[[EventStore], Any]]:
    plan = [PathCondition("properties", ("plan",), dashboard.FILTER_PLAN)]
    filtered = EventFilter(since=since, event=dashboard.FILTER_EVENT, paths=plan)
    step = explorer.choose_step(since, datetime.now(UTC))
    return {
        "user page (busiest user)": user_page,
        **{
            f"active users by {interval}": (
                lambda store, i=interval: store.active_users(EventFilter(since=since), i)
            )
            for interval in ("day", "week", "month")
        },
        "active users by day, by properties.plan": lambda store: store.active_users(
            EventFilter(since=since), "day", "properties.plan", 10
        ),
        "chart, event + property filter 30d": lambda store: store.count_by_time(filtered, step),
    }


def comparable(answer: Any) -> Any:
    """An answer without what differs between two correct reads (nothing, so far)."""
    return answer


def run(runs: int) -> str:
    url = dashboard.CH_URL
    readers = {
        "A": EventStore(BeforeStore(url)),
        "B": EventStore(ClickHouseStore(url)),
        "scan": EventStore(ClickHouseStore(url), use_rollup=False),
    }
    since = datetime.now(UTC) - dashboard.RANGE_SPAN
    lines = [
        "| view | A: before, median ms | B: after, median ms | B / A | scan, median ms "
        "| slowest A / B / scan | same answer |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    try:
        for name, view in views(since).items():
            kinds: Sequence[str] = ("A", "B", "scan") if "active" in name else ("A", "B")
            result = alternate(lambda store, v=view: comparable(v(store)), readers, kinds, runs)
            median = result.median
            scan = f"{median['scan']:.0f}" if "scan" in median else "-"
            lines.append(
                f"| {name} | {median['A']:.0f} | {median['B']:.0f} | "
                f"{median['B'] / median['A']:.2f} | {scan} | {result.slowest()} | {result.same()} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
    finally:
        for reader in readers.values():
            reader.close()
    lines.append("")
    lines.append(clickhouse_footer(dashboard.CH_DATABASE, runs))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="timed calls per reading [15]")
    args = parser.parse_args(argv)
    print(run(args.runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
