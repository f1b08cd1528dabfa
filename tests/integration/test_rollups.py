"""The dashboard's aggregates on every SQL store: the hourly rollup (SQLite, PostgreSQL:
kept by triggers; ClickHouse: recounted by a compactor, sinks/clickhouse_rollup.py)
gives the answers a scan of ``events`` gives, before and after each compaction, and
stays right through redeliveries, erasure, suppression, retention and the migration
of a database that had none; unique users per day, week and month, and per value of a
dimension (eventrouter.store.rollup, EventStore.active_users). The expected numbers
are counted by hand from :func:`dataset`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlalchemy import text

from eventrouter.sinks.clickhouse_rollup import compact
from eventrouter.sinks.clickhouse_store import client_for
from eventrouter.sinks.postgres import PostgresOptions, PostgresSink
from eventrouter.store.analysis import retention
from eventrouter.store.query import EventFilter, EventStore
from eventrouter.store.rollup import period_start
from tests.helpers import ADMIN_TOKEN
from tests.queue_support import unique
from tests.store_support import STORES, ServedStore, served_store

pytestmark = pytest.mark.slow

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
NOW = datetime.now(UTC)
#: Not on an hour: the rollup's whole hours, and both partial ends read from events.
SINCE = NOW - timedelta(days=7)
MINUTE = timedelta(minutes=1)
#: (message id, minutes ago, type, event, user id, anonymous id)
ROWS = [
    ("r1", 30, "track", "Viewed", "u1", None),
    ("r2", 95, "track", "Viewed", "u2", None),
    ("r3", 155, "track", "Bought", "u1", None),
    ("r4", 205, "track", "Viewed", None, "a3"),
    ("r5", 26 * 60, "track", "Viewed", "u1", None),
    ("r6", 50 * 60, "track", "Bought", "u2", None),
    ("r7", 3 * 1440 + 5, "page", None, "u2", None),
    ("r8", 4 * 1440, "identify", None, "u1", None),
    ("r9", 10 * 1440, "track", "Viewed", "u3", None),  # before SINCE
    ("r10", 6 * 1440, "track", "Viewed", "u1", "a1"),
]


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event(message_id: str, ago: float, kind: str, name: str | None, user, anon) -> dict:
    body: dict = {"type": kind, "messageId": message_id, "timestamp": iso(NOW - ago * MINUTE)}
    if name is not None:
        body["event"] = name
    if kind == "page":
        body["name"] = "Home"
    if user is not None:
        body["userId"] = user
    if anon is not None:
        body["anonymousId"] = anon
    body["properties" if kind != "identify" else "traits"] = {"plan": "pro"}
    return body


def dataset() -> list[dict]:
    return [event(*row) for row in ROWS]


@pytest.fixture(scope="module", params=STORES)
def fx(request, tmp_path_factory) -> Iterator[ServedStore]:
    tmp_path = tmp_path_factory.mktemp(request.param)
    # ClickHouse: the tests compact when they mean to (check_same).
    options: dict = {"unique_users": True}
    if request.param == "clickhouse":
        options = {"rollup_interval": "1h"}
    elif request.param == "sqlite":  # with event_user, SQLite keeps event_users_daily
        options["indexes"] = ["message_id", "user_id", "event", "event_user"]
    with served_store(request.param, tmp_path, dataset(), **options) as fixture:
        yield fixture


def answers(store: EventStore, since: datetime = SINCE) -> dict:
    """Every aggregate the rollup can answer, over a range with partial hours at both ends."""
    where = EventFilter(since=since)
    return {
        "3h": store.count_by_time(where, 3 * 3600),
        "12h": store.count_by_time(where, 12 * 3600),
        "viewed": store.count_by_time(EventFilter(since=since, event="Viewed"), 3 * 3600),
        "events": store.top(where, "event", 11),
        "tracks": store.top(EventFilter(since=since, type="track"), "event", 11),
        "types": store.top(where, "type", 11),
        "sources": store.top(where, "source", 11),
        "count": store.count(where),
        "all": store.count(EventFilter()),
        "bounded": store.count(EventFilter(since=since, until=NOW - 100 * MINUTE)),
        **{
            interval: store.active_users(EventFilter(since=since), interval).series
            for interval in ("day", "week", "month")
        },
        # event_users_daily (SQLite, PostgreSQL), events_user_days (ClickHouse) or events.
        "retention": retention(store, "Viewed", "Bought", "day", since, None),
        "retention weekly": retention(store, "Viewed", "Viewed", "week", since, None),
    }


def compact_clickhouse(fx: ServedStore) -> list:
    """Run ClickHouse's compactor once (the sink's thread waits an hour here), a second
    after the last insert: a day marked in the second the compactor starts stays dirty
    (one server: no margin for clocks)."""
    time.sleep(1.05)
    client = client_for(fx.sink["url"])
    try:
        return compact(client, margin=0)
    finally:
        client.disconnect()


#: ``event_users_daily`` counted again from ``events``, per store that keeps it.
DAILY_RECOUNT = {
    "sqlite": (
        "SELECT event, coalesce(user_id, anonymous_id), "
        "CAST(julianday(substr(timestamp, 1, 10)) - 2440587.5 AS INTEGER), "
        "min(timestamp), max(timestamp), count(*) FROM events WHERE event IS NOT NULL "
        "AND coalesce(user_id, anonymous_id) IS NOT NULL GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    ),
    "postgres": (
        "SELECT event, coalesce(user_id, anonymous_id), "
        "(timestamp AT TIME ZONE 'UTC')::date - DATE '1970-01-01', "
        "min(timestamp), max(timestamp), count(*) FROM events WHERE event IS NOT NULL "
        "AND coalesce(user_id, anonymous_id) IS NOT NULL GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    ),
}


def daily_rows(fx: ServedStore) -> list[tuple]:
    """``event_users_daily`` as kept, after checking it equals its recount from
    ``events`` (every group's first and last time and its events)."""
    if not fx.reader.keeps(fx.reader.dialect.event_users_daily):
        return []
    engine = fx.store.engine()
    try:
        with engine.connect() as connection:
            kept = connection.execute(
                text(
                    "SELECT event, user_key, day, first, last, n FROM event_users_daily "
                    "ORDER BY 1, 2, 3"
                )
            ).all()
            recount = connection.execute(text(DAILY_RECOUNT[fx.kind])).all()
    finally:
        engine.dispose()
    assert [tuple(row) for row in kept] == [tuple(row) for row in recount]
    return [tuple(row) for row in kept]


def check_same(fx: ServedStore) -> dict:
    """The rollup's answers and the scan's, equal; the rollup's. On ClickHouse, with
    the days changed since the last compaction read from events, then compacted.
    ``event_users_daily``, where kept, equals its recount (:func:`daily_rows`)."""
    fast, slow = answers(fx.reader), answers(fx.scanner)
    assert fast == slow
    if fx.kind in DAILY_RECOUNT:
        daily_rows(fx)
    if fx.kind == "clickhouse":
        compact_clickhouse(fx)
        assert fx.reader.dialect.rollup_gaps(None, NOW) == []  # every day from the rollup
        # Retention reads the whole days from events_user_days.
        assert fx.reader.dialect.user_days_kept(SINCE.date(), None)
        assert answers(fx.reader) == slow
    return fast


def test_rollup_and_scan_agree_with_the_hand_count(fx):
    assert fx.reader.has_rollup() is True
    assert fx.reader._has_table("users_active_counts") is (fx.kind != "clickhouse")
    got = check_same(fx)
    if fx.kind in DAILY_RECOUNT:
        # r1..r10 less the calls without a name (r7, r8): one group per event, user, day.
        groups = {(row[0], row[1]) for row in daily_rows(fx)}
        assert groups == {
            ("Viewed", "u1"),
            ("Viewed", "u2"),
            ("Bought", "u1"),
            ("Viewed", "a3"),
            ("Bought", "u2"),
            ("Viewed", "u3"),
        }
    assert got["events"] == [("Viewed", 5), ("Bought", 2), (None, 2)] or got["events"] == [
        ("Viewed", 5),
        (None, 2),
        ("Bought", 2),
    ]
    assert got["tracks"] == [("Viewed", 5), ("Bought", 2)]
    assert dict(got["types"]) == {"track": 7, "page": 1, "identify": 1}
    assert got["count"] == 9
    assert got["all"] == 10
    assert got["bounded"] == 7  # r3 .. r8, r10
    assert sum(n for _, n in got["3h"]) == 9
    assert sum(n for _, n in got["viewed"]) == 5


def test_a_redelivered_batch_counts_once(fx):
    before = check_same(fx)
    fx.post(dataset())
    assert check_same(fx) == before
    if fx.kind == "clickhouse":  # and once the copies merged
        client = client_for(fx.sink["url"])
        try:
            client.execute("OPTIMIZE TABLE events FINAL")
            client.execute("OPTIMIZE TABLE events_hourly FINAL")
        finally:
            client.disconnect()
        assert check_same(fx) == before


def test_erasure_takes_the_rows_off_the_rollup(fx):
    before = check_same(fx)
    user = unique("erase-")
    fx.post([event(unique("e"), ago, "track", "Viewed", user, None) for ago in (40, 300, 2000)])
    grown = check_same(fx)
    assert grown["count"] == before["count"] + 3
    eraser = fx.store.eraser()
    try:
        erased = eraser.delete({user}, set(), dry_run=False, wait=30)
    finally:
        eraser.close()
    assert erased.events == 3
    assert check_same(fx) == before


def test_suppressed_events_are_never_counted(fx):
    before = check_same(fx)
    user = unique("quiet-")
    with fx.suppressing(user):
        fx.post([event(unique("s"), 50, "track", "Viewed", user, None)])
    assert check_same(fx) == before


def active(fx: ServedStore, interval: str, by: str | None = None):
    return fx.reader.active_users(EventFilter(since=SINCE), interval, by=by)


def by_hand(interval: str, name: str | None = None) -> list[tuple[datetime, int]]:
    """Distinct users (user id, else anonymous id) per period, from ROWS (those of the
    event ``name`` alone, if given)."""
    periods: dict[datetime, set[str]] = {}
    for _, ago, _, event_name, user, anon in ROWS:
        if name is not None and event_name != name:
            continue
        moment = NOW - ago * MINUTE
        if moment < period_start(SINCE, interval):  # periods are whole
            continue
        day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        start = {
            "day": day,
            "week": day - timedelta(days=day.weekday()),
            "month": day.replace(day=1),
        }[interval]
        periods.setdefault(start, set()).add(user or anon)
    return [(start, len(users)) for start, users in sorted(periods.items())]


@pytest.mark.parametrize("interval", ["day", "week", "month"])
def test_active_users_per_period(fx, interval):
    got = active(fx, interval)
    assert got.exact is True
    assert got.series == by_hand(interval)
    assert fx.scanner.active_users(EventFilter(since=SINCE), interval) == got
    for name in ("Viewed", "Bought", "'; DROP TABLE event_users_daily; --"):
        where = EventFilter(since=SINCE, event=name)
        of_one = fx.reader.active_users(where, interval)
        assert of_one.series == by_hand(interval, name)
        assert fx.scanner.active_users(where, interval) == of_one
    # SQLite and PostgreSQL read one event's users from event_users_daily.
    daily = fx.reader._daily_users_select(EventFilter(since=SINCE, event="Viewed"), interval)
    assert (daily is not None) is (fx.kind in DAILY_RECOUNT)


def test_active_users_per_value(fx):
    got = active(fx, "day", by="event")
    assert sorted(got.top, key=lambda row: (-row[1], str(row[0]))) == [
        ("Viewed", 3),
        ("Bought", 2),
        (None, 2),
    ]
    plan = active(fx, "week", by="properties.plan")
    assert plan.top == [("pro", 3), (None, 1)]  # u1's identify has traits, no properties
    # With a breakdown, the series is the same as without (the store's per-period
    # counts answer it, the top values are counted from events), and the same as a scan.
    assert got.series == by_hand("day") and plan.series == by_hand("week")
    assert fx.scanner.active_users(EventFilter(since=SINCE), "week", by="properties.plan") == plan


def test_active_users_page(fx):
    response = fx.server.client.get(
        "/admin/active-users",
        params={"range": "7d", "interval": "day", "by": "event"},
        headers=BEARER,
    )
    assert response.status_code == 200, response.text
    assert 'data-exact="true"' in response.text
    rows = re.findall(r'<td class="value">(?:<a [^>]*>)?([^<]+)', response.text)
    assert rows[:2] == ["Viewed", "Bought"]
    assert "exact" in response.text
    bad = fx.server.client.get("/admin/active-users", params={"interval": "year"}, headers=BEARER)
    assert bad.status_code == 400 and "interval" in bad.text


def _drop_rollup(fx: ServedStore) -> None:
    engine = fx.store.engine()
    try:
        with engine.begin() as connection:
            triggers = ["events_hourly_insert", "events_hourly_delete"]
            triggers += ["users_active_insert", "users_active_delete"]
            on = "" if fx.kind == "sqlite" else " ON events"
            for name in triggers:
                connection.execute(text(f"DROP TRIGGER IF EXISTS {name}{on}"))
            for table in ("events_hourly", "users_active", "users_active_counts"):
                connection.execute(text(f"DROP TABLE {table}"))
    finally:
        engine.dispose()


def run_sql(fx: ServedStore, statement: str) -> list[tuple]:
    """``statement`` run on the store in a transaction of its own; its rows."""
    engine = fx.store.engine()
    try:
        with engine.begin() as connection:
            result = connection.execute(text(statement))
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


#: The stores that keep rollups (ClickHouse keeps none: eventrouter.store.rollup).
ROLLUP_STORES = [store for store in STORES if store != "clickhouse"]


@pytest.mark.parametrize("fx", ROLLUP_STORES, indirect=True)
def test_migration_fills_the_rollup_from_the_stored_events(fx):
    before = check_same(fx)
    _drop_rollup(fx)
    if fx.kind == "postgres":
        run_sql(fx, "DROP TABLE event_users_daily")  # its triggers stay: migrate remakes it
    fresh = EventStore(fx.store)
    try:
        assert fresh.has_rollup() is False
        assert "created" in fx.migrate(users=True) or fx.kind == "postgres"
        again = EventStore(fx.store)
        assert again.has_rollup() is True
        assert answers(again) == before
        again.close()
    finally:
        fresh.close()
    if fx.kind == "postgres":
        # Analyzed as filled: never-analyzed tables (reltuples -1) left the planner
        # guessing a few rows of each, with autovacuum off or not round yet.
        filled = ("events_hourly", "users_active", "users_active_counts", "event_users_daily")
        statistics = dict(
            run_sql(
                fx,
                "SELECT relname, reltuples FROM pg_class WHERE relname IN "
                f"({', '.join(repr(name) for name in filled)}) AND relkind = 'r'",
            )
        )
        assert set(statistics) == set(filled)
        assert all(tuples >= 1 for tuples in statistics.values()), statistics
        # The index funnels and retention read entries by, made with the table, and by
        # a migration of a table made before it.
        index = "SELECT to_regclass('event_users_daily_event_day') IS NOT NULL"
        assert run_sql(fx, index) == [(True,)]
        run_sql(fx, "DROP INDEX event_users_daily_event_day")
        assert "created index event_users_daily_event_day" in fx.migrate(users=True)
        assert run_sql(fx, index) == [(True,)]
        assert "created index" not in fx.migrate(users=True)
    fx.post([event(unique("m"), 10, "track", "Viewed", "u9", None)])  # the triggers are back
    assert check_same(fx)["count"] == before["count"] + 1


@pytest.mark.parametrize("fx", ["postgres"], indirect=True)  # the store that drops old rows
def test_retention_drops_the_hours_of_dropped_partitions(fx):
    options = PostgresOptions(url=fx.sink["url"], unique_users=True)
    sink = PostgresSink("store", fx.server.config, options)
    try:
        sink.migrate()
        cutoff = NOW - timedelta(days=2)
        dropped = sink.drop_partitions_before(cutoff)
        assert dropped
    finally:
        sink.stop()
    got = check_same(fx)
    day_start = cutoff.replace(hour=0, minute=0, second=0, microsecond=0)
    assert fx.scanner.count(EventFilter(until=day_start)) == 0
    url = fx.sink["url"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as connection:
        old = connection.execute(
            "SELECT count(*) FROM events_hourly WHERE hour < %s", (day_start,)
        ).fetchone()[0]
    assert old == 0
    assert got["count"] == fx.scanner.count(EventFilter(since=SINCE))


@pytest.mark.parametrize("fx", ROLLUP_STORES, indirect=True)
def test_unique_users_off_drops_the_counts_and_reads_events(fx):
    before = check_same(fx)
    assert fx.reader._has_table("users_active_counts", remember=False) is True
    try:
        changes = fx.migrate(users=False)
        assert "dropped users_active" in changes
        assert fx.reader._has_table("users_active_counts", remember=False) is False
        if fx.kind in DAILY_RECOUNT:
            assert "dropped event_users_daily" in changes
            assert fx.reader.keeps(fx.reader.dialect.event_users_daily) is False
        assert check_same(fx) == before  # from events now
    finally:
        assert "created users_active" in fx.migrate(users=True)
    assert check_same(fx) == before


def _three_a_day(fx: ServedStore) -> tuple[datetime, dict[str, dict[int, str]]]:
    """A user id and an anonymous id with a ``Viewed`` at 10:00, 11:00 and 12:00 UTC
    three days ago: the day, and each key's message id per hour."""
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    day -= timedelta(days=3)
    ids: dict[str, dict[int, str]] = {}
    batch = []
    for field in ("userId", "anonymousId"):
        key = unique(f"{field}-")
        ids[key] = {}
        for hour in (10, 11, 12):
            body = event(unique("d"), 0, "track", "Viewed", None, None)
            body.update({field: key}, timestamp=iso(day + timedelta(hours=hour)))
            ids[key][hour] = body["messageId"]
            batch.append(body)
    fx.post(batch)
    return day, ids


def _group(fx: ServedStore, key: str) -> tuple:
    """``(first hour, last hour, n)`` of ``key``'s one group in ``event_users_daily``."""
    engine = fx.store.engine()
    try:
        with engine.connect() as connection:
            first, last, n = connection.execute(
                text("SELECT first, last, n FROM event_users_daily WHERE user_key = :k"),
                {"k": key},
            ).one()
    finally:
        engine.dispose()
    hour = lambda t: int(str(t)[11:13])  # noqa: E731  (SQLite's text, PostgreSQL's time)
    return hour(first), hour(last), n


def _run(fx: ServedStore, sql: str, **params) -> None:
    engine = fx.store.engine()
    try:
        with engine.begin() as connection:
            connection.execute(text(sql), params)
    finally:
        engine.dispose()


@pytest.mark.parametrize("fx", list(DAILY_RECOUNT), indirect=True)
def test_a_deleted_first_or_last_event_is_read_again(fx):
    """``event_users_daily`` keeps each group's first and last time through deletes of
    either: read again from the events left, for a user id and for an anonymous id."""
    before = check_same(fx)
    _, ids = _three_a_day(fx)
    check_same(fx)
    gone = "DELETE FROM events WHERE message_id = :m"
    try:
        for key, hours in ids.items():
            assert _group(fx, key) == (10, 12, 3)
            _run(fx, gone, m=hours[10])
            assert _group(fx, key) == (11, 12, 2)
            _run(fx, gone, m=hours[12])
            assert _group(fx, key) == (11, 11, 1)
            check_same(fx)
    finally:
        for hours in ids.values():
            for message_id in hours.values():
                _run(fx, gone, m=message_id)
    assert check_same(fx) == before


@pytest.mark.parametrize("fx", ["sqlite"], indirect=True)
def test_an_updated_event_moves_its_group(fx):
    """Updates (eventrouter makes none; SQLite's triggers follow anyone's): an event
    moved two hours later takes its group's first and last time with it."""
    before = check_same(fx)
    _, ids = _three_a_day(fx)
    moved = "UPDATE events SET timestamp = replace(timestamp, ' 11:', ' 13:') WHERE message_id = :m"
    try:
        for key, hours in ids.items():
            _run(fx, moved, m=hours[11])
            assert _group(fx, key) == (10, 13, 3)
            _run(fx, "DELETE FROM events WHERE message_id IN (:a, :b)", a=hours[10], b=hours[12])
            assert _group(fx, key) == (13, 13, 1)
        check_same(fx)
    finally:
        for hours in ids.values():
            for message_id in hours.values():
                _run(fx, "DELETE FROM events WHERE message_id = :m", m=message_id)
    assert check_same(fx) == before


@pytest.mark.parametrize("fx", ["sqlite"], indirect=True)
def test_migrate_makes_an_earlier_releases_trigger_again(fx):
    """A trigger whose SQL is an earlier release's (here ``users_active_delete`` reading
    the periods through a row-value ``IN``, which read the whole table per deleted
    event) is made again by ``migrate``; the counts stay right through an erasure."""
    from eventrouter.sinks.sqlite_store import USERS_DELETE_TRIGGER

    earlier = USERS_DELETE_TRIGGER.replace("n = n - 1 WHERE", "n = n - 1 WHERE 1 = 1 AND (", 1)
    earlier = earlier.replace("; DELETE FROM users_active", "); DELETE FROM users_active", 1)
    _run(fx, "DROP TRIGGER users_active_delete")
    _run(fx, earlier)
    changes = fx.migrate(users=True)
    assert "users_active: trigger users_active_delete made again" in changes
    engine = fx.store.engine()
    try:
        with engine.connect() as connection:
            stored = connection.execute(
                text("SELECT sql FROM sqlite_master WHERE name = 'users_active_delete'")
            ).scalar()
    finally:
        engine.dispose()
    assert stored == USERS_DELETE_TRIGGER
    assert "made again" not in fx.migrate(users=True)
    before = check_same(fx)
    user = unique("again-")
    fx.post([event(unique("g"), ago, "track", "Viewed", user, None) for ago in (45, 3000)])
    eraser = fx.store.eraser()
    try:
        assert eraser.delete({user}, set(), dry_run=False, wait=30).events == 2
    finally:
        eraser.close()
    assert check_same(fx) == before
