"""The Active users page's breakdown by a kept JSON path, A/B in one run: the top values
counted from ``events`` (A, as before ``users_seen``) against the store's last-seen rows
(B, ``users_seen``: eventrouter.store.rollup), alternated call by call so that a busy
machine slows both alike.

    .venv/bin/python bench/active_users.py [--stores sqlite,postgres] [--runs 9]

It reads bench/dashboard.py's databases (SQLite under ``bench/results/dashboard-sqlite``,
PostgreSQL ``eventrouter_bench_dashboard`` or ``EVENTROUTER_BENCH_DASHBOARD_PG``: load
them first with ``bench/dashboard.py --stores sqlite,postgres --events N``, whose sinks
keep ``unique_users`` and ``rollup_paths = ["properties.plan"]``, hence ``users_seen``)
in this process through :meth:`eventrouter.store.query.EventStore.active_users`, over
the last 30 days as the page asks: by ``properties.plan`` per day, week and month, and
per day of one event. A is the same store read with ``QueryDialect.users_seen`` unset
(that reader only). Per view: one warm-up call each, then ``--runs`` timed ones; the
median and slowest of each, B's median over A's, and whether both gave the same answer.
Only 127.0.0.1 is spoken to; nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dashboard
from alternation import alternate, load_average

from eventrouter.sinks.postgres_store import PostgresStore
from eventrouter.sinks.sqlite_store import SQLiteStore
from eventrouter.store.query import EventFilter, EventStore

BY = "properties.plan"
#: (label, interval, event filter)
VIEWS = (
    ("by day", "day", None),
    ("by week", "week", None),
    ("by month", "month", None),
    (f"by day, event {dashboard.FILTER_EVENT}", "day", dashboard.FILTER_EVENT),
)


def readers(store: str) -> dict[str, EventStore]:
    if store == "sqlite":
        make = lambda: SQLiteStore(f"sqlite:///{dashboard.SQLITE_DIR / 'events.db'}")  # noqa: E731
    else:
        make = lambda: PostgresStore(dashboard.PG_URL)  # noqa: E731
    before, after = EventStore(make()), EventStore(make())
    before.dialect.users_seen = None  # this reader's dialect only: counted from events
    return {"A": before, "B": after}


def run(stores: Sequence[str], runs: int) -> str:
    started_load = load_average()
    since = datetime.now(UTC) - dashboard.RANGE_SPAN
    lines = [
        "| store | active users, 30 days, by properties.plan | A: from events, median ms "
        "| B: users_seen | B / A | slowest A / B | same answer |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for store in stores:
        pair = readers(store)
        try:
            if not pair["B"].dialect.users_seen_kept(BY):
                lines.append(f"| {store} | users_seen does not keep {BY}: not measured | | | | | |")
                continue
            for label, interval, event in VIEWS:
                where = EventFilter(since=since, event=event)
                view = lambda reader, i=interval, w=where: reader.active_users(  # noqa: E731
                    w, i, by=BY
                )
                result = alternate(view, pair, ["A", "B"], runs)
                median = result.median
                lines.append(
                    f"| {store} | {label} | {median['A']:.1f} | {median['B']:.1f} | "
                    f"{median['B'] / median['A']:.3f} | {result.slowest()} | {result.same()} |"
                )
                print(lines[-1], file=sys.stderr, flush=True)
        finally:
            for reader in pair.values():
                reader.close()
    lines.append("")
    lines.append(
        f"- bench/dashboard.py's data; {runs} runs per reading after one warm-up, alternated; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load average {started_load} at the start, "
        f"{load_average()} at the end (2 cores, shared)"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default="sqlite,postgres", help="[sqlite,postgres]")
    parser.add_argument("--runs", type=int, default=9, help="timed calls per reading [9]")
    args = parser.parse_args(argv)
    stores = [s for s in args.stores.split(",") if s]
    unknown = set(stores) - {"sqlite", "postgres"}
    if unknown:
        parser.error(f"--stores: {', '.join(sorted(unknown))}: not sqlite or postgres")
    print(run(stores, args.runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
