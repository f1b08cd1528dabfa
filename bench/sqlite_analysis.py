"""SQLite's retention and funnel views, A/B in one run: each as the standard SQL computes
it (every event of the steps in the range, read with its row and grouped by user)
against the per-user reads through the ``event_user`` indexes
(``SQLiteDialect.retention_statement``, ``funnel_statement``), alternated call by call
so that a busy machine slows both alike.

    .venv/bin/python bench/sqlite_analysis.py [--runs 9]

It reads bench/dashboard.py's SQLite database (``bench/results/dashboard-sqlite``: load
it first with ``bench/dashboard.py --stores sqlite --events N``, whose sink lists
``event_user`` in its ``indexes``) in this process, through
:func:`eventrouter.store.analysis.retention`, with the dashboard's parameters
(``Signed Up`` then ``Product Viewed``, by day and by week; the 3-step funnel with a
one-day window, and by ``properties.plan``; the last 30 days). A is the
same database read with the dialect's statements unset (the standard SQL), B the
dialect's. Per view: one warm-up call each, then ``--runs`` timed ones; the median and
slowest of each, B's median over A's, and whether both gave the same table. Nothing is
written.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dashboard
from alternation import alternate, footer

from eventrouter.sinks.sqlite_store import SQLiteStore
from eventrouter.store.analysis import Step, funnel, parse_window, retention
from eventrouter.store.query import EventStore
from eventrouter.store.schema import EVENT_USER_INDEXES

FIRST, RETURNING = "Signed Up", "Product Viewed"
FUNNEL_WINDOW = parse_window(dashboard.FUNNEL_WINDOW)


def run(runs: int) -> str:
    path = dashboard.SQLITE_DIR / "events.db"
    url = f"sqlite:///{path}"
    standard, per_user = EventStore(SQLiteStore(url)), EventStore(SQLiteStore(url))
    # This reader's dialect only: the standard SQL.
    standard.dialect.retention_statement = lambda *args, **kwargs: None
    standard.dialect.funnel_statement = lambda *args, **kwargs: None
    readers = {"A": standard, "B": per_user}
    since = datetime.now(UTC) - dashboard.RANGE_SPAN
    lines = [
        "| view | A: standard SQL, median ms | B: event_user | B / A | slowest A / B "
        "| same answer |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    try:
        with sqlite3.connect(path) as connection:
            names = {n for (n,) in connection.execute("SELECT name FROM sqlite_master")}
            [(rows,)] = connection.execute("SELECT count(*) FROM events").fetchall()
        missing = [i.name for i in EVENT_USER_INDEXES if i.name not in names]
        if missing:
            return f"{path}: no {', '.join(missing)} (load with bench/dashboard.py): not measured"
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
            result = alternate(view, readers, ["A", "B"], runs)
            median = result.median
            lines.append(
                f"| {label} | {median['A']:.0f} | {median['B']:.0f} | "
                f"{median['B'] / median['A']:.2f} | {result.slowest()} | {result.same()} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
    finally:
        for store in readers.values():
            store.close()
    lines.append("")
    lines.append(footer(rows, str(path), f"SQLite {sqlite3.sqlite_version}", runs))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9, help="timed calls per reading [9]")
    args = parser.parse_args(argv)
    print(run(args.runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
