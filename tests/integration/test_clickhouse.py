"""The ClickHouse sink against this machine's ClickHouse server (Debian's 18.16): rows,
partitions, redeliveries collapsing, the query API reading it, the queue and a worker,
``eventrouter migrate``; and every statement it and the query layer send, run on a
current ClickHouse too (chdb embeds one). Each test gets a database of its own, dropped
afterwards."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
import sqlalchemy.exc
from clickhouse_driver import Client
from sqlalchemy import MetaData, event
from sqlalchemy.schema import CreateTable

from eventrouter.bus.bus import WORKER, Bus, make_plugin_manager
from eventrouter.config import ConfigError
from eventrouter.events.commands import (
    STORED_COLUMNS,
    AliasCommand,
    Command,
    IdentifyCommand,
    PageCommand,
    TrackCommand,
)
from eventrouter.sinks import clickhouse as sink_module
from eventrouter.sinks import clickhouse_store as store_module
from eventrouter.sinks.clickhouse import (
    driver_url,
    events_table,
    schema_table,
    server_version,
    split_keys,
)
from eventrouter.sinks.clickhouse_store import ClickHouseStore
from eventrouter.store.query import (
    EventFilter,
    EventStore,
    PathCondition,
    TailPosition,
    encode_cursor,
)
from tests.helpers import LiveServer, eventually, make_config, recent, run_eventrouter
from tests.ingest_support import AUTH, iso
from tests.queue_support import WorkerThread, amqp_env, to_toml, unique  # noqa: F401

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

# ruff: noqa: F811 - pytest fixtures are parameters

SERVER = "clickhouse://default:@127.0.0.1:9000/default"


def admin() -> Client:
    return Client.from_url(SERVER)


@pytest.fixture(scope="module")
def version() -> tuple[int, ...]:
    client = admin()
    try:
        return server_version(client)
    finally:
        client.disconnect()


@pytest.fixture
def ch_url() -> Iterator[str]:
    """An SQLAlchemy URL of a database no other test uses (the sink creates it)."""
    database = unique("ert_")
    yield f"clickhouse+native://default:@127.0.0.1:9000/{database}"
    client = admin()
    client.execute(f"DROP DATABASE IF EXISTS {database}")
    client.disconnect()


def ch(url: str, query: str, params: dict | None = None) -> list[tuple]:
    client = Client.from_url(driver_url(url))
    try:
        return client.execute(query, params)
    finally:
        client.disconnect()


def ch_sink(url: str, **options) -> dict:
    return {"type": "clickhouse", "url": url, **options}


def make_sink(url: str, tmp_path, **options) -> sink_module.ClickHouseSink:
    config = make_config(tmp_path, {"sinks": {"warehouse": ch_sink(url, **options)}})
    return Bus(config, make_plugin_manager(config), role=WORKER).sinks["warehouse"]


def truncated(moment: datetime, datetime64: bool) -> datetime:
    """What a time column keeps of ``moment``: milliseconds, or whole seconds on 18.16."""
    if datetime64:
        return moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    return moment.replace(microsecond=0)


def track(user: str, event: str = "Signed Up", **extra) -> dict:
    return {"userId": user, "event": event, "messageId": unique("m"), **extra}


@pytest.fixture
def ch_server(ch_url, tmp_path) -> Iterator[tuple[LiveServer, str]]:
    """Embedded mode with the ClickHouse sink as the store (an insert per request: fine
    for tests, wrong for production, see docs/clickhouse.md)."""
    raw = {"sinks": {"warehouse": ch_sink(ch_url)}, "admin": {"store": "warehouse"}}
    server = LiveServer(make_config(tmp_path, raw)).start()
    try:
        yield server, ch_url
    finally:
        server.stop()


# -- rows --------------------------------------------------------------------------------
def test_rows_land_with_every_column_right(ch_server, version):
    server, url = ch_server
    datetime64 = version >= sink_module.DATETIME64_SINCE
    original = recent(hour=10, minute=0, second=0, microsecond=123456)
    sent_at = original + timedelta(seconds=5)
    calls = [
        (
            "track",
            {
                "userId": "u1",
                "anonymousId": "a1",
                "event": "Order Completed",
                "messageId": "msg-1",
                "properties": {"plan": "pro", "total": 42.5, "items": [1, 2], "ok": True},
                "context": {"page": {"path": "/checkout"}, "sessionId": "s1"},
                "timestamp": iso(original),
                # The client's clock is 5 s behind its sentAt: timestamp = receivedAt - 5 s.
                "sentAt": iso(sent_at),
            },
        ),
        ("page", {"userId": "u1", "name": "Pricing", "messageId": "msg-2"}),
        ("group", {"userId": "u1", "groupId": "g1", "traits": {"seats": 5}, "messageId": "msg-3"}),
        ("alias", {"userId": "u1", "previousId": "old-u1", "messageId": "msg-4"}),
    ]
    for kind, body in calls:
        response = server.post(f"/v1/{kind}", body)
        assert response.status_code == 200, response.text
    columns = ", ".join(STORED_COLUMNS)
    rows = ch(url, f"SELECT {columns} FROM events ORDER BY message_id")
    stored = [dict(zip(STORED_COLUMNS, row, strict=True)) for row in rows]
    assert [row["message_id"] for row in stored] == ["msg-1", "msg-2", "msg-3", "msg-4"]
    first = stored[0]
    assert {k: first[k] for k in STORED_COLUMNS[:10]} == {
        "message_id": "msg-1",
        "type": "track",
        "event": "Order Completed",
        "name": "",
        "user_id": "u1",
        "anonymous_id": "a1",
        "group_id": "",
        "previous_id": "",
        "session_id": "s1",
        "source": "default",
    }
    assert msgspec.json.decode(first["properties"]) == calls[0][1]["properties"]
    assert first["traits"] == ""
    assert msgspec.json.decode(first["context"])["page"] == {"path": "/checkout"}
    assert first["original_timestamp"] == truncated(original, datetime64)
    assert first["sent_at"] == truncated(sent_at, datetime64)
    assert first["timestamp"] == first["received_at"] - timedelta(seconds=5)
    assert abs(first["received_at"] - datetime.now(UTC)) < timedelta(minutes=1)
    assert (stored[1]["type"], stored[1]["name"], stored[1]["event"]) == ("page", "Pricing", "")
    assert (stored[2]["group_id"], msgspec.json.decode(stored[2]["traits"])) == ("g1", {"seats": 5})
    assert (stored[3]["previous_id"], stored[3]["properties"]) == ("old-u1", "")
    assert stored[3]["original_timestamp"] is None and stored[3]["sent_at"] is None
    [(time_type,)] = ch(url, "SELECT toTypeName(timestamp) FROM events LIMIT 1")
    assert time_type == ("DateTime64(3, 'UTC')" if datetime64 else "DateTime('UTC')")

    # The query API shows the same rows: absent values null, JSON as objects, ISO times.
    shown = {e["message_id"]: e for e in server.events()}
    assert set(shown) == {"msg-1", "msg-2", "msg-3", "msg-4"}
    api = shown["msg-1"]
    assert api["properties"] == calls[0][1]["properties"]
    assert api["context"]["page"] == {"path": "/checkout"}
    assert (api["name"], api["group_id"], api["traits"]) == (None, None, None)
    assert api["original_timestamp"] == iso(truncated(original, datetime64))
    assert api["timestamp"] == iso(first["timestamp"])
    assert (shown["msg-4"]["properties"], shown["msg-4"]["sent_at"]) == (None, None)
    assert shown["msg-3"]["traits"] == {"seats": 5}


def test_partitions_for_an_event_from_last_year_and_one_from_next_month(ch_server):
    server, url = ch_server
    now = datetime.now(UTC)
    moments = (now, now - timedelta(days=365), now + timedelta(days=35))
    for moment in moments:
        assert server.post("/v1/track", track("u-part", timestamp=iso(moment))).status_code == 200
    parts = ch(
        url,
        "SELECT partition_id, sum(rows) FROM system.parts WHERE database = currentDatabase() "
        "AND table = 'events' AND active GROUP BY partition_id",
    )
    assert dict(parts) == {f"{moment:%Y%m}": 1 for moment in moments}


# -- redelivery --------------------------------------------------------------------------
def test_a_redelivered_batch_collapses(ch_server):
    server, url = ch_server
    batch = {"batch": [{"type": "track", **track("u-dup")} for _ in range(20)]}
    for _ in range(3):  # an SDK retrying the same batch: three inserts, three timestamps
        assert server.post("/v1/batch", batch).status_code == 200
    # Read with FINAL: one copy each, whether or not a merge has run yet.
    assert len(server.events(user_id="u-dup")) == 20
    ch(url, "OPTIMIZE TABLE events FINAL")
    assert ch(url, "SELECT count(), uniqExact(message_id) FROM events") == [(20, 20)]


def test_an_sdk_retry_with_a_later_received_at_collapses_onto_one_row(ch_url, tmp_path):
    sink = make_sink(ch_url, tmp_path, insert_settings={"max_insert_block_size": 100_000})
    sink.migrate()
    first = recent(hour=10, minute=0, second=0, microsecond=250000)
    retried = first + timedelta(minutes=10)

    def copy(received: datetime, message_id: str = "m-retry") -> Command:
        # The same call sent again 10 minutes later: skew correction moves timestamp too.
        return TrackCommand(
            message_id=message_id,
            source="web",
            user_id="u-retry",
            event="Order Completed",
            properties={"total": 10},
            timestamp=received,
            received_at=received,
        )

    sink.write([copy(first), copy(first, "m-other")])
    sink.write([copy(retried)])
    sink.write([copy(first)])  # and a broker redelivery of the first copy, identical
    store = EventStore(ClickHouseStore(ch_url))
    try:
        events = store.query(EventFilter(user_id="u-retry")).events
    finally:
        store.close()
    assert sorted(e["message_id"] for e in events) == ["m-other", "m-retry"]
    ch(ch_url, "OPTIMIZE TABLE events FINAL")
    rows = ch(ch_url, "SELECT message_id, received_at FROM events ORDER BY message_id")
    # ReplacingMergeTree(received_at): the copy received last is the one kept.
    datetime64 = sink.datetime64
    assert rows == [
        ("m-other", truncated(first, datetime64)),
        ("m-retry", truncated(retried, datetime64)),
    ]
    sink.stop()


# -- the query API -----------------------------------------------------------------------
def test_the_query_api_filters_and_pages_over_clickhouse(ch_server):
    server, _ = ch_server
    base = recent(days=30, hour=12, minute=0, second=0, microsecond=0)
    items = [
        {
            "type": "track",
            "userId": "alice" if i % 2 else "bob",
            "event": "A" if i % 3 else "B",
            "messageId": f"e-{i:02d}",
            "timestamp": iso(base + timedelta(minutes=i)),
        }
        for i in range(25)
    ]
    # Five more at one and the same time: the cursor's tie-break on message_id.
    items += [
        {
            "type": "track",
            "userId": "carol",
            "event": "A",
            "messageId": f"t-{i}",
            "timestamp": iso(base),
        }
        for i in range(5)
    ]
    items.append({"type": "identify", "userId": "alice", "messageId": "i-1", "traits": {"x": 1}})
    assert server.post("/v1/batch", {"batch": items}).status_code == 200

    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        page = server.client.get("/api/v1/events", params=params, headers=AUTH).json()
        seen += page["events"]
        pages += 1
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert pages == 8
    ids = [e["message_id"] for e in seen]
    assert sorted(ids) == sorted(i["messageId"] for i in items)
    keys = [(e["timestamp"], e["message_id"]) for e in seen]
    assert keys == sorted(keys, reverse=True)

    def found(**params) -> list[str]:
        response = server.client.get("/api/v1/events", params=params, headers=AUTH)
        assert response.status_code == 200, response.text
        return [e["message_id"] for e in response.json()["events"]]

    assert found(type="identify") == ["i-1"]
    assert set(found(event="B", user_id="bob")) == {f"e-{i:02d}" for i in range(0, 25, 6)}
    window = found(since=iso(base + timedelta(minutes=3)), until=iso(base + timedelta(minutes=6)))
    assert window == ["e-05", "e-04", "e-03"]
    assert found(user_id="carol", limit=2) == ["t-4", "t-3"]
    one = server.client.get("/api/v1/events/i-1", headers=AUTH)
    assert one.status_code == 200 and one.json()["traits"] == {"x": 1}
    assert server.client.get("/api/v1/events/nope", headers=AUTH).status_code == 404


def test_pages_come_newest_first_across_the_time_windows(ch_server):
    """ClickHouse pages are read a time window at a time (the last hour, 3 and 9 hours,
    a day, 3 days, a week, five weeks, then the rest), then the rows of the page's keys:
    events in several windows, one in the future, one with a hostile name and two at
    the same second across a page boundary all come out once, newest first, page by
    page."""
    server, _ = ch_server
    now = datetime.now(UTC).replace(microsecond=0)
    ages = {  # message id -> how long before now
        "future": -timedelta(hours=2),
        "minutes": timedelta(minutes=30),
        "hour": timedelta(hours=1),
        "hours": timedelta(hours=5),
        "hostile": timedelta(hours=7),
        "day-a": timedelta(days=1, seconds=30),
        "day-b": timedelta(days=1, seconds=30),
        "week": timedelta(days=6),
        "month": timedelta(days=20),
        "old": timedelta(days=100),
        "older": timedelta(days=400),
    }
    # A page's rows are read by their keys, each a bound parameter: one event's name
    # is as hostile as a name gets.
    hostile = "W'in\\' OR 1=1) -- \"><svg onload=alert(1)>\u2028{{7*7}}"
    items = [
        {
            "type": "track",
            "userId": "w",
            "event": hostile if m == "hostile" else "Win",
            "messageId": m,
            "timestamp": iso(now - a),
        }
        for m, a in ages.items()
    ]
    assert server.post("/v1/batch", {"batch": items}).status_code == 200
    newest_first = sorted(ages, key=lambda m: ((now - ages[m]), m), reverse=True)

    def pages(**params) -> list[list[str]]:
        out, cursor = [], None
        while True:
            query = {"user_id": "w", "limit": 3, **params, **({"cursor": cursor} if cursor else {})}
            response = server.client.get("/api/v1/events", params=query, headers=AUTH)
            assert response.status_code == 200, response.text
            body = response.json()
            out.append([e["message_id"] for e in body["events"]])
            cursor = body["next_cursor"]
            if not cursor:
                return out

    def flat(found: list[list[str]]) -> list[str]:
        return [message_id for page in found for message_id in page]

    assert pages() == [newest_first[i : i + 3] for i in range(0, len(newest_first), 3)]
    since = iso(now - timedelta(days=30))
    assert flat(pages(since=since)) == newest_first[:9]
    until = iso(now - timedelta(hours=12))
    assert flat(pages(until=until)) == newest_first[5:]
    assert flat(pages(since=since, until=until)) == newest_first[5:9]
    response = server.client.get("/api/v1/events", params={"event": hostile}, headers=AUTH)
    assert [e["event"] for e in response.json()["events"]] == [hostile]


def test_a_users_first_and_last_seen_come_from_the_time_windows(ch_server):
    """One user's first and last event (the user page's "first seen" and "last seen")
    are read window by window, back from now and forward from the oldest stored part:
    users busy at both ends, seen in the middle only, seen once, with a range, and
    with a hint of the oldest part that is wrong (later than the oldest event: the
    first forward window has no lower bound) all get their real first and last
    times; a user with no event gets none, and each event counts once however many
    copies the store holds."""
    server, url = ch_server
    now = datetime.now(UTC).replace(microsecond=0)
    ages = {  # user -> how long before now each of their events was sent
        "w": [-timedelta(hours=2), timedelta(minutes=30), timedelta(days=6), timedelta(days=400)],
        "mid": [timedelta(days=6), timedelta(days=20), timedelta(days=9)],
        "once": [timedelta(days=100)],
        "fresh": [timedelta(minutes=5), timedelta(minutes=50)],
    }
    items = [
        {
            "type": "track",
            "event": "Win",
            "messageId": f"{user}-{i}",
            "timestamp": iso(now - a),
            **({"anonymousId": user} if user == "fresh" else {"userId": user}),
        }
        for user, times in ages.items()
        for i, a in enumerate(times)
    ]
    assert server.post("/v1/batch", {"batch": items}).status_code == 200
    # A redelivery of two of "mid"'s events: their copies, received later.
    assert server.post("/v1/batch", {"batch": items[4:6]}).status_code == 200

    store = EventStore(ClickHouseStore(url))
    try:

        def span(user: str, **bounds) -> tuple[timedelta, timedelta] | None:
            column = "anonymous_id" if user == "fresh" else "user_id"
            found = store.time_span(EventFilter(**{column: user}, **bounds))
            return None if found is None else (now - found[0], now - found[1])

        for user, times in ages.items():
            assert span(user) == (max(times), min(times)), user
        assert span("nobody") is None
        month, half_day = now - timedelta(days=30), now - timedelta(hours=12)
        assert span("w", since=month) == (timedelta(days=6), -timedelta(hours=2))
        assert span("w", until=half_day) == (timedelta(days=400), timedelta(days=6))
        assert span("mid", since=now - timedelta(days=10), until=now - timedelta(days=7)) == (
            timedelta(days=9),
            timedelta(days=9),
        )
        assert span("once", until=now - timedelta(days=101)) is None
        # A wrong hint: the oldest part said to begin 50 days ago.
        store.dialect.oldest_hint = lambda connection: now - timedelta(days=50)
        assert span("w") == (timedelta(days=400), -timedelta(hours=2))
        assert span("once") == (timedelta(days=100), timedelta(days=100))
    finally:
        store.close()


# -- queue mode --------------------------------------------------------------------------
def test_through_the_queue_and_a_worker_in_one_insert(amqp_env, ch_url):
    batch = {"max_events": 50000, "timeout": "1s"}
    raw = amqp_env.raw(sinks={"warehouse": ch_sink(ch_url, batch=batch)})
    server = LiveServer(make_config(amqp_env.tmp_path, raw)).start()
    try:
        ids = []
        for _ in range(5):
            body = track("u-q")
            ids.append(body["messageId"])
            assert server.post("/v1/track", body).status_code == 200
        with WorkerThread(make_config(amqp_env.tmp_path, raw)) as worker:
            sink = worker.worker.bus.sinks["warehouse"]
            eventually(lambda: sink.written == 5, "5 events written to ClickHouse")
        # Counted once the worker stopped: the consumer counts after the sink returned.
        assert worker.worker.consumers[0].written == 5
        assert sink.inserts == 1  # the five queued requests went in as one insert
        assert ch(ch_url, "SELECT count() FROM events") == [(5,)]
        assert {e["message_id"] for e in server.events()} == set(ids)
    finally:
        server.stop()


# -- schema --------------------------------------------------------------------------------
def test_migrate_command_creates_the_schema_idempotently(ch_url, tmp_path, version):
    path = tmp_path / "ch.toml"
    path.write_text(to_toml({"sinks": {"warehouse": ch_sink(ch_url, migrate_on_start=False)}}))
    for _ in range(2):
        result = run_eventrouter("migrate", "--config", str(path))
        assert result.returncode == 0, result.stderr
        assert "warehouse (clickhouse): schema version 2, ReplacingMergeTree" in result.stdout
    [(engine, partition_key, sorting_key)] = ch(
        ch_url,
        "SELECT engine, partition_key, sorting_key FROM system.tables "
        "WHERE database = currentDatabase() AND name = 'events'",
    )
    assert (engine, partition_key) == ("ReplacingMergeTree", "toYYYYMM(timestamp)")
    assert split_keys(sorting_key) == split_keys(sink_module.DEFAULT_ORDER_BY)
    assert ch(ch_url, "SELECT version FROM eventrouter_schema") == [(2,)]


def test_a_table_with_other_keys_is_kept_and_reported(ch_url, tmp_path, caplog):
    make_sink(ch_url, tmp_path).migrate()
    other = make_sink(ch_url, tmp_path, order_by="source, message_id")
    with caplog.at_level(logging.WARNING, logger="eventrouter.sinks.clickhouse"):
        other.migrate()
    assert "ORDER BY" in caplog.text and "cannot be changed" in caplog.text
    [(_, sorting_key, _)] = ch(ch_url, sink_module.TABLE_KEYS_SQL)
    assert split_keys(sorting_key) == split_keys(sink_module.DEFAULT_ORDER_BY)


def test_ttl_needs_a_server_that_has_it(ch_url, tmp_path, version):
    sink = make_sink(ch_url, tmp_path, ttl="400d")
    if version < sink_module.TTL_SINCE:
        with pytest.raises(RuntimeError, match=r"sinks\.warehouse\.ttl needs ClickHouse 19\.6"):
            sink.migrate()
        return
    sink.migrate()
    [(_, _, create)] = ch(ch_url, sink_module.TABLE_KEYS_SQL)
    assert f"toIntervalSecond({400 * 86400})" in create


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"order_by": "toDate(timestamp), user_id"},
            "order_by: must contain source and message_id",
        ),
        # A messageId is unique per source: a key without source would let one source's
        # event replace another's of the same id.
        ({"order_by": "toDate(timestamp), message_id"}, "order_by: must contain source "),
        ({"url": "clickhouse+http://127.0.0.1:8123/x"}, "url: the clickhouse sink speaks"),
        ({"partition": "day"}, "sinks.w.partition: unknown key"),
    ],
)
def test_bad_options_are_config_errors(tmp_path, options, message):
    sink = {"type": "clickhouse", "url": "clickhouse+native://127.0.0.1/x", **options}
    config = make_config(tmp_path, {"sinks": {"w": sink}})
    with pytest.raises(ConfigError, match=message):
        Bus(config, make_plugin_manager(config))


@pytest.mark.parametrize("datetime64", [True, False])
def test_columns_hold_what_command_values_gives(datetime64):
    """The sink builds its columns field by field, for speed: the same values as
    ``Command.values()``, with ``''`` for absent text and JSON bytes."""
    commands = _sample()
    columns = sink_module.columns_of(commands, datetime64=datetime64)
    unit = timedelta(milliseconds=1) if datetime64 else timedelta(seconds=1)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for i, command in enumerate(commands):
        for name, value, written in zip(
            STORED_COLUMNS, command.values(), [c[i] for c in columns], strict=True
        ):
            if name in ("properties", "traits", "context"):
                assert written == (b"" if value is None else msgspec.json.encode(value)), name
            elif name in ("timestamp", "original_timestamp", "sent_at", "received_at"):
                assert written == (None if value is None else (value - epoch) // unit), name
            else:
                assert written == ("" if value is None else value), name


def test_json_columns_of_one_kind_are_each_rows_own_json():
    """A batch of one event type has its JSON columns encoded in one call and split at
    newlines: text with newlines, other line breaks and non-ASCII still gives each row
    exactly its own JSON."""
    texts = ["line\nbreak", "cr\r\nlf", "sep\u2028para\u2029", "é🙂", "", '"\\n"']
    commands = [
        TrackCommand(
            message_id=f"m{i}",
            source="web",
            user_id="u",
            event="E",
            properties={"text": text, "nested": {"list": [text, i]}},
            context={"page": {"title": text}} if i % 2 else {},
            timestamp=BASE,
            received_at=BASE,
        )
        for i, text in enumerate(texts)
    ]
    columns = dict(
        zip(STORED_COLUMNS, sink_module.columns_of(commands, datetime64=True), strict=True)
    )
    assert columns["properties"] == [msgspec.json.encode(c.properties) for c in commands]
    assert columns["context"] == [msgspec.json.encode(c.context) for c in commands]
    assert [msgspec.json.decode(v) for v in columns["properties"]] == [
        c.properties for c in commands
    ]


#: Text no store may change: quotes and backslashes, NUL and other control characters,
#: line breaks, non-ASCII, emoji (four UTF-8 bytes), and the empty string.
HOSTILE = ["'; DROP TABLE events; --", '"\\', "nul\x00byte", "\n\r\t\x1b", "é\u2028🙂", ""]
#: A value of 1 MB (a length prefix of three bytes).
MEGABYTE = "🙂" * 262_144


def _hostile() -> list[Command]:
    """Commands with hostile values in every kind of column: each text of
    :data:`HOSTILE` and a 1 MB one as ids, names and inside the JSON, raw JSON texts
    kept exactly as a client sent them (whitespace, newlines, escapes, key order),
    absent fields (no user_id, no sent_at, no properties), and times at the edges of a
    millisecond and of a second."""
    commands: list[Command] = []
    texts = [*HOSTILE, MEGABYTE]
    for i, value in enumerate(texts):
        raw = msgspec.Raw(
            b'{ "z" : 1,\n  "a": ' + msgspec.json.encode(value) + b', "\\u00e9": [null, -0.0] }'
        )
        moment = BASE + timedelta(microseconds=999 * i)
        commands.append(
            TrackCommand(
                message_id=f"h{i}-{value[:40]}",
                source="web",
                user_id=value or None,
                anonymous_id=value,
                session_id=value,
                event=value,
                properties=raw,
                context=raw if i % 2 else msgspec.Raw(b"{}"),
                timestamp=moment,
                original_timestamp=moment - timedelta(microseconds=1) if i % 2 else None,
                sent_at=moment if i % 3 else None,
                received_at=moment,
            )
        )
    commands.append(
        IdentifyCommand(
            message_id="h-identify", source="ios", anonymous_id="a", traits={"q": HOSTILE},
            timestamp=BASE, received_at=BASE,
        )
    )  # fmt: skip
    commands.append(
        AliasCommand(
            message_id="h-alias", source="web", user_id=MEGABYTE, previous_id="\x00",
            timestamp=datetime(1970, 1, 1, 0, 0, 1, 999, tzinfo=UTC), received_at=BASE,
        )
    )  # fmt: skip
    return commands


@pytest.fixture(params=["compiled", "pure"])
def native_module(request, monkeypatch) -> str:
    """Each Native-format test runs with the C module (eventrouter.sinks._native) and
    with the pure-Python code alone."""
    if request.param == "compiled":
        if sink_module._native is None:
            pytest.fail("eventrouter.sinks._native was not built (a C compiler is needed)")
    else:
        monkeypatch.setattr(sink_module, "_native", None)
    return request.param


@pytest.mark.parametrize("sample", ["_sample", "_hostile"])
@pytest.mark.parametrize("datetime64", [True, False])
def test_native_columns_are_the_bytes_the_driver_writes(datetime64, sample, native_module):
    """The sink serialises every column itself: byte for byte what clickhouse-driver
    writes for :func:`columns_of`'s values."""
    from clickhouse_driver.bufferedwriter import BufferedSocketWriter
    from clickhouse_driver.columns.service import write_column

    class Captured:
        def __init__(self) -> None:
            self.data = b""

        def sendall(self, data: bytes) -> None:
            self.data += data

    def serialised(name: str, values: list) -> bytes:
        sock = Captured()
        buffer = BufferedSocketWriter(sock, 1 << 20)
        write_column(context, name, sink_module._native_type(name, datetime64), values, buffer)
        buffer.flush()
        return sock.data

    context = Client("127.0.0.1").connection.context
    commands = globals()[sample]()
    commands[0] = msgspec.structs.replace(commands[0], sent_at=BASE, original_timestamp=BASE)
    # UTF-8, and a length prefix of two bytes (a value of 128 bytes or more).
    commands[1] = msgspec.structs.replace(commands[1], event="Réservé ✓ " * 20)
    assert any(c.sent_at is None for c in commands)  # the Nullable columns have nulls
    # Every kind of command, and a batch of track calls (no name, traits, group_id...).
    for batch in (commands, [c for c in commands if isinstance(c, TrackCommand)]):
        driver = sink_module.columns_of(batch, datetime64=datetime64)
        native = sink_module.native_columns(batch, datetime64=datetime64)
        for name, values, ours in zip(STORED_COLUMNS, driver, native, strict=True):
            assert ours == serialised(name, list(values)), name


@pytest.mark.parametrize("native", [True, False])
def test_a_written_batch_reads_back_as_command_values(
    ch_url, tmp_path, version, native, monkeypatch
):
    """``write`` stores exactly ``Command.values()``; the driver serialises the batch
    (``columns_of``) only when the table's types are not the ones the sink created."""
    datetime64 = version >= sink_module.DATETIME64_SINCE
    if native:
        monkeypatch.setattr(sink_module, "columns_of", None)  # the native path needs none
    else:
        monkeypatch.setattr(sink_module, "_native_type", lambda name, datetime64: "Other")
    commands = _sample()
    commands[0] = msgspec.structs.replace(commands[0], sent_at=BASE, original_timestamp=BASE)
    sink = make_sink(ch_url, tmp_path)
    sink.migrate()
    sink.write(commands)
    rows = ch(ch_url, f"SELECT {', '.join(STORED_COLUMNS)} FROM events")
    stored = sorted(rows, key=lambda row: (row[0], row[-1]))
    assert len(stored) == len(commands)
    expected = sorted((c.values() for c in commands), key=lambda row: (row[0], row[-1]))
    for row, values in zip(stored, expected, strict=True):
        for name, got, value in zip(STORED_COLUMNS, row, values, strict=True):
            if name in ("properties", "traits", "context"):
                assert got == ("" if value is None else msgspec.json.encode(value).decode()), name
            elif name in ("timestamp", "original_timestamp", "sent_at", "received_at"):
                assert got == (None if value is None else truncated(value, datetime64)), name
            else:
                assert got == ("" if value is None else value), name


@pytest.mark.parametrize("path", ["native", "driver"])
def test_hostile_values_read_back_exactly(
    ch_url, tmp_path, version, path, native_module, monkeypatch
):
    """Every value of :func:`_hostile` (quotes, NUL, line breaks, emoji, 1 MB, empty,
    absent) is stored exactly: text as given, JSON as the raw text the client sent, byte
    for byte, times to the millisecond (the second on 18.16); on the Native path (C or
    pure Python) and on the driver's."""
    datetime64 = version >= sink_module.DATETIME64_SINCE
    if path == "driver":
        monkeypatch.setattr(sink_module, "_native_type", lambda name, datetime64: "Other")
    commands = _hostile()
    sink = make_sink(ch_url, tmp_path)
    sink.migrate()
    sink.write(commands)
    url = driver_url(ch_url)
    client = Client.from_url(url + ("&" if "?" in url else "?") + "strings_as_bytes=true")
    try:
        rows = client.execute(f"SELECT {', '.join(STORED_COLUMNS)} FROM events")
    finally:
        client.disconnect()
    stored = {row[0].decode(): row for row in rows}
    assert len(stored) == len(rows) == len(commands)
    for command in commands:
        row = stored[command.message_id]
        for name, got, value in zip(STORED_COLUMNS, row, command.values(), strict=True):
            if name in ("properties", "traits", "context"):
                assert got == (b"" if value is None else bytes(value)), name
            elif name in ("timestamp", "original_timestamp", "sent_at", "received_at"):
                assert got == (None if value is None else truncated(value, datetime64)), name
            else:
                assert got == ("" if value is None else value).encode(), name
    # The raw texts were not re-encoded: whitespace, key order and escapes as sent.
    assert b'{ "z" : 1,\n  "a": ' in stored["h1-" + HOSTILE[1]][10]


def test_split_keys():
    assert split_keys("(toDate(timestamp), source, cityHash64(message_id, 'a,b'))") == [
        "toDate(timestamp)",
        "source",
        "cityHash64(message_id, 'a,b')",
    ]
    assert split_keys("message_id") == ["message_id"]


# -- the same statements on a current ClickHouse (chdb) ------------------------------------
#: Two days ago: the DDL below has a 30-day TTL, which drops older rows on insert.
BASE = recent(hour=10, minute=0, second=0, microsecond=500000)


def _sample() -> list[Command]:
    def at(seconds: float) -> datetime:
        return BASE + timedelta(seconds=seconds)

    def viewed(message_id, user, seconds, properties, path, received=None) -> TrackCommand:
        return TrackCommand(
            message_id=message_id,
            source="web",
            user_id=user,
            event="Viewed",
            properties=properties,
            context={"page": {"path": path}},
            timestamp=at(seconds),
            received_at=received or at(seconds),
        )

    pro = {"plan": "pro", "total": 42.5, "trial": False, "billing": {"cycle": "yearly"}}
    return [
        viewed("e1", "u1", 1, pro, "/pricing"),
        viewed("e2", "u2", 2, {"plan": "free", "total": 0, "trial": True}, "/home"),
        # e2 again, received later: FINAL reads one copy.
        viewed("e2", "u2", 2.4, {"plan": "free", "total": 0, "trial": True}, "/home", at(9)),
        TrackCommand(
            message_id="e3",
            source="web",
            user_id="u1",
            event="Bought",
            properties={"items": [{"id": "p1"}], "id": "o9", "plan": "pro"},
            timestamp=at(3),
            received_at=at(3),
        ),
        IdentifyCommand(
            message_id="e4", source="web", user_id="u1", traits={"email": "a@b.c"},
            timestamp=at(4), received_at=at(4),
        ),
        PageCommand(
            message_id="e5", source="ios", user_id="u3", name="Pricing", timestamp=at(3),
            received_at=at(3),
        ),
        AliasCommand(
            message_id="e6", source="web", user_id="u3", previous_id="x", timestamp=at(-86400),
            received_at=at(5),
        ),
    ]  # fmt: skip


#: (filter, cursor (seconds after BASE, message id) or None, expected ids in order)
_QUERIES = [
    (EventFilter(), None, ["e4", "e5", "e3", "e2", "e1", "e6"]),
    (EventFilter(event="Viewed"), None, ["e2", "e1"]),
    (EventFilter(type="track", user_id="u1", source="web"), None, ["e3", "e1"]),
    (EventFilter(since=BASE + timedelta(seconds=2), until=BASE + timedelta(seconds=4)), None,
     ["e5", "e3", "e2"]),
    (EventFilter(), (3, "e5"), ["e3", "e2", "e1", "e6"]),
    (EventFilter(paths=[PathCondition("properties", ("plan",), "pro")]), None, ["e3", "e1"]),
    (EventFilter(paths=[PathCondition("properties", ("billing", "cycle"), "yearly")]), None,
     ["e1"]),
    (EventFilter(paths=[PathCondition("properties", ("trial",), "true")]), None, ["e2"]),
    (EventFilter(paths=[PathCondition("properties", ("trial",), "false")]), None, ["e1"]),
    (EventFilter(paths=[PathCondition("properties", ("total",), "42.5")]), None, ["e1"]),
    (EventFilter(paths=[PathCondition("properties", ("total",), "0")]), None, ["e2"]),
    (EventFilter(paths=[PathCondition("context", ("page", "path"), "/pricing")]), None, ["e1"]),
    (EventFilter(paths=[PathCondition("traits", ("email",), "a@b.c")]), None, ["e4"]),
    (EventFilter(paths=[PathCondition("properties", ("plan",), "x' OR '1'='1")]), None, []),
]  # fmt: skip
#: Right with JSONExtract only: visitParam takes the first "id" at any depth (p1).
_JSON_EXTRACT_QUERIES = [
    (EventFilter(paths=[PathCondition("properties", ("id",), "o9")]), None, ["e3"]),
]

_FLAVOURS = {
    "current": store_module.Flavour(datetime64=True, json_extract=True),
    "upgraded-from-18.16": store_module.Flavour(datetime64=False, json_extract=True),
    "as-on-18.16": store_module.Flavour(datetime64=False, json_extract=False),
}


def _chdb_rows(commands: list[Command], datetime64: bool) -> str:
    """The sample as JSONEachRow, in the form the sink writes it."""
    columns = sink_module.columns_of(commands, datetime64=datetime64)
    lines = []
    for row in zip(*columns, strict=True):
        record = dict(zip(STORED_COLUMNS, row, strict=True))
        for name in ("properties", "traits", "context"):
            record[name] = record[name].decode()  # JSON text, as the server stores it
        for name in ("timestamp", "original_timestamp", "sent_at", "received_at"):
            if record[name] is not None:
                seconds = record[name] / 1000 if datetime64 else record[name]
                moment = datetime.fromtimestamp(seconds, UTC)
                record[name] = moment.isoformat(sep=" ", timespec="milliseconds")[:23]
        lines.append(msgspec.json.encode(record).decode())
    return "\n".join(lines)


def _substituted(store: EventStore, statement) -> str:
    """``statement`` as this store sends it, parameters substituted as clickhouse-driver
    substitutes them."""
    client = Client("127.0.0.1")
    compiled = statement.compile(
        dialect=store.engine.dialect, compile_kwargs={"render_postcompile": True}
    )
    return client.substitute_params(str(compiled), compiled.params, client.connection.context)


def captured_selects(store: EventStore, cases: list) -> list[list[str]]:
    """The SELECTs the store layer sends for each of ``cases``, parameters substituted as
    clickhouse-driver substitutes them, without running them on this server. Every
    statement finds nothing here, so a page query sends one per time window: the page's
    keys (the test reads the rows of those it finds: :func:`_substituted`)."""
    client = Client("127.0.0.1")
    sent: list[str] = []

    def capture(connection, cursor, statement, parameters, context, executemany):
        sent.append(client.substitute_params(statement, parameters, client.connection.context))
        return "SELECT * FROM events WHERE 0", {}

    per_case: list[list[str]] = []
    event.listen(store.engine, "before_cursor_execute", capture, retval=True)
    try:
        for where, after, _ in cases:
            cursor = None
            if after is not None:
                seconds, message_id = after
                cursor = encode_cursor(BASE + timedelta(seconds=seconds), message_id)
            sent.clear()
            store.query(where, limit=100, cursor=cursor)
            per_case.append(list(sent))
    finally:
        event.remove(store.engine, "before_cursor_execute", capture)
    return per_case


@pytest.mark.parametrize("flavour", list(_FLAVOURS))
def test_ddl_and_dashboard_queries_run_on_a_current_clickhouse(flavour, ch_url, tmp_path):
    from chdb import session

    sink = make_sink(ch_url, tmp_path)
    sink.migrate()  # on this server, for the store's connection; nothing runs there below
    settings = _FLAVOURS[flavour]
    cases = _QUERIES + (_JSON_EXTRACT_QUERIES if settings.json_extract else [])
    store = EventStore(ClickHouseStore(ch_url))
    store.dialect._flavour = settings
    try:
        selects = captured_selects(store, cases)
    finally:
        store.close()
        sink.stop()
    assert len(selects) == len(cases)
    # Pages keep each event's copy received last with LIMIT 1 BY, not FINAL (store.py).
    assert all(sqls and all("LIMIT 1 BY" in sql for sql in sqls) for sqls in selects)

    metadata = MetaData()
    events = events_table(metadata, datetime64=settings.datetime64, ttl=30 * 86400)
    engine = sink._engine()
    ddl = [
        str(CreateTable(t, if_not_exists=True).compile(engine))
        for t in (events, schema_table(metadata))
    ]
    engine.dispose()
    db = session.Session()
    try:
        db.query("CREATE DATABASE IF NOT EXISTS eventrouter")
        db.query("USE eventrouter")
        for statement in ddl * 2:  # idempotent
            db.query(statement)
        db.query(
            "INSERT INTO events FORMAT JSONEachRow\n" + _chdb_rows(_sample(), settings.datetime64)
        )
        for sqls, (_, _, expected) in zip(selects, cases, strict=True):
            keys = []  # the time windows' keys, newest window first
            for sql in sqls:
                result = db.query(sql, "JSONCompact")
                keys += msgspec.json.decode(result.bytes())["data"]
            ids = []
            if keys:  # then the rows of the page's keys, as EventStore.query reads them
                rows = db.query(_substituted(store, store.dialect.page_rows(keys)), "JSONCompact")
                ids = [row[0] for row in msgspec.json.decode(rows.bytes())["data"]]
            assert ids == expected, sqls
        # What the sink and the store ask the server, besides inserts.
        for probe in (
            "SELECT max(version) FROM eventrouter_schema",
            sink_module.TABLE_KEYS_SQL,
            sink_module.ttl_sql(86400),
            "OPTIMIZE TABLE events FINAL",
            store_module.TIME_TYPE_SQL,
            store_module.JSON_EXTRACT_SQL,
        ):
            db.query(probe)
        time_type = db.query(store_module.TIME_TYPE_SQL, "CSV").bytes().decode()
        assert ("DateTime64" in time_type) == settings.datetime64
    finally:
        db.close()


def test_dashboard_aggregates_run_on_a_current_clickhouse(ch_url, tmp_path):
    """The chart, breakdown, user and live-tail statements, sent to 18.16 by the other
    suites, give the same answers on a current ClickHouse."""
    from chdb import session

    sink = make_sink(ch_url, tmp_path)
    sink.migrate()
    # The scan's statements (the rollup's: tests/integration/test_clickhouse_rollup.py).
    store = EventStore(ClickHouseStore(ch_url), use_rollup=False)
    store.dialect._flavour = _FLAVOURS["current"]
    client = Client("127.0.0.1")
    sent: list[str] = []

    def capture(connection, cursor, statement, parameters, context, executemany):
        sent.append(client.substitute_params(statement, parameters, client.connection.context))
        return "SELECT 1 WHERE 0", {}  # 18.16 has no JSONType: only capture the SQL

    event.listen(store.engine, "before_cursor_execute", capture, retval=True)
    pro = EventFilter(paths=[PathCondition("properties", ("plan",), "pro")])
    position = TailPosition(received_at=BASE - timedelta(seconds=1))
    calls = [
        lambda: store.count_by_time(EventFilter(event="Viewed"), 60),
        lambda: store.top(EventFilter(), "event", 10),
        lambda: store.top(EventFilter(type="track"), "properties.plan", 10),
        lambda: store.time_span(pro),
        lambda: store.identify_traits("u1"),
        lambda: store.stored_since(position),
    ]
    try:
        for call in calls:
            with contextlib.suppress(sqlalchemy.exc.NoResultFound):  # time_span's one row
                call()
    finally:
        event.remove(store.engine, "before_cursor_execute", capture)
        store.close()
        sink.stop()
    engine = sink._engine()
    ddl = str(
        CreateTable(events_table(MetaData(), datetime64=True), if_not_exists=True).compile(engine)
    )
    engine.dispose()
    db = session.Session()
    try:
        db.query("CREATE DATABASE IF NOT EXISTS eventrouter")
        db.query("USE eventrouter")
        db.query(ddl)
        db.query("INSERT INTO events FORMAT JSONEachRow\n" + _chdb_rows(_sample(), True))
        answers = [
            msgspec.json.decode(db.query(sql, "JSONCompact").bytes())["data"] for sql in sent
        ]
    finally:
        db.close()
    minute = int(BASE.timestamp()) // 60 * 60
    assert answers[0] == [[minute, 2]]  # e1, and e2 once (FINAL)
    assert answers[1] == [["", 3], ["Viewed", 2], ["Bought", 1]]  # "": calls without one
    assert answers[2] == [["pro", 2], ["free", 1]]
    assert answers[3][0][2] == 2  # oldest, newest, count of the plan=pro events
    assert answers[4] == [['{"email":"a@b.c"}']]
    # the tail reads only the last day of timestamps, and the sample is older: the
    # statement runs (its rows on 18.16: tests/integration/test_admin_stores.py)
    assert answers[5] == []


def test_admin_tables_of_a_database_not_created_yet_are_empty_not_unreadable(ch_url):
    """A queue-mode edge may start before `eventrouter migrate` or a worker created the
    store's database: its suppression list and signed-out sessions are empty, not
    unreadable (an unreadable list fails closed: every request would be a 503)."""
    from eventrouter.edge.sessions import RevokedSessions
    from eventrouter.privacy.suppressions import SuppressionList

    with SuppressionList(ClickHouseStore(ch_url)) as listing:
        assert listing.ids() == {"user_id": frozenset(), "anonymous_id": frozenset()}
        assert listing.list() == []
    revoked = RevokedSessions(ClickHouseStore(ch_url))
    try:
        assert revoked.refresh() is True
        assert "any-sid" not in revoked
    finally:
        revoked.stop()
    assert ch(ch_url.rsplit("/", 1)[0] + "/default", "SELECT 1") == [(1,)]  # server is up
