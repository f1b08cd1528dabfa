"""The per-source key migration (issue 18, item 6) on a store of the previous schema:
how long ``migrate`` takes, how long it holds writers off, and that every row is kept.

For each store a database is created with the previous release's keys, filled with
``--events`` track events (written with the sinks' own fast paths), and upgraded with
the sink's ``migrate()``, as ``eventrouter migrate`` runs it:

- ``sqlite``: the unique index ``(message_id)`` becomes ``(message_id, source)``;
- ``postgres``: the primary key ``(message_id, timestamp)`` becomes ``(message_id,
  source, timestamp)``. A writer COPYs 100-event batches throughout; its slowest batch
  during the migration is the stall writers saw;
- ``clickhouse``: a table whose sorting key lacks ``source`` is copied into a new one.

Prints a markdown table (docs/postgres.md, docs/clickhouse.md and docs/configuration.md
quote it). Everything runs on 127.0.0.1; the databases made here are dropped.

    .venv/bin/python bench/migrate_keys.py [--events 1000000] [--stores sqlite,postgres,clickhouse]
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
# This script's directory is on sys.path first; nothing here hides a package, but keep
# the repository's packages first as the other scripts do.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]

import psycopg  # noqa: E402
from clickhouse_driver import Client  # noqa: E402
from sqlalchemy import (  # noqa: E402
    DateTime,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    create_engine,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB  # noqa: E402
from sqlalchemy.schema import CreateTable  # noqa: E402

from eventrouter.bus.bus import WORKER, Bus, make_plugin_manager  # noqa: E402
from eventrouter.config import parse  # noqa: E402
from eventrouter.events.commands import TrackCommand  # noqa: E402
from eventrouter.sinks import clickhouse as clickhouse_sink  # noqa: E402
from eventrouter.sinks import postgres as postgres_sink  # noqa: E402
from eventrouter.sinks.sqlite import flat_values, insert_values  # noqa: E402
from eventrouter.store.schema import event_columns, events, metadata  # noqa: E402

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
CLICKHOUSE_ADMIN = "clickhouse://default:@127.0.0.1:9000/default"
SOURCES = ["web", "ios", "android", "server"]
CHUNK = 50_000


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def commands(count: int, days: int = 30) -> list[TrackCommand]:
    """``count`` track events over the last ``days`` days, four sources."""
    now = datetime.now(UTC).replace(microsecond=0)
    rng = random.Random(18)
    out = []
    for i in range(count):
        moment = now - timedelta(seconds=rng.randrange(days * 86400))
        out.append(
            TrackCommand(
                message_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                source=SOURCES[i % len(SOURCES)],
                user_id=f"u{rng.randrange(100_000)}",
                event=f"Event {rng.randrange(20)}",
                properties={"plan": "pro", "i": i},
                context={"library": {"name": "bench"}},
                timestamp=moment,
                received_at=moment,
            )
        )
    return out


def sink_of(kind: str, table: dict, data_dir: Path):
    config = parse({"sinks": {"m": {"type": kind, **table}}}, "bench.toml", {
        "EVENTROUTER_DATA_DIR": str(data_dir)
    })  # fmt: skip
    return Bus(config, make_plugin_manager(config), role=WORKER).sinks["m"]


# -- SQLite --------------------------------------------------------------------------------
def run_sqlite(rows: list[TrackCommand], workdir: Path) -> dict:
    path = workdir / "old.db"
    engine = create_engine(f"sqlite:///{path}")
    metadata.create_all(engine, tables=[events])
    engine.dispose()
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE UNIQUE INDEX ux_events_message_id ON events (message_id)")
        for start in range(0, len(rows), CHUNK):
            part = rows[start : start + CHUNK]
            insert_values(connection.cursor(), flat_values(part), len(part))
            connection.commit()
    count = "SELECT count(*) FROM events"
    before = sqlite3.connect(path).execute(count).fetchone()[0]
    sink = sink_of("sqlite", {"url": f"sqlite:///{path}", "indexes": ["message_id"]}, workdir)
    started = time.monotonic()
    done = sink.migrate()
    took = time.monotonic() - started
    again = sink.migrate()
    after = sqlite3.connect(path).execute(count).fetchone()[0]
    return {
        "store": f"SQLite {sqlite3.sqlite_version}",
        "rows before": before,
        "rows after": after,
        "migrate": f"{took:.1f} s",
        "writers held": f"{took:.1f} s (the index build, under the writers' lock)",
        "second run": again,
        "said": done,
    }


# -- PostgreSQL ----------------------------------------------------------------------------
def run_postgres(rows: list[TrackCommand], workdir: Path) -> dict:
    database = f"bench_mig_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {database}")
    url = f"postgresql+psycopg://postgres@127.0.0.1/{database}"
    plain = f"postgresql://postgres@127.0.0.1/{database}"
    try:
        old = MetaData()
        table = Table(
            "events",
            old,
            *event_columns(JSONB, DateTime(timezone=True)),
            PrimaryKeyConstraint("message_id", "timestamp", name="events_pkey"),
            Index("ix_events_timestamp", "timestamp", "message_id"),
            postgresql_partition_by="RANGE (timestamp)",
        )
        engine = create_engine(url)
        with engine.begin() as connection:
            old.create_all(connection, tables=[table])
            connection.execute(text("CREATE TABLE events_default PARTITION OF events DEFAULT"))
            connection.execute(text("CREATE TABLE eventrouter_schema (version integer NOT NULL)"))
            connection.execute(text("INSERT INTO eventrouter_schema VALUES (1)"))
        engine.dispose()
        sink = sink_of("postgres", {"url": url, "migrate_on_start": False, "indexes": []}, workdir)
        sink.engine = postgres_sink.postgres_engine(url)
        sink.ensure_partitions(sink._ranges(rows))
        with psycopg.connect(plain) as connection, connection.cursor() as cursor:
            for start in range(0, len(rows), CHUNK):
                postgres_sink.copy_rows(
                    cursor, postgres_sink._copy_sql("events"), rows[start : start + CHUNK]
                )
                connection.commit()
        count = "SELECT count(*) FROM events"
        with psycopg.connect(plain) as connection:
            before = connection.execute(count).fetchone()[0]

        # A writer that goes on throughout: its slowest batch is what writers felt.
        stop = threading.Event()
        stalls: list[float] = []
        written = [0]

        def writer() -> None:
            with psycopg.connect(plain) as connection, connection.cursor() as cursor:
                while not stop.is_set():
                    now = datetime.now(UTC)
                    batch = [
                        TrackCommand(
                            message_id=uuid.uuid4().hex,
                            source="web",
                            user_id="writer",
                            event="During",
                            timestamp=now,
                            received_at=now,
                        )
                        for _ in range(100)
                    ]
                    began = time.monotonic()
                    postgres_sink.copy_rows(cursor, postgres_sink._copy_sql("events"), batch)
                    connection.commit()
                    stalls.append(time.monotonic() - began)
                    written[0] += len(batch)

        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(1)
        baseline = max(stalls) if stalls else 0.0
        stalls.clear()
        started = time.monotonic()
        done = sink.migrate()
        took = time.monotonic() - started
        stop.set()
        thread.join()
        again = sink.migrate()
        with psycopg.connect(plain) as connection:
            after = connection.execute(count).fetchone()[0]
        sink.stop()
        return {
            "store": "PostgreSQL " + psycopg.connect(plain).info.parameter_status("server_version"),
            "rows before": before,
            "rows after": f"{after} ({written[0]} written meanwhile)",
            "migrate": f"{took:.1f} s",
            "writers held": f"slowest 100-row COPY {1000 * max(stalls, default=0):.0f} ms "
            f"(before: {1000 * baseline:.0f} ms)",
            "second run": again,
            "said": done,
        }
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


# -- ClickHouse ----------------------------------------------------------------------------
def run_clickhouse(rows: list[TrackCommand], workdir: Path) -> dict:
    database = f"bench_mig_{uuid.uuid4().hex[:8]}"
    url = f"clickhouse+native://default:@127.0.0.1:9000/{database}"
    admin = Client.from_url(CLICKHOUSE_ADMIN)
    admin.execute(f"CREATE DATABASE {database}")
    version = clickhouse_sink.server_version(admin)
    try:
        datetime64 = version >= clickhouse_sink.DATETIME64_SINCE
        old = MetaData()
        order_by = "toDate(timestamp), type, event, message_id"
        table = clickhouse_sink.events_table(old, datetime64=datetime64, order_by=order_by)
        engine = create_engine(url)
        with engine.connect() as connection:
            connection.execute(CreateTable(table))
            connection.execute(CreateTable(clickhouse_sink.schema_table(old)))
        engine.dispose()
        client = Client.from_url(clickhouse_sink.driver_url(url))
        client.execute("INSERT INTO eventrouter_schema (version) VALUES", [(1,)])
        for start in range(0, len(rows), CHUNK):
            part = rows[start : start + CHUNK]
            clickhouse_sink.insert_batch(client, part, datetime64=datetime64, settings=None)
        before = client.execute("SELECT count() FROM events")[0][0]
        sink = sink_of("clickhouse", {"url": url, "migrate_on_start": False}, workdir)
        started = time.monotonic()
        done = sink.migrate()
        took = time.monotonic() - started
        again = sink.migrate()
        sink.stop()
        after = client.execute("SELECT count() FROM events")[0][0]
        client.disconnect()
        return {
            "store": f"ClickHouse {'.'.join(map(str, version))}",
            "rows before": before,
            "rows after": after,
            "migrate": f"{took:.1f} s",
            "writers held": "none (they write into the old table, copied after the swap)",
            "second run": again,
            "said": done,
        }
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {database}")
        admin.disconnect()


RUNNERS = {"sqlite": run_sqlite, "postgres": run_postgres, "clickhouse": run_clickhouse}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--stores", default=",".join(RUNNERS))
    args = parser.parse_args()
    log(f"building {args.events:,} events")
    rows = commands(args.events)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-migrate-") as workdir:
        for name in args.stores.split(","):
            log(f"{name}: old schema, {args.events:,} rows, migrate")
            results.append(RUNNERS[name](rows, Path(workdir)))
    columns = ["store", "rows before", "rows after", "migrate", "writers held", "second run"]
    print(f"{args.events:,} events; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n")
    print("| " + " | ".join(columns) + " |")
    print("| " + " | ".join("---" for _ in columns) + " |")
    for result in results:
        print("| " + " | ".join(str(result[c]) for c in columns) + " |")
    print()
    for result in results:
        print(f"- {result['store']}: {result['said']}")


if __name__ == "__main__":
    main()
