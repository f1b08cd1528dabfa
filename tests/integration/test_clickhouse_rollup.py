"""ClickHouse's hourly rollup (sinks/clickhouse_rollup.py) against this machine's server
(Debian's 18.16), and its statements on a current ClickHouse (chdb): the counts read
through it equal what ``events FINAL`` gives (``EventStore(use_rollup=False)``) on
random data over several days, with redelivered copies, before and after each
compaction and merge; two compactions at once; an insert landing while one runs;
``migrate`` backfilling a database that had no rollup; old partitions dropped; the
sink's periodic compaction. Each test has a database of its own."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
import pytest
from clickhouse_driver import Client
from sqlalchemy import MetaData, event
from sqlalchemy.schema import CreateTable

from eventrouter.bus.bus import WORKER, Bus, make_plugin_manager
from eventrouter.events.commands import IdentifyCommand, PageCommand, TrackCommand
from eventrouter.sinks import clickhouse_rollup as rollup_module
from eventrouter.sinks.clickhouse import ClickHouseSink, events_table
from eventrouter.sinks.clickhouse_cluster import quote_string
from eventrouter.sinks.clickhouse_rollup import compact, dirty_days_sql
from eventrouter.sinks.clickhouse_store import ClickHouseStore, Flavour, client_for
from eventrouter.store.analysis import retention
from eventrouter.store.query import EventFilter, EventStore, PathCondition
from tests.helpers import eventually, make_config
from tests.integration.test_clickhouse import _chdb_rows
from tests.queue_support import unique

pytestmark = pytest.mark.slow

SERVER = "clickhouse://default:@127.0.0.1:9000/default"
NOW = datetime.now(UTC)
#: Not on an hour: both partial ends of a range are read from events.
SINCE = NOW - timedelta(days=6, minutes=17)
NAMES = ["Viewed", "Bought", "Signed Up", "Shared", "Left"]
SOURCES = ["web", "ios", "server"]


@pytest.fixture
def ch_url() -> Iterator[str]:
    database = unique("err_")
    yield f"clickhouse+native://default:@127.0.0.1:9000/{database}"
    client = Client.from_url(SERVER)
    client.execute(f"DROP DATABASE IF EXISTS {database}")
    client.disconnect()


def make_sink(url: str, tmp_path, **options: Any) -> ClickHouseSink:
    sink = {"type": "clickhouse", "url": url, "rollup_interval": "1h", **options}
    config = make_config(tmp_path, {"sinks": {"warehouse": sink}})
    return Bus(config, make_plugin_manager(config), role=WORKER).sinks["warehouse"]


def command(rng: random.Random, message_id: str, moment: datetime, received: datetime) -> Any:
    kind = rng.choices(["track", "page", "identify"], [8, 1, 1])[0]
    common = {
        "message_id": message_id,
        "source": rng.choice(SOURCES),
        "user_id": f"u{rng.randrange(40)}",
        "timestamp": moment,
        "received_at": received,
    }
    if kind == "track":
        return TrackCommand(event=rng.choice(NAMES), properties={"n": 1}, **common)
    if kind == "page":
        return PageCommand(name="Home", **common)
    return IdentifyCommand(traits={"plan": "pro"}, **common)


def random_events(rng: random.Random, count: int, days: float = 7) -> list[Any]:
    commands = []
    for _ in range(count):
        moment = NOW - timedelta(seconds=rng.uniform(0, days * 86400))
        commands.append(command(rng, unique("r"), moment, moment))
    return commands


def redelivered(rng: random.Random, commands: list[Any], share: float) -> list[Any]:
    """Copies of some of ``commands``, received later, some with another timestamp of
    the same day (an SDK's retry gets another skew-corrected time)."""
    copies = []
    for original in rng.sample(commands, int(len(commands) * share)):
        moment = original.timestamp
        shifted = moment + timedelta(minutes=rng.choice([0, 0, -90, 45]))
        if shifted.date() == moment.date() and shifted < NOW:
            moment = shifted
        copies.append(
            msgspec.structs.replace(
                original, timestamp=moment, received_at=original.received_at + timedelta(hours=1)
            )
        )
    return copies


def answers(store: EventStore) -> dict:
    since = EventFilter(since=SINCE)
    return {
        "1h": store.count_by_time(since, 3600),
        "6h": store.count_by_time(EventFilter(since=SINCE, until=NOW - timedelta(hours=5)), 21600),
        "web": store.count_by_time(EventFilter(since=SINCE, source="web"), 3600),
        "viewed": store.count_by_time(EventFilter(since=SINCE, event="Viewed"), 86400),
        "events": store.top(since, "event", 20),
        "tracks": store.top(EventFilter(since=SINCE, type="track"), "event", 20),
        "sources": store.top(EventFilter(since=SINCE, event="Bought"), "source", 20),
        "types": store.top(EventFilter(), "type", 20),
        "count": store.count(since),
        "all": store.count(EventFilter()),
        "day": store.count(EventFilter(since=NOW - timedelta(days=1))),
        # events_users (the reader) or a count of events (the scanner): distinct users.
        **{
            f"users by {interval}": store.active_users(since, interval)
            for interval in ("day", "week", "month")
        },
        "users all time": store.active_users(EventFilter(), "week").series,
        "users by source": store.active_users(since, "day", "source"),
        "users of web": store.active_users(EventFilter(since=SINCE, source="web"), "day"),
        # events_user_days (the reader's whole days) or events (the scanner): retention.
        "retention": retention(store, "Signed Up", "Viewed", "day", SINCE, None),
        "retention weekly": retention(
            store, "Viewed", "Bought", "week", SINCE, NOW - timedelta(hours=5)
        ),
        "retention of one event": retention(store, "Bought", "Bought", "day", None, None),
    }


class Stores:
    """A reader through the rollup and a scanner of ``events``, over ``url``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.reader = EventStore(ClickHouseStore(url))
        self.scanner = EventStore(ClickHouseStore(url), use_rollup=False)

    def close(self) -> None:
        self.reader.close()
        self.scanner.close()

    def gaps(self) -> list:
        return self.reader.dialect.rollup_gaps(None, datetime.now(UTC))

    def same(self) -> dict:
        fast, slow = answers(self.reader), answers(self.scanner)
        assert fast == slow
        return fast

    def compact(self, **options: Any) -> list[date]:
        """One compaction, a second after the last insert (marks of the second it starts
        in keep their day dirty; one server: no clock margin)."""
        time.sleep(1.05)
        client = client_for(self.url)
        try:
            return compact(client, margin=0, **options)
        finally:
            client.disconnect()


@pytest.fixture
def stored(ch_url, tmp_path) -> Iterator[tuple[ClickHouseSink, Stores]]:
    sink = make_sink(ch_url, tmp_path)
    sink.migrate()
    stores = Stores(ch_url)
    try:
        yield sink, stores
    finally:
        stores.close()
        sink.stop()


def test_rollup_equals_the_scan_on_random_data_over_several_days(stored):
    sink, stores = stored
    rng = random.Random(24)
    first = random_events(rng, 3000)
    for start in range(0, len(first), 1000):
        sink.write(first[start : start + 1000])
    before = stores.same()  # every day dirty: read from events
    assert stores.reader.has_rollup() is True
    assert len(stores.compact()) >= 7
    assert stores.gaps() == []
    assert stores.same() == before
    assert before["all"] == 3000
    # Copies of 10%, some in another hour of their day: each event still counted once,
    # in the hour of its copy received last.
    sink.write(redelivered(rng, first, 0.1))
    assert stores.gaps()  # their days are dirty until the next compaction
    copied = stores.same()
    assert (copied["all"], copied["types"]) == (before["all"], before["types"])
    stores.compact()
    assert stores.gaps() == []
    assert stores.same() == copied
    with sink.client() as client:
        client.execute("OPTIMIZE TABLE events FINAL")
        client.execute("OPTIMIZE TABLE events_hourly FINAL")
    assert stores.same() == copied
    # New events on top: counted before and after their compaction.
    sink.write(random_events(rng, 500, days=2))
    grown = stores.same()
    assert grown["all"] == 3500
    stores.compact()
    assert stores.same() == grown


def test_two_compactions_at_once_leave_the_right_counts(stored):
    sink, stores = stored
    rng = random.Random(7)
    sink.write(random_events(rng, 2000))
    expected = stores.same()
    time.sleep(1.05)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run() -> None:
        client = client_for(stores.url)
        try:
            barrier.wait()
            compact(client, margin=0)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            client.disconnect()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert stores.gaps() == []
    assert stores.same() == expected
    with sink.client() as client:
        hourly = client.execute("SELECT sum(n_events) FROM events_hourly FINAL")[0][0]
    assert hourly == expected["all"]


def test_rows_of_a_late_or_failed_compaction_are_never_read(stored):
    """A run that wrote its rows after a later run recorded its own (an older version),
    and one that failed between writing its rows and recording them: neither is read."""
    sink, stores = stored
    rng = random.Random(13)
    sink.write(random_events(rng, 400, days=3))
    stores.compact()
    expected = stores.same()
    day = (NOW - timedelta(days=2)).replace(hour=5, minute=0, second=0, microsecond=0)
    with sink.client() as client:
        [(recorded,)] = client.execute("SELECT toUInt32(max(through)) FROM events_compacted")
        bogus = [(day, "track", "Viewed", "web", 1000, int(recorded) - 60)]
        client.execute(
            "INSERT INTO events_hourly (hour, type, event, source, n_events, version) VALUES",
            bogus,
        )
    assert stores.gaps() == []
    assert stores.same() == expected
    # A failed run: the day changed (marked), rows of a later version, nothing recorded.
    sink.write([command(rng, unique("f"), day + timedelta(minutes=5), day)])
    time.sleep(1.05)
    with sink.client() as client:
        [(now,)] = client.execute("SELECT toUInt32(now())")
        failed = [(day, "track", "Viewed", "web", 1000, int(now))]
        client.execute(
            "INSERT INTO events_hourly (hour, type, event, source, n_events, version) VALUES",
            failed,
        )
    grown = stores.same()
    assert grown["all"] == expected["all"] + 1
    stores.compact()
    assert stores.gaps() == []
    assert stores.same() == grown


class InsertingClient:
    """A client that writes one more event into the day being recounted right after the
    compactor has read that day's events."""

    def __init__(self, client: Client, sink: ClickHouseSink, late: Any) -> None:
        self.client, self.sink, self.late = client, sink, late
        self.done = False

    def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        result = self.client.execute(query, *args, **kwargs)
        if "FROM events FINAL" in query and not self.done:
            self.done = True
            self.sink.write([self.late])
        return result


def test_an_insert_landing_during_compaction_keeps_its_day_dirty(stored):
    sink, stores = stored
    rng = random.Random(11)
    # Noon two days ago: the late event, half an hour later, lands on the same day
    # whatever the time the test runs.
    moment = (NOW - timedelta(days=2)).replace(hour=12, minute=0, second=0, microsecond=0)
    sink.write([command(rng, unique("d"), moment + timedelta(minutes=i), moment) for i in range(5)])
    before = stores.same()
    time.sleep(1.05)
    late = command(rng, unique("late"), moment + timedelta(minutes=30), moment)
    client = client_for(stores.url)
    try:
        compact(InsertingClient(client, sink, late), margin=0, days=[moment.date()])
    finally:
        client.disconnect()
    # The compaction counted the day without the late event, and the day stays dirty.
    day = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    assert (day, day + timedelta(days=1)) in stores.gaps()
    after = stores.same()
    assert after["all"] == before["all"] + 1
    stores.compact()
    assert stores.gaps() == []
    assert stores.same() == after


def test_migrate_backfills_a_database_that_had_no_rollup(ch_url, tmp_path):
    plain = make_sink(ch_url, tmp_path, rollup=False)
    plain.migrate()
    rng = random.Random(3)
    plain.write(random_events(rng, 1500))
    plain.stop()
    stores = Stores(ch_url)
    try:
        assert stores.reader.has_rollup() is False
        expected = stores.same()
        sink = make_sink(ch_url, tmp_path)
        try:
            assert "rollup events_hourly created" in sink.migrate()
            assert sink.migrate().endswith("rollup events_hourly")  # idempotent
        finally:
            sink.stop()
        fresh = Stores(ch_url)
        try:
            assert fresh.reader.has_rollup() is True
            assert fresh.gaps()  # every stored day, until the first compaction
            assert fresh.same() == expected
            assert len(fresh.compact()) >= 7
            assert fresh.gaps() == []
            assert fresh.same() == expected
        finally:
            fresh.close()
    finally:
        stores.close()


def test_migrate_counts_the_users_of_a_rollup_made_before_events_users(ch_url, tmp_path):
    """A rollup compacted before ``events_users`` existed: migrate creates it and marks
    every day changed, so no compacted day is read without its users."""
    sink = make_sink(ch_url, tmp_path)
    sink.migrate()
    stores = Stores(ch_url)
    try:
        sink.write(random_events(random.Random(9), 800))
        stores.compact()
        expected = stores.same()
        with sink.client() as client:
            client.execute("DROP TABLE events_users")
            assert rollup_module.has_rollup(client) is False  # the compactor waits
        assert "created" in sink.migrate()
        fresh = Stores(ch_url)
        try:
            assert fresh.gaps()  # every day, until the next compaction
            assert fresh.same() == expected
            fresh.compact()
            assert fresh.gaps() == []
            assert fresh.same() == expected
        finally:
            fresh.close()
    finally:
        stores.close()
        sink.stop()


class OldCompactorClient:
    """A compactor of a release before ``events_users`` (or, with ``table``, another
    of the rollup's tables): it writes none of its rows."""

    def __init__(self, client: Client, table: str = "events_users") -> None:
        self.client, self.table = client, table

    def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        if query.startswith(f"INSERT INTO {self.table}"):
            return []
        return self.client.execute(query, *args, **kwargs)


def test_days_an_old_compactor_recorded_without_users_are_counted_from_events(stored):
    """During an upgrade, a process of the previous release compacts: its days have no
    users row at their latest version, and are read from events until recompacted."""
    sink, stores = stored
    sink.write(random_events(random.Random(17), 600, days=4))
    stores.compact()
    expected = stores.same()
    sink.write(random_events(random.Random(18), 300, days=4))
    time.sleep(1.05)
    client = client_for(stores.url)
    try:
        assert compact(OldCompactorClient(client), margin=0)
    finally:
        client.disconnect()
    assert stores.gaps() == []  # the hours are compacted; the users are not
    grown = stores.same()
    assert grown["all"] == expected["all"] + 300
    assert stores.compact()  # this release's compactor recounts those days
    with sink.client() as client:
        assert client.execute(rollup_module.users_missing_sql()) == []
    assert stores.same() == grown


def test_retention_from_user_days_counts_a_returning_day_by_its_last_event(stored):
    """Hand-counted: on the entry's own day, a user's returning events count when the
    latest of them is at or after the entry (``events_user_days`` keeps that day's first
    and last); the reader and the scanner agree."""
    sink, stores = stored
    # A hostile first event's name: a bound parameter wherever it goes.
    signed = "Signed ' Up\"; DROP TABLE events_user_days; -- \\ é"
    day = (NOW - timedelta(days=4)).replace(hour=0, minute=0, second=0, microsecond=0)
    rows = [
        ("x", "Viewed", 8),  # x viewed before signing up only: not back on day 0
        ("x", signed, 10),
        ("y", signed, 10),
        ("y", "Viewed", 12),
        ("z", "Viewed", 9),
        ("z", signed, 11),
        ("z", "Viewed", 13),  # z's last view of day 0 is after the entry: back
        ("x", "Viewed", 24 + 5),  # day 1
        ("z", "Viewed", 48 + 1),  # day 2
        ("w", "Viewed", 48 + 2),  # never signed up
    ]
    sink.write(
        [
            TrackCommand(
                event=name,
                properties={},
                message_id=unique("h"),
                source="web",
                user_id=f"user {user}'\"",
                timestamp=day + timedelta(hours=hours),
                received_at=day + timedelta(hours=hours),
            )
            for user, name, hours in rows
        ]
    )
    stores.compact()
    assert day.date() in stores.reader.dialect.user_days_kept(None, None)
    since, until = day - timedelta(hours=6), day + timedelta(days=3)
    fast = retention(stores.reader, signed, "Viewed", "day", since, until)
    assert fast == retention(stores.scanner, signed, "Viewed", "day", since, until)
    assert [(c.start, c.users, c.returned) for c in fast.cohorts] == [
        (day, 3, [2, 1, 1, None, None, None, None, None])
    ]


def test_days_compacted_without_user_days_are_read_from_events(stored):
    """A compactor of a release before ``events_user_days`` (as after an upgrade):
    retention reads its days from events until this release's compactor recounts them;
    the answers never change."""
    sink, stores = stored
    sink.write(random_events(random.Random(27), 600, days=4))
    stores.compact()
    expected = stores.same()
    kept = stores.reader.dialect.user_days_kept(None, None)
    assert len(kept) >= 3
    sink.write(random_events(random.Random(28), 300, days=4))
    time.sleep(1.05)
    client = client_for(stores.url)
    try:
        recounted = compact(OldCompactorClient(client, "events_user_days"), margin=0)
    finally:
        client.disconnect()
    assert recounted
    assert stores.gaps() == []  # the hours are compacted; the users' days are not
    assert not kept & set(recounted) & stores.reader.dialect.user_days_kept(None, None)
    grown = stores.same()
    assert grown["all"] == expected["all"] + 300
    assert stores.compact()  # this release's compactor recounts those days
    with sink.client() as client:
        assert client.execute(rollup_module.user_days_sql(missing=True)) == []
    assert stores.reader.dialect.user_days_kept(None, None) >= set(recounted)
    assert stores.same() == grown


def test_dropping_old_partitions_drops_their_hours(stored):
    """Retention on a server without TTL (18.16): the old month's partition of
    ``events``, ``events_hourly`` and ``events_users`` dropped (docs/clickhouse.md)."""
    sink, stores = stored
    rng = random.Random(5)
    old = NOW - timedelta(days=70)  # always another month
    sink.write([command(rng, unique("o"), old + timedelta(minutes=i), old) for i in range(20)])
    sink.write(random_events(rng, 200, days=2))
    stores.compact()
    assert stores.reader.count(EventFilter(until=NOW - timedelta(days=60))) == 20
    month = old.strftime("%Y%m")
    with sink.client() as client:
        client.execute(f"ALTER TABLE events DROP PARTITION {month}")
        client.execute(f"ALTER TABLE events_hourly DROP PARTITION {month}")
        client.execute(f"ALTER TABLE events_users DROP PARTITION {month}")
        client.execute(f"ALTER TABLE events_user_days DROP PARTITION {month}")
    assert stores.reader.count(EventFilter(until=NOW - timedelta(days=60))) == 0
    assert stores.same()["all"] == 200
    stores.compact()
    assert stores.same()["all"] == 200


def test_the_sink_compacts_periodically(ch_url, tmp_path):
    sink = make_sink(ch_url, tmp_path, rollup_interval="1s", rollup_paths=["properties.n"])
    sink.start(type("BusStub", (), {"gathers_batches": True})())
    stores = Stores(ch_url)
    try:
        sink.write(random_events(random.Random(1), 300, days=2))
        assert stores.gaps()
        # Marks of the last CLOCK_MARGIN seconds wait for the run after.
        eventually(lambda: stores.gaps() == [], "the sink compacted")
        assert stores.same()["all"] == 300
        # With its rollup_paths: properties.n counted too (the track calls' 1).
        now = datetime.now(UTC)
        assert stores.reader.dialect.rollup_gaps(None, now, "properties.n") == []
        assert stores.reader._path_kept("properties.n") is True
        where = EventFilter(since=SINCE)
        got = stores.reader.top(where, "properties.n")
        assert got == stores.scanner.top(where, "properties.n")
        assert sum(n for _, n in got) == stores.reader.count(where)
    finally:
        stores.close()
        sink.stop()
    assert sink._compactor is None


# -- the same statements on a current ClickHouse (chdb) ------------------------------------
class ChdbClient:
    """What :func:`compact` asks of a clickhouse-driver client, over a chdb session:
    parameters and VALUES rows written into the SQL, answers typed from the result's
    metadata."""

    def __init__(self, db: Any) -> None:
        self.db = db

    @staticmethod
    def literal(value: Any) -> str:
        if isinstance(value, datetime):
            return f"toDateTime({int(value.timestamp())}, 'UTC')"
        if isinstance(value, date):
            return f"toDate({quote_string(value.isoformat())})"
        if isinstance(value, str):
            return quote_string(value)
        return str(int(value))

    def execute(self, query: str, params: Any = None) -> list[tuple]:
        if isinstance(params, list):
            rows = ", ".join(f"({', '.join(map(self.literal, row))})" for row in params)
            self.db.query(f"{query} {rows}")
            return []
        if params:
            query = query % {name: self.literal(value) for name, value in params.items()}
        if query.startswith("INSERT"):
            self.db.query(query)
            return []
        answer = msgspec.json.decode(self.db.query(query, "JSONCompact").bytes())
        types = [column["type"] for column in answer["meta"]]
        return [
            tuple(
                date.fromisoformat(value) if kind == "Date" else value
                for value, kind in zip(row, types, strict=True)
            )
            for row in answer["data"]
        ]


def test_rollup_ddl_compaction_and_reads_run_on_a_current_clickhouse(ch_url, tmp_path):
    from chdb import session

    from tests.integration.test_clickhouse import _sample

    sink = make_sink(ch_url, tmp_path)
    sink.migrate()  # on 18.16, for the reads' probes; the statements run on chdb below
    sink.stop()
    db = session.Session()
    try:
        db.query("CREATE DATABASE IF NOT EXISTS eventrouter")
        db.query("USE eventrouter")
        engine = sink._engine()
        db.query(
            str(
                CreateTable(
                    events_table(MetaData(), datetime64=True, ttl=30 * 86400), if_not_exists=True
                ).compile(engine)
            )
        )
        engine.dispose()
        for statement in rollup_module.ddl(ttl=30 * 86400):
            db.query(statement)
        db.query(rollup_module.marker_ddl())
        db.query("INSERT INTO events FORMAT JSONEachRow\n" + _chdb_rows(_sample(), True))
        client = ChdbClient(db)
        assert client.execute(dirty_days_sql())  # marked by the view
        time.sleep(1.05)
        days = compact(client, margin=0, paths=["properties.plan", "properties.billing"])
        assert days
        assert client.execute(dirty_days_sql()) == []
        [(hourly,)] = client.execute("SELECT sum(n_events) FROM events_hourly FINAL")
        [(final,)] = client.execute("SELECT count() FROM events FINAL")
        assert int(hourly) == int(final) == 6  # e2's two copies once
        # The paths' counts (JSONExtract* here): each event once per path.
        by_path = client.execute(
            "SELECT path, value, sum(n_events) FROM events_hourly_paths FINAL "
            "GROUP BY path, value ORDER BY path, value"
        )
        assert [(path, value, int(n)) for path, value, n in by_path] == [
            ("properties.billing", "", 5),
            ("properties.billing", 'v{"cycle":"yearly"}', 1),
            ("properties.plan", "", 3),
            ("properties.plan", "vfree", 1),
            ("properties.plan", "vpro", 2),
        ]
        missing = rollup_module.paths_missing_sql(rollup_module.paths_array(["properties.plan"]))
        assert client.execute(missing) == []
        # Each user's first and last event per name and day (no FINAL: e2's copies too).
        user_days = client.execute(
            "SELECT event, count(), toUInt32(min(first)), toUInt32(max(last)) "
            "FROM events_user_days GROUP BY event ORDER BY event"
        )
        [(base,)] = client.execute("SELECT toUInt32(min(timestamp)) FROM events WHERE event != ''")
        seconds = int(base) - 1  # e1, one second after the sample's base
        assert [(e, int(n), int(a), int(b)) for e, n, a, b in user_days] == [
            ("", 3, seconds - 86400, seconds + 4),  # e6 the day before; e4, e5
            ("Bought", 1, seconds + 3, seconds + 3),
            ("Viewed", 2, seconds + 1, seconds + 2),
        ]
        assert client.execute(rollup_module.user_days_sql(missing=True)) == []
        compacted = [row[0] for row in client.execute(rollup_module.user_days_sql())]
        # The reads: the rollup's statements and the scan's give the same answers.
        sent: dict[bool, list[str]] = {True: [], False: []}
        substitute = Client("127.0.0.1")
        for use_rollup in (True, False):
            store = EventStore(ClickHouseStore(ch_url), use_rollup=use_rollup)
            store.dialect._flavour = Flavour(datetime64=True, json_extract=True)
            # Counted on chdb, not on 18.16 (whose probes and gaps find nothing missing).
            store.dialect._paths_found = {"properties.plan"}
            store.dialect.user_days_kept = lambda first, last: {  # type: ignore[method-assign]
                day
                for day in compacted
                if (first is None or day >= first) and (last is None or day <= last)
            }

            def capture(
                connection, cursor, statement, parameters, context, executemany, ur=use_rollup
            ):
                reads = statement.lstrip().upper().startswith("SELECT")
                if reads and "system." not in statement and "d.day" not in statement:
                    context_ = substitute.connection.context
                    sent[ur].append(substitute.substitute_params(statement, parameters, context_))
                    return "SELECT 1 WHERE 0", {}
                return statement, parameters  # the table probes and the gaps: on 18.16

            event.listen(store.engine, "before_cursor_execute", capture, retval=True)
            try:
                where = EventFilter(since=NOW - timedelta(days=5, minutes=7))
                store.count_by_time(where, 3600)
                store.top(where, "event", 10)
                store.count(where)
                # events_users (ClickHouseDialect.users_statement), or events.
                store.active_users(where, "day")
                store.active_users(where, "week")
                # events_hourly_paths (a kept path), or events.
                store.top(where, "properties.plan", 10)
                pro = PathCondition("properties", ("plan",), "pro")
                store.count(EventFilter(since=where.since, paths=[pro]))
                # events_user_days (ClickHouseDialect.retention_days), or events.
                retention(store, "Viewed", "Bought", "day", None, None)
            finally:
                store.close()
        assert all("UNION ALL" in sql for sql in sent[True][:3])
        assert all("events_users" in sql for sql in sent[True][3:5])
        assert all("events_hourly_paths" in sql for sql in sent[True][5:7])
        assert "events_user_days" in sent[True][7]
        assert len(sent[True]) == len(sent[False]) == 8
        answers = {
            kind: [
                msgspec.json.decode(db.query(sql, "JSONCompact").bytes())["data"] for sql in sqls
            ]
            for kind, sqls in sent.items()
        }
        assert answers[True] == answers[False]
        assert answers[True][2] in ([[6]], [["6"]])
        assert answers[True][4]  # the week's users
        assert answers[True][6] in ([[2]], [["2"]])  # e1 and e3
        # Retention: u1 and u2 viewed (the cohort), u1 bought after (back in period 0).
        assert sorted(row[1:] for row in answers[True][7]) in (
            [[-1, 2], [0, 1]],
            [["-1", "2"], ["0", "1"]],
        )
    finally:
        db.close()


def test_equality_on_shared_columns_is_read_as_prewhere_with_the_same_answers(stored):
    """``FINAL`` reads with ``event``/``type``/``source`` conditions also get them as
    ``PREWHERE`` (sinks/clickhouse_store.py, ``_compiler_class``): each event counted
    once, copies included, as clickhouse-sqlalchemy's own compiler counts it."""
    from clickhouse_sqlalchemy.drivers.compilers.sqlcompiler import ClickHouseSQLCompiler

    sink, stores = stored
    rng = random.Random(31)
    first = random_events(rng, 1500)
    sink.write(first)
    sink.write(redelivered(rng, first, 0.2))  # not merged: read through FINAL
    plain = EventStore(ClickHouseStore(stores.url), use_rollup=False)
    plain.engine.dialect.statement_compiler = ClickHouseSQLCompiler
    sent: list[str] = []
    event.listen(
        stores.scanner.engine,
        "before_cursor_execute",
        lambda conn, cursor, statement, *rest: sent.append(statement),
    )
    try:
        n = [PathCondition("properties", ("n",), "1")]
        for where in (
            EventFilter(since=SINCE, event="Viewed", paths=n),
            EventFilter(since=SINCE, type="track", source="web"),
            EventFilter(event="Bought"),
        ):
            got = stores.scanner.count_by_time(where, 3600)
            assert got == plain.count_by_time(where, 3600)
            assert stores.scanner.count(where) == plain.count(where) == sum(c for _, c in got)
        # All time (a copy may sit on the other side of SINCE): every Viewed once.
        by_hand = sum(1 for c in first if getattr(c, "event", None) == "Viewed")
        assert stores.scanner.count(EventFilter(event="Viewed", paths=n)) == by_hand
        assert any("FINAL" in sql and "PREWHERE events.event =" in sql for sql in sent)
    finally:
        plain.close()


def test_a_users_times_and_traits_are_those_final_gives_with_copies_unmerged(stored):
    """The user page's reads without ``FINAL`` (``LIMIT 1 BY``): each event's copy
    received last, as ``FINAL`` keeps it, with copies in other hours of their day."""
    sink, stores = stored
    rng = random.Random(41)
    first = random_events(rng, 800)
    sink.write(first)
    sink.write(redelivered(rng, first, 0.5))
    with sink.client() as client:
        for user in ("u1", "u7", "u23", "nobody"):
            [(oldest, newest, n)] = client.execute(
                "SELECT min(timestamp), max(timestamp), count() FROM events FINAL "
                "WHERE user_id = %(u)s",
                {"u": user},
            )
            span = stores.reader.time_span(EventFilter(user_id=user))
            if not n:
                assert span is None
                continue
            assert span == (oldest.replace(tzinfo=UTC), newest.replace(tzinfo=UTC))
            traits = client.execute(
                "SELECT traits FROM events FINAL WHERE user_id = %(u)s AND type = 'identify'",
                {"u": user},
            )
            expected = {} if not traits else {"plan": "pro"}
            assert stores.reader.identify_traits(user) == expected
