"""ClickHouse's retention, A/B in one run: every event of the two names read from
``events`` (as before ``events_user_days``) against the clean whole days read from
``events_user_days``, alternated call by call so that a busy machine slows both alike.

    .venv/bin/python bench/clickhouse_retention.py [--runs 9] [--days 3]

It reads bench/dashboard.py's ClickHouse database (``bench_dashboard``: load it first
with ``bench/dashboard.py --stores clickhouse --events N``, whose run migrates and
compacts it) in this process, through :func:`eventrouter.store.analysis.retention`,
with the dashboard's cohorts (:data:`dashboard.RETENTION`: ``Signed Up`` then
``Product Viewed``) by day and by week over the last 30 days, and by day over the last
7. Per view and reading, one warm-up call then ``--runs`` timed ones, A and B
alternated; the median and the slowest of each, B's median over A's, and whether both
gave the same cohorts.

- **A, before**: a reader whose dialect keeps no ``user_days`` (this reader's only):
  ``ClickHouseDialect.retention_statement``, per user text over the range's events.
- **B, now**: ``ClickHouseDialect.retention_days``.

And what it costs the compactor: one compaction of the same ``--days`` stored days
(the oldest whole ones), A as a compactor before ``events_user_days`` (it writes none:
``has_user_days`` false) and B as now, alternated. Each writes the days' rows again
with a new version (readers take the latest: the answers stay the same).

Only 127.0.0.1 is spoken to.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dashboard
from alternation import alternate, clickhouse_footer, load_average

from eventrouter.sinks import clickhouse_rollup
from eventrouter.sinks.clickhouse_store import ClickHouseStore
from eventrouter.store.analysis import retention
from eventrouter.store.query import EventStore


def run(runs: int) -> str:
    url = dashboard.CH_URL
    readers = {"A": EventStore(ClickHouseStore(url)), "B": EventStore(ClickHouseStore(url))}
    readers["A"].dialect.user_days = None  # this reader's only
    first, returning = (value for _, value in dashboard.RETENTION)
    load_before = load_average()
    now = datetime.now(UTC)
    views = {
        "retention by day, 30 days": ("day", now - dashboard.RANGE_SPAN),
        "retention by week, 30 days": ("week", now - dashboard.RANGE_SPAN),
        "retention by day, 7 days": ("day", now - timedelta(days=7)),
    }
    lines = [
        "| view | A: events, median ms | B: events_user_days, median ms | B / A "
        "| slowest A / B | same answer |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    try:
        if not readers["B"].keeps(readers["B"].dialect.user_days):
            return "clickhouse: no events_user_days (load with bench/dashboard.py)"
        for name, (period, since) in views.items():
            ab = alternate(
                lambda store, p=period, s=since: retention(store, first, returning, p, s, now),
                readers,
                ("A", "B"),
                runs,
            )
            lines.append(ab.row(name))
    finally:
        for reader in readers.values():
            reader.close()
    lines.append("")
    lines.append(clickhouse_footer(dashboard.CH_DATABASE, runs, load_before))
    return "\n".join(lines)


def compaction(runs: int, count: int) -> str:
    """One compaction of ``count`` stored days, without and with ``events_user_days``."""
    from clickhouse_driver import Client

    client = Client(dashboard.HOST, database=dashboard.CH_DATABASE)
    kept = clickhouse_rollup.has_user_days
    try:
        days = [row[0] for row in client.execute(clickhouse_rollup.user_days_sql())][1:][:count]

        def compact(kind: str) -> int:
            clickhouse_rollup.has_user_days = kept if kind == "B" else lambda _: False
            try:
                paths = list(dashboard.ROLLUP_PATHS)
                return len(clickhouse_rollup.compact(client, days=days, paths=paths))
            finally:
                clickhouse_rollup.has_user_days = kept

        load_before = load_average()
        ab = alternate(compact, {"A": "A", "B": "B"}, ("A", "B"), runs)
        heading = (
            "| compaction | A: without events_user_days, median ms | B: with it, median ms "
            "| B / A | slowest A / B | same answer |"
        )
        lines = [heading, "| --- | ---: | ---: | ---: | --- | --- |"]
        lines.append(ab.row(f"{len(days)} day(s) recounted"))
    finally:
        client.disconnect()
    lines.append("")
    lines.append(clickhouse_footer(dashboard.CH_DATABASE, runs, load_before))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9, help="timed calls per reading [9]")
    parser.add_argument(
        "--days", type=int, default=3, help="days each compaction recounts (0: none) [3]"
    )
    args = parser.parse_args(argv)
    print(run(args.runs))
    if args.days:
        print()
        print(compaction(args.runs, args.days))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
