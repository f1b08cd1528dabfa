"""The hourly counts per value of configured JSON paths (``rollup_paths``:
``events_hourly_paths``, eventrouter.store.rollup) on SQLite, PostgreSQL and ClickHouse
(kept by its compactor, sinks/clickhouse_rollup.py): the breakdown by a kept path, and
the count and chart filtered by one of its values, read them and answer exactly as a
scan of ``events`` does, on hostile values (numbers, booleans, JSON null against a
missing key, objects, unicode, a long string, SQL and markup, backslashes, ``""`` and
``"v"``, which SQLite's and ClickHouse's encoding of the key must keep apart), through
redeliveries, erasure, suppression and retention; a path added to the configuration is
counted from the stored events, one removed loses its rows (SQLite, PostgreSQL) or is
read from ``events`` for the days compacted without it (ClickHouse), and a reader never
reads a path whose counts are not complete. The expected numbers are counted by hand
from :data:`PLANS`; every time is relative to now.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import msgspec
import psycopg
import pytest
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import text

from eventrouter.events.commands import TrackCommand
from eventrouter.sinks.clickhouse import ClickHouseOptions
from eventrouter.sinks.clickhouse_rollup import PATHS_RECORDED, compact
from eventrouter.sinks.clickhouse_store import client_for
from eventrouter.sinks.postgres import PostgresOptions, PostgresSink
from eventrouter.sinks.sqlite import SQLiteOptions, SQLiteSink
from eventrouter.sinks.sqlite_store import write_retrying
from eventrouter.store.query import EventFilter, EventStore, PathCondition
from tests.helpers import ADMIN_TOKEN
from tests.queue_support import unique
from tests.store_support import ServedStore, served_store, store_of, store_sink

pytestmark = pytest.mark.slow

STORES = ["sqlite", "postgres", "clickhouse"]
#: The stores that keep the path rollup at write time (a migration adds or drops a path).
SQL_STORES = ["sqlite", "postgres"]
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
NOW = datetime.now(UTC)
#: Not on an hour: whole hours from the rollup, both partial ends from events.
SINCE = NOW - timedelta(days=7)
HOUR = timedelta(hours=1)
LONG = "ü" * 3000
MISSING = object()
#: ``properties.plan`` of each stored event, one event per entry, each an hour and a
#: half apart (the last ones before SINCE).
PLANS = [
    "pro",
    "pro",
    "free",
    1,
    1.5,
    True,
    False,
    None,  # a JSON null: no value, as a missing key
    MISSING,
    {"a": [1, "x"]},
    [1, 2],
    "ünï 🙂",
    LONG,
    "'; DROP TABLE events; --",
    "<script>alert(1)</script>",
    "",
    "v",
    "null",
    "true",  # the text "true" and the boolean true: one value, as json_text gives them
    'quote " back \\ slash \n tab \t \u2028 \U0001f600',
    {"plan": "nested"},
    "ends in a backslash \\",
    "\\",
    "pro",
]
#: The object's and the array's text as each store's json_text spells it (ClickHouse: as
#: stored, the request's own text).
OBJECT_TEXT = {"sqlite": '{"a":[1,"x"]}', "postgres": '{"a": [1, "x"]}'}
ARRAY_TEXT = {"sqlite": "[1,2]", "postgres": "[1, 2]"}
NESTED_TEXT = {"sqlite": '{"plan":"nested"}', "postgres": '{"plan": "nested"}'}
for texts in (OBJECT_TEXT, ARRAY_TEXT, NESTED_TEXT):
    texts["clickhouse"] = texts["sqlite"]
PATHS = ["properties.plan", "context.page.path"]


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event(message_id: str, hours_ago: float, plan: object, user: str = "u1") -> dict:
    return {
        "type": "track",
        "event": "Viewed",
        "messageId": message_id,
        "userId": user,
        "timestamp": iso(NOW - hours_ago * HOUR),
        "properties": {} if plan is MISSING else {"plan": plan},
        "context": {"page": {"path": f"/p/{int(hours_ago) % 3}"}},
    }


def dataset() -> list[dict]:
    events = [event(f"p{i}", 0.4 + 1.5 * i, plan) for i, plan in enumerate(PLANS)]
    # context.page.path through an array and through a string: no value on either store
    events[1]["context"] = {"page": ["/p/1"]}
    events[2]["context"] = {"page": "/p/2"}
    return events


def by_hand(kind: str, since_hours: float) -> Counter:
    """``properties.plan``'s values as the store's json_text gives them, counted from
    :data:`PLANS` among the events newer than ``since_hours`` ago (ClickHouse shows
    ``""`` as no value, as it shows every absent text)."""
    spelled = Counter()
    for i, plan in enumerate(PLANS):
        if 0.4 + 1.5 * i > since_hours:
            continue
        if plan is None or plan is MISSING or (plan == "" and kind == "clickhouse"):
            value = None
        elif plan is True or plan is False:
            value = "true" if plan else "false"
        elif plan == {"plan": "nested"}:
            value = NESTED_TEXT[kind]
        elif isinstance(plan, dict):
            value = OBJECT_TEXT[kind]
        elif isinstance(plan, list):
            value = ARRAY_TEXT[kind]
        else:
            value = str(plan)
        spelled[value] += 1
    return spelled


def totals(answer: list) -> Counter:
    """A breakdown as value -> events (ClickHouse shows ``""`` and no value alike: two
    rows of None, added up here)."""
    counted: Counter = Counter()
    for value, n in answer:
        counted[value] += n
    return counted


class Fixture(ServedStore):
    #: ClickHouse: the ``rollup_paths`` its compactor counts (:meth:`compact`).
    paths: list[str] = PATHS

    def sql(self, statement: str, params: dict | None = None) -> list[tuple]:
        """Run ``statement`` on the store (under SQLite's writers' lock; ClickHouse's
        native client, ``%(name)s`` parameters)."""
        if self.kind == "clickhouse":
            client = client_for(self.sink["url"])
            try:
                return client.execute(statement, params)
            finally:
                client.disconnect()
        engine = self.store.engine()

        def run() -> list[tuple]:
            with engine.begin() as connection:
                result = connection.execute(text(statement), params or {})
                return [tuple(row) for row in result] if result.returns_rows else []

        try:
            if self.kind == "sqlite":
                return write_retrying(self.sink["url"], run)
            return run()
        finally:
            engine.dispose()

    def compact(self, paths: list[str] | None = None, **options) -> list:
        """ClickHouse: one compaction counting ``paths`` (default :attr:`paths`), a
        second after the last insert (marks of the second it starts in keep their day
        dirty; one server: no clock margin)."""
        time.sleep(1.05)
        client = client_for(self.sink["url"])
        try:
            counted = self.paths if paths is None else paths
            return compact(client, margin=0, paths=counted, **options)
        finally:
            client.disconnect()

    def path_rows(self, path: str | None = None) -> tuple[int, int]:
        """``(rows, events)`` the path rollup holds (of ``path``): ClickHouse's rows of
        each day's latest recorded compaction alone."""
        where = "" if path is None else "WHERE path = :path"
        if self.kind == "clickhouse":
            where = f"WHERE {PATHS_RECORDED}" + ("" if path is None else " AND path = %(path)s")
            statement = f"SELECT count(), sum(n_events) FROM events_hourly_paths FINAL {where}"
        else:
            statement = f"SELECT count(*), sum(n) FROM events_hourly_paths {where}"
        [(rows, events)] = self.sql(statement, {"path": path})
        return int(rows), int(events or 0)


@pytest.fixture(scope="module", params=STORES)
def fx(request, tmp_path_factory) -> Iterator[Fixture]:
    tmp_path = tmp_path_factory.mktemp(request.param)
    # ClickHouse: the tests compact when they mean to (check_same).
    options = {"rollup_interval": "1h"} if request.param == "clickhouse" else {}
    with served_store(
        request.param, tmp_path, dataset(), Fixture, rollup_paths=PATHS, **options
    ) as served:
        if served.kind == "clickhouse":
            served.compact()  # the stored days, counted for every path
        yield served


#: Values a chart or count filters ``properties.plan`` by (``dimension=value``).
FILTER_VALUES = ["pro", "true", "", "v", "1.5", "null", LONG, "'; DROP TABLE events; --", "x\x00"]


def on(value: str, path: str = "properties.plan") -> PathCondition:
    return PathCondition.parse(path, value)


def answers(store: EventStore, dimension: str = "properties.plan") -> dict:
    """Every breakdown the path rollup can answer, over ranges with partial hours, and
    the counts and charts filtered by a value of ``properties.plan``."""
    return {
        "7d": store.top(EventFilter(since=SINCE), dimension, 50),
        "10h": store.top(EventFilter(since=NOW - 10 * HOUR), dimension, 50),
        "track": store.top(EventFilter(since=SINCE, type="track"), dimension, 50),
        "viewed": store.top(EventFilter(since=SINCE, event="Viewed"), dimension, 50),
        "bought": store.top(EventFilter(since=SINCE, event="Bought"), dimension, 50),
        "bounded": store.top(EventFilter(since=SINCE, until=NOW - 5.2 * HOUR), dimension, 50),
        "all": store.top(EventFilter(), dimension, 50),
        "top3": store.top(EventFilter(since=SINCE), dimension, 3),
        **{
            f"count {value!r}": store.count(EventFilter(since=SINCE, paths=[on(value)]))
            for value in FILTER_VALUES
        },
        **{
            f"chart {value!r}": store.count_by_time(
                EventFilter(since=SINCE, event="Viewed", paths=[on(value)]), 3 * 3600
            )
            for value in FILTER_VALUES
        },
        "chart, two paths": store.count_by_time(
            EventFilter(since=SINCE, paths=[on("pro"), on("/p/1", "context.page.path")]), 3600
        ),
        # Active users per value (ClickHouse: events_users_paths, merged across days).
        **{
            f"users {interval}": active(store, interval, dimension)
            for interval in ("day", "week", "month")
        },
        "users top2": active(store, "day", dimension, limit=2),
    }


def active(store: EventStore, interval: str, dimension: str, limit: int = 50) -> tuple:
    """The Active users page's series and top values of ``dimension`` from :data:`SINCE`
    (moved back to its period's start)."""
    got = store.active_users(EventFilter(since=SINCE), interval, dimension, limit)
    return got.series, got.top


def check_same(fx: Fixture, dimension: str = "properties.plan") -> dict:
    """The rollup's answers and the scan's, equal (order and all); the rollup's. On
    ClickHouse, with the days changed since the last compaction read from events, then
    compacted, and equal again (with no gap left of a path its compactor counts)."""
    fast = answers(fx.reader, dimension)
    slow = answers(fx.scanner, dimension)
    assert fast == slow
    if fx.kind == "clickhouse":
        fx.compact()
        gaps = fx.reader.dialect.rollup_gaps(None, NOW, dimension)
        assert (gaps == []) is (dimension in fx.paths)
        assert answers(fx.reader, dimension) == slow
    return fast


def test_rollup_and_scan_agree_with_the_hand_count(fx):
    assert fx.reader._path_kept("properties.plan") is True
    assert fx.reader._path_kept("properties.other") is False
    sent: list[str] = []
    sqlalchemy_event.listen(
        fx.reader.engine,
        "before_cursor_execute",
        lambda conn, cursor, statement, *rest: sent.append(statement),
    )
    got = check_same(fx)
    assert totals(got["all"]) == by_hand(fx.kind, 1e9)
    assert totals(got["10h"]) == by_hand(fx.kind, 10)
    assert got["7d"][0] == ("pro", 3)
    values = totals(got["all"])
    if fx.kind == "clickhouse":
        assert values[None] == 3  # the JSON null, the missing key, and "" (shown as None)
    else:
        assert values[None] == 2  # the JSON null and the missing key
        assert values[""] == 1
    assert values["true"] == 2  # the boolean and the text
    assert values["v"] == 1 and values["null"] == 1
    assert values[LONG] == 1
    assert values["ends in a backslash \\"] == 1 and values["\\"] == 1
    assert values["'; DROP TABLE events; --"] == 1
    assert check_same(fx, "context.page.path")["all"] != []
    assert got["count 'pro'"] == 3 and got["count 'true'"] == 2 and got["count ''"] == 1
    assert got["count 'v'"] == 1 and got["count 'x\\x00'"] == 0
    assert sum(n for _, n in got["chart 'pro'"]) == 3
    # The rollup was read: the breakdown and the filtered count and chart.
    assert sum("events_hourly_paths" in statement for statement in sent) >= 20
    # The rollup holds the counts (whole hours in range), so they are not the scan's.
    assert fx.path_rows()[1] == 2 * len(PLANS)
    paths = totals(check_same(fx, "context.page.path")["all"])
    assert paths[None] == 2  # through the array and the string


def test_a_redelivered_batch_counts_once(fx):
    before = check_same(fx)
    fx.post(dataset())
    assert check_same(fx) == before
    if fx.kind == "clickhouse":  # and once the copies merged
        fx.sql("OPTIMIZE TABLE events FINAL")
        fx.sql("OPTIMIZE TABLE events_hourly_paths FINAL")
        assert check_same(fx) == before


def test_erasure_takes_the_rows_off(fx):
    before = check_same(fx)
    user = unique("erase-")
    fx.post([event(unique("e"), ago, "gone", user) for ago in (0.5, 5, 30)])
    grown = check_same(fx)
    assert dict(grown["all"])["gone"] == 3
    eraser = fx.store.eraser()
    try:
        erased = eraser.delete({user}, set(), dry_run=False, wait=30)
    finally:
        eraser.close()
    assert erased.events == 3
    assert check_same(fx) == before
    if fx.kind == "clickhouse":  # older versions keep it, the latest does not
        gone = fx.sql(
            f"SELECT count() FROM events_hourly_paths FINAL WHERE {PATHS_RECORDED} "
            "AND value LIKE '%gone'"
        )
    else:
        gone = fx.sql("SELECT count(*) FROM events_hourly_paths WHERE value LIKE '%gone'")
    assert gone == [(0,)]


def test_suppressed_events_are_never_counted(fx):
    before = check_same(fx)
    user = unique("quiet-")
    with fx.suppressing(user):
        fx.post([event(unique("s"), 3, "quiet", user)])
    assert check_same(fx) == before


def test_the_breakdown_page_reads_the_kept_path(fx):
    response = fx.server.client.get(
        "/admin/breakdown",
        params={"dimension": "properties.plan", "range": "7d"},
        headers=BEARER,
    )
    assert response.status_code == 200, response.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text
    assert "<script>alert(1)</script>" not in response.text


@pytest.mark.parametrize("fx", SQL_STORES, indirect=True)
def test_a_path_added_is_counted_from_the_stored_events_and_one_removed_dropped(fx):
    before = check_same(fx)
    tier = check_same(fx, "properties.tier")  # no such property: all None
    assert fx.reader._path_kept("properties.tier") is False
    try:
        assert "counted properties.tier" in fx.migrate(paths=[*PATHS, "properties.tier"])
        assert fx.reader._path_kept("properties.tier") is True
        assert check_same(fx, "properties.tier") == tier
        gold = event(unique("t"), 2, "pro")
        gold["properties"]["tier"] = "gold"
        fx.post([gold])  # counted by the writer too
        assert dict(check_same(fx, "properties.tier")["7d"])["gold"] == 1
        assert "dropped context.page.path" in fx.migrate(
            paths=["properties.plan", "properties.tier"]
        )
        assert fx.reader._path_kept("context.page.path") is False
        left = fx.sql("SELECT count(*) FROM events_hourly_paths WHERE path = 'context.page.path'")
        assert left == [(0,)]
        check_same(fx, "context.page.path")  # from events now
    finally:
        fx.migrate(paths=PATHS)
    assert fx.reader._path_kept("context.page.path") is True
    assert fx.reader._path_kept("properties.tier") is False
    assert dict(check_same(fx)["7d"])["pro"] == dict(before["7d"])["pro"] + 1
    check_same(fx, "context.page.path")


@pytest.mark.parametrize("fx", SQL_STORES, indirect=True)
def test_no_path_configured_drops_the_tables(fx):
    before = check_same(fx)
    try:
        assert "dropped events_hourly_paths" in fx.migrate(paths=[])
        assert fx.reader._path_kept("properties.plan") is False
        fx.post([event(unique("n"), 1, "while-off")])  # a writer counts no path now
        assert dict(check_same(fx)["7d"])["while-off"] == 1
    finally:
        assert "counted properties.plan" in fx.migrate(paths=PATHS)
    assert fx.reader._path_kept("properties.plan") is True
    assert dict(check_same(fx)["7d"])["while-off"] == 1
    assert dict(check_same(fx)["all"])["pro"] == dict(before["all"])["pro"]


@pytest.mark.parametrize("fx", SQL_STORES, indirect=True)
def test_a_reader_never_reads_a_path_whose_counts_are_not_complete(fx):
    """Rows of a path not listed as kept (a backfill not committed, or left by a run
    that failed) are never read; listed, they are."""
    hour = NOW.replace(minute=0, second=0, microsecond=0) - 5 * HOUR
    if fx.kind == "sqlite":
        row = (
            "INSERT INTO events_hourly_paths (path, hour, type, event, source, value, n) "
            "VALUES ('properties.fake', :hour, 'track', 'Viewed', 'planted', 'vplanted', 7)"
        )
        listed = (
            "INSERT INTO events_hourly_paths_kept (path, col, json_path) "
            "VALUES ('properties.fake', 'properties', '$.\"fake\"')"
        )
        at = hour.strftime("%Y-%m-%d %H:%M:%S.000000")
    else:
        row = (
            "INSERT INTO events_hourly_paths (path, hour, type, event, source, digest, "
            "value, n) VALUES ('properties.fake', :hour, 'track', 'Viewed', 'planted', "
            "'\\x01', 'planted', 7)"
        )
        listed = (
            "INSERT INTO events_hourly_paths_kept (path, col, segs) "
            "VALUES ('properties.fake', 'properties', '{fake}')"
        )
        at = hour
    fx.sql(row, {"hour": at})
    try:
        assert ("planted", 7) not in fx.reader.top(EventFilter(since=SINCE), "properties.fake")
        check_same(fx, "properties.fake")
        planted = EventFilter(since=SINCE, paths=[on("planted", "properties.fake")])
        assert fx.reader.count(planted) == 0
        fx.sql(listed)
        assert ("planted", 7) in fx.reader.top(EventFilter(since=SINCE), "properties.fake")
        assert fx.reader.count(planted) == 7  # the count reads it too
        assert sum(n for _, n in fx.reader.count_by_time(planted, 3600)) == 7
    finally:
        fx.sql("DELETE FROM events_hourly_paths_kept WHERE path = 'properties.fake'")
        fx.sql("DELETE FROM events_hourly_paths WHERE path = 'properties.fake'")
    check_same(fx, "properties.fake")


@pytest.mark.parametrize("fx", ["sqlite"], indirect=True)
def test_sqlite_old_rows_deleted_leave_the_rollup(fx):
    """SQLite keeps no retention of its own: an operator's delete of old rows (the
    delete trigger) takes their counts off."""
    fx.post([event(unique("old"), 24 * 6.5, "ancient", "u-old")])
    assert dict(check_same(fx)["all"])["ancient"] == 1
    cutoff = (NOW - 24 * 6 * HOUR).strftime("%Y-%m-%d %H:%M:%S")
    fx.sql("DELETE FROM events WHERE user_id = 'u-old' AND timestamp < :cutoff", {"cutoff": cutoff})
    assert "ancient" not in dict(check_same(fx)["all"])


@pytest.mark.parametrize("fx", ["sqlite"], indirect=True)
def test_sqlite_rows_updated_by_hand_move_their_counts(fx):
    """eventrouter never updates a stored row; should an operator, the counts follow."""
    fx.post([event(unique("upd"), 2, "before-update", "u-upd")])
    fx.sql(
        "UPDATE events SET properties = json_set(properties, '$.plan', 'after-update') "
        "WHERE user_id = 'u-upd'"
    )
    got = dict(check_same(fx)["all"])
    assert got["after-update"] == 1 and "before-update" not in got
    fx.sql("DELETE FROM events WHERE user_id = 'u-upd'")
    assert "after-update" not in dict(check_same(fx)["all"])


@pytest.mark.parametrize("fx", ["postgres"], indirect=True)
def test_retention_drops_the_hours_of_dropped_partitions(fx):
    fx.post([event(unique("old"), 24 * 20, "ancient", "u-old")])
    assert dict(check_same(fx)["all"])["ancient"] == 1
    options = PostgresOptions(url=fx.sink["url"], rollup_paths=PATHS)
    sink = PostgresSink("store", fx.server.config, options)
    cutoff = NOW - timedelta(days=15)
    try:
        sink.migrate()
        assert sink.drop_partitions_before(cutoff)
    finally:
        sink.stop()
    day_start = cutoff.replace(hour=0, minute=0, second=0, microsecond=0)
    url = fx.sink["url"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as connection:
        old = connection.execute(
            "SELECT count(*) FROM events_hourly_paths WHERE hour < %s", (day_start,)
        ).fetchone()[0]
    assert old == 0
    assert "ancient" not in dict(check_same(fx)["all"])


@pytest.mark.parametrize(
    ("options", "url"),
    [
        (SQLiteOptions, "sqlite:///x.db"),
        (PostgresOptions, "postgresql+psycopg://postgres@127.0.0.1/x"),
        (ClickHouseOptions, "clickhouse+native://default:@127.0.0.1:9000/x"),
    ],
)
@pytest.mark.parametrize(
    ("paths", "error"),
    [
        (["plan"], "properties.KEY"),
        (["properties.a b"], "path segment"),
        (["properties.a'b"], "path segment"),
        (["properties.plan", "properties.plan"], "twice"),
        ([f"properties.p{i}" for i in range(9)], "at most 8"),
    ],
)
def test_rollup_paths_are_validated_as_the_dimension_is(options, url, paths, error):
    raw = {"url": url, "rollup_paths": paths}
    with pytest.raises(msgspec.ValidationError, match=error):
        msgspec.convert(raw, options)
    assert msgspec.convert({"url": url, "rollup_paths": PATHS}, options).rollup_paths == PATHS


def _sink(kind: str, url: str, paths: list[str]):
    """A started sink of ``kind`` on ``url`` keeping ``paths``."""
    if kind == "sqlite":
        options = SQLiteOptions(url=url, indexes=["message_id"], rollup_paths=paths)
        sink = SQLiteSink("store", None, options)
        asyncio.run(sink.start(None))
        return sink
    sink = PostgresSink("store", None, PostgresOptions(url=url, rollup_paths=paths))
    sink.start(None)
    return sink


def _stop(sink) -> None:
    if isinstance(sink, SQLiteSink):
        asyncio.run(sink.stop())
    else:
        sink.stop()


@pytest.mark.parametrize("kind", SQL_STORES)
def test_a_path_added_while_a_writer_writes_is_counted_exactly(kind, tmp_path):
    """A writer configured without the path counts it from the moment a migration lists
    it (the writers count what the store lists), and the migration's backfill and the
    writer's counts neither miss a row nor count one twice."""
    plans = ["pro", "free", 7, None, "ü"]

    def batch(number: int) -> list[TrackCommand]:
        moment = NOW - timedelta(hours=number % 40, minutes=number)
        return [
            TrackCommand(
                message_id=f"w{number}-{i}",
                source="web",
                user_id=f"u{i % 7}",
                event="Viewed",
                timestamp=moment,
                received_at=moment,
                properties={"plan": plans[(number + i) % len(plans)]},
            )
            for i in range(50)
        ]

    with store_sink(kind, tmp_path) as table:
        writer = _sink(kind, table["url"], [])
        written, migrated = threading.Event(), threading.Event()

        def write() -> None:
            # Batches before the migration, beside it, and (from 30 on) after it.
            for number in range(60):
                if number == 30:
                    migrated.wait(60)
                writer.write(batch(number))
                if number == 10:
                    written.set()

        thread = threading.Thread(target=write)
        thread.start()
        try:
            written.wait(60)
            migrator = _sink(kind, table["url"], ["properties.plan"])
            _stop(migrator)
        finally:
            migrated.set()
            thread.join()
        writer.write(batch(3))  # a redelivery: counted once
        _stop(writer)
        store = store_of(table)
        fast, slow = EventStore(store), EventStore(store, use_rollup=False)
        try:
            assert fast._path_kept("properties.plan") is True
            where = EventFilter(since=NOW - timedelta(days=3))
            got = fast.top(where, "properties.plan", 10)
            assert got == slow.top(where, "properties.plan", 10)
            assert sum(n for _, n in got) == 60 * 50
            pro = EventFilter(since=NOW - timedelta(days=3), paths=[on("pro")])
            assert fast.count(pro) == slow.count(pro) == 60 * 50 // len(plans)
        finally:
            fast.close()
            slow.close()


# -- ClickHouse: the compactor keeps the path rollup (sinks/clickhouse_rollup.py) ----------
CLICKHOUSE = pytest.mark.parametrize("fx", ["clickhouse"], indirect=True)


def day_of(moment: datetime) -> tuple[datetime, datetime]:
    """The UTC day holding ``moment``, as a range (a gap of ``rollup_gaps``)."""
    start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start + timedelta(days=1)


@CLICKHOUSE
def test_clickhouse_a_path_added_is_read_from_events_until_compacted_and_one_removed_too(fx):
    """A path added to ``rollup_paths`` is read from ``events`` until the next compaction
    counts it on every stored day (not only the changed ones); a path removed is read
    from ``events`` on the days compacted without it."""
    check_same(fx, "properties.tier")  # no such property, not configured: from events
    gold = event(unique("t"), 30, "pro")
    gold["properties"]["tier"] = "gold"
    fx.post([gold])
    fx.paths = [*PATHS, "properties.tier"]  # the sink's rollup_paths, in its compactor
    try:
        assert fx.reader._path_kept("properties.tier") is False
        assert answers(fx.reader, "properties.tier") == answers(fx.scanner, "properties.tier")
        days = fx.compact()
        assert len(days) >= 2  # every stored day, not only the one just written
        assert fx.reader._path_kept("properties.tier") is True
        got = check_same(fx, "properties.tier")
        assert totals(got["all"])["gold"] == 1
        assert fx.path_rows("properties.tier")[1] == fx.scanner.count(EventFilter())
        # context.page.path taken out: the day changed next is compacted without it.
        fx.paths = ["properties.plan", "properties.tier"]
        written = NOW - 2 * HOUR
        fx.post([event(unique("r"), 2, "after-removal")])
        fx.compact()
        assert fx.reader.dialect.rollup_gaps(None, NOW, "context.page.path") == [day_of(written)]
        assert fx.reader._path_kept("context.page.path") is True  # the other days' counts
        check_same(fx, "context.page.path")
        assert dict(check_same(fx)["7d"])["after-removal"] == 1
    finally:
        fx.paths = PATHS
    check_same(fx, "context.page.path")  # counted again on that day: no gap left
    check_same(fx, "properties.tier")


@CLICKHOUSE
def test_clickhouse_active_users_per_value_merge_each_days_users(fx):
    """The Active users page's top values of a kept path on ClickHouse: each day's
    distinct users per value (``events_users_paths``) merged across the days, a user
    once per value whatever their days, the days changed since their compaction read
    from ``events``: the scan's answer and the hand count, before and after a
    compaction. Days compacted before the table existed (its rows gone) are read from
    ``events`` too, and counted again by the next compaction."""
    hostile = "'; DROP TABLE events_users_paths; -- <b>"
    bodies = [
        event(unique("au"), 1, hostile, user="ua"),
        event(unique("au"), 30, hostile, user="ua"),  # another day, the same user
        event(unique("au"), 2, hostile, user="ub"),
        event(unique("au"), 3, hostile, user="ua"),
        event(unique("au"), 50, "<b>gold</b>", user="uc"),
        event(unique("au"), 4, hostile, user=None),
    ]
    del bodies[-1]["userId"]
    bodies[-1]["anonymousId"] = "anon-au"
    fx.post(bodies)
    since = SINCE.replace(hour=0, minute=0, second=0, microsecond=0)
    dimension = fx.reader.dimension("properties.plan")
    sent: list[str] = []
    sqlalchemy_event.listen(
        fx.reader.engine,
        "before_cursor_execute",
        lambda conn, cursor, statement, *rest: sent.append(statement),
    )

    def top() -> dict:
        got = active(fx.reader, "week", "properties.plan")
        assert got == active(fx.scanner, "week", "properties.plan")
        return dict(got[1])

    assert top()[hostile] == 3 and top()["<b>gold</b>"] == 1  # ua, ub and anon-au
    fx.compact()
    sent.clear()
    assert top()[hostile] == 3 and top()["<b>gold</b>"] == 1
    assert any("events_users_paths" in statement for statement in sent)
    # As a compactor of a release before the table left it: no row of any day.
    fx.sql("TRUNCATE TABLE events_users_paths")
    assert fx.reader.dialect.users_per_value("properties.plan", dimension, since, 5) is None
    assert top()[hostile] == 3
    days = fx.compact()
    assert len(days) >= 3  # every stored day, though none changed
    assert fx.reader.dialect.users_per_value("properties.plan", dimension, since, 5) is not None
    assert top()[hostile] == 3
    assert fx.compact() == []  # none missing now
    check_same(fx)


@CLICKHOUSE
def test_clickhouse_a_path_is_read_from_the_rollup_only_on_days_whose_compaction_counted_it(fx):
    """A path counted on one day alone (by a compaction of that day): every other day is
    its gap, read from ``events``. A reader that took the path's rows wherever some
    exist would read those days empty, and count one "silver" instead of two."""
    recent, older = NOW - HOUR, NOW - 30 * HOUR  # always two days
    silver = [event(unique("s"), 1, "pro"), event(unique("s"), 30, "pro")]
    for body in silver:
        body["properties"]["tier2"] = "silver"
    fx.post(silver)
    fx.compact()  # the configured paths: properties.tier2 is none of them
    fx.compact(paths=[*PATHS, "properties.tier2"], days=[recent.date()])
    assert fx.reader._path_kept("properties.tier2") is True
    gaps = fx.reader.dialect.rollup_gaps(None, NOW, "properties.tier2")
    assert any(low <= older < high for low, high in gaps)
    assert not any(low <= recent < high for low, high in gaps)
    assert fx.reader.dialect.rollup_gaps(None, NOW, "properties.plan") == []
    where = EventFilter(since=SINCE)
    got = fx.reader.top(where, "properties.tier2", 50)
    assert got == fx.scanner.top(where, "properties.tier2", 50)
    assert totals(got)["silver"] == 2
    counted = EventFilter(since=SINCE, paths=[on("silver", "properties.tier2")])
    assert fx.reader.count(counted) == fx.scanner.count(counted) == 2
    assert sum(n for _, n in fx.reader.count_by_time(counted, 3600)) == 2
    # The rollup answers the day it holds: the recent silver is in its rows.
    [(rows,)] = fx.sql(
        f"SELECT sum(n_events) FROM events_hourly_paths FINAL WHERE {PATHS_RECORDED} "
        "AND path = 'properties.tier2' AND value = 'vsilver'"
    )
    assert rows == 1
    check_same(fx, "properties.tier2")


@CLICKHOUSE
def test_clickhouse_rows_of_no_recorded_compaction_are_never_read(fx):
    """Rows of an older compaction of a day, of a run that failed before recording its
    day, and of a path recorded only at an older version: none is read."""
    before = check_same(fx)
    hour = NOW.replace(minute=0, second=0, microsecond=0) - 5 * HOUR
    [(recorded,)] = fx.sql(
        "SELECT toUInt32(max(through)) FROM events_compacted WHERE day = toDate(%(hour)s)",
        {"hour": hour},
    )
    columns = "path, hour, type, event, source, value, n_events, version"
    planted = [
        ("properties.plan", hour, "track", "Viewed", "planted", "vplanted", 7, recorded - 60),
        ("properties.plan", hour, "track", "Viewed", "planted", "vplanted2", 7, recorded + 3600),
        ("properties.fake", hour, "track", "Viewed", "planted", "vplanted", 7, recorded - 60),
    ]
    fx.sql(f"INSERT INTO events_hourly_paths ({columns}) VALUES", planted)
    fx.sql(
        "INSERT INTO events_paths_compacted (day, path, version) VALUES",
        [(hour.date(), "properties.fake", recorded - 60)],
    )
    where = EventFilter(since=SINCE)
    shown = totals(fx.reader.top(where, "properties.plan", 50))
    assert "planted" not in shown and "planted2" not in shown
    assert fx.reader.count(EventFilter(since=SINCE, paths=[on("planted")])) == 0
    assert fx.reader._path_kept("properties.fake") is True  # a record, at an old version
    assert fx.reader.top(where, "properties.fake") == fx.scanner.top(where, "properties.fake")
    assert ("planted", 7) not in fx.reader.top(where, "properties.fake")
    assert check_same(fx) == before
    check_same(fx, "properties.fake")


@CLICKHOUSE
def test_clickhouse_old_partitions_dropped_leave_the_path_rollup(fx):
    """Retention on a server without TTL (18.16): the old month's partitions of
    ``events``, ``events_hourly`` and ``events_hourly_paths`` dropped (docs/clickhouse.md)."""
    old = NOW - timedelta(days=70)  # always another month
    fx.post([event(unique("old"), 24 * 70, "ancient", "u-old")])
    assert totals(check_same(fx)["all"])["ancient"] == 1
    for table in ("events", "events_hourly", "events_hourly_paths"):
        fx.sql(f"ALTER TABLE {table} DROP PARTITION {old.strftime('%Y%m')}")
    assert "ancient" not in totals(check_same(fx)["all"])
