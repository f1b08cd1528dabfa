"""The SQLite sink counts each commit's inserts into its rollups (``events_hourly``,
``users_active``) in the commit's own transaction, instead of a trigger per row
(eventrouter.sinks.sqlite_store, ``count_statements``): the counts stay equal to what a
scan of ``events`` gives through redeliveries within one batch and across batches,
batches that span hours, types and sources, erasure afterwards, a database whose rollup
an earlier release kept with an insert trigger, and such a trigger made again while the
sink runs. tests/integration/test_rollups.py covers the same answers through the HTTP
edge on every store.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from eventrouter.events.commands import IdentifyCommand, PageCommand, TrackCommand
from eventrouter.sinks.sqlite import SQLiteOptions, SQLiteSink
from eventrouter.store.query import EventFilter, EventStore
from tests.store_support import store_of

pytestmark = pytest.mark.slow

NOW = datetime.now(UTC).replace(minute=30, second=0, microsecond=0)
HOUR = timedelta(hours=1)

# An earlier release's per-row insert triggers, as it created them.
OLD_HOURLY_TRIGGER = (
    "CREATE TRIGGER events_hourly_insert AFTER INSERT ON events BEGIN "
    "INSERT INTO events_hourly (hour, type, event, source, n) VALUES "
    "(substr(NEW.timestamp, 1, 13) || ':00:00.000000', NEW.type, coalesce(NEW.event, ''), "
    "NEW.source, 1) ON CONFLICT (hour, type, event, source) DO UPDATE SET n = n + 1; END"
)


def track(
    message_id: str,
    hours_ago: float,
    name: str = "Viewed",
    *,
    user: str = "u1",
    source: str = "web",
) -> TrackCommand:
    moment = NOW - hours_ago * HOUR
    return TrackCommand(
        message_id=message_id,
        source=source,
        user_id=user,
        event=name,
        timestamp=moment,
        received_at=moment,
    )


def identify(message_id: str, hours_ago: float, user: str = "u1") -> IdentifyCommand:
    moment = NOW - hours_ago * HOUR
    return IdentifyCommand(
        message_id=message_id, source="web", user_id=user, timestamp=moment, received_at=moment
    )


def page(message_id: str, hours_ago: float, anonymous: str) -> PageCommand:
    moment = NOW - hours_ago * HOUR
    return PageCommand(
        message_id=message_id,
        source="app",
        anonymous_id=anonymous,
        name="Home",
        timestamp=moment,
        received_at=moment,
    )


class Store:
    """A running SQLite sink on a fresh file, and readers of its store."""

    def __init__(self, path: Path, **options) -> None:
        self.url = f"sqlite:///{path}"
        self.path = path
        self.options = SQLiteOptions(url=self.url, **options)
        self.sink = SQLiteSink("local", None, self.options)
        asyncio.run(self.sink.start(None))

    def write(self, *commands) -> None:
        self.sink.write(list(commands))

    def stop(self) -> None:
        asyncio.run(self.sink.stop())

    def rows(self, sql: str) -> list[tuple]:
        with sqlite3.connect(self.path) as connection:
            return connection.execute(sql).fetchall()

    def hourly(self) -> dict[tuple, int]:
        """``events_hourly`` as kept, and the same counted from ``events``: both."""
        kept = dict(
            ((hour, kind, name, source), n)
            for hour, kind, name, source, n in self.rows("SELECT * FROM events_hourly")
        )
        counted = dict(
            ((hour, kind, name, source), n)
            for hour, kind, name, source, n in self.rows(
                "SELECT substr(timestamp, 1, 13) || ':00:00.000000', type, "
                "coalesce(event, ''), source, count(*) FROM events GROUP BY 1, 2, 3, 4"
            )
        )
        assert kept == counted
        return kept

    def answers(self) -> dict:
        """The dashboard's aggregates from the rollups and from a scan: equal."""
        where = EventFilter(since=NOW - 48 * HOUR)
        fast = EventStore(store_of({"type": "sqlite", "url": self.url}))
        slow = EventStore(store_of({"type": "sqlite", "url": self.url}), use_rollup=False)
        try:
            got = [
                {
                    "hours": store.count_by_time(where, 3600),
                    "events": sorted(store.top(where, "event", 11), key=repr),
                    "count": store.count(where),
                    **{
                        interval: store.active_users(where, interval).series
                        for interval in ("day", "week", "month")
                    },
                }
                for store in (fast, slow)
            ]
        finally:
            fast.close()
            slow.close()
        assert got[0] == got[1]
        return got[0]


@pytest.fixture
def keyed(tmp_path) -> Iterator[Store]:
    """A store that refuses redelivered copies (the unique ``message_id`` index)."""
    store = Store(
        tmp_path / "keyed.db", indexes=["message_id", "user_id", "event"], unique_users=True
    )
    try:
        yield store
    finally:
        store.stop()


def test_a_commit_spanning_hours_types_and_sources_is_counted_per_hour(keyed):
    keyed.write(
        track("a1", 0),
        track("a2", 0, "Bought"),
        track("a3", 1),
        track("a4", 1, source="ios"),
        identify("a5", 2),
        page("a6", 2, "anon-1"),
        page("a7", 30, "anon-1"),
        track("a8", 0.2),
    )
    hourly = keyed.hourly()
    assert sum(hourly.values()) == 8
    hour = (NOW.replace(minute=0)).strftime("%Y-%m-%d %H:00:00.000000")
    assert hourly[(hour, "track", "Viewed", "web")] == 2  # a1 and a8
    assert len(hourly) == 7
    got = keyed.answers()
    assert got["count"] == 8
    assert sum(n for _, n in got["day"]) >= 2  # u1 and anon-1


def test_redelivered_copies_count_once_within_a_commit_and_across_commits(keyed):
    keyed.write(track("b1", 0), track("b1", 0), track("b2", 1), track("b2", 1), identify("b3", 3))
    assert sum(keyed.hourly().values()) == 3
    first = keyed.answers()
    keyed.write(track("b1", 0), track("b2", 1), identify("b3", 3))  # all copies: nothing new
    assert keyed.answers() == first
    keyed.write(track("b2", 1), track("b4", 1), track("b4", 1), track("b5", 5, user="u2"))
    assert sum(keyed.hourly().values()) == 5
    assert keyed.answers()["count"] == 5
    assert keyed.rows("SELECT count(*) FROM events") == [(5,)]


def test_erasure_after_per_commit_counting_takes_the_rows_off(keyed):
    keyed.write(track("c1", 0), track("c2", 1, user="u2"))
    before = keyed.answers()
    keyed.write(track("c3", 0, user="gone"), track("c4", 4, user="gone"), page("c5", 4, "x"))
    assert keyed.answers()["count"] == before["count"] + 3
    eraser = keyed.sink.store().eraser()
    try:
        erased = eraser.delete({"gone"}, set(), dry_run=False, wait=30)
    finally:
        eraser.close()
    assert erased.events == 2
    keyed.hourly()
    assert keyed.answers()["count"] == before["count"] + 1


def test_without_the_unique_key_every_copy_is_stored_and_counted(tmp_path):
    store = Store(tmp_path / "plain.db")  # the default indexes: no message_id
    try:
        store.write(track("d1", 0), track("d1", 0))
        store.write(track("d1", 0))
        assert sum(store.hourly().values()) == 3
        assert store.answers()["count"] == 3
    finally:
        store.stop()


def test_a_database_counted_by_an_earlier_release_trigger_moves_to_per_commit(tmp_path):
    path = tmp_path / "old.db"
    store = Store(path, indexes=["message_id"])
    store.write(track("e1", 0), track("e2", 2))
    store.stop()
    with sqlite3.connect(path) as connection:  # the earlier release's trigger
        connection.execute(OLD_HOURLY_TRIGGER)
        connection.execute(
            "INSERT INTO events (message_id, type, event, source, user_id, timestamp, "
            "received_at) VALUES ('e3', 'track', 'Viewed', 'web', 'u1', "
            "'2026-01-01 10:05:00.000000', '2026-01-01 10:05:00.000000')"
        )
    store = Store(path, indexes=["message_id"])  # drops the trigger, counts per commit
    try:
        triggers = store.rows("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        assert ("events_hourly_insert",) not in triggers
        store.write(track("e4", 0), track("e3", 0), track("e1", 0))  # e3, e1: copies
        assert sum(store.hourly().values()) == 4
    finally:
        store.stop()


def test_an_insert_trigger_made_again_while_the_sink_runs_counts_alone(tmp_path):
    """An earlier release's process starting on the same file puts its trigger back:
    the running sink sees the schema change and leaves the counting to it."""
    store = Store(tmp_path / "mixed.db", indexes=["message_id"])
    try:
        store.write(track("f1", 0))
        with sqlite3.connect(store.path) as connection:
            connection.execute(OLD_HOURLY_TRIGGER)
        store.write(track("f2", 0), track("f3", 1), track("f1", 0))
        assert sum(store.hourly().values()) == 3
        with sqlite3.connect(store.path) as connection:
            connection.execute("DROP TRIGGER events_hourly_insert")
        store.write(track("f4", 0))
        assert sum(store.hourly().values()) == 4
    finally:
        store.stop()


def test_a_rollup_dropped_while_the_sink_runs_fails_no_write(tmp_path):
    store = Store(tmp_path / "dropped.db", unique_users=True)
    try:
        store.write(track("g1", 0))
        with sqlite3.connect(store.path) as connection:
            connection.execute("DROP TABLE events_hourly")
            connection.execute("DROP TABLE users_active")
        store.write(track("g2", 0))
        assert store.rows("SELECT count(*) FROM events") == [(2,)]
    finally:
        store.stop()


def test_users_are_counted_per_commit_once_per_period(keyed):
    keyed.write(track("h1", 0), track("h2", 0.5), track("h1", 0), page("h3", 0, "anon-2"))
    keyed.write(track("h4", 1, user="u2"), track("h2", 0.5), identify("h5", 0))
    got = keyed.answers()
    today = max(got["day"])
    assert today[1] == len({"u1", "u2", "anon-2"} - ({"u2"} if NOW.hour < 1 else set()))
    kept = keyed.rows("SELECT kind, sum(n) FROM users_active GROUP BY kind ORDER BY kind")
    assert kept == [("d", 5), ("m", 5), ("w", 5)]


def test_the_batch_statement_keeps_every_json_column_as_sent(keyed):
    raw = msgspec.Raw(b'{"plan": "pro", "n": 1}')
    command = msgspec.structs.replace(track("i1", 0), properties=raw)
    keyed.write(command)
    assert keyed.rows("SELECT properties FROM events") == [('{"plan": "pro", "n": 1}',)]
    assert sum(keyed.hourly().values()) == 1


def test_missing_values_are_stored_as_sql_null(keyed):
    """The write path binds a float NaN for a missing value (sinks/sqlite.py, NULL):
    SQLite stores it as NULL, as a bound None would be, in every column."""
    keyed.write(identify("j1", 0, user="u1"), page("j2", 0, "anon-3"))
    rows = keyed.rows(
        "SELECT message_id, typeof(event), typeof(name), typeof(user_id), "
        "typeof(anonymous_id), typeof(group_id), typeof(previous_id), typeof(session_id), "
        "typeof(properties), typeof(traits), typeof(original_timestamp), typeof(sent_at), "
        "typeof(timestamp) FROM events ORDER BY message_id"
    )
    null = "null"
    assert rows == [
        ("j1", null, null, "text", null, null, null, null, null, "text", null, null, "text"),
        ("j2", null, "text", null, "text", null, null, null, "text", null, null, null, "text"),
    ]
    assert keyed.rows("SELECT count(*) FROM events WHERE user_id IS NULL") == [(1,)]


def test_rows_written_by_other_means_are_counted_again_by_dropping_the_rollup(tmp_path):
    """Only the sink counts inserts: a row written into ``events`` by hand is not in the
    rollup until the operator drops ``events_hourly`` and migrates (here: a restart)."""
    path = tmp_path / "by-hand.db"
    store = Store(path)
    store.write(track("k1", 0), track("k2", 3))
    store.stop()
    with sqlite3.connect(path) as connection:
        connection.execute(
            "INSERT INTO events (message_id, type, event, source, user_id, timestamp, "
            "received_at) VALUES ('k3', 'track', 'Viewed', 'web', 'u1', "
            "'2026-01-01 10:05:00.000000', '2026-01-01 10:05:00.000000')"
        )
        assert connection.execute("SELECT sum(n) FROM events_hourly").fetchone() == (2,)
        connection.execute("DROP TABLE events_hourly")
    store = Store(path)
    try:
        assert sum(store.hourly().values()) == 3
        store.write(track("k4", 0))
        assert sum(store.hourly().values()) == 4
        eraser = store.sink.store().eraser()  # the delete trigger finds its table again
        try:
            assert eraser.delete({"u1"}, set(), dry_run=False, wait=30).events == 4
        finally:
            eraser.close()
        assert store.hourly() == {}
    finally:
        store.stop()
