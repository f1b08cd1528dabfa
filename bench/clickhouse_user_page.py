"""ClickHouse's user page and explorer pages, A/B in one run: the reads of the page
windows and of a user's first and last seen as they were, against the reads now,
alternated call by call so that a busy machine slows both alike.

    .venv/bin/python bench/clickhouse_user_page.py [--runs 15]

It reads bench/dashboard.py's ClickHouse database (``bench_dashboard``: load it first
with ``bench/dashboard.py --stores clickhouse --events N``) in this process, through
:class:`eventrouter.store.query.EventStore`, with the calls the admin views make: the
user page's three (its timeline page, traits, first and last seen) for the busiest user
(:data:`dashboard.BUSY_USER`) and for a quiet one, each read alone too, and the
explorer's first page, a filtered one and page 2. Per view and reading, one warm-up
call then ``--runs`` timed ones, A and B alternated; the median and the slowest of
each, B's median over A's, and whether both gave the same answer.

- **A, before**: :class:`Before`: each page window's rows read with its keys in one
  statement, every column (``page_keys`` None, no ``columns``), and a user's first and
  last seen in one statement over all their events (``copies_unit`` None).
- **B, now**: the keys window by window and the rows of the page's keys once, the
  columns a row shows (``explorer.ROW_COLUMNS``); first and last seen from the windows
  holding the user's newest and oldest events, read over their whole days.

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
from alternation import alternate, clickhouse_footer, load_average

from eventrouter.admin import explorer
from eventrouter.sinks.clickhouse_store import ClickHouseDialect, ClickHouseStore
from eventrouter.store.query import EventFilter, EventStore

#: A user of the data model with few events (users are drawn as ``USERS * random() **
#: 1.5``: the last ones are the quietest).
QUIET_USER = f"user-{dashboard.USERS - 7:05d}"


class Before(ClickHouseDialect):
    """The page windows' rows in one statement each, and a user's span in one."""

    copies_unit = None

    def page_keys(self, conditions: Any, count: int) -> None:
        return None


class BeforeStore(ClickHouseStore):
    def query_dialect(self) -> Before:
        return Before(self.url, self.layout)


def views(
    since: datetime,
) -> dict[str, Callable[[EventStore, Sequence[str]], Any]]:
    def user_page(user: str) -> Callable[[EventStore, Sequence[str]], Any]:
        def read(store: EventStore, columns: Sequence[str]) -> Any:
            where = EventFilter(user_id=user)
            page = store.query(where, explorer.PAGE_SIZE, None, columns)
            return page, store.identify_traits(user), store.time_span(where)

        return read

    def page(
        where: EventFilter, second: bool = False
    ) -> Callable[[EventStore, Sequence[str]], Any]:
        def read(store: EventStore, columns: Sequence[str]) -> Any:
            first = store.query(where, explorer.PAGE_SIZE, None, columns)
            if not second:
                return first
            return store.query(where, explorer.PAGE_SIZE, first.next_cursor, columns)

        return read

    return {
        "user page (busiest user)": user_page(dashboard.BUSY_USER),
        "busiest user's timeline page": lambda store, columns: store.query(
            EventFilter(user_id=dashboard.BUSY_USER), explorer.PAGE_SIZE, None, columns
        ),
        "busiest user's first and last seen": lambda store, _: store.time_span(
            EventFilter(user_id=dashboard.BUSY_USER)
        ),
        "user page (a quiet user)": user_page(QUIET_USER),
        "explorer first page": page(EventFilter(since=since)),
        "explorer, one event": page(EventFilter(since=since, event=dashboard.FILTER_EVENT)),
        "explorer pages 1 and 2": page(EventFilter(since=since), second=True),
    }


def comparable(answer: Any) -> Any:
    """Pages as their events' ids (A reads every column, B the row's), the rest as is."""
    if isinstance(answer, tuple):
        return tuple(comparable(part) for part in answer)
    if hasattr(answer, "events"):
        return [(e["message_id"], e["timestamp"]) for e in answer.events], answer.next_cursor
    return answer


def run(runs: int) -> str:
    url = dashboard.CH_URL
    readers = {"A": EventStore(BeforeStore(url)), "B": EventStore(ClickHouseStore(url))}
    columns = {"A": (), "B": explorer.ROW_COLUMNS}
    load_before = load_average()
    since = datetime.now(UTC) - dashboard.RANGE_SPAN
    lines = [
        "| view | A: before, median ms | B: now, median ms | B / A | slowest A / B | same answer |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    try:
        for name, view in views(since).items():

            def call(store: EventStore, v: Any = view) -> Any:
                kind = "A" if store is readers["A"] else "B"
                return comparable(v(store, columns[kind]))

            lines.append(alternate(call, readers, ("A", "B"), runs).row(name))
    finally:
        for reader in readers.values():
            reader.close()
    lines.append("")
    lines.append(clickhouse_footer(dashboard.CH_DATABASE, runs, load_before))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="timed calls per reading [15]")
    args = parser.parse_args(argv)
    print(run(args.runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
