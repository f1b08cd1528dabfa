"""The PostgreSQL sink against this machine's PostgreSQL: partitions, COPY writes,
idempotent redelivery, the normalised identity tables, ``eventrouter migrate``, and the
query API reading it. Each test gets a database of its own, dropped afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import msgspec
import psycopg
import pytest
from sqlalchemy import event, text

from eventrouter.bus.bus import Bus, make_plugin_manager
from eventrouter.config import ConfigError
from eventrouter.sinks.postgres_store import PostgresStore
from eventrouter.store.analysis import Step, funnel, retention
from eventrouter.store.query import EventFilter, EventStore, PathCondition
from tests.helpers import LiveServer, make_config, recent, run_eventrouter
from tests.ingest_support import AUTH
from tests.queue_support import WorkerThread, amqp_env, to_toml, unique  # noqa: F401

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

# ruff: noqa: F811 - pytest fixtures are parameters

ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """An SQLAlchemy URL of a fresh database, dropped after the test."""
    name = unique("ert_")
    with psycopg.connect(ADMIN, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def sql(url: str, query: str, *params) -> list[tuple]:
    with psycopg.connect(url.replace("+psycopg", "")) as connection:
        return connection.execute(query, params).fetchall()


def execute(url: str, query: str, *params) -> None:
    with psycopg.connect(url.replace("+psycopg", "")) as connection:
        connection.execute(query, params or None)


def pg_sink(url: str, **options) -> dict:
    return {"type": "postgres", "url": url, **options}


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def track(user: str, event: str = "Signed Up", **extra) -> dict:
    return {"userId": user, "event": event, "messageId": unique("m"), **extra}


@pytest.fixture
def pg_server(pg_url, tmp_path) -> Iterator[tuple[LiveServer, str]]:
    """Embedded mode with the PostgreSQL sink as the store."""
    config = make_config(tmp_path, {"sinks": {"warehouse": pg_sink(pg_url)}})
    server = LiveServer(config).start()
    try:
        yield server, pg_url
    finally:
        server.stop()


def test_rows_land_with_every_column_right(pg_server):
    server, url = pg_server
    when = recent(hour=10, minute=0, second=0, microsecond=123000)
    body = {
        "userId": "u1",
        "anonymousId": "a1",
        "event": "Order Completed",
        "messageId": "msg-1",
        "properties": {"plan": "pro", "total": 42.5, "items": [1, 2]},
        "context": {"page": {"path": "/checkout"}, "sessionId": "s1"},
        # No sentAt: with one, the timestamp would be corrected for clock skew.
        "timestamp": iso(when),
    }
    assert server.post("/v1/track", body).status_code == 200
    rows = sql(
        url,
        "SELECT message_id, type, event, user_id, anonymous_id, session_id, source, "
        "properties, context->'page', timestamp, received_at IS NOT NULL FROM events",
    )
    assert len(rows) == 1
    message_id, kind, event, user, anon, session, source, props, page, ts, received = rows[0]
    assert (message_id, kind, event, user, anon, session) == (
        "msg-1",
        "track",
        "Order Completed",
        "u1",
        "a1",
        "s1",
    )
    assert source == "default" or source
    assert props == {"plan": "pro", "total": 42.5, "items": [1, 2]}
    assert page == {"path": "/checkout"}
    assert received is True
    assert ts == when
    stored = server.events()
    assert [e["message_id"] for e in stored] == ["msg-1"]
    assert stored[0]["properties"]["plan"] == "pro"
    assert stored[0]["timestamp"] == iso(when)


def test_partitions_exist_ahead_and_are_created_for_late_and_early_events(pg_server):
    server, url = pg_server
    now = datetime.now(UTC)
    last_year = now - timedelta(days=365)
    next_month = now + timedelta(days=35)
    for moment in (now, last_year, next_month):
        body = track("u-part", timestamp=iso(moment))
        assert server.post("/v1/track", body).status_code == 200
    partitions = {
        row[0]
        for row in sql(
            url,
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'events'",
        )
    }
    for moment in (now, now + timedelta(days=3), last_year, next_month):
        assert f"events_p{moment:%Y%m%d}" in partitions, sorted(partitions)
    assert "events_default" in partitions
    # Each event sits in its own day's partition, none in the default one.
    assert sql(url, "SELECT count(*) FROM events_default") == [(0,)]
    for moment in (now, last_year, next_month):
        assert sql(url, f"SELECT count(*) FROM events_p{moment:%Y%m%d}") == [(1,)]


def test_an_absurd_timestamp_lands_in_the_default_partition(pg_server):
    server, url = pg_server
    body = track("u-1970", timestamp="1971-01-01T00:00:00Z")
    assert server.post("/v1/track", body).status_code == 200
    assert sql(url, "SELECT count(*) FROM events_default") == [(1,)]
    assert not sql(url, "SELECT 1 FROM pg_class WHERE relname = 'events_p19710101'")


def test_a_redelivered_batch_is_stored_once(pg_url, tmp_path):
    config = make_config(tmp_path, {"sinks": {"warehouse": pg_sink(pg_url)}})
    server = LiveServer(config).start()
    try:
        batch = {"batch": [{"type": "track", **track("u-dup")} for _ in range(20)]}
        for _ in range(3):  # an SDK retrying the same batch
            assert server.post("/v1/batch", batch).status_code == 200
    finally:
        server.stop()
    assert sql(pg_url, "SELECT count(*), count(DISTINCT message_id) FROM events") == [(20, 20)]


def test_identify_group_and_alias_keep_the_identity_tables_current(pg_server):
    server, url = pg_server

    day = recent(hour=10, minute=0, second=0, microsecond=0)

    def at(minutes: int) -> str:
        return iso(day + timedelta(minutes=minutes))

    calls = [
        (
            "identify",
            {
                "userId": "u1",
                "anonymousId": "anon-1",
                "traits": {"plan": "free", "a": 1},
                "timestamp": at(0),
            },
        ),
        ("identify", {"userId": "u1", "traits": {"plan": "pro"}, "timestamp": at(5)}),
        # Late: older than the call above, so its "plan" must not win.
        ("identify", {"userId": "u1", "traits": {"plan": "trial", "b": 2}, "timestamp": at(1)}),
        ("track", {"userId": "u1", "anonymousId": "anon-2", "event": "x", "timestamp": at(9)}),
        (
            "group",
            {"userId": "u1", "groupId": "g1", "traits": {"name": "Acme"}, "timestamp": at(2)},
        ),
        ("group", {"userId": "u1", "groupId": "g1", "traits": {"seats": 5}, "timestamp": at(3)}),
        ("alias", {"userId": "u1", "previousId": "old-u1", "timestamp": at(4)}),
    ]
    for kind, body in calls:
        response = server.post(f"/v1/{kind}", body)
        assert response.status_code == 200, response.text
    [(traits, first, last)] = sql(
        url, "SELECT traits, first_seen, last_seen FROM users WHERE user_id = 'u1'"
    )
    assert traits == {"plan": "pro", "a": 1, "b": 2}
    # As in Segment's warehouse schema, users come from identify calls (the track at
    # minute 9 is in events, not here).
    assert iso(first.astimezone(UTC)) == at(0)
    assert iso(last.astimezone(UTC)) == at(5)
    assert sql(url, "SELECT traits FROM groups WHERE group_id = 'g1'") == [
        ({"name": "Acme", "seats": 5},)
    ]
    links = set(sql(url, "SELECT kind, identity, user_id FROM identities"))
    assert links == {("anonymous_id", "anon-1", "u1"), ("previous_id", "old-u1", "u1")}


def test_retention_drops_old_partitions_only(pg_url, tmp_path):
    config = make_config(tmp_path, {"sinks": {"warehouse": pg_sink(pg_url, retention="30d")}})
    bus = Bus(config, make_plugin_manager(config))
    sink = bus.sinks["warehouse"]
    sink.migrate()
    old = datetime.now(UTC) - timedelta(days=60)
    young = datetime.now(UTC) - timedelta(days=2)
    sink.ensure_partitions([sink_bounds(sink, old), sink_bounds(sink, young)])
    assert f"events_p{old:%Y%m%d}" in partitions_of(pg_url)
    dropped = sink.drop_partitions_before(datetime.now(UTC) - timedelta(days=30))
    assert dropped == [f"events_p{old:%Y%m%d}"]
    remaining = partitions_of(pg_url)
    assert f"events_p{old:%Y%m%d}" not in remaining
    assert f"events_p{young:%Y%m%d}" in remaining
    sink.stop()


def sink_bounds(sink, moment):
    from eventrouter.sinks.postgres import partition_bounds

    return partition_bounds(moment, sink.options.partition)


def partitions_of(url: str) -> set[str]:
    return {
        row[0]
        for row in sql(
            url,
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'events'",
        )
    }


def test_monthly_partitions(pg_server_monthly):
    server, url = pg_server_monthly
    moment = datetime.now(UTC) - timedelta(days=400)
    assert server.post("/v1/track", track("u-m", timestamp=iso(moment))).status_code == 200
    assert f"events_p{moment:%Y%m}" in partitions_of(url)


@pytest.fixture
def pg_server_monthly(pg_url, tmp_path):
    config = make_config(tmp_path, {"sinks": {"warehouse": pg_sink(pg_url, partition="month")}})
    server = LiveServer(config).start()
    try:
        yield server, pg_url
    finally:
        server.stop()


def test_migrate_command_creates_the_schema_idempotently(pg_url, tmp_path):
    path = tmp_path / "pg.toml"
    path.write_text(to_toml({"sinks": {"warehouse": pg_sink(pg_url, migrate_on_start=False)}}))
    for _ in range(2):
        result = run_eventrouter("migrate", "--config", str(path))
        assert result.returncode == 0, result.stderr
        assert "warehouse (postgres): schema version 5" in result.stdout
    tables = {row[0] for row in sql(pg_url, "SELECT tablename FROM pg_tables")}
    # No WAL for the claims (docs/postgres.md, "event_claims").
    persistence = sql(pg_url, "SELECT relpersistence FROM pg_class WHERE relname = 'event_claims'")
    assert persistence == [("u",)]
    assert {"events", "events_default", "users", "groups", "identities", "event_claims"} <= tables
    assert sql(pg_url, "SELECT version FROM eventrouter_schema") == [(5,)]


def test_through_the_queue_and_worker(amqp_env, pg_url):
    raw = amqp_env.raw(sinks={"warehouse": pg_sink(pg_url)})
    config = make_config(amqp_env.tmp_path, raw)
    server = LiveServer(config).start()
    try:
        ids = []
        for _ in range(5):
            body = track("u-q")
            ids.append(body["messageId"])
            assert server.post("/v1/track", body).status_code == 200
        with WorkerThread(make_config(amqp_env.tmp_path, raw)) as worker:
            from tests.helpers import eventually

            eventually(
                lambda: (
                    sql(pg_url, "SELECT count(*) FROM events") == [(5,)]
                    if partitions_of(pg_url)
                    else False
                ),
                "5 events in PostgreSQL",
            )
            assert worker.worker.consumers[0].written == 5
        assert {e["message_id"] for e in server.events()} == set(ids)
    finally:
        server.stop()


def test_unknown_option_is_a_config_error(tmp_path):
    config = make_config(tmp_path, {"sinks": {"w": pg_sink("postgresql+psycopg://x/y", part=1)}})
    with pytest.raises(ConfigError, match=r"sinks\.w\.part: unknown key"):
        Bus(config, make_plugin_manager(config))


def test_the_query_api_pages_and_filters_a_postgres_store(pg_server):
    server, _ = pg_server
    base = recent(days=30, hour=12, minute=0, second=0, microsecond=0)
    ids = []
    for i in range(7):
        body = track("u-pages", timestamp=iso(base + timedelta(minutes=i % 3)))
        ids.append(body["messageId"])
        assert server.post("/v1/track", body).status_code == 200
    seen, cursor = [], None
    while True:
        params = {"user_id": "u-pages", "limit": 2, **({"cursor": cursor} if cursor else {})}
        response = server.client.get("/api/v1/events", params=params, headers=AUTH)
        assert response.status_code == 200, response.text
        page = response.json()
        seen += [e["message_id"] for e in page["events"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 7  # each exactly once
    stamps = [e["timestamp"] for e in server.events(user_id="u-pages")]
    assert stamps == sorted(stamps, reverse=True)
    minute = iso(base + timedelta(minutes=1))
    window = server.events(user_id="u-pages", since=minute, until=iso(base + timedelta(minutes=2)))
    assert len(window) == 2 and {e["timestamp"] for e in window} == {minute}


def _tracks(n: int, event: str = "e") -> list:
    from eventrouter.events.commands import TrackCommand

    now = datetime.now(UTC)
    return [
        TrackCommand(
            message_id=unique("m"),
            source="s",
            user_id=f"u{i % 50}",
            event=event,
            properties={"i": i},
            timestamp=now,
            received_at=now,
        )
        for i in range(n)
    ]


def test_two_writers_of_one_batch_store_it_once(pg_url, tmp_path):
    """A redelivery racing its original (two workers, one batch): whichever commits
    second finds the rows taken, by the pre-check or by the primary key, and stores
    nothing more; neither write fails."""
    import threading

    config = make_config(tmp_path, {"sinks": {"warehouse": pg_sink(pg_url)}})
    sink = Bus(config, make_plugin_manager(config)).sinks["warehouse"]
    sink.migrate()
    batch = _tracks(2000)
    errors = []

    def write() -> None:
        try:
            sink.write(batch)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    sink.stop()
    assert errors == []
    assert sql(pg_url, "SELECT count(*), count(DISTINCT message_id) FROM events") == [(2000, 2000)]
    assert (sink.written, sink.duplicates) == (2000, 2000)
    # Usually (not always: timing) the second COPY met the first's rows and went the
    # staging-table way; either way, the counts above hold.
    assert sink.races in (0, 1)


@pytest.mark.parametrize("rows", [2_000, 10_000], ids=["one-part", "two-parts"])
def test_two_writers_of_copies_with_other_timestamps_at_once_store_each_event_once(
    pg_url, tmp_path, monkeypatch, rows
):
    """Two workers write copies of the same events at the same moment, the second copy of
    each 3 s later by ``timestamp`` (an SDK's retry, dated again by the edge) and in the
    reverse order: every part of both writes passes its check for rows already stored
    before any commits (a barrier holds them there), so neither sees the other's rows and
    the primary key, which holds the timestamp, would take both. The second also holds
    50 events of its own, which it stores. Each event is stored once, neither write
    fails (no deadlock, whatever order the parts' ids come in), and the counts add up.
    Before ``event_claims``: every copy stored."""
    import threading

    from eventrouter.sinks import postgres

    config = make_config(tmp_path, {"sinks": {"warehouse": pg_sink(pg_url)}})
    first, second = (Bus(config, make_plugin_manager(config)).sinks["warehouse"] for _ in "ab")
    first.migrate()
    second.migrate()
    batch = _tracks(rows)
    copies = [
        msgspec.structs.replace(c, timestamp=c.timestamp + timedelta(seconds=3)) for c in batch
    ]
    own = _tracks(50)
    parts = max(1, rows // postgres.PARALLEL_MIN_ROWS)
    past_check = threading.Barrier(2 * parts, timeout=60)
    already_stored = postgres._already_stored

    def checked_together(cursor, commands):
        stored = already_stored(cursor, commands)
        past_check.wait()
        return stored

    monkeypatch.setattr(postgres, "_already_stored", checked_together)
    errors = []

    def write(sink, commands) -> None:
        try:
            sink.write(commands)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [
        threading.Thread(target=write, args=(first, batch)),
        threading.Thread(target=write, args=(second, [*own, *copies[::-1]])),
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        first.stop()
        second.stop()
    assert errors == []
    assert sql(pg_url, "SELECT count(*), count(DISTINCT (source, message_id)) FROM events") == [
        (rows + 50, rows + 50)
    ]
    ids = [c.message_id for c in own]
    assert sql(pg_url, "SELECT count(*) FROM events WHERE message_id = ANY(%s)", ids) == [(50,)]
    assert first.written + second.written == rows + 50
    assert first.duplicates + second.duplicates == rows
    assert first.races + second.races >= 1  # whichever came second met the other's claims
    assert sql(pg_url, "SELECT count(*) FROM event_claims") == [(rows + 50,)]


def test_claims_older_than_the_window_are_pruned_and_rows_stay(pg_url, tmp_path):
    from eventrouter.sinks import postgres

    config = make_config(tmp_path, {"sinks": {"warehouse": pg_sink(pg_url)}})
    sink = Bus(config, make_plugin_manager(config)).sinks["warehouse"]
    sink.migrate()
    try:
        old, new = _tracks(3), _tracks(2)
        sink.write(old + new)
        window = int(postgres.CLAIM_WINDOW.total_seconds())
        execute(
            pg_url,
            "UPDATE event_claims SET claimed_at = now() - make_interval(secs => %s) "
            "WHERE message_id = ANY(%s)",
            window + 60,
            [c.message_id for c in old],
        )
        sink.maintain(force=True)
        assert sorted(sql(pg_url, "SELECT message_id FROM event_claims")) == sorted(
            (c.message_id,) for c in new
        )
        assert sql(pg_url, "SELECT count(*) FROM events") == [(5,)]
        # A copy of a pruned one written later is still skipped (its row is found).
        sink.write(old)
        assert sql(pg_url, "SELECT count(*) FROM events") == [(5,)]
    finally:
        sink.stop()


def test_a_schema_2_database_is_written_without_claims_until_migrate_adds_them(pg_url, tmp_path):
    """Upgrading: a sink that does not migrate at start, on a database of schema version
    2 (no ``event_claims``), still writes (as before claims); ``migrate`` then creates the
    table, records version 3, and the sink claims from then on."""
    config = make_config(tmp_path, {"sinks": {"warehouse": pg_sink(pg_url)}})
    Bus(config, make_plugin_manager(config)).sinks["warehouse"].migrate()
    execute(pg_url, "DROP TABLE event_claims; DELETE FROM eventrouter_schema WHERE version = 3")
    config = make_config(
        tmp_path, {"sinks": {"warehouse": pg_sink(pg_url, migrate_on_start=False)}}
    )
    sink = Bus(config, make_plugin_manager(config)).sinks["warehouse"]
    sink.start(None)
    try:
        batch = _tracks(10)
        sink.write(batch)
        sink.write(batch)  # a redelivery: skipped as before (rows found)
        assert sql(pg_url, "SELECT count(*) FROM events") == [(10,)]
        assert "schema version 5" in sink.migrate()
        assert sql(pg_url, "SELECT max(version) FROM eventrouter_schema") == [(5,)]
        sink.write(_tracks(4))
        assert sql(pg_url, "SELECT count(*) FROM event_claims") == [(4,)]
        assert sql(pg_url, "SELECT count(*) FROM events") == [(14,)]
    finally:
        sink.stop()


#: ``events_hourly`` as it should be: counted from ``events``.
_HOURLY_FROM_EVENTS = (
    "SELECT date_trunc('hour', timestamp AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', type, "
    "coalesce(event, ''), source, count(*) FROM events GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
)
_HOURLY = "SELECT hour, type, event, source, n FROM events_hourly ORDER BY 1, 2, 3, 4"
#: Schema version 4's insert trigger, as a writer of that version (re)creates it at its
#: start during a rolling upgrade.
_V4_INSERT_TRIGGER = (
    "CREATE OR REPLACE FUNCTION events_hourly_add() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN INSERT INTO events_hourly (hour, type, event, source, n) "
    "SELECT date_trunc('hour', timestamp AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', type, "
    "coalesce(event, ''), source, count(*) FROM added GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4 "
    "ON CONFLICT (hour, type, event, source) DO UPDATE SET n = events_hourly.n + EXCLUDED.n; "
    "RETURN NULL; END $$; "
    "CREATE OR REPLACE TRIGGER events_hourly_insert AFTER INSERT ON events "
    "REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION events_hourly_add()"
)


def _spread(commands: list, hours: int) -> list:
    """``commands`` moved back 0 to ``hours - 1`` hours, in turn, half of them named "f"."""
    return [
        msgspec.structs.replace(
            c,
            timestamp=c.timestamp - timedelta(hours=i % hours),
            event="f" if i % 2 else c.event,
        )
        for i, c in enumerate(commands)
    ]


def test_the_sink_counts_events_hourly_once_whoever_else_writes(pg_url, tmp_path, monkeypatch):
    """Schema version 5: the sink counts the rows it inserts into ``events_hourly`` (no
    insert trigger): the rollup equals a count of ``events`` after plain writes, a
    redelivery, a write beside schema version 4's trigger (an older writer recreated
    it: counted by the trigger, not twice), a write that met rows another writer
    committed (the staging way: only the rows inserted count), and after ``migrate``
    dropped that trigger again."""
    from eventrouter.sinks import postgres

    config = make_config(tmp_path, {"sinks": {"warehouse": pg_sink(pg_url)}})
    sink = Bus(config, make_plugin_manager(config)).sinks["warehouse"]
    sink.migrate()
    triggers = "SELECT tgname FROM pg_trigger WHERE tgrelid = 'events'::regclass ORDER BY 1"
    try:
        assert [name for (name,) in sql(pg_url, triggers)] == ["events_hourly_delete"]
        first = _spread(_tracks(12_000), 3)  # two parallel parts
        sink.write(first)
        sink.write(first)  # a redelivery: nothing inserted, nothing counted
        assert sql(pg_url, "SELECT count(*) FROM events") == [(12_000,)]
        assert sql(pg_url, _HOURLY) == sql(pg_url, _HOURLY_FROM_EVENTS)
        assert len(sql(pg_url, _HOURLY)) == 6

        execute(pg_url, _V4_INSERT_TRIGGER)
        sink.write(_spread(_tracks(300, event="g"), 2))
        assert sql(pg_url, "SELECT count(*) FROM events") == [(12_300,)]
        assert sql(pg_url, _HOURLY) == sql(pg_url, _HOURLY_FROM_EVENTS)

        assert "insert trigger dropped" in sink.migrate()
        assert [name for (name,) in sql(pg_url, triggers)] == ["events_hourly_delete"]
        assert "insert trigger" not in sink.migrate()  # once

        # Rows committed by a writer that claims nothing after this one's check: the
        # COPY meets them and the rest go the staging way.
        third = _spread(_tracks(400, event="h"), 4)
        sink.write(third[:150])
        monkeypatch.setattr(postgres, "_already_stored", lambda cursor, commands: set())
        sink._claims = False
        before = sink.races
        sink.write(third)
        assert sink.races == before + 1
        assert sql(pg_url, "SELECT count(*) FROM events") == [(12_700,)]
        assert sql(pg_url, _HOURLY) == sql(pg_url, _HOURLY_FROM_EVENTS)
    finally:
        sink.stop()


def _spied_sink(url: str, tmp_path, **options):
    """The sink, with a record of the parts each write was COPYed in: (thread, rows)."""
    config = make_config(tmp_path, {"sinks": {"warehouse": pg_sink(url, **options)}})
    sink = Bus(config, make_plugin_manager(config)).sinks["warehouse"]
    sink.migrate()
    parts: list[tuple[str, int]] = []
    write_part = sink._write_part

    def recorded(fresh, identities):  # a spy: the real part write runs
        import threading

        parts.append((threading.current_thread().name, len(fresh)))
        return write_part(fresh, identities)

    sink._write_part = recorded
    return sink, parts


def test_a_large_batch_is_copied_on_parallel_connections_and_stored_once(pg_url, tmp_path):
    from eventrouter.events.commands import IdentifyCommand

    sink, parts = _spied_sink(pg_url, tmp_path)  # parallel = 2, the default
    now = datetime.now(UTC)
    batch = _tracks(12_000)
    batch[-1] = IdentifyCommand(  # in the second part: the identity tables still see it
        message_id=unique("m"), source="s", user_id="late", traits={"plan": "pro"},
        timestamp=now, received_at=now,
    )  # fmt: skip
    try:
        sink.write(batch)
        assert sorted(rows for _, rows in parts) == [6_000, 6_000]
        assert len({thread for thread, _ in parts}) == 2
        assert sql(pg_url, "SELECT count(*), count(DISTINCT message_id) FROM events") == [
            (12_000, 12_000)
        ]
        assert sql(pg_url, "SELECT traits FROM users WHERE user_id = 'late'") == [
            ({"plan": "pro"},)
        ]
        sink.write(batch)  # redelivered: every part finds its rows stored
        assert sql(pg_url, "SELECT count(*) FROM events") == [(12_000,)]
        assert (sink.written, sink.duplicates) == (12_000, 12_000)
        parts.clear()
        sink.write(_tracks(100))  # a small batch: one connection
        assert [rows for _, rows in parts] == [100]
    finally:
        sink.stop()


def test_a_failed_part_fails_the_write_and_its_retry_stores_the_rest_once(pg_url, tmp_path):
    """PostgreSQL refuses a NUL in text (the edge never sends one; a batch built by
    other means may): the part holding it rolls back and the write raises, while the
    other part committed. The worker's retry of the batch, once the bad row is gone,
    stores the rest without storing the committed part twice."""
    sink, parts = _spied_sink(pg_url, tmp_path)
    batch = _tracks(12_000)
    bad = _tracks(1, event="nul\x00here")[0]
    try:
        with pytest.raises(psycopg.DataError) as refused:
            sink.write([*batch[:-1], bad])
        assert len(parts) == 2
        assert sql(pg_url, "SELECT count(*) FROM events") == [(6_000,)]
        assert sink.last_error.startswith(type(refused.value).__name__)
        sink.write(batch)
        assert sql(pg_url, "SELECT count(*), count(DISTINCT message_id) FROM events") == [
            (12_000, 12_000)
        ]
    finally:
        sink.stop()


def test_text_and_json_that_a_text_copy_would_escape_are_stored_as_sent(pg_server):
    """The sink COPYs in binary: tabs, newlines, backslashes, COPY's own ``\\N`` null
    marker, quotes and characters beyond the BMP reach every column unchanged, and an
    absent field is NULL (not the text ``\\N``)."""
    server, url = pg_server
    tricky = 'tab\there\nnew line\r\\N \\ back "quoted" é 🙂 \u2028'
    when = recent(hour=10, minute=0, second=0, microsecond=999000)
    body = {
        "userId": tricky,
        "event": tricky,
        "messageId": "tricky-1",
        "properties": {tricky: tricky, "n": 2**53, "list": [tricky, None, 1.5]},
        "context": {"page": {"title": tricky}},
        "timestamp": iso(when),
    }
    assert server.post("/v1/track", body).status_code == 200
    rows = sql(
        url,
        "SELECT user_id, event, properties, context->'page'->>'title', anonymous_id, "
        "traits, timestamp FROM events WHERE message_id = 'tricky-1'",
    )
    user, event_name, props, title, anon, traits, ts = rows[0]
    assert (user, event_name, title) == (tricky, tricky, tricky)
    assert props == {tricky: tricky, "n": 2**53, "list": [tricky, None, 1.5]}
    assert (anon, traits) == (None, None)
    assert ts == when


def test_a_nul_character_anywhere_is_stored_as_a_replacement_character(pg_server):
    """PostgreSQL stores no NUL (text or jsonb): the edge turns ``\\u0000`` into U+FFFD,
    so the event is stored (not a 503, not a dead letter) and reads the same everywhere.
    An escaped backslash followed by ``u0000`` is text, and stays."""
    server, url = pg_server
    raw = (
        '{"userId":"u\\u00001","event":"Nul\\u0000Event","messageId":"nul-1",'
        '"properties":{"k\\u0000":"v\\u0000","text":"\\\\u0000"}}'
    )
    response = server.post("/v1/track", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    rows = sql(url, "SELECT user_id, event, properties FROM events WHERE message_id = 'nul-1'")
    assert rows == [("u\ufffd1", "Nul\ufffdEvent", {"k\ufffd": "v\ufffd", "text": "\\u0000"})]


# -- path indexes -------------------------------------------------------------------------
def test_path_indexes_are_created_used_by_the_query_layer_and_dropped(pg_url, tmp_path):
    """``path_indexes = [["event", "properties.plan"]]`` makes an index the store's path
    filters can use (the planner matches its expression); unconfigured, it is dropped."""

    def migrate(**options):
        config = make_config(tmp_path, {"sinks": {"w": pg_sink(pg_url, **options)}})
        sink = Bus(config, make_plugin_manager(config)).sinks["w"]
        sink.migrate()
        sink.stop()

    def path_indexes() -> dict[str, str]:
        rows = sql(
            pg_url,
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'events' "
            "AND starts_with(indexname, 'ix_events_path_')",
        )
        return dict(rows)

    migrate(indexes=[], path_indexes=[["event", "properties.plan"]])
    migrate(indexes=[], path_indexes=[["event", "properties.plan"]])  # idempotent
    (definition,) = path_indexes().values()
    assert "(event, ((properties #>> '{plan}'::text[])), \"timestamp\")" in definition

    # The chart's statement, as the store layer sends it, planned with sequential scans
    # off: the index condition holds the path expression, so the planner matched it.
    store = EventStore(PostgresStore(pg_url))
    where = EventFilter(event="Added", paths=[PathCondition("properties", ("plan",), "pro")])
    sent = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        sent.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", capture)
    try:
        assert store.count_by_time(where, 3600) == []
    finally:
        event.remove(store.engine, "before_cursor_execute", capture)
    try:
        with store.engine.connect() as connection:
            connection.exec_driver_sql("SET enable_seqscan = off")
            statement, parameters = sent[-1]
            plan = connection.exec_driver_sql("EXPLAIN " + statement, parameters).scalars().all()
    finally:
        store.close()
    assert any("Index Cond" in line and "properties #>>" in line for line in plan), plan

    migrate(indexes=[], path_indexes=[])
    assert path_indexes() == {}


def test_the_event_user_index_is_created_read_by_retention_and_dropped(pg_url, tmp_path):
    """``indexes = [..., "event_user"]`` makes ``(event, coalesce(user_id, anonymous_id),
    timestamp)`` holding both ids, which retention's join of the cohorts to the returning
    events reads (the statement planned as the store sends it); unconfigured, it is
    dropped and retention reads the standard SQL again, with the same answer."""

    def migrate(indexes):
        config = make_config(tmp_path, {"sinks": {"w": pg_sink(pg_url, indexes=indexes)}})
        sink = Bus(config, make_plugin_manager(config)).sinks["w"]
        sink.migrate()
        sink.stop()

    def definition() -> str | None:
        rows = sql(
            pg_url,
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_events_event_user'",
        )
        return rows[0][0] if rows else None

    migrate(["event", "event_user"])
    now = datetime.now(UTC).replace(microsecond=0)
    events = [
        ("Signed Up", "u1", None, now - timedelta(days=2)),
        ("Viewed", "u1", None, now - timedelta(days=1)),
        ("Signed Up", None, "a'; DROP TABLE events; --", now - timedelta(days=2)),
        ("Viewed", None, "a'; DROP TABLE events; --", now - timedelta(days=2)),
    ]
    execute(
        pg_url,
        "INSERT INTO events (message_id, source, type, event, user_id, anonymous_id, "
        "timestamp, received_at) VALUES "
        + ", ".join(f"('m{i}', 's', 'track', %s, %s, %s, %s, %s)" for i in range(len(events))),
        *[
            v
            for name, user, anonymous, moment in events
            for v in (name, user, anonymous, moment, now)
        ],
    )
    assert 'COALESCE(user_id, anonymous_id), "timestamp") INCLUDE (user_id, anonymous_id)' in (
        definition() or ""
    )
    since = now - timedelta(days=7)

    def cohorts() -> tuple[list[tuple[int, list[int | None]]], list[str]]:
        store = EventStore(PostgresStore(pg_url))
        sent: list[str] = []

        def capture(conn, cursor, statement, parameters, context, executemany):
            sent.append(statement)

        event.listen(store.engine, "before_cursor_execute", capture)
        try:
            result = retention(store, "Signed Up", "Viewed", "day", since, None)
            steps = funnel(store, [Step("Signed Up"), Step("Viewed")], 7 * 86400, since, None)
        finally:
            event.remove(store.engine, "before_cursor_execute", capture)
            store.close()
        # u1 viewed a day after signing up; the anonymous user in the same second (not
        # later: not a step).
        assert [s.users for s in steps.steps] == [2, 1]
        return [(c.users, c.returned[:3]) for c in result.cohorts], sent

    with_index, sent = cohorts()
    # Two users signed up two days ago: one viewed then (the same second counts), the
    # other the next day; neither today.
    assert with_index == [(2, [1, 1, 0])]
    # The join to the cohorts, planned as a hash join (no nested loop, no merge join).
    assert any("WITH cohorts AS MATERIALIZED" in statement for statement in sent), sent
    settings = [s for s in sent if "set_config('enable_nestloop', 'off', true)" in s]
    assert len(settings) == 2, sent  # retention's transaction and the funnel's
    migrate(["event"])
    assert definition() is None
    without_index, sent = cohorts()
    assert without_index == with_index
    assert not any("cohorts" in statement or "enable_nestloop" in statement for statement in sent)


def test_funnels_and_retention_run_with_work_mem_of_64mb_at_least(pg_url):
    """Their hash joins and aggregates hold a row per user of the range: under the
    default 4 MB they spill to temporary files. The setting is the transaction's own,
    and never lowers a larger one."""
    store = EventStore(PostgresStore(pg_url))
    show = text("SHOW work_mem")
    try:
        with store.engine.connect() as connection:
            before = connection.execute(show).scalar()
        assert before != "64MB"
        for view in ("funnel", "retention"):
            with store.engine.connect() as connection:
                store.dialect.before_analysis(connection, view)
                assert connection.execute(show).scalar() == "64MB"
            with store.engine.connect() as connection:
                assert connection.execute(show).scalar() == before  # the transaction's alone
        with store.engine.connect() as connection:
            connection.execute(text("SET work_mem = '256MB'"))  # as a server's own setting
            try:
                store.dialect.before_analysis(connection, "funnel")
                assert connection.execute(show).scalar() == "256MB"
            finally:
                connection.rollback()
                connection.execute(text("RESET work_mem"))
                connection.commit()
    finally:
        store.close()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (["event"], "holds no JSON path"),
        (["properties.plan", "nope"], "neither a column"),
        (["event_user", "properties.plan"], "neither a column"),
        (["properties.bad key"], "neither a column"),
        ([], "1 to 4"),
    ],
)
def test_bad_path_indexes_are_config_errors(tmp_path, entry, message):
    sinks = {"w": pg_sink("postgresql+psycopg://x/y", path_indexes=[entry])}
    config = make_config(tmp_path, {"sinks": sinks})
    with pytest.raises(ConfigError, match=message):
        Bus(config, make_plugin_manager(config))
