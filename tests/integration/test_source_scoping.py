"""A messageId is unique per source (issue 18, item 6): one source cannot suppress or
replace another's events by reusing their ids.

- Every SQL store (SQLite, PostgreSQL, ClickHouse): the same messageId from two sources
  is two stored events, each readable with ``?source=``; without it the API answers 409
  naming both; pages and the live tail show both; a redelivery within one source is
  still stored once.
- Redis dedup drops a repeat within a source, never across sources, and its keys do not
  collide whatever ``:`` the source names and ids hold.
- S3: the same ids from two sources make two objects of different names; a redelivery
  within one source overwrites its own object.
- ``eventrouter migrate`` upgrades a store created with the previous keys (the old DDL
  is reproduced here) to the new ones, keeping every row; a second run changes nothing.

The values are the nastiest the contract allows: source names and ids with ``:``,
``/``, ``../``, quotes and non-ASCII characters.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec
import psycopg
import pytest
import redis
from clickhouse_driver import Client
from sqlalchemy import (
    DateTime,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    create_engine,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.schema import CreateTable

from eventrouter.bus.bus import WORKER, Bus, make_plugin_manager
from eventrouter.config import DedupConfig
from eventrouter.events.commands import TrackCommand
from eventrouter.plugins.dedup import RedisDedup
from eventrouter.sinks import clickhouse as clickhouse_sink
from eventrouter.sinks import postgres as postgres_sink
from eventrouter.sinks.s3 import object_name
from eventrouter.sinks.sqlite import flat_values, insert_values
from eventrouter.store.query import AmbiguousEvent, EventFilter, EventStore, iso_utc
from eventrouter.store.schema import event_columns, events, metadata
from tests.helpers import LiveServer, make_config, run_eventrouter
from tests.ingest_support import AUTH
from tests.queue_support import DEDUP_URL, to_toml, unique
from tests.s3_support import S3Env, s3_env  # noqa: F401 - fixture
from tests.store_support import CLICKHOUSE_ADMIN, STORES, store_of, store_sink

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

# ruff: noqa: F811 - pytest fixtures are parameters

#: Two sources whose names a naive ``source:id`` join would confuse, and a shared id.
SOURCE_A = 'ios:app/"v2" é'
SOURCE_B = "ios"
MESSAGE_ID = 'm:1/../"q" ü\'x'
SOURCES = [
    {"name": SOURCE_A, "write_key": "wk-a"},
    {"name": SOURCE_B, "write_key": "wk-b"},
]
KEYS = {SOURCE_A: ("wk-a", ""), SOURCE_B: ("wk-b", "")}


#: What the ClickHouse sink's hourly rollup adds beside ``events`` (sinks/clickhouse_rollup.py).
CLICKHOUSE_ROLLUP_TABLES = {
    "events_hourly",
    "events_users",
    "events_hourly_paths",
    "events_paths_compacted",
    "events_users_paths",
    "events_user_days",
    "events_user_days_compacted",
    "events_compacted",
    "events_dirty",
    "events_dirty_mv",
}


def at_second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)  # what every store keeps (18.16: seconds)


def track(event: str, message_id: str, user: str, moment: datetime, **properties: Any) -> dict:
    return {
        "type": "track",
        "event": event,
        "userId": user,
        "messageId": message_id,
        "timestamp": moment.isoformat(),  # no sentAt: stored as sent, equal for both
        "properties": properties,
    }


@pytest.fixture(scope="module", params=STORES)
def store(request, tmp_path_factory) -> Iterator[tuple[LiveServer, dict[str, Any]]]:
    """Embedded mode on one store, with two sources; SQLite with its unique index."""
    tmp_path = tmp_path_factory.mktemp(request.param)
    with store_sink(request.param, tmp_path) as sink:
        if request.param == "sqlite":
            sink["indexes"] = ["message_id", "user_id", "event"]
        raw = {"sources": SOURCES, "sinks": {"store": sink}}
        server = LiveServer(make_config(tmp_path, raw)).start()
        try:
            yield server, sink
        finally:
            server.stop()


def send(server: LiveServer, source: str, body: dict) -> None:
    response = server.post("/v1/track", body, auth=KEYS[source])
    assert response.status_code == 200, response.text


def get_one(server: LiveServer, message_id: str, **params: str):
    path = f"/api/v1/events/{quote(message_id, safe='')}"
    return server.client.get(path, params=params, headers=AUTH)


def listed(server: LiveServer, **params: Any) -> list[dict[str, Any]]:
    response = server.client.get("/api/v1/events", params=params, headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


# -- every store -----------------------------------------------------------------------------
def test_the_same_message_id_from_two_sources_is_two_events(store):
    server, _ = store
    name = unique("Shared Id ")
    moment = at_second(datetime.now(UTC) - timedelta(minutes=1))
    send(server, SOURCE_A, track(name, MESSAGE_ID, "victim", moment, owner="a"))
    send(server, SOURCE_B, track(name, MESSAGE_ID, "mallory", moment, owner="b"))

    stored = {e["source"]: e for e in server.events(event=name)}
    assert set(stored) == {SOURCE_A, SOURCE_B}
    assert stored[SOURCE_A]["user_id"] == "victim"
    assert stored[SOURCE_A]["properties"] == {"owner": "a"}
    assert stored[SOURCE_B]["properties"] == {"owner": "b"}
    assert {e["message_id"] for e in stored.values()} == {MESSAGE_ID}

    for source, owner in ((SOURCE_A, "a"), (SOURCE_B, "b")):
        response = get_one(server, MESSAGE_ID, source=source)
        assert response.status_code == 200, response.text
        event = response.json()
        assert (event["source"], event["message_id"]) == (source, MESSAGE_ID)
        assert event["properties"] == {"owner": owner}

    response = get_one(server, MESSAGE_ID)
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["code"] == "ambiguous_message_id"
    assert body["sources"] == sorted([SOURCE_A, SOURCE_B])
    assert body["message"].startswith("message_id: 2 sources have an event")
    assert "?source=" in body["message"]

    missing = get_one(server, MESSAGE_ID, source="web")
    assert missing.status_code == 404
    assert missing.json()["message"] == f"message_id: no event {MESSAGE_ID!r} from source 'web'"


def test_pages_of_one_walk_both_events_of_a_shared_id_and_time(store):
    """The two events tie on ``(timestamp, message_id)``: the cursor's source tells
    them apart, so a page boundary between them skips neither."""
    server, _ = store
    name = unique("Paged ")
    moment = at_second(datetime.now(UTC) - timedelta(minutes=2))
    for source in (SOURCE_A, SOURCE_B):
        send(server, source, track(name, "p:1", "u", moment))
    seen, cursor = [], None
    for _ in range(3):
        page = listed(server, event=name, limit=1, **({"cursor": cursor} if cursor else {}))
        seen += [(e["source"], e["message_id"]) for e in page["events"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [(SOURCE_A, "p:1"), (SOURCE_B, "p:1")]  # source descending on a tie


def test_a_redelivery_within_one_source_is_stored_once(store):
    server, _ = store
    name = unique("Redelivered ")
    message_id = unique("r:/é")
    moment = at_second(datetime.now(UTC) - timedelta(minutes=3))
    for _ in range(2):  # an SDK retry: the same event, received again
        send(server, SOURCE_A, track(name, message_id, "u", moment, attempt=0))
    assert [(e["source"], e["message_id"]) for e in server.events(event=name)] == [
        (SOURCE_A, message_id)
    ]
    response = get_one(server, message_id)  # one source has it: no source needed
    assert response.status_code == 200, response.text
    assert response.json()["source"] == SOURCE_A


def test_the_store_layer_names_an_event_by_source_and_id(store):
    server, sink = store
    name = unique("Store Layer ")
    moment = at_second(datetime.now(UTC) - timedelta(minutes=4))
    events = EventStore(store_of(sink))
    try:
        position = events.tail_position()
        for source in (SOURCE_A, SOURCE_B):
            send(server, source, track(name, "s:1", source, moment))
        assert events.get("s:1", SOURCE_A)["user_id"] == SOURCE_A
        assert events.get("s:1", SOURCE_B)["user_id"] == SOURCE_B
        assert events.get("s:1", "nobody") is None
        with pytest.raises(AmbiguousEvent) as info:
            events.get("s:1")
        assert info.value.sources == sorted([SOURCE_A, SOURCE_B])
        assert events.count(EventFilter(event=name)) == 2
        # The live tail of an edge-written store shows both: it remembers what it showed
        # by source and id.
        tailed = [e for e in events.stored_since(position) if e["event"] == name]
        assert sorted(e["source"] for e in tailed) == sorted([SOURCE_A, SOURCE_B])
        assert [e for e in events.stored_since(position) if e["event"] == name] == []
    finally:
        events.close()


def test_copies_of_one_sources_event_do_not_hide_another_source(tmp_path):
    """An SQLite store without the unique index keeps every redelivery: many copies of
    one source's event, and another source's event of the same id, are still two."""
    path = tmp_path / "copies.db"
    engine = create_engine(f"sqlite:///{path}")
    metadata.create_all(engine, tables=[events])
    engine.dispose()
    moment = at_second(datetime.now(UTC))
    copies = [s3_track(MESSAGE_ID, SOURCE_A, moment + timedelta(seconds=n)) for n in range(25)] + [
        s3_track(MESSAGE_ID, SOURCE_B, moment)
    ]
    with sqlite3.connect(path) as connection:
        insert_values(connection.cursor(), flat_values(copies), len(copies))
    store = EventStore(store_of({"type": "sqlite", "url": f"sqlite:///{path}"}))
    try:
        with pytest.raises(AmbiguousEvent) as info:
            store.get(MESSAGE_ID)
        assert info.value.sources == sorted([SOURCE_A, SOURCE_B])
        latest = store.get(MESSAGE_ID, SOURCE_A)
        assert latest["received_at"] == iso_utc(moment + timedelta(seconds=24))
        assert store.get(MESSAGE_ID, SOURCE_B)["source"] == SOURCE_B
    finally:
        store.close()


# -- Redis dedup -----------------------------------------------------------------------------
#: Pairs a key of ``source:id`` would map to one key, and other nasty ones.
NASTY_PAIRS = [
    ("s:1", "m"),
    ("s", "1:m"),
    ("s", "1"),
    ("s:", "1"),
    ("", "s:1"),
    (SOURCE_A, MESSAGE_ID),
    (SOURCE_B, MESSAGE_ID),
    ("3:abc", "x"),
    ("3", "abc:x"),
    ("é", "x"),
    ("ab", "x"),  # two bytes of UTF-8 like "é", two characters
]


def test_dedup_keys_differ_for_every_source_and_id_pair():
    dedup = RedisDedup(DedupConfig(url=DEDUP_URL, prefix="p:x"))
    try:
        for sink in ("local", None):
            keys = [dedup.key(sink, source, message_id) for source, message_id in NASTY_PAIRS]
            assert len(set(keys)) == len(NASTY_PAIRS), keys
            assert len({key.encode() for key in keys}) == len(NASTY_PAIRS)  # as Redis sees them
        assert dedup.key("local", "s:1", "m") == "p:x:local:3:s:1:m"
    finally:
        dedup.client.close()


@pytest.fixture
def dedup_server(start_server, tmp_path) -> Iterator[LiveServer]:
    """Embedded mode with [dedup] and an SQLite store without the unique index, so that
    every "stored once" here is dedup's doing; a source per nasty name."""
    prefix = unique("dedup")
    names = sorted({source for source, _ in NASTY_PAIRS if source})
    raw = {
        "sources": [{"name": n, "write_key": f"wk-{i}"} for i, n in enumerate(names)],
        "dedup": {"url": DEDUP_URL, "prefix": prefix},
        "sinks": {"local": {"type": "sqlite", "url": f"sqlite:///{tmp_path}/d.db", "indexes": []}},
    }
    server = start_server(raw)
    server.write_keys = {n: (f"wk-{i}", "") for i, n in enumerate(names)}
    yield server
    client = redis.Redis.from_url(DEDUP_URL)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()


def test_dedup_drops_a_repeat_within_a_source_and_not_across_sources(dedup_server):
    server = dedup_server
    name = unique("Dedup ")
    moment = at_second(datetime.now(UTC) - timedelta(minutes=1))
    pairs = [(s, m) for s, m in NASTY_PAIRS if s]
    for _ in range(2):  # the second round is every SDK's retry: all dropped
        for source, message_id in pairs:
            body = track(name, message_id, "u", moment)
            response = server.post("/v1/track", body, auth=server.write_keys[source])
            assert response.status_code == 200, response.text
    stored = Counter((e["source"], e["message_id"]) for e in server.events(event=name))
    assert stored == Counter(pairs)  # each pair once: none suppressed another
    stats = server.client.get("/health", headers=AUTH).json()["components"]["dedup"]["stats"]
    assert stats["dropped"] == len(pairs)


def test_dedup_drops_a_repeat_within_one_batch_only_for_its_own_source(dedup_server):
    server = dedup_server
    name = unique("Batch ")
    moment = at_second(datetime.now(UTC) - timedelta(minutes=1))
    # One source sends the id twice in one batch, then the other source sends it.
    batch = {"batch": [track(name, "b:1", "u", moment) for _ in range(2)]}
    assert server.post("/v1/batch", batch, auth=server.write_keys[SOURCE_A]).status_code == 200
    assert server.post("/v1/batch", batch, auth=server.write_keys[SOURCE_B]).status_code == 200
    stored = Counter(e["source"] for e in server.events(event=name))
    assert stored == {SOURCE_A: 1, SOURCE_B: 1}


# -- S3 --------------------------------------------------------------------------------------
def s3_track(message_id: str, source: str, moment: datetime) -> TrackCommand:
    return TrackCommand(
        message_id=message_id,
        source=source,
        user_id=f"u-{source}",
        event="Archived",
        timestamp=moment,
        received_at=moment,
    )


def deliver(config: Any, *batches: list) -> None:
    async def main() -> None:
        bus = Bus(config, make_plugin_manager(config), role=WORKER, only=["archive"])
        await bus.start()
        try:
            for batch in batches:
                await bus.deliver("archive", batch)
        finally:
            await bus.stop()

    asyncio.run(main())


def test_s3_writes_two_objects_of_different_names_for_the_same_ids_in_two_sources(
    s3_env: S3Env, tmp_path
):
    moment = datetime(2025, 5, 28, 4, 17, 35, tzinfo=UTC)
    ids = [MESSAGE_ID, "x\ny", "plain"]
    bucket = s3_env.bucket()
    config = make_config(tmp_path, {"sinks": {"archive": s3_env.sink(bucket)}})
    batch_a = [s3_track(i, SOURCE_A, moment) for i in ids]
    batch_b = [s3_track(i, SOURCE_B, moment) for i in ids]
    deliver(config, batch_a, batch_b)
    found = s3_env.events(bucket)
    assert len(found) == 2
    names = {key.rsplit("/", 1)[1] for key in found}
    assert len(names) == 2  # the names alone differ, not only the source= folders
    by_source = {
        lines[0]["source"]: ([e["message_id"] for e in lines], {e["source"] for e in lines})
        for lines in found.values()
    }
    assert by_source == {SOURCE_A: (ids, {SOURCE_A}), SOURCE_B: (ids, {SOURCE_B})}
    keys = sorted(found)
    deliver(config, batch_a)  # a redelivery within one source: the same object again
    assert s3_env.keys(bucket) == keys
    assert f"{object_name(SOURCE_A, ids)}.ndjson.gz" in names


def test_object_names_do_not_collide_whatever_the_ids_hold():
    names = {
        object_name("a", ["b\nc"]),
        object_name("a", ["b", "c"]),
        object_name("a\nb", ["c"]),
        object_name("a", ["b\nc", ""]),
        object_name("b", ["b\nc"]),
        object_name(SOURCE_A, [MESSAGE_ID]),
        object_name(SOURCE_B, [MESSAGE_ID]),
    }
    assert len(names) == 7
    assert object_name("a", ["b", "c"]) == object_name("a", ["b", "c"])  # deterministic


# -- migrations of stores created with the previous keys ----------------------------------
def old_rows(moment: datetime) -> list[TrackCommand]:
    """Rows an old store could hold: several days (partitions), a 1970 event (the
    PostgreSQL default partition), nasty ids and sources."""
    days = [moment - timedelta(days=n) for n in (0, 1, 40)] + [datetime(1970, 1, 2, tzinfo=UTC)]
    return [
        TrackCommand(
            message_id=f"{i}:{MESSAGE_ID}",
            source=SOURCE_A if i % 2 else SOURCE_B,
            user_id=f"u{i}",
            event="Old",
            properties={"i": i},
            timestamp=days[i % len(days)],
            received_at=moment,
        )
        for i in range(40)
    ]


def migrate(config_path: Path) -> str:
    result = run_eventrouter("migrate", "--config", str(config_path))
    assert result.returncode == 0, result.stderr
    return result.stdout


def sqlite_rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as connection:
        return sorted(connection.execute("SELECT * FROM events"))


def sqlite_indexes(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'"
        )
        return dict(rows)


def test_migrate_upgrades_an_old_sqlite_store(tmp_path):
    path = tmp_path / "old.db"
    # The previous schema: the same table, and a unique index on message_id alone.
    engine = create_engine(f"sqlite:///{path}")
    metadata.create_all(engine, tables=[events])
    engine.dispose()
    moment = at_second(datetime.now(UTC))
    rows = old_rows(moment)
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE UNIQUE INDEX ux_events_message_id ON events (message_id)")
        insert_values(connection.cursor(), flat_values(rows), len(rows))
        # What the old key did: the same id from another source is silently dropped.
        other = [msgspec.structs.replace(rows[0], source="other")]
        insert_values(connection.cursor(), flat_values(other), 1)
    before = sqlite_rows(path)
    assert len(before) == len(rows)

    config = tmp_path / "sqlite.toml"
    sink = {"type": "sqlite", "url": f"sqlite:///{path}", "indexes": ["message_id", "event"]}
    config.write_text(to_toml({"sinks": {"local": sink}}))
    first = migrate(config)
    assert "dropped ux_events_message_id" in first
    assert "created ux_events_message_id_source" in first
    assert "created events_hourly" in first  # the rollup, filled from the stored rows
    assert sqlite_rows(path) == before
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT sum(n) FROM events_hourly").fetchone() == (len(rows),)
    indexes = sqlite_indexes(path)
    assert "ux_events_message_id" not in indexes
    assert "(message_id, source)" in indexes["ux_events_message_id_source"]
    assert migrate(config) == "local (sqlite): indexes up to date\n"
    assert sqlite_indexes(path) == indexes

    with sqlite3.connect(path) as connection:  # now: another source's event of that id
        insert_values(connection.cursor(), flat_values(other), 1)
        insert_values(connection.cursor(), flat_values(rows[:1]), 1)  # a redelivery: ignored
    assert len(sqlite_rows(path)) == len(rows) + 1


# PostgreSQL --------------------------------------------------------------------------------
def old_postgres_schema(url: str, moment: datetime) -> None:
    """``events`` as the previous release created it: primary key ``(message_id,
    timestamp)``; its partitions; schema version 1."""
    old = MetaData()
    tz = DateTime(timezone=True)
    table = Table(
        "events",
        old,
        *event_columns(JSONB, tz),
        PrimaryKeyConstraint("message_id", "timestamp", name="events_pkey"),
        Index("ix_events_timestamp", "timestamp", "message_id"),
        postgresql_partition_by="RANGE (timestamp)",
    )
    engine = create_engine(url)
    with engine.begin() as connection:
        old.create_all(connection, tables=[table])
        connection.execute(text("CREATE TABLE events_default PARTITION OF events DEFAULT"))
        for days in (0, 1, 40):
            start = (moment - timedelta(days=days)).replace(hour=0, minute=0, second=0)
            name = postgres_sink.partition_name(start, "day")
            connection.execute(
                text(
                    f"CREATE TABLE {name} PARTITION OF events FOR VALUES FROM "
                    f"('{start.isoformat()}') TO ('{(start + timedelta(days=1)).isoformat()}')"
                )
            )
        connection.execute(text("CREATE TABLE eventrouter_schema (version integer NOT NULL)"))
        connection.execute(text("INSERT INTO eventrouter_schema VALUES (1)"))
    engine.dispose()


def pg(url: str, query: str) -> list[tuple]:
    with psycopg.connect(url.replace("+psycopg", "")) as connection:
        cursor = connection.execute(query)
        return cursor.fetchall() if cursor.description else []


def pg_insert(url: str, rows: list[TrackCommand]) -> None:
    with psycopg.connect(url.replace("+psycopg", "")) as connection, connection.cursor() as cursor:
        postgres_sink.copy_rows(cursor, postgres_sink._copy_sql("events"), rows)


PG_ROWS = "SELECT * FROM events ORDER BY source, message_id, timestamp"
PG_KEYS = (
    "SELECT c.conrelid::regclass::text, pg_get_constraintdef(c.oid) FROM pg_constraint c "
    "WHERE c.contype = 'p' AND c.conrelid::regclass::text LIKE 'events%' "
    "AND c.conrelid::regclass::text <> 'events_hourly' ORDER BY 1"
)


def test_migrate_upgrades_an_old_postgres_store(tmp_path):
    moment = at_second(datetime.now(UTC))
    with store_sink("postgres", tmp_path) as sink:
        url = sink["url"]
        old_postgres_schema(url, moment)
        rows = old_rows(moment)
        pg_insert(url, rows)
        # What the old key did: the same id and time from another source is refused.
        other = [msgspec.structs.replace(rows[0], source="other")]
        with pytest.raises(psycopg.errors.UniqueViolation):
            pg_insert(url, other)
        # A run interrupted after building one partition's new index: reused.
        pg(url, 'CREATE UNIQUE INDEX events_default_key_v2 ON events_default '
                '(message_id, source, "timestamp")')  # fmt: skip
        before = pg(url, PG_ROWS)
        assert len(before) == len(rows)

        config = tmp_path / "pg.toml"
        config.write_text(to_toml({"sinks": {"warehouse": {**sink, "migrate_on_start": False}}}))
        first = migrate(config)
        assert "schema version 5" in first
        assert "primary key upgraded to (message_id, source, timestamp)" in first
        assert pg(url, PG_ROWS) == before
        # Schema 4's rollup, filled from the stored rows.
        assert pg(url, "SELECT sum(n)::int FROM events_hourly") == [(len(before),)]
        keys = pg(url, PG_KEYS)
        partitions = {name for name, _ in keys} - {"events"}
        assert len(partitions) >= 4  # the old ones, the default, those created ahead
        assert {definition for _, definition in keys} == {
            'PRIMARY KEY (message_id, source, "timestamp")'
        }
        # The partitions' keys are attached to the parent's (one key, not a copy each).
        attached = pg(
            url,
            "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'events_pkey'::regclass",
        )
        assert attached == [(len(partitions),)]
        assert pg(url, "SELECT max(version) FROM eventrouter_schema") == [(5,)]

        second = migrate(config)
        assert "upgraded" not in second and "schema version 5" in second
        assert pg(url, PG_KEYS) == keys
        assert pg(url, PG_ROWS) == before

        pg_insert(url, other)  # now another source's event of that id and time is stored
        with pytest.raises(psycopg.errors.UniqueViolation):
            pg_insert(url, rows[:1])  # a redelivery within one source still is not
        assert len(pg(url, PG_ROWS)) == len(rows) + 1


# ClickHouse --------------------------------------------------------------------------------
def ch(url: str, query: str, params: Any = None) -> list[tuple]:
    client = Client.from_url(clickhouse_sink.driver_url(url))
    try:
        return client.execute(query, params)
    finally:
        client.disconnect()


OLD_ORDER_BY = "toDate(timestamp), type, event, message_id"  # allowed until version 2


def ch_rows(url: str, table: str) -> list[tuple]:
    """The rows of ``table`` (``events FINAL``...), sorted by source, id, received_at."""
    query = f"SELECT source, message_id, timestamp, received_at, properties FROM {table}"
    return sorted(ch(url, query), key=lambda row: (row[0], row[1], row[3]))


def old_clickhouse_store(url: str, order_by: str) -> bool:
    """``events`` as the previous release created it with ``order_by``, and schema
    version 1; whether its times are DateTime64. Merges of ``events`` are stopped, so
    that rows the old key would collapse are still there when the migration runs (and
    the old table, renamed, keeps what it held)."""
    client = Client.from_url(clickhouse_sink.driver_url(url).rsplit("/", 1)[0] + "/default")
    database = url.rsplit("/", 1)[1]
    client.execute(f"CREATE DATABASE {database}")
    version = clickhouse_sink.server_version(client)
    client.disconnect()
    datetime64 = version >= clickhouse_sink.DATETIME64_SINCE
    old = MetaData()
    table = clickhouse_sink.events_table(old, datetime64=datetime64, order_by=order_by)
    schema = clickhouse_sink.schema_table(old)
    engine = create_engine(url)
    with engine.connect() as connection:
        for each in (table, schema):
            connection.execute(CreateTable(each))
    engine.dispose()
    ch(url, "INSERT INTO eventrouter_schema (version) VALUES", [(1,)])
    ch(url, "SYSTEM STOP MERGES events")  # this table only
    return datetime64


def ch_insert(url: str, rows: list[TrackCommand], datetime64: bool) -> None:
    """One insert into ``events`` (a part), as the sink writes it."""
    client = Client.from_url(clickhouse_sink.driver_url(url))
    try:
        clickhouse_sink.insert_batch(client, rows, datetime64=datetime64, settings=None)
    finally:
        client.disconnect()


def ch_config(tmp_path: Path, sink: dict[str, Any]) -> Path:
    path = tmp_path / "ch.toml"
    path.write_text(to_toml({"sinks": {"warehouse": {**sink, "migrate_on_start": False}}}))
    return path


def test_migrate_rebuilds_an_old_clickhouse_table_whose_key_lacks_source(tmp_path, monkeypatch):
    moment = at_second(datetime.now(UTC) - timedelta(hours=1))
    with store_sink("clickhouse", tmp_path) as sink:
        url = sink["url"]
        datetime64 = old_clickhouse_store(url, OLD_ORDER_BY)
        rows = old_rows(moment)
        # Each insert is a part; the last two are unmerged copies of one event (a
        # redelivery) and another source's event of that id, which the old key would
        # collapse into one row when the parts merge.
        for i in range(0, len(rows), 10):
            ch_insert(url, rows[i : i + 10], datetime64)
        later = moment + timedelta(seconds=5)
        ch_insert(url, [msgspec.structs.replace(rows[0], received_at=later)], datetime64)
        ch_insert(url, [msgspec.structs.replace(rows[0], source="other")], datetime64)
        before = ch_rows(url, "events")
        assert len(before) == len(rows) + 2

        # A write lands in the old table while it is being copied: it must not be lost.
        during = msgspec.structs.replace(rows[1], message_id="during:copy", source="late")
        highest = clickhouse_sink._highest_block

        def write_during_the_copy(client, table):
            found = highest(client, table)
            ch_insert(url, [during], datetime64)
            return found

        monkeypatch.setattr(clickhouse_sink, "_highest_block", write_during_the_copy)
        # In process: the monkeypatch has to reach the migration (the command-line run
        # below checks the same path end to end, and its idempotence).
        config = make_config(tmp_path, {"sinks": {"warehouse": sink}})
        warehouse = Bus(config, make_plugin_manager(config), role=WORKER).sinks["warehouse"]
        done = warehouse.migrate()
        warehouse.stop()
        monkeypatch.undo()
        assert f"sorting key ({OLD_ORDER_BY}) rebuilt as" in done
        assert f"{len(before)} rows copied" in done
        assert "the old table is events_before_v2" in done

        [(_, sorting_key, _)] = ch(url, clickhouse_sink.TABLE_KEYS_SQL)
        assert clickhouse_sink.split_keys(sorting_key) == clickhouse_sink.split_keys(
            clickhouse_sink.DEFAULT_ORDER_BY
        )
        after = ch_rows(url, "events FINAL")
        late_rows = [row for row in after if row[1] == "during:copy"]
        assert len(late_rows) == 1
        # Every row kept; the redelivery's copies collapsed into the one received last,
        # and the other source's event of the same id stayed an event of its own.
        expected = sorted({row[:2]: row for row in before}.values())
        assert [row for row in after if row[1] != "during:copy"] == expected
        assert ("other", rows[0].message_id) in {row[:2] for row in after}
        backup = ch_rows(url, "events_before_v2")
        assert sorted(backup) == sorted([*before, late_rows[0]])
        assert ch(url, "SELECT max(version) FROM eventrouter_schema") == [(2,)]

        # Idempotent: the table has source in its key now; nothing is copied again.
        config_path = ch_config(tmp_path, sink)
        second = migrate(config_path)
        assert "schema version 2" in second and "rebuilt" not in second
        assert ch_rows(url, "events FINAL") == after
        assert sorted(ch_rows(url, "events_before_v2")) == sorted(backup)
        assert {row[0] for row in ch(url, "SHOW TABLES")} == {
            "events",
            "events_before_v2",
            "eventrouter_schema",
            *CLICKHOUSE_ROLLUP_TABLES,
        }
        # The rollup's view watches the rebuilt table: an insert marks its day changed.
        marks = ch(url, "SELECT count() FROM events_dirty")[0][0]
        ch_insert(url, [during], datetime64)
        assert ch(url, "SELECT count() FROM events_dirty")[0][0] == marks + 1


def test_migrate_keeps_an_old_clickhouse_table_whose_key_has_source(tmp_path):
    """The previous default key had ``source``: such a table is kept as it is."""
    moment = at_second(datetime.now(UTC) - timedelta(hours=1))
    with store_sink("clickhouse", tmp_path) as sink:
        url = sink["url"]
        datetime64 = old_clickhouse_store(url, clickhouse_sink.DEFAULT_ORDER_BY)
        ch_insert(url, old_rows(moment), datetime64)
        before = ch_rows(url, "events")
        config_path = ch_config(tmp_path, sink)
        for _ in range(2):
            out = migrate(config_path)
            assert "schema version 2" in out and "rebuilt" not in out
        assert ch_rows(url, "events") == before
        tables = {row[0] for row in ch(url, "SHOW TABLES")}
        assert tables == {"events", "eventrouter_schema", *CLICKHOUSE_ROLLUP_TABLES}
        assert ch(url, "SELECT version FROM eventrouter_schema ORDER BY version") == [(1,), (2,)]


def test_a_rebuild_interrupted_between_its_renames_is_finished(tmp_path):
    moment = at_second(datetime.now(UTC) - timedelta(hours=1))
    with store_sink("clickhouse", tmp_path) as sink:
        url = sink["url"]
        datetime64 = old_clickhouse_store(url, OLD_ORDER_BY)
        rows = old_rows(moment)
        ch_insert(url, rows, datetime64)
        # The state a crash between the two renames leaves: the copy (missing the rows
        # written during it), the old table, no events.
        config = make_config(tmp_path, {"sinks": {"warehouse": sink}})
        warehouse = Bus(config, make_plugin_manager(config), role=WORKER).sinks["warehouse"]
        warehouse._detect()
        engine = warehouse._engine()
        with engine.connect() as connection:
            table = warehouse._events_table(MetaData(), clickhouse_sink.REBUILD_TABLE)
            connection.execute(CreateTable(table))
        engine.dispose()
        columns = ", ".join(clickhouse_sink.STORED_COLUMNS)
        ch(
            url,
            f"INSERT INTO {clickhouse_sink.REBUILD_TABLE} ({columns}) "
            f"SELECT {columns} FROM events ORDER BY message_id LIMIT 30",
        )
        ch(url, f"RENAME TABLE events TO {clickhouse_sink.BACKUP_TABLE}")

        done = warehouse.migrate()
        warehouse.stop()
        assert f"finished an interrupted rebuild: {len(rows)} rows" in done
        after = ch_rows(url, "events FINAL")
        assert after == ch_rows(url, clickhouse_sink.BACKUP_TABLE)
        assert len(after) == len(rows)


def test_a_copy_left_by_an_interrupted_rebuild_is_made_again(tmp_path):
    moment = at_second(datetime.now(UTC) - timedelta(hours=1))
    with store_sink("clickhouse", tmp_path) as sink:
        url = sink["url"]
        datetime64 = old_clickhouse_store(url, OLD_ORDER_BY)
        rows = old_rows(moment)
        ch_insert(url, rows, datetime64)
        # What a run killed during its copy leaves: part of the rows in the new table.
        config = make_config(tmp_path, {"sinks": {"warehouse": sink}})
        warehouse = Bus(config, make_plugin_manager(config), role=WORKER).sinks["warehouse"]
        warehouse._detect()
        engine = warehouse._engine()
        with engine.connect() as connection:
            table = warehouse._events_table(MetaData(), clickhouse_sink.REBUILD_TABLE)
            connection.execute(CreateTable(table))
        engine.dispose()
        columns = ", ".join(clickhouse_sink.STORED_COLUMNS)
        ch(
            url,
            f"INSERT INTO {clickhouse_sink.REBUILD_TABLE} ({columns}) "
            f"SELECT {columns} FROM events ORDER BY message_id LIMIT 30",
        )
        database = url.rsplit("/", 1)[1]
        probe = Client.from_url(clickhouse_sink.driver_url(url))
        try:  # no INSERT into the copy is running: it is a leftover
            assert not clickhouse_sink._running(probe, f"INSERT INTO `{database}`.events_migrating")
        finally:
            probe.disconnect()

        done = warehouse.migrate()
        warehouse.stop()
        assert f"{len(rows)} rows copied (+0 written during the copy)" in done
        after = ch_rows(url, "events")  # not FINAL: no row was copied twice
        assert after == ch_rows(url, clickhouse_sink.BACKUP_TABLE)
        assert len(after) == len(rows)


def test_a_running_query_is_told_from_a_finished_one():
    """How a rebuild tells another process's copy in progress from an interrupted one."""
    marker = unique("copy-in-progress-")
    client = Client.from_url(CLICKHOUSE_ADMIN)
    probe = Client.from_url(CLICKHOUSE_ADMIN)
    try:
        # sleep(3): the longest ClickHouse allows; the probe looks for as long as the
        # query runs (a busy machine may start it late), not for a fixed time.
        thread = threading.Thread(target=client.execute, args=(f"SELECT sleep(3), '{marker}'",))
        thread.start()
        while not clickhouse_sink._running(probe, marker) and thread.is_alive():
            time.sleep(0.05)
        assert clickhouse_sink._running(probe, marker)
        thread.join()
        assert not clickhouse_sink._running(probe, marker)
    finally:
        client.disconnect()
        probe.disconnect()


def test_the_rebuild_runs_on_a_current_clickhouse(tmp_path):
    """The statements of a rebuild, captured from a run on this server (18.16), run on
    the current ClickHouse that chdb embeds, over a table of the old key (as 18.16
    created it: ``DateTime``)."""
    from chdb import session

    moment = at_second(datetime.now(UTC) - timedelta(hours=1))
    sent: list[str] = []
    with store_sink("clickhouse", tmp_path) as sink:
        url = sink["url"]
        database = url.rsplit("/", 1)[1]
        datetime64 = old_clickhouse_store(url, OLD_ORDER_BY)
        config = make_config(tmp_path, {"sinks": {"warehouse": sink}})
        warehouse = Bus(config, make_plugin_manager(config), role=WORKER).sinks["warehouse"]
        substitute = Client("127.0.0.1")
        original = Client.execute

        def capture(self, query, params=None, *args, **kwargs):
            context = substitute.connection.context
            dict_params = isinstance(params, dict)
            sent.append(
                substitute.substitute_params(query, params, context) if dict_params else query
            )
            return original(self, query, params, *args, **kwargs)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Client, "execute", capture)
            done = warehouse.migrate()
        warehouse.stop()
        assert "rebuilt" in done
    names = (clickhouse_sink.REBUILD_TABLE, clickhouse_sink.BACKUP_TABLE)
    rebuild = [sql for sql in sent if any(name in sql for name in names)]
    assert [sql.split(None, 2)[:2] for sql in rebuild] == [
        ["SELECT", "name"],  # the tables there: no interrupted rebuild to finish
        ["SELECT", "name"],  # no old table kept from an earlier rebuild, nor a copy
        ["CREATE", "TABLE"],  # the copy, through SQLAlchemy
        ["INSERT", "INTO"],
        ["RENAME", "TABLE"],
        ["SELECT", "count()"],  # rows written during the copy (none here)
    ], rebuild

    old = clickhouse_sink.events_table(MetaData(), datetime64=datetime64, order_by=OLD_ORDER_BY)
    engine = create_engine("clickhouse+native://127.0.0.1/default")
    ddl = str(CreateTable(old).compile(engine))
    engine.dispose()
    rows = old_rows(moment)
    unit = 1000 if datetime64 else 1
    records = []
    for row in zip(*clickhouse_sink.columns_of(rows, datetime64=datetime64), strict=True):
        record = dict(zip(clickhouse_sink.STORED_COLUMNS, row, strict=True))
        for name in ("properties", "traits", "context"):
            record[name] = record[name].decode()
        for name in ("timestamp", "original_timestamp", "sent_at", "received_at"):
            if record[name] is not None:
                when = datetime.fromtimestamp(record[name] / unit, UTC)
                record[name] = when.isoformat(sep=" ", timespec="milliseconds")[:23]
        records.append(msgspec.json.encode(record).decode())
    db = session.Session()
    client = ChdbClient(db)
    try:
        db.query("CREATE DATABASE IF NOT EXISTS rebuild")
        db.query("USE rebuild")
        db.query(ddl)
        db.query("INSERT INTO events FORMAT JSONEachRow\n" + "\n".join(records))
        db.query("SYSTEM STOP MERGES events")
        high = clickhouse_sink._highest_block(client, "events")
        assert high >= 0
        late = msgspec.json.encode({**msgspec.json.decode(records[0]), "source": "late"})
        for sql in rebuild[:-1]:  # the catch-up is run below, with this server's numbers
            if sql.startswith("RENAME"):
                # A write during the copy, for the catch-up to find.
                db.query("INSERT INTO events FORMAT JSONEachRow\n" + late.decode())
            db.query(sql.replace(f"`{database}`.", "`rebuild`."))
        assert clickhouse_sink._copy_blocks_after(client, clickhouse_sink.BACKUP_TABLE, high) == 1

        assert client.execute("SELECT count() FROM events FINAL") == [(len(rows) + 1,)]
        assert client.execute("SELECT count() FROM events WHERE source = 'late'") == [(1,)]
        assert client.execute("SELECT count() FROM events_before_v2") == [(len(rows) + 1,)]
        [(key,)] = client.execute(
            "SELECT sorting_key FROM system.tables WHERE database = 'rebuild' AND name = 'events'"
        )
        assert clickhouse_sink.key_holds(key, "source"), key
    finally:
        db.close()


class ChdbClient:
    """What the sink's helpers use of clickhouse-driver's ``Client``, on chdb."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.substitute = Client("127.0.0.1")
        db.query("SET output_format_json_quote_64bit_integers = 0")

    def execute(self, query: str, params: Any = None) -> list[tuple]:
        if params is not None:
            context = self.substitute.connection.context
            query = self.substitute.substitute_params(query, params, context)
        result = self.db.query(query, "JSONCompact")
        data = result.bytes()
        return [tuple(row) for row in msgspec.json.decode(data)["data"]] if data else []
