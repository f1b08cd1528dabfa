"""Funnels, retention and Active users filtered by an event, with and without
``event_users_daily`` (each user's first and last event per event name and UTC day),
A/B in one run on SQLite and PostgreSQL, alternated call by call so that a busy machine
slows both alike.

    .venv/bin/python bench/daily_analysis.py [--stores sqlite,postgres] [--runs 5]
    .venv/bin/python bench/daily_analysis.py --stores postgres --compare work_mem
    .venv/bin/python bench/daily_analysis.py --compare users_seen

It reads bench/dashboard.py's databases (load them first with ``bench/dashboard.py
--stores sqlite,postgres --events N``, whose sinks keep ``unique_users`` and the
``event_user`` indexes, and which migrates them before serving, so that they keep the
table) in this process, through :class:`eventrouter.store.query.EventStore`, with the
dashboard's parameters (the 3-step funnel with a one-day window, and by
``properties.plan``; retention ``Signed Up`` then ``Product Viewed`` by day and by
week; active users of ``Product Added`` by day, week and month; the last 30 days,
ending now). Per view and reading, one warm-up call then ``--runs`` timed ones; the
median and the slowest of each, B's median over A's, and whether both gave the same
answer.

- **A, before**: ``use_rollup=False`` (no rollup is read: ``events`` alone) and no
  per-user reads for a funnel's later steps (``QueryDialect.user_probes`` answers None):
  what this tree did before ``event_users_daily``.
- **B, event_users_daily**: the reader as the dashboard builds it.

``--compare work_mem`` (PostgreSQL) compares instead, on the funnels and retention:

- **A, the server's work_mem**: ``PostgresDialect.analysis_work_mem`` None, so the
  statements run with the server's setting (4 MB unless configured);
- **B, as served**: at least ``ANALYSIS_WORK_MEM`` for the statement's transaction.

``--compare users_seen`` compares instead, on the funnel by ``properties.plan``:

- **A, entry events**: no ``users_seen`` for this reader (``QueryDialect.users_seen``
  None), so each user's value is read from their entry event;
- **B, as served**: a user whose ``Product Viewed`` events have one value of
  ``properties.plan`` takes it from ``users_seen``; only the others' entry events are
  read.

Nothing is written. Only 127.0.0.1 is spoken to.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dashboard
from alternation import alternate, footer, load_average

from eventrouter.store.analysis import Step, funnel, parse_window, retention
from eventrouter.store.query import EventFilter, EventStore

FIRST, RETURNING = dashboard.RETENTION[0][1], dashboard.RETENTION[1][1]
STEPS = [Step(name) for name in dashboard.FUNNEL_STEPS]
WINDOW = parse_window(dashboard.FUNNEL_WINDOW)


def views(since: datetime, until: datetime) -> list[tuple[str, Callable[[EventStore], object]]]:
    where = EventFilter(since=since, event=dashboard.FILTER_EVENT)
    return [
        ("funnel, 3 steps", lambda s: funnel(s, STEPS, WINDOW, since, until)),
        (
            "funnel by properties.plan",
            lambda s: funnel(s, STEPS, WINDOW, since, until, by="properties.plan"),
        ),
        ("retention by day", lambda s: retention(s, FIRST, RETURNING, "day", since, until)),
        ("retention by week", lambda s: retention(s, FIRST, RETURNING, "week", since, until)),
        *(
            (
                f"active users of {dashboard.FILTER_EVENT} by {interval}",
                lambda s, i=interval: s.active_users(where, i),
            )
            for interval in ("day", "week", "month")
        ),
    ]


def run(store_name: str, runs: int, compare: str = "daily") -> str:
    store = dashboard.STORES[store_name]()
    before, after = store.reader(), store.reader()
    if compare == "work_mem":
        before.dialect.analysis_work_mem = None  # this reader's only
        heading = "A: the server's work_mem, median ms | B: at least 64 MB"
    elif compare == "users_seen":
        before.dialect.users_seen = None  # this reader's only
        heading = "A: entry events read, median ms | B: users_seen"
    else:
        before.use_rollup = False
        before.dialect.user_probes = lambda *args, **kwargs: None  # this reader's only
        heading = "A: before, median ms | B: event_users_daily"
    readers = {"A": before, "B": after}
    load_before = load_average()
    now = datetime.now(UTC)
    since = now - dashboard.RANGE_SPAN
    lines = [
        f"**{store_name}**",
        "",
        f"| view | {heading} | B / A | slowest A / B | same answer |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    chosen = views(since, now)
    if compare == "work_mem":
        chosen = [(name, view) for name, view in chosen if not name.startswith("active")]
    elif compare == "users_seen":
        chosen = [(name, view) for name, view in chosen if name == "funnel by properties.plan"]
    try:
        if not after.keeps(after.dialect.event_users_daily):
            return f"{store_name}: no event_users_daily (load with bench/dashboard.py)"
        for name, view in chosen:
            lines.append(alternate(view, readers, ["A", "B"], runs).row(name))
        rows = after.count(EventFilter())
    finally:
        before.close()
        after.close()
    lines.append("")
    lines.append(footer(rows, store.url.rsplit("/", 1)[-1], store_name, runs, load_before))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default="sqlite,postgres", help="[sqlite,postgres]")
    parser.add_argument("--runs", type=int, default=5, help="timed calls per reading [5]")
    parser.add_argument(
        "--compare",
        choices=("daily", "work_mem", "users_seen"),
        default="daily",
        help="what A leaves out: event_users_daily and per-user reads, PostgreSQL's "
        "work_mem for funnels and retention, or users_seen for a funnel's breakdown "
        "[daily]",
    )
    args = parser.parse_args(argv)
    if args.compare == "work_mem" and args.stores != "postgres":
        parser.error("--compare work_mem: --stores postgres")
    for name in args.stores.split(","):
        print(run(name, args.runs, args.compare))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
