"""ClickHouse's path rollup (``rollup_paths``, ``events_hourly_paths``), A/B in one run:
the dashboard's reads of a JSON path without it (every statement on ``events FINAL``,
as before) against the reads through it, alternated call by call so that a busy
machine slows both alike; and what it costs the compactor.

    .venv/bin/python bench/clickhouse_paths.py [--runs 10] [--compactions 3]

It works on bench/dashboard.py's ClickHouse database (``bench_dashboard``, or the name
in ``EVENTROUTER_BENCH_DASHBOARD_CH``: load it first with ``bench/dashboard.py --stores
clickhouse --events N``), in this process, through
:class:`eventrouter.store.query.EventStore`:

1. **The compactor.** Every stored day recounted (``compact(days=...)``, as after
   ``migrate`` or an upgrade) ``--compactions`` times without a path, with
   :data:`dashboard.ROLLUP_PATHS` counted into ``events_hourly_paths`` alone (as before
   ``events_users_paths``), and with both, alternated (the last with both, so that step
   2 reads a complete path rollup): the median of each, and the differences per day.
2. **The reads**: per view, one warm-up call of each reading, then ``--runs`` timed
   calls, A and B alternated: the median and the slowest of each, B's median over A's,
   and whether both answered the same.

   - **A, without**: :class:`WithoutPaths`, the ClickHouse dialect with no path rollup
     (``path_rollup = None`` and no ``users_per_value``, as before): the breakdown and
     the filtered chart read ``events FINAL`` beside the hourly rollup where they can,
     the Active users page's top values count ``events``.
   - **B, with**: the store as it is.

The views are the dashboard's (bench/dashboard.py): the breakdown by
``properties.plan`` over 24 h, 7 d and 30 d (``/admin/breakdown``, the top 11), the
chart filtered by an event and a plan over 30 days in the explorer's step, the count of
that filter, and the Active users page by day with its top values of
``properties.plan`` over 30 days. Only 127.0.0.1 is spoken to; the compactor writes its own tables.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dashboard
from alternation import alternate, clickhouse_footer, load_average
from clickhouse_driver import Client

from eventrouter.admin import explorer
from eventrouter.sinks import clickhouse_rollup
from eventrouter.sinks.clickhouse_rollup import compact
from eventrouter.sinks.clickhouse_store import ClickHouseDialect, ClickHouseStore
from eventrouter.store.query import EventFilter, EventStore, PathCondition

#: The breakdown's ranges, as the dashboard's (bench/dashboard.py ``RANGES``).
RANGES = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}


class WithoutPaths(ClickHouseDialect):
    """The reads before the path rollup: no ``events_hourly_paths`` nor
    ``events_users_paths``."""

    path_rollup = None

    def users_per_value(self, *args: Any) -> None:
        return None


class WithoutPathsStore(ClickHouseStore):
    def query_dialect(self) -> WithoutPaths:
        return WithoutPaths(self.url, self.layout)


def views(now: datetime) -> dict[str, Callable[[EventStore], Any]]:
    since = now - dashboard.RANGE_SPAN
    plan = [PathCondition("properties", ("plan",), dashboard.FILTER_PLAN)]
    filtered = EventFilter(since=since, event=dashboard.FILTER_EVENT, paths=plan)
    step = explorer.choose_step(since, now)
    return {
        **{
            f"breakdown by properties.plan {name}": (
                lambda store, s=span: store.top(EventFilter(since=now - s), "properties.plan", 11)
            )
            for name, span in RANGES.items()
        },
        "chart, event + property filter 30d": lambda store: store.count_by_time(filtered, step),
        "count, event + property filter 30d": lambda store: store.count(filtered),
        "active users by day, by properties.plan 30d": lambda store: store.active_users(
            EventFilter(since=since), "day", "properties.plan"
        ),
    }


def compactions(rounds: int) -> list[str]:
    """Step 1: every stored day recounted without the paths, with their counts alone,
    and with their counts and users, alternated."""
    client = Client(dashboard.HOST, database=dashboard.CH_DATABASE)
    kinds = ("without", "counts", "with")
    keeps_users = clickhouse_rollup.has_users_paths
    try:
        days = [row[0] for row in client.execute("SELECT DISTINCT toDate(timestamp) FROM events")]
        seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
        for _ in range(rounds):
            for kind in kinds:
                paths = dashboard.ROLLUP_PATHS if kind != "without" else []
                # "counts": as a compactor before events_users_paths (it writes none).
                clickhouse_rollup.has_users_paths = (
                    keeps_users if kind == "with" else (lambda client: False)
                )
                started = time.perf_counter()
                compact(client, days=sorted(days), margin=0, paths=paths)
                seconds[kind].append(time.perf_counter() - started)
                print(f"compaction {kind}: {seconds[kind][-1]:.2f} s", file=sys.stderr)
    finally:
        clickhouse_rollup.has_users_paths = keeps_users
        client.disconnect()
    median = {kind: statistics.median(seconds[kind]) for kind in kinds}
    per_day = {
        kind: (median[kind] - median[base]) / max(len(days), 1) * 1000
        for kind, base in (("counts", "without"), ("with", "counts"))
    }
    every = "; ".join(f"{kind} {' / '.join(f'{s:.2f}' for s in seconds[kind])}" for kind in kinds)
    paths = ", ".join(dashboard.ROLLUP_PATHS)
    return [
        "| compaction of every stored day | days | without paths, median s | "
        f"{paths}'s counts, median s | and its users per value, median s | counts, extra "
        "per day, ms | users, extra per day, ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {rounds} of each, alternated (all, s: {every}) | {len(days)} | "
        f"{median['without']:.2f} | {median['counts']:.2f} | {median['with']:.2f} | "
        f"{per_day['counts']:.0f} | {per_day['with']:.0f} |",
    ]


def reads(runs: int) -> list[str]:
    """Step 2: each view through A and B, alternated call by call."""
    url = dashboard.CH_URL
    readers = {"A": EventStore(WithoutPathsStore(url)), "B": EventStore(ClickHouseStore(url))}
    lines = [
        "| view | A: without, median ms | B: with, median ms | B / A | slowest A / B "
        "| same answer |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    try:
        for name, view in views(datetime.now(UTC)).items():
            lines.append(alternate(view, readers, ("A", "B"), runs).row(name))
    finally:
        for reader in readers.values():
            reader.close()
    return lines


def run(runs: int, rounds: int) -> str:
    load_before = load_average()
    lines = [*compactions(rounds), "", *reads(runs)]
    lines.append("")
    lines.append(clickhouse_footer(dashboard.CH_DATABASE, runs, load_before))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="timed calls per reading [10]")
    parser.add_argument("--compactions", type=int, default=3, help="compactions of each kind [3]")
    args = parser.parse_args(argv)
    print(run(args.runs, args.compactions))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
