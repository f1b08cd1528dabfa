"""``GET /api/v1/events`` and ``GET /api/v1/events/{message_id}``: auth, filters, order,
keyset pagination, errors; plus the cursor functions of the store layer."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest

from eventrouter.events.commands import STORED_COLUMNS
from eventrouter.store.query import InvalidQuery, decode_cursor, encode_cursor
from tests.helpers import ADMIN_TOKEN
from tests.ingest_support import AUTH, assert_error, iso, parse_time, running, uid

BASE = datetime(2024, 1, 1, tzinfo=UTC)
SOURCES = {
    "sources": [{"name": "web", "write_key": "wk-web"}, {"name": "ios", "write_key": "wk-ios"}]
}


def dataset() -> list[dict]:
    """What the module's server holds: (item, write key) pairs with explicit times."""
    items = []
    for i in range(10):
        items.append(
            {
                "type": "track",
                "event": "Clicked",
                "userId": "alice",
                "sessionId": "s-a",
                "messageId": f"alice-{i:02d}",
                "timestamp": iso(BASE + timedelta(hours=i)),
                "properties": {"i": i},
                "_key": "wk-web",
            }
        )
    for i in range(5):
        items.append(
            {
                "type": "identify",
                "userId": "bob",
                "anonymousId": "anon-b",
                "messageId": f"bob-{i:02d}",
                "timestamp": iso(BASE + timedelta(hours=i, minutes=30)),
                "traits": {"plan": "pro", "i": i},
                "_key": "wk-ios",
            }
        )
    for i in range(3):
        items.append(
            {
                "type": "page",
                "anonymousId": "anon-c",
                "name": "Home",
                "messageId": f"carol-{i:02d}",
                "timestamp": iso(BASE + timedelta(days=1, seconds=i)),
                "_key": "wk-ios",
            }
        )
    # 25 events at the very same instant: pagination must still see each exactly once
    for i in range(25):
        items.append(
            {
                "type": "track",
                "event": "Tied",
                "userId": "dave",
                "messageId": f"tie-{i:02d}",
                "timestamp": iso(BASE + timedelta(days=2)),
                "_key": "wk-web",
            }
        )
    return items


DATA = dataset()
SOURCE_OF_KEY = {"wk-web": "web", "wk-ios": "ios"}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with running(tmp_path_factory.mktemp("query"), SOURCES) as server:
        for key in SOURCE_OF_KEY:
            batch = [
                {k: v for k, v in item.items() if k != "_key"}
                for item in DATA
                if item["_key"] == key
            ]
            response = server.post("/v1/batch", {"batch": batch}, auth=(key, ""))
            assert response.status_code == 200, response.text
            assert response.json() == {"success": True}
        yield server


def get(server, params=None, headers=AUTH, path="/api/v1/events"):
    return server.client.get(path, params=params, headers=headers)


def page(server, **params):
    response = get(server, params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"events", "next_cursor"}
    return body


def expected(**where) -> list[str]:
    """message_ids of DATA matching ``where``, newest first (ties: message_id descending)."""
    since = where.pop("since", None)
    until = where.pop("until", None)
    fields = {
        "type": "type",
        "event": "event",
        "user_id": "userId",
        "anonymous_id": "anonymousId",
        "session_id": "sessionId",
    }
    rows = []
    for item in DATA:
        when = parse_time(item["timestamp"])
        if since is not None and when < since:
            continue
        if until is not None and when >= until:
            continue
        if "source" in where and SOURCE_OF_KEY[item["_key"]] != where["source"]:
            continue
        if any(item.get(fields[k]) != v for k, v in where.items() if k != "source"):
            continue
        rows.append((when, item["messageId"]))
    rows.sort(reverse=True)
    return [message_id for _, message_id in rows]


def ids(events) -> list[str]:
    return [event["message_id"] for event in events]


# -- authentication -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/events", "/api/v1/events/alice-00"])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
        {"Authorization": "Bearer"},
        {"Authorization": ADMIN_TOKEN},
        {"Authorization": f"Token {ADMIN_TOKEN}"},
    ],
    ids=["missing", "wrong", "longer", "empty", "no-scheme", "other-scheme"],
)
def test_query_api_requires_the_admin_token(api, path, headers):
    response = get(api, headers=headers, path=path)
    assert_error(response, 401, "unauthorized", "Authorization")
    assert "Bearer" in response.headers["www-authenticate"]


def test_basic_auth_with_the_token_is_not_accepted(api):
    response = api.client.get("/api/v1/events", auth=(ADMIN_TOKEN, ""))
    assert_error(response, 401, "unauthorized", "Authorization")


def test_a_write_key_is_not_an_admin_token(api):
    response = get(api, headers={"Authorization": "Bearer wk-web"})
    assert_error(response, 401, "unauthorized")


def test_bearer_scheme_is_case_insensitive(api):
    response = get(api, headers={"Authorization": f"bearer {ADMIN_TOKEN}"})
    assert response.status_code == 200, response.text


# -- listing and filters ------------------------------------------------------------------


def test_everything_newest_first(api):
    body = page(api, limit=1000)
    assert body["next_cursor"] is None
    assert ids(body["events"]) == expected()
    assert len(body["events"]) == len(DATA)
    stamps = [parse_time(e["timestamp"]) for e in body["events"]]
    assert stamps == sorted(stamps, reverse=True)


def test_default_limit_is_100(tmp_path_factory):
    with running(tmp_path_factory.mktemp("default-limit")) as server:
        batch = [{"type": "track", "userId": "u", "event": "e"} for _ in range(150)]
        assert server.post("/v1/batch", {"batch": batch}).status_code == 200
        body = page(server)
        assert len(body["events"]) == 100
        assert body["next_cursor"]
        rest = page(server, cursor=body["next_cursor"])
        assert len(rest["events"]) == 50
        assert rest["next_cursor"] is None


def test_each_event_has_every_stored_column(api):
    for event in page(api, limit=1000)["events"]:
        assert set(event) == set(STORED_COLUMNS)


@pytest.mark.parametrize(
    "where",
    [
        {"type": "identify"},
        {"type": "page"},
        {"type": "track"},
        {"type": "alias"},
        {"event": "Clicked"},
        {"event": "Tied"},
        {"event": "clicked"},
        {"user_id": "alice"},
        {"user_id": "bob"},
        {"user_id": "nobody"},
        {"anonymous_id": "anon-c"},
        {"anonymous_id": "anon-b"},
        {"session_id": "s-a"},
        {"source": "web"},
        {"source": "ios"},
        {"source": "default"},
        {"type": "track", "user_id": "alice"},
        {"type": "track", "source": "web", "event": "Tied"},
        {"user_id": "bob", "source": "web"},
    ],
    ids=lambda where: "&".join(f"{k}={v}" for k, v in where.items()),
)
def test_filters(api, where):
    body = page(api, limit=1000, **where)
    assert ids(body["events"]) == expected(**where)
    for event in body["events"]:
        for name, value in where.items():
            assert event[name] == value


def test_filter_sizes_are_what_was_sent(api):
    # A guard on expected(): the filters really select something.
    assert len(expected(type="identify")) == 5
    assert len(expected(source="ios")) == 8
    assert len(expected(session_id="s-a")) == 10
    assert expected(user_id="nobody") == []


def test_since_is_inclusive(api):
    since = BASE + timedelta(hours=3)
    body = page(api, limit=1000, since=iso(since))
    assert ids(body["events"]) == expected(since=since)
    assert "alice-03" in ids(body["events"])
    assert "bob-02" not in ids(body["events"])  # 02:30
    assert all(parse_time(e["timestamp"]) >= since for e in body["events"])


def test_until_is_exclusive(api):
    until = BASE + timedelta(hours=3)
    body = page(api, limit=1000, until=iso(until))
    assert ids(body["events"]) == expected(until=until)
    assert "alice-03" not in ids(body["events"])
    assert "alice-02" in ids(body["events"])
    assert "bob-02" in ids(body["events"])


def test_since_and_until_together(api):
    since, until = BASE + timedelta(hours=2), BASE + timedelta(hours=4, minutes=30)
    body = page(api, limit=1000, since=iso(since), until=iso(until), user_id="alice")
    assert ids(body["events"]) == ["alice-04", "alice-03", "alice-02"]


def test_since_equal_to_until_is_empty(api):
    at = iso(BASE + timedelta(hours=3))
    assert page(api, since=at, until=at)["events"] == []


@pytest.mark.parametrize(
    "value",
    [
        "2024-01-01T03:00:00Z",
        "2024-01-01T03:00:00+00:00",
        "2024-01-01T08:30:00+05:30",
        "2023-12-31T22:00:00-05:00",
        "2024-01-01T03:00:00",
        "2024-01-01T03:00:00.000Z",
    ],
)
def test_since_accepts_iso_8601_with_any_offset(api, value):
    body = page(api, limit=1000, since=value, user_id="alice")
    assert ids(body["events"]) == [f"alice-{i:02d}" for i in range(9, 2, -1)]


def test_since_with_an_unencoded_plus_in_the_url(api):
    # A hand-written URL: "+" in a query string decodes to a space.
    response = api.client.get(
        "/api/v1/events?user_id=alice&since=2024-01-01T08:30:00+05:30", headers=AUTH
    )
    assert response.status_code == 200, response.text
    assert ids(response.json()["events"]) == [f"alice-{i:02d}" for i in range(9, 2, -1)]


def test_since_with_a_percent_encoded_plus(api):
    response = api.client.get(
        f"/api/v1/events?user_id=alice&since={quote('2024-01-01T08:30:00+05:30')}", headers=AUTH
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["events"]) == 7


# -- pagination ---------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 2, 7, 24, 25, 26, 42, 43])
def test_pagination_visits_every_event_exactly_once(api, limit):
    seen = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        body = page(api, **params)
        pages += 1
        assert len(body["events"]) <= limit
        seen.extend(ids(body["events"]))
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert len(body["events"]) == limit
    assert seen == expected()
    assert len(set(seen)) == len(DATA)
    assert pages == -(-len(DATA) // limit)


def test_pagination_through_equal_timestamps_only(api):
    seen = []
    cursor = None
    while True:
        body = page(api, event="Tied", limit=3, **({"cursor": cursor} if cursor else {}))
        seen.extend(ids(body["events"]))
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"tie-{i:02d}" for i in range(24, -1, -1)]


def test_pagination_keeps_the_filters(api):
    first = page(api, user_id="alice", limit=4)
    second = page(api, user_id="alice", limit=4, cursor=first["next_cursor"])
    third = page(api, user_id="alice", limit=4, cursor=second["next_cursor"])
    assert third["next_cursor"] is None
    assert ids(first["events"] + second["events"] + third["events"]) == expected(user_id="alice")


def test_the_last_full_page_has_no_cursor(api):
    body = page(api, user_id="alice", limit=10)
    assert len(body["events"]) == 10
    assert body["next_cursor"] is None


def test_events_arriving_between_pages_do_not_shift_them(server):
    user = uid()
    batch = [
        {
            "type": "track",
            "userId": user,
            "event": "old",
            "messageId": f"{user}-{i:02d}",
            "timestamp": iso(BASE + timedelta(minutes=i)),
        }
        for i in range(10)
    ]
    assert server.post("/v1/batch", {"batch": batch}).status_code == 200
    first = page(server, user_id=user, limit=4)
    newer = {"userId": user, "event": "new", "timestamp": iso(BASE + timedelta(days=1))}
    assert server.post("/v1/track", newer).status_code == 200
    seen = ids(first["events"])
    cursor = first["next_cursor"]
    while cursor:
        body = page(server, user_id=user, limit=4, cursor=cursor)
        seen.extend(ids(body["events"]))
        cursor = body["next_cursor"]
    assert seen == [f"{user}-{i:02d}" for i in range(9, -1, -1)]


# -- bad parameters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "-5"}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2024-13-01T00:00:00Z"}, "since"),
        ({"until": "soon"}, "until"),
        ({"cursor": "garbage"}, "cursor"),
        ({"cursor": "!!!"}, "cursor"),
        ({"cursor": "eyJhIjoxfQ"}, "cursor"),  # base64 of {"a":1}
        ({"cursor": "WyJub3QgYSB0aW1lIiwibSJd"}, "cursor"),  # ["not a time","m"]
        ({"cursor": "é"}, "cursor"),
        ({"foo": "bar"}, "foo"),
        ({"userId": "alice"}, "userId"),
        ({"type": "track", "sort": "asc"}, "sort"),
    ],
)
def test_bad_parameter_is_400_naming_it(api, params, name):
    response = get(api, params)
    body = assert_error(response, 400, "invalid_param", name)
    assert body["message"].startswith(f"{name}:")


@pytest.mark.parametrize(
    "blank",
    ["type", "event", "user_id", "anonymous_id", "session_id", "source", "since", "until"],
)
def test_blank_parameters_mean_no_filter(api, blank):
    # An HTML form (the dashboard's filter bar) submits empty fields as "name=".
    response = api.client.get(f"/api/v1/events?{blank}=&limit=1000", headers=AUTH)
    assert response.status_code == 200, response.text
    assert ids(response.json()["events"]) == expected()


def test_blank_parameters_next_to_real_ones(api):
    response = api.client.get(
        "/api/v1/events?type=&event=Clicked&user_id=&since=&limit=1000", headers=AUTH
    )
    assert response.status_code == 200, response.text
    assert ids(response.json()["events"]) == expected(event="Clicked")


def test_blank_limit_and_cursor_mean_the_defaults(api):
    response = api.client.get("/api/v1/events?limit=&cursor=", headers=AUTH)
    assert response.status_code == 200, response.text
    assert ids(response.json()["events"]) == expected()


def test_limit_bounds_are_accepted(api):
    assert len(page(api, limit=1)["events"]) == 1
    assert len(page(api, limit=1000)["events"]) == len(DATA)


def test_repeated_parameter_is_400(api):
    response = api.client.get("/api/v1/events?type=track&type=page", headers=AUTH)
    assert_error(response, 400, "invalid_param", "type")


def test_bad_parameters_still_need_the_token(api):
    response = get(api, {"limit": "x"}, headers={})
    assert_error(response, 401, "unauthorized")


# -- one event ----------------------------------------------------------------------------


def test_get_one_event(api):
    response = get(api, path="/api/v1/events/bob-03")
    assert response.status_code == 200, response.text
    event = response.json()
    assert set(event) == set(STORED_COLUMNS)
    assert event["message_id"] == "bob-03"
    assert event["type"] == "identify"
    assert event["user_id"] == "bob"
    assert event["anonymous_id"] == "anon-b"
    assert event["source"] == "ios"
    assert event["traits"] == {"plan": "pro", "i": 3}
    assert event["properties"] is None
    assert event["context"] == {"ip": "127.0.0.1"}
    assert event["timestamp"] == "2024-01-01T03:30:00.000Z"


def test_get_one_track_event_has_json_objects(api):
    response = get(api, path="/api/v1/events/alice-07")
    assert response.status_code == 200, response.text
    event = response.json()
    assert event["properties"] == {"i": 7}
    assert isinstance(event["context"], dict)
    assert event["traits"] is None
    assert event["session_id"] == "s-a"


def test_get_one_event_equals_the_listed_one(api):
    listed = {e["message_id"]: e for e in page(api, limit=1000)["events"]}
    for message_id in ("alice-00", "carol-02", "tie-13"):
        response = get(api, path=f"/api/v1/events/{message_id}")
        assert response.json() == listed[message_id]


def test_get_an_unknown_event_is_404(api):
    response = get(api, path="/api/v1/events/no-such-id")
    body = assert_error(response, 404, "not_found", "message_id")
    assert "no-such-id" in body["message"]


def test_get_one_with_an_escaped_id(server):
    user = uid()
    message_id = f"{user} with spaces é"
    body = {"userId": user, "event": "e", "messageId": message_id}
    assert server.post("/v1/track", body).status_code == 200
    response = get(server, path=f"/api/v1/events/{quote(message_id)}")
    assert response.status_code == 200, response.text
    assert response.json()["message_id"] == message_id


def test_get_one_whose_id_contains_a_slash(server):
    # messageId is any string a client chose; the API must be able to fetch each one.
    user = uid()
    message_id = f"{user}/part/2"
    body = {"userId": user, "event": "e", "messageId": message_id}
    assert server.post("/v1/track", body).status_code == 200
    response = get(server, path=f"/api/v1/events/{quote(message_id, safe='')}")
    assert response.status_code == 200, response.text
    assert response.json()["message_id"] == message_id
    assert get(server, path=f"/api/v1/events/{user}/part/3").status_code == 404


# -- the cursor functions -----------------------------------------------------------------


def test_cursor_round_trip():
    when = datetime(2024, 5, 6, 7, 8, 9, 123456)
    cursor = encode_cursor(when, "msg-1", "web")
    assert decode_cursor(cursor) == (when, "msg-1", "web")
    assert "=" not in cursor
    assert all(ch.isalnum() or ch in "-_" for ch in cursor)


def test_a_cursor_of_an_earlier_release_names_no_source():
    when = datetime(2024, 5, 6, 7, 8, 9, 123456)
    assert decode_cursor(encode_cursor(when, "msg-1")) == (when, "msg-1", None)
    # What the previous release sent as next_cursor: [timestamp, message_id].
    assert decode_cursor("WyIyMDI0LTA1LTA2VDA3OjA4OjA5LjEyMzQ1NiIsIm1zZy0xIl0") == (
        when,
        "msg-1",
        None,
    )


def test_cursor_round_trip_with_an_awkward_message_id():
    when = datetime(2024, 5, 6, tzinfo=UTC)
    message_id = 'a"b\\c/é?&=+ ' + "x" * 80
    source = 'ios:app/"v2" é'
    assert decode_cursor(encode_cursor(when, message_id, source)) == (when, message_id, source)


@pytest.mark.parametrize(
    "cursor",
    ["", "garbage", "@@@@", "eyJhIjoxfQ", "WyJub3QgYSB0aW1lIiwibSJd", "WzEsMl0", "é", "a"],
)
def test_bad_cursor_raises_invalid_query_naming_cursor(cursor):
    with pytest.raises(InvalidQuery) as info:
        decode_cursor(cursor)
    assert info.value.field == "cursor"
    assert str(info.value).startswith("cursor:")


def test_server_processes_starting_at_once_create_the_sqlite_schema(tmp_path):
    """Several gunicorn workers of a queued edge open one new SQLite file at start-up;
    each must come up (SQLite refuses some concurrent schema writes without waiting)."""
    from eventrouter.sinks.sqlite_store import SQLiteStore
    from eventrouter.store.query import EventStore

    errors: list[str] = []
    for trial in range(20):
        url = f"sqlite:///{tmp_path}/events-{trial}.db"

        def start(url: str = url) -> None:
            store = EventStore(SQLiteStore(url))
            try:
                store.ensure_schema()
            except Exception as exc:  # reported below, with the trial's others
                errors.append(repr(exc))
            finally:
                store.close()

        threads = [threading.Thread(target=start) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []


def test_a_later_page_reads_the_timestamp_index_as_the_first_does(tmp_path):
    """A cursor page bounds ``timestamp`` on its own beside the keyset OR: SQLite's
    planner otherwise searched the index twice (``MULTI-INDEX OR``), read every older row
    and sorted them all (page 2 of 10M events took 35 s, page 1 4 ms)."""
    from sqlalchemy.dialects import sqlite

    from eventrouter.sinks.sqlite_store import SQLiteStore
    from eventrouter.store.query import EventFilter, EventStore

    store = EventStore(SQLiteStore(f"sqlite:///{tmp_path}/events.db"))
    try:
        store.ensure_schema()
        moment = datetime.now(UTC)
        conditions = store.conditions(EventFilter(type="track"))
        conditions.append(store._after(moment, "m-1", "web"))
        statement = store.dialect.page(conditions, 101)
        sql = str(statement.compile(dialect=sqlite.dialect()))
        with store.engine.connect() as connection:
            params = statement.compile(dialect=sqlite.dialect()).params
            plan = connection.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + sql, tuple(params.values())
            ).all()
        steps = " | ".join(str(row[-1]) for row in plan)
        assert "MULTI-INDEX OR" not in steps, steps
        assert "USE TEMP B-TREE FOR ORDER BY" not in steps, steps  # a sort of all of them
        assert "timestamp<" in steps.replace(" ", ""), steps
    finally:
        store.close()
