"""The dashboard's aggregates with and without the rollups (eventrouter.store.rollup),
and what keeping them costs the writes.

    .venv/bin/python bench/rollups.py load [--events 1000000] [--stores sqlite,postgres,clickhouse]
    .venv/bin/python bench/rollups.py migrate [--unique-users] [--paths properties.plan]
    .venv/bin/python bench/rollups.py time [--runs 5] [--stores ...]
    .venv/bin/python bench/rollups.py ingest [--events 300000] [--stores ...] [--rounds 2]
                                      [--paths properties.plan] [--unique-users --seen]
                                      [--unique-users --daily]
    .venv/bin/python bench/rollups.py compact [--stores clickhouse]

``load`` writes ``--events`` events of bench/dashboard.py's :class:`EventFactory`,
spread over 29.5 days, into databases of this benchmark's own (SQLite
``/tmp/eventrouter-bench-rollups.db``, PostgreSQL and ClickHouse
``eventrouter_bench_rollups``; dropped first) through the real sinks driven by the bus,
as ``eventrouter worker`` writes. The sinks create the rollup as they start; ``time
--scan`` times the same queries with EventStore(use_rollup=False) instead: the
"before". ``migrate`` runs the sinks' migration (``--unique-users`` adds the users
tables). ``time`` prints, per store, the median and the slowest of ``--runs`` calls of
each aggregate the dashboard makes over the last 7 and 30 days (after one warm-up).
``ingest`` writes ``--events`` events into a fresh database ``--rounds`` times per
store, without and with the rollup's triggers (ClickHouse: the materialized view that
marks changed days; and, with ``--unique-users``, the users tables), alternated, and
prints the write rate of each (on ClickHouse also the server's CPU per event, from
/proc); with ``--paths``, with the rollups every time, without and with those
``rollup_paths``, alternated: the paths' own cost; with ``--unique-users --paths P
--seen``, with both every time, without and with ``users_seen``: its own cost; with
``--unique-users --daily``, the same for ``event_users_daily`` (the ``event_user``
indexes both times).
``compact`` runs ClickHouse's
compactor (sinks/clickhouse_rollup.py) once on the loaded database with every day
marked changed (as ``migrate`` leaves a new rollup), then once more with nothing to
do, and prints how long each took. Only 127.0.0.1 is spoken to.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dashboard
import psycopg
from clickhouse_driver import Client

import eventrouter.sinks.postgres as postgres_sink
import eventrouter.sinks.sqlite as sqlite_sink
import eventrouter.sinks.sqlite_store as sqlite_store
from eventrouter import config as config_module
from eventrouter.admin import explorer
from eventrouter.bus.bus import WORKER, Bus, make_plugin_manager
from eventrouter.sinks.clickhouse_store import ClickHouseStore
from eventrouter.sinks.postgres_store import PostgresStore
from eventrouter.sinks.sqlite_store import SQLiteStore
from eventrouter.store.query import EventFilter, EventStore

SPAN = timedelta(days=29.5)
#: Where each store's sink keeps users_seen (``ensure_seen``: ``--seen`` turns it off) and
#: event_users_daily (``ensure_daily``: ``--daily`` turns it off).
SEEN = {"sqlite": sqlite_store, "postgres": postgres_sink}
#: ``EVENTROUTER_BENCH_ROLLUPS_NAME``: another name (two runs side by side).
NAME = os.environ.get("EVENTROUTER_BENCH_ROLLUPS_NAME") or "eventrouter_bench_rollups"
SQLITE_PATH = f"/tmp/{NAME.replace('_', '-')}.db"
PG_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
SINKS = {
    "sqlite": {"type": "sqlite", "url": f"sqlite:///{SQLITE_PATH}"},
    "postgres": {"type": "postgres", "url": f"postgresql+psycopg://postgres@127.0.0.1/{NAME}"},
    "clickhouse": {"type": "clickhouse", "url": f"clickhouse+native://default:@127.0.0.1/{NAME}"},
}
STORES = {"sqlite": SQLiteStore, "postgres": PostgresStore, "clickhouse": ClickHouseStore}
BATCH = {"sqlite": 10_000, "postgres": 10_000, "clickhouse": 50_000}


def reset(name: str) -> None:
    """An empty database for ``name``'s store."""
    if name == "sqlite":
        for suffix in ("", "-wal", "-shm", ".lock"):
            Path(SQLITE_PATH + suffix).unlink(missing_ok=True)
    elif name == "postgres":
        with psycopg.connect(PG_SERVER, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {NAME} WITH (FORCE)")
            connection.execute(f"CREATE DATABASE {NAME}")
    else:
        client = Client.from_url("clickhouse://default:@127.0.0.1/default")
        client.execute(f"DROP DATABASE IF EXISTS {NAME}")
        client.disconnect()


async def write(
    name: str,
    batches: Sequence[list],
    unique_users: bool = False,
    rollup: bool = True,
    paths: Sequence[str] = (),
    event_user: bool = False,
) -> float:
    """Seconds the sink's writes of ``batches`` took, through the bus (role worker);
    ``event_user``: SQLite's and PostgreSQL's sinks keep the ``event_user`` index(es)
    (with ``unique_users``, SQLite keeps ``event_users_daily`` only with them)."""
    sink = {**SINKS[name], "batch": {"max_events": 50_000, "timeout": "1s"}}
    if event_user and name == "sqlite":
        sink["indexes"] = ["user_id", "event", "event_user"]
    elif event_user and name == "postgres":
        sink["indexes"] = ["user_id", "anonymous_id", "event", "event_user"]
    if unique_users:
        sink["unique_users"] = True
    if paths:
        sink["rollup_paths"] = list(paths)
    if name == "clickhouse":
        sink["rollup"] = rollup
        sink["rollup_interval"] = "1h"  # compacted by the ``compact`` command, not here
    raw = {"sinks": {name: sink}, "server": {"dispatch_timeout": "30m"}}
    config = config_module.parse(raw, f"bench:rollups:{name}", dict(os.environ))
    bus = Bus(config, make_plugin_manager(config), role=WORKER, only=[name])
    await bus.start()
    try:
        started = time.perf_counter()
        for batch in batches:
            await bus.deliver(name, batch)
        return time.perf_counter() - started
    finally:
        await bus.stop()


def batches_of(events: int, size: int) -> list[list]:
    dashboard.SPAN = SPAN  # EventFactory spreads the events over it
    factory = dashboard.EventFactory(events, datetime.now(UTC) - SPAN)
    return [factory.commands(first, min(size, events - first)) for first in range(0, events, size)]


def load(args: argparse.Namespace) -> None:
    for name in args.stores:
        reset(name)
        seconds = asyncio.run(write(name, batches_of(args.events, BATCH[name])))
        print(f"{name}: {args.events:,} events written in {seconds:.1f} s", flush=True)
        if name == "postgres":
            with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{NAME}") as connection:
                connection.autocommit = True
                connection.execute("VACUUM ANALYZE")


def migrate(args: argparse.Namespace) -> None:
    for name in args.stores:
        if name == "clickhouse":
            continue
        started = time.perf_counter()
        kind = sqlite_sink.SQLiteSink if name == "sqlite" else postgres_sink.PostgresSink
        options = kind.Options(
            url=SINKS[name]["url"], unique_users=args.unique_users, rollup_paths=args.paths
        )
        instance = kind(name, None, options)
        try:
            print(f"{name}: {instance.migrate()} ({time.perf_counter() - started:.1f} s)")
        finally:
            if name == "postgres":
                instance.stop()


def queries(store: EventStore, since: datetime, step: int) -> dict[str, Callable[[], object]]:
    """The dashboard's aggregates over ``[since, now)``, by name."""
    where = EventFilter(since=since)
    one_event = EventFilter(since=since, event=dashboard.FILTER_EVENT)
    return {
        "chart": lambda: store.count_by_time(where, step),
        "chart, one event": lambda: store.count_by_time(one_event, step),
        "top events": lambda: store.top(where, "event", 11),
        "top properties.plan": lambda: store.top(where, "properties.plan", 11),
        "count": lambda: store.count(where),
        "time span (all)": lambda: store.time_span(EventFilter()),
        "active users per day": lambda: store.active_users(where, "day"),
        "active users per week by event": lambda: store.active_users(where, "week", by="event"),
    }


def timings(args: argparse.Namespace) -> None:
    now = datetime.now(UTC)
    print("| store | range | query | median ms | max ms |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.stores:
        store = EventStore(STORES[name](SINKS[name]["url"]), use_rollup=not args.scan)
        for days in (7, 30):
            since = now - timedelta(days=days)
            for query, call in queries(store, since, explorer.choose_step(since, now)).items():
                call()
                times = []
                for _ in range(args.runs):
                    started = time.perf_counter()
                    call()
                    times.append(1000 * (time.perf_counter() - started))
                print(
                    f"| {name} | {days}d | {query} | {statistics.median(times):.0f} "
                    f"| {max(times):.0f} |",
                    flush=True,
                )
        store.close()


def clickhouse_cpu() -> float:
    """CPU seconds the local clickhouse-server has used (user + system, /proc)."""
    pid = subprocess.run(["pidof", "-s", "clickhouse-server"], capture_output=True, text=True)
    fields = Path(f"/proc/{pid.stdout.strip()}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ingest(args: argparse.Namespace) -> None:
    real_sqlite, real_postgres = sqlite_sink.ensure_rollup, postgres_sink.ensure_rollup

    def none(connection: object, **_: object) -> list[str]:
        return []

    # With --paths: the rollups both times, without and with the paths (their own cost);
    # with --seen too: the paths both times, without and with users_seen (its own); with
    # --daily: the rollups both times, without and with event_users_daily (its own).
    variants = [(True, ()), (True, tuple(args.paths))] if args.paths else [(False, ()), (True, ())]
    if args.seen:
        variants = [(True, tuple(args.paths), False, True), (True, tuple(args.paths), True, True)]
    elif args.daily:
        variants = [(True, tuple(args.paths), True, False), (True, tuple(args.paths), True, True)]
    else:
        variants = [(*variant, True, True) for variant in variants]
    real_seen = {store: getattr(module, "ensure_seen", None) for store, module in SEEN.items()}
    real_daily = {store: module.ensure_daily for store, module in SEEN.items()}
    for name in args.stores:
        batches = batches_of(args.events, BATCH[name])
        for rollups, paths, seen, daily in variants * args.rounds:
            sqlite_sink.ensure_rollup = real_sqlite if rollups else none
            postgres_sink.ensure_rollup = real_postgres if rollups else none
            for store, module in SEEN.items():
                if real_seen[store] is not None:
                    module.ensure_seen = real_seen[store] if seen else lambda *_: []
                module.ensure_daily = real_daily[store] if daily else lambda *_: []
            reset(name)
            cpu = clickhouse_cpu() if name == "clickhouse" else 0.0
            seconds = asyncio.run(
                write(
                    name,
                    batches,
                    unique_users=args.unique_users,
                    rollup=rollups,
                    paths=paths,
                    event_user=args.daily,
                )
            )
            what = "with rollups" if rollups else "without"
            if args.paths:
                what += f" and rollup_paths = {list(paths)}"
            if args.seen:
                what += ", with users_seen" if seen else ", without users_seen"
            if args.daily:
                what += ", with event_users_daily" if daily else ", without event_users_daily"
            line = f"{name} {what}: {args.events / seconds:,.0f} events/s"
            if name == "clickhouse":
                per_event = (clickhouse_cpu() - cpu) / args.events * 1e6
                line += f", server CPU {per_event:.2f} µs/event"
            print(line, flush=True)
    sqlite_sink.ensure_rollup, postgres_sink.ensure_rollup = real_sqlite, real_postgres
    for store, module in SEEN.items():
        if real_seen[store] is not None:
            module.ensure_seen = real_seen[store]
        module.ensure_daily = real_daily[store]


def compact(args: argparse.Namespace) -> None:
    from eventrouter.sinks.clickhouse_rollup import BACKFILL_SQL
    from eventrouter.sinks.clickhouse_rollup import compact as compact_rollup
    from eventrouter.sinks.clickhouse_store import client_for

    client = client_for(SINKS["clickhouse"]["url"])
    try:
        client.execute(BACKFILL_SQL)  # every day changed, as a new rollup starts
        for what in ("every day dirty", "nothing dirty"):
            time.sleep(1.05)
            started = time.perf_counter()
            days = compact_rollup(client, margin=0)
            seconds = time.perf_counter() - started
            print(f"clickhouse compaction, {what}: {len(days)} days in {seconds:.2f} s")
    finally:
        client.disconnect()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["load", "migrate", "time", "ingest", "compact"])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--stores", default="sqlite,postgres,clickhouse")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--scan", action="store_true", help="time: never read the rollups")
    parser.add_argument("--unique-users", action="store_true")
    parser.add_argument("--rounds", type=int, default=2, help="ingest: rounds of each")
    parser.add_argument(
        "--paths",
        default="",
        help="comma-separated rollup_paths (properties.plan); ingest: every round with the "
        "rollups, alternately without and with these paths; migrate: keep these",
    )
    parser.add_argument(
        "--seen",
        action="store_true",
        help="ingest, with --unique-users and --paths: alternately without and with "
        "users_seen (the active users per path value)",
    )
    parser.add_argument(
        "--daily",
        action="store_true",
        help="ingest, with --unique-users: alternately without and with event_users_daily "
        "(each user's first and last event per name and day), the event_user indexes both "
        "times",
    )
    args = parser.parse_args(argv)
    if args.seen and not (args.unique_users and args.paths):
        parser.error("--seen needs --unique-users and --paths")
    if args.daily and (args.seen or not args.unique_users):
        parser.error("--daily needs --unique-users (and no --seen)")
    args.stores = args.stores.split(",")
    args.paths = [p for p in args.paths.split(",") if p]
    commands = {"load": load, "migrate": migrate, "time": timings, "ingest": ingest}
    commands["compact"] = compact
    commands[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
