"""Active users per value of a kept JSON path (``users_seen``, eventrouter.store.rollup:
when each user was last seen with each value, kept at write time with ``unique_users``
and ``rollup_paths``): the Active users page's breakdown by such a path reads it and
answers exactly as a scan of ``events`` does, on hostile values and event names,
through redeliveries, erasure (a user's latest event erased while older ones stay),
suppression, and paths added and removed; a path whose rows are not listed complete
is never read. The expected numbers are counted by hand from :data:`ROWS`; every time
is relative to now.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import text

from eventrouter.sinks.postgres import PostgresOptions, PostgresSink
from eventrouter.store.query import EventFilter
from eventrouter.store.rollup import period_start
from tests.helpers import ADMIN_TOKEN
from tests.queue_support import unique
from tests.store_support import ServedStore, served_store

pytestmark = pytest.mark.slow

#: The stores that keep ``users_seen`` (ClickHouse counts the values from ``events``).
STORES = ["sqlite", "postgres"]
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
NOW = datetime.now(UTC)
MINUTE = timedelta(minutes=1)
PATH = "properties.plan"
MISSING = object()
HOSTILE_EVENT = "'; DROP TABLE users_seen; -- <b>"
#: (minutes ago, event name (None: a page call), user id, anonymous id, plan)
ROWS = [
    (30, "Viewed", "u1", None, "pro"),
    (3 * 1440, "Bought", "u1", None, "pro"),
    (10 * 1440, "Viewed", "u1", None, "free"),  # before the 7 days
    (120, "Viewed", "u2", None, "free"),
    (1440 + 60, "Viewed", None, "a3", "pro"),
    (300, HOSTILE_EVENT, "u4", "a4", "'; DROP TABLE events; --"),
    (240, None, "u5", None, MISSING),
    (200, "Viewed", "u6", None, None),  # JSON null: no value, as a missing key
    (190, "Viewed", "u6", None, "<script>alert(1)</script>"),
    (180, "Viewed", "u7", None, ""),
    (170, "Viewed", "u7", None, "v"),  # "" and "v" stay apart in SQLite's encoding
    (160, "Viewed", "u8", None, 1),
    (150, "Viewed", "u8", None, True),
    (140, "Viewed", "u9", None, {"a": [1, "x"]}),
    (130, "Viewed", "u9", None, "ü" * 3000),
    (110, "Viewed", None, None, "pro"),  # no user at all: counted nowhere
]


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event(ago: float, name: str | None, user, anon, plan, message_id: str | None = None) -> dict:
    body: dict = {
        "type": "track" if name is not None else "page",
        "messageId": message_id or unique("m"),
        "timestamp": iso(NOW - ago * MINUTE),
        "properties": {} if plan is MISSING else {"plan": plan},
    }
    if name is not None:
        body["event"] = name
    if user is not None:
        body["userId"] = user
    if anon is not None:
        body["anonymousId"] = anon
    if user is None and anon is None:
        body["context"] = {"traits": {"email": "nobody@example.com"}}
    return body


DATASET = [event(*row, message_id=f"seen-{i}") for i, row in enumerate(ROWS)]


@pytest.fixture(scope="module", params=STORES)
def fx(request, tmp_path_factory) -> Iterator[ServedStore]:
    tmp_path = tmp_path_factory.mktemp(request.param)
    with served_store(
        request.param, tmp_path, DATASET, unique_users=True, rollup_paths=[PATH]
    ) as fixture:
        yield fixture


@contextlib.contextmanager
def statements(fx: ServedStore) -> Iterator[list[str]]:
    """The SQL the reader sends while the block runs."""
    sent: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        sent.append(statement)

    engine = fx.reader.dialect.engine
    sqlalchemy_event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        sqlalchemy_event.remove(engine, "before_cursor_execute", record)


def since(days: int) -> datetime:
    return NOW - timedelta(days=days)


def check_same(fx: ServedStore, by: str = PATH, *, seen: bool = True, days: int = 7) -> dict:
    """The reader's and the scan's active users by ``by`` over the last ``days``, equal
    for every interval and event filter; the reader read ``users_seen`` (``seen``) or
    not. The reader's."""
    got = {}
    for interval in ("day", "week", "month"):
        for name in (None, "Viewed", HOSTILE_EVENT):
            where = EventFilter(since=since(days), event=name)
            with statements(fx) as sent:
                fast = fx.reader.active_users(where, interval, by=by, limit=50)
            slow = fx.scanner.active_users(where, interval, by=by, limit=50)
            assert fast == slow, (interval, name)
            read = any(re.search(r"\bFROM users_seen\s", sql) for sql in sent)
            assert read is seen, (interval, name, sent)
            got[interval, name] = fast.top
    return got


def by_hand(interval: str, name: str | None = None) -> dict:
    """Distinct users per plan (strings only) from ROWS over 7 days, whole periods."""
    start = period_start(since(7), interval)
    users: dict[object, set[str]] = {}
    for ago, event_name, user, anon, plan in ROWS:
        if NOW - ago * MINUTE < start or (user or anon) is None:
            continue
        if name is not None and event_name != name:
            continue
        if isinstance(plan, str):
            users.setdefault(plan, set()).add(user or anon)
    return {plan: len(who) for plan, who in users.items()}


def test_the_breakdown_reads_users_seen_and_matches_the_scan_and_the_hand_count(fx):
    got = check_same(fx)
    day = dict(got["day", None])
    strings = {k: v for k, v in day.items() if k in by_hand("day")}
    assert strings == by_hand("day")
    assert day["pro"] == 2  # u1 and a3; the event without a user counts nowhere
    assert day[None] == 2  # u5's missing key and u6's JSON null: one "no value"
    assert dict(got["day", HOSTILE_EVENT]) == {"'; DROP TABLE events; --": 1}
    assert dict(got["day", "Viewed"])["pro"] == 2
    # A month reaches back to the month's first day: u1's "free" 10 days ago may count.
    month = dict(got["month", None])
    assert month.get("free", 0) == by_hand("month")["free"]


def seen_rows(fx: ServedStore) -> list[tuple]:
    """Every ``users_seen`` row: path, event scope, value, user, last, n."""
    engine = fx.store.engine()
    try:
        with engine.connect() as connection:
            statement = (
                "SELECT path, event, value, user_key, last, n FROM users_seen ORDER BY 1, 2, 3, 4"
            )
            return [tuple(row) for row in connection.execute(text(statement))]
    finally:
        engine.dispose()


def test_a_redelivered_batch_counts_once(fx):
    before, rows = check_same(fx), seen_rows(fx)
    fx.post(DATASET)
    assert check_same(fx) == before
    assert seen_rows(fx) == rows  # n too: a later erasure must find it right


def test_erasing_a_users_latest_event_reads_their_last_time_again(fx):
    """A user (key ``k``) seen with "team" 3 days ago through their user id, and an hour
    ago through an anonymous id without one: erasing the anonymous id takes only the
    latest event, so over the last day they no longer count, over 7 days still do."""
    key = unique("k-")
    fx.post([event(3 * 1440, "Viewed", key, None, "team"), event(60, "Viewed", None, key, "team")])
    last_day = EventFilter(since=since(1))
    assert ("team", 1) in fx.reader.active_users(last_day, "day", by=PATH).top
    eraser = fx.store.eraser()
    try:
        erased = eraser.delete(set(), {key}, dry_run=False, wait=30)
    finally:
        eraser.close()
    assert erased.events == 1
    top = fx.reader.active_users(last_day, "day", by=PATH)
    assert top == fx.scanner.active_users(last_day, "day", by=PATH)
    assert "team" not in dict(top.top)
    assert dict(check_same(fx)["day", None])["team"] == 1
    eraser = fx.store.eraser()
    try:
        assert eraser.delete({key}, set(), dry_run=False, wait=30).events == 1
    finally:
        eraser.close()
    assert "team" not in dict(check_same(fx)["week", None])


def test_suppressed_events_are_never_counted(fx):
    before = check_same(fx)
    user = unique("quiet-")
    with fx.suppressing(user):
        fx.post([event(50, "Viewed", user, None, "pro")])
    assert check_same(fx) == before


def test_paths_added_and_removed_and_unique_users_off(fx):
    other = "context.locale"
    fx.post([event(20, "Viewed", "u1", None, "pro") | {"context": {"locale": "fr-FR"}}])
    before = check_same(fx)
    try:
        assert "users_seen: filled context.locale" in fx.migrate(users=True, paths=[PATH, other])
        assert dict(check_same(fx, other)["day", None])["fr-FR"] == 1
        assert "dropped context.locale" in fx.migrate(users=True, paths=[PATH])
        check_same(fx, other, seen=False)  # from events now
        assert "dropped users_seen" in fx.migrate(users=False, paths=[PATH])
        assert check_same(fx, seen=False) == before
    finally:
        fx.migrate(users=True, paths=[PATH])
    assert check_same(fx) == before


def test_rows_of_an_unlisted_path_are_never_read(fx):
    """A path with rows in users_seen but not listed complete (a fill that did not
    finish) is counted from events."""
    planted = "properties.planted"
    engine = fx.store.engine()
    try:
        with engine.begin() as connection:
            # SQLite keeps 'v' || text, PostgreSQL the text beside its digest.
            plant = (
                "INSERT INTO users_seen (path, event, value, user_key, last, n) "
                "VALUES (:path, '', 'vfake', 'ghost', :last, 1)"
                if fx.kind == "sqlite"
                else "INSERT INTO users_seen (path, event, digest, value, user_key, last, n) "
                "VALUES (:path, '', sha256('fake'), 'fake', 'ghost', :last, 1)"
            )
            connection.execute(text(plant), {"path": planted, "last": NOW.replace(tzinfo=None)})
        top = check_same(fx, planted, seen=False)
        assert "fake" not in dict(top["day", None])
    finally:
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM users_seen WHERE path = :p"), {"p": planted})
        engine.dispose()


@pytest.mark.parametrize("fx", ["sqlite"], indirect=True)
def test_an_update_of_events_moves_the_rows(fx):
    """Rows are never updated by eventrouter; should anyone, users_seen follows."""
    key = unique("upd-")
    fx.post([event(90, "Viewed", key, None, "before", message_id=key)])
    engine = fx.store.engine()
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "UPDATE events SET properties = json_set(properties, '$.plan', 'after') "
                    "WHERE message_id = :id"
                ),
                {"id": key},
            )
    finally:
        engine.dispose()
    top = dict(check_same(fx)["day", None])
    assert top["after"] == 1 and "before" not in top


def test_the_page_escapes_every_value(fx):
    response = fx.server.client.get(
        "/admin/active-users",
        params={"range": "7d", "interval": "day", "by": PATH},
        headers=BEARER,
    )
    assert response.status_code == 200, response.text
    assert "<script>alert(1)</script>" not in response.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text
    values = re.findall(r'<td class="value">(?:<a [^>]*>)?([^<]+)', response.text)
    assert "pro" in values


def test_retention_takes_the_dropped_partitions_off(tmp_path):
    """PostgreSQL's retention drops whole partitions, which fires no trigger: their
    events leave users_seen in the same transaction. A user seen with "team" 10 and 9
    days ago and an hour ago keeps one event there (erasing it then removes their row);
    one seen only 10 days ago leaves no row."""
    key, gone = unique("ret-"), unique("gone-")
    batch = [
        *DATASET,
        event(10 * 1440, "Viewed", key, None, "team"),
        event(9 * 1440, "Bought", key, None, "team"),
        event(60, "Viewed", key, None, "team"),
        event(10 * 1440, "Viewed", gone, None, "solo"),
    ]
    with served_store("postgres", tmp_path, batch, unique_users=True, rollup_paths=[PATH]) as fx:
        assert ("solo", 1) in check_same(fx, days=30)["day", None]
        options = PostgresOptions(url=fx.sink["url"], unique_users=True, rollup_paths=[PATH])
        sink = PostgresSink("store", fx.server.config, options)
        try:
            sink.migrate()
            assert sink.drop_partitions_before(NOW - timedelta(days=2))
        finally:
            sink.stop()
        assert fx.scanner.count(EventFilter(until=since(3))) == 0
        got = check_same(fx, days=30)
        assert "solo" not in dict(got["day", None])
        assert dict(got["day", None])["team"] == 1
        url = fx.sink["url"].replace("postgresql+psycopg://", "postgresql://")
        seen_sql = "SELECT event, n FROM users_seen WHERE user_key = %s AND path = %s"
        with psycopg.connect(url) as connection:
            assert dict(connection.execute(seen_sql, (key, PATH)).fetchall()) == {
                "": 1,
                "eViewed": 1,
            }
            assert connection.execute(seen_sql, (gone, PATH)).fetchall() == []
        eraser = fx.store.eraser()
        try:
            assert eraser.delete({key}, set(), dry_run=False, wait=30).events == 1
        finally:
            eraser.close()
        with psycopg.connect(url) as connection:
            assert connection.execute(seen_sql, (key, PATH)).fetchall() == []
        assert "team" not in dict(check_same(fx, days=30)["day", None])
