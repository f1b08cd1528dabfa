"""SQLite's retention views, A/B in one run: retention as the standard SQL computes it
(every returning event in the range grouped by user and period) against the per-user
reads through the ``event_user`` indexes (``SQLiteDialect.retention_statement``),
alternated call by call so that a busy machine slows both alike.

    .venv/bin/python bench/sqlite_analysis.py [--runs 9]

It reads bench/dashboard.py's SQLite database (``bench/results/dashboard-sqlite``: load
it first with ``bench/dashboard.py --stores sqlite --events N``, whose sink lists
``event_user`` in its ``indexes``) in this process, through
:func:`eventrouter.store.analysis.retention`, with the dashboard's parameters
(``Signed Up`` then ``Product Viewed``, by day and by week, the last 30 days). A is the
same database read with the dialect's statement unset (the standard SQL), B the
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
from eventrouter.store.analysis import retention
from eventrouter.store.query import EventStore
from eventrouter.store.schema import EVENT_USER_INDEXES

FIRST, RETURNING = "Signed Up", "Product Viewed"


def run(runs: int) -> str:
    path = dashboard.SQLITE_DIR / "events.db"
    url = f"sqlite:///{path}"
    standard, per_user = EventStore(SQLiteStore(url)), EventStore(SQLiteStore(url))
    standard.dialect.retention_statement = lambda *args, **kwargs: None  # this reader's
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
        for period in ("day", "week"):
            view = lambda store, p=period: retention(  # noqa: E731
                store, FIRST, RETURNING, p, since, None
            )
            lines.append(alternate(view, readers, ["A", "B"], runs).row(f"retention by {period}"))
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
