"""Every ingestion endpoint, what it stores, and how it reads and authenticates bodies.

Everything is checked the way a user sees it: the HTTP answer, then the row read back
through ``GET /api/v1/events``.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import ORIGINAL_TRACK
from tests.ingest_support import (
    assert_error,
    gz,
    parse_time,
    post_raw,
    running,
    the_event,
    uid,
)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    with running(tmp_path_factory.mktemp("ingest")) as server:
        yield server


IDEMPOTENT = {
    "sinks": {
        "local": {
            "type": "sqlite",
            "url": "sqlite:///${EVENTROUTER_DATA_DIR}/events.db",
            "indexes": ["message_id", "user_id"],
        }
    }
}


@pytest.fixture(scope="module")
def idempotent(tmp_path_factory):
    """A store with the unique message_id index: redelivered events are stored once."""
    with running(tmp_path_factory.mktemp("idempotent"), IDEMPOTENT) as server:
        yield server


def ok(response):
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True}


# -- POST /track ---------------------------------------------------------------------------


def test_track_original_payload_exactly(server):
    ok(server.post("/track", ORIGINAL_TRACK))
    [event] = server.events()
    assert event["type"] == "track"
    assert event["event"] == "page_view"
    assert event["properties"] == {"path": "/home"}
    assert event["user_id"] == "u1"
    assert event["anonymous_id"] is None
    assert event["session_id"] == "s1"
    assert event["source"] == "default"
    assert event["timestamp"] == "2025-05-28T04:17:35.000Z"
    assert event["original_timestamp"] == "2025-05-28T04:17:35.000Z"
    assert event["traits"] is None
    assert event["context"] == {"ip": "127.0.0.1"}
    assert event["message_id"]


def test_track_accepts_a_segment_track_body(shared):
    user = uid()
    ok(
        shared.post(
            "/track",
            {
                "userId": user,
                "event": "Order Completed",
                "properties": {"total": 12.5},
                "messageId": f"m-{user}",
            },
        )
    )
    event = the_event(shared, user_id=user)
    assert event["type"] == "track"
    assert event["event"] == "Order Completed"
    assert event["properties"] == {"total": 12.5}
    assert event["message_id"] == f"m-{user}"


def test_track_original_payload_without_user_is_rejected(shared):
    response = shared.post("/track", {"event_type": "page_view", "session_id": "s1"})
    assert_error(response, 400, "missing_field", "user_id", "anonymous_id")


def test_track_original_payload_with_anonymous_id(shared):
    anon = uid("a")
    ok(shared.post("/track", {"event_type": "signup", "anonymous_id": anon}))
    event = the_event(shared, anonymous_id=anon)
    assert event["event"] == "signup"
    assert event["user_id"] is None


def test_track_original_payload_bad_event_type(shared):
    assert_error(
        shared.post("/track", {"event_type": 5, "user_id": "u"}), 400, "invalid_field", "event_type"
    )


def test_track_segment_body_without_event(shared):
    assert_error(shared.post("/track", {"userId": "u"}), 400, "missing_field", "event")


# -- the Segment endpoints and their short paths ------------------------------------------

TRACK = {"event": "Clicked", "properties": {"button": "buy"}}
IDENTIFY = {"traits": {"email": "a@example.com", "plan": "pro"}}
PAGE = {"name": "Pricing", "category": "Docs", "properties": {"path": "/pricing"}}
SCREEN = {"name": "Home", "category": "Main", "properties": {"variant": "b"}}
GROUP = {"groupId": "g-1", "traits": {"name": "Acme"}}
ALIAS = {"previousId": "old-id"}


def check_track(event):
    assert event["type"] == "track"
    assert event["event"] == "Clicked"
    assert event["properties"] == {"button": "buy"}
    assert event["name"] is None
    assert event["traits"] is None


def check_identify(event):
    assert event["type"] == "identify"
    assert event["traits"] == {"email": "a@example.com", "plan": "pro"}
    assert event["event"] is None
    assert event["properties"] is None


def check_page(event):
    assert event["type"] == "page"
    assert event["name"] == "Pricing"
    assert event["properties"] == {"path": "/pricing", "name": "Pricing", "category": "Docs"}
    assert event["event"] is None


def check_screen(event):
    assert event["type"] == "screen"
    assert event["name"] == "Home"
    assert event["properties"] == {"variant": "b", "name": "Home", "category": "Main"}


def check_group(event):
    assert event["type"] == "group"
    assert event["group_id"] == "g-1"
    assert event["traits"] == {"name": "Acme"}
    assert event["properties"] is None


def check_alias(event):
    assert event["type"] == "alias"
    assert event["previous_id"] == "old-id"
    assert event["group_id"] is None
    assert event["traits"] is None
    assert event["properties"] is None


CASES = {
    "track": (TRACK, check_track),
    "identify": (IDENTIFY, check_identify),
    "page": (PAGE, check_page),
    "screen": (SCREEN, check_screen),
    "group": (GROUP, check_group),
    "alias": (ALIAS, check_alias),
}
PATHS = [
    ("/v1/track", "track"),
    ("/v1/identify", "identify"),
    ("/v1/page", "page"),
    ("/v1/screen", "screen"),
    ("/v1/group", "group"),
    ("/v1/alias", "alias"),
    ("/v1/t", "track"),
    ("/v1/i", "identify"),
    ("/v1/p", "page"),
    ("/v1/s", "screen"),
    ("/v1/g", "group"),
    ("/v1/a", "alias"),
]


@pytest.mark.parametrize(("path", "kind"), PATHS)
def test_single_event_endpoint_stores_its_type(shared, path, kind):
    body, check = CASES[kind]
    user = uid()
    ok(shared.post(path, {**body, "userId": user}))
    event = the_event(shared, user_id=user)
    check(event)
    assert event["user_id"] == user
    assert event["source"] == "default"
    assert parse_time(event["timestamp"]) == parse_time(event["received_at"])


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/import", "/v1/b"])
def test_batch_endpoints_store_every_type(shared, path):
    user = uid()
    batch = [{**body, "type": kind, "userId": user} for kind, (body, _) in CASES.items()]
    ok(shared.post(path, {"batch": batch}))
    stored = {event["type"]: event for event in shared.events(user_id=user)}
    assert sorted(stored) == sorted(CASES)
    for kind, (_, check) in CASES.items():
        check(stored[kind])


def test_page_without_name_or_category_keeps_properties_only(shared):
    user = uid()
    ok(shared.post("/v1/page", {"userId": user, "properties": {"path": "/"}}))
    event = the_event(shared, user_id=user)
    assert event["name"] is None
    assert event["properties"] == {"path": "/"}


def test_page_name_does_not_overwrite_a_name_property(shared):
    user = uid()
    ok(shared.post("/v1/page", {"userId": user, "name": "Outer", "properties": {"name": "Inner"}}))
    event = the_event(shared, user_id=user)
    assert event["name"] == "Outer"
    assert event["properties"] == {"name": "Inner"}


def test_anonymous_id_alone_is_enough(shared):
    anon = uid("anon")
    ok(shared.post("/v1/track", {"anonymousId": anon, "event": "Viewed"}))
    event = the_event(shared, anonymous_id=anon)
    assert event["user_id"] is None
    assert event["anonymous_id"] == anon


def test_numeric_user_id_is_stored_as_a_string(shared):
    number = int(uid("").replace("-", "")[:10], 16)
    ok(shared.post("/v1/identify", {"userId": number, "anonymousId": 42}))
    event = the_event(shared, user_id=str(number))
    assert event["user_id"] == str(number)
    assert event["anonymous_id"] == "42"


def test_numeric_group_and_previous_ids_are_stored_as_strings(shared):
    user = uid()
    ok(shared.post("/v1/group", {"userId": user, "groupId": 7}))
    ok(shared.post("/v1/alias", {"userId": user, "previousId": 8}))
    stored = {event["type"]: event for event in shared.events(user_id=user)}
    assert stored["group"]["group_id"] == "7"
    assert stored["alias"]["previous_id"] == "8"


def test_session_id_from_body_or_context(shared):
    user = uid()
    ok(shared.post("/v1/track", {"userId": user, "event": "a", "sessionId": "s-body"}))
    ok(shared.post("/v1/track", {"userId": user, "event": "b", "context": {"sessionId": 99}}))
    stored = {event["event"]: event for event in shared.events(user_id=user)}
    assert stored["a"]["session_id"] == "s-body"
    assert stored["b"]["session_id"] == "99"


def test_unknown_fields_are_ignored(shared):
    user = uid()
    ok(
        shared.post(
            "/v1/t",
            {"userId": user, "event": "e", "_metadata": {"bundled": []}, "somethingNew": 1},
        )
    )
    assert the_event(shared, user_id=user)["event"] == "e"


# -- Content-Type -------------------------------------------------------------------------


#: What real clients send: analytics.js posts text/plain (no CORS preflight); axios, and
#: so rudder-sdk-node with gzip, sends a Buffer as application/x-www-form-urlencoded; Java
#: and .NET clients send charsets in any case; some send no Content-Type at all.
CONTENT_TYPES = {
    "json": "application/json",
    "json-charset": "application/json; charset=utf-8",
    "json-charset-upper": "APPLICATION/JSON; CHARSET=UTF-8",
    "text-plain": "text/plain",
    "text-plain-charset": "text/plain;charset=UTF-8",
    "form-urlencoded": "application/x-www-form-urlencoded",
    "form-urlencoded-charset": "application/x-www-form-urlencoded; charset=utf-8",
    "none": None,
}

#: Every ingestion path, with a body of its kind for one user.
INGEST_PATHS = {
    "/track": lambda user: {"event_type": "Typed", "user_id": user},
    "/v1/track": lambda user: {"userId": user, "event": "Typed"},
    "/v1/identify": lambda user: {"userId": user, "traits": {"plan": "pro"}},
    "/v1/page": lambda user: {"userId": user, "name": "Typed"},
    "/v1/t": lambda user: {"userId": user, "event": "Typed"},
    "/v1/p": lambda user: {"userId": user, "name": "Typed"},
    "/v1/batch": lambda user: {"batch": [{"type": "track", "userId": user, "event": "Typed"}]},
    "/v1/b": lambda user: {"batch": [{"type": "page", "userId": user, "name": "Typed"}]},
    "/v1/import": lambda user: {"batch": [{"type": "track", "userId": user, "event": "Typed"}]},
}


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("content_type", list(CONTENT_TYPES.values()), ids=list(CONTENT_TYPES))
@pytest.mark.parametrize("path", list(INGEST_PATHS))
def test_the_body_decides_whatever_the_content_type(shared, path, content_type, gzipped):
    """A body that is JSON after its Content-Encoding is ingested, whatever the
    Content-Type says, on every ingestion path, plain and gzip."""
    user = uid()
    body = json.dumps(INGEST_PATHS[path](user)).encode()
    headers = {} if content_type is None else {"Content-Type": content_type}
    if gzipped:
        body = gz(body)
        headers["Content-Encoding"] = "gzip"
    ok(post_raw(shared, path, body, headers))
    assert the_event(shared, user_id=user)["source"] == "default"


def test_no_content_type_header_is_really_absent(shared):
    # Guard for the tests above: httpx adds no Content-Type to raw content.
    request = shared.client.build_request("POST", "/v1/t", content=b"{}")
    assert "content-type" not in request.headers


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml"],
)
@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch", "/track"])
def test_a_body_that_is_not_json_is_400_whatever_the_content_type(shared, path, content_type):
    """What decides is the body: a real form body is refused as not JSON (400), not for
    its media type (no 415), and nothing is stored."""
    user = uid()
    response = post_raw(shared, path, f"userId={user}&event=e", {"Content-Type": content_type})
    assert_error(response, 400, "invalid_json", "JSON")
    assert shared.events(user_id=user) == []


@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
def test_a_gzip_body_without_content_encoding_is_read(shared, path):
    """A gzip body whose client forgot Content-Encoding starts with gzip's magic bytes,
    which no JSON text can start with: it is gunzipped rather than refused."""
    user = uid()
    item = {"userId": user, "event": "Sniffed", "type": "track"}
    body = {"batch": [item]} if path == "/v1/batch" else item
    ok(post_raw(shared, path, gz(json.dumps(body).encode()), {"Content-Type": "text/plain"}))
    assert the_event(shared, user_id=user)["event"] == "Sniffed"


@pytest.mark.parametrize(
    "body,traits",
    [
        # As rudder-sdk-python sends an identify: traits only in context.traits.
        ({"context": {"traits": {"email": "r@example.com", "plan": "pro"}}},
         {"email": "r@example.com", "plan": "pro"}),
        ({"traits": {}, "context": {"traits": {"plan": "pro"}}}, {"plan": "pro"}),
        # Top-level traits win; an empty or non-object context.traits adds nothing.
        ({"traits": {"plan": "free"}, "context": {"traits": {"plan": "pro"}}}, {"plan": "free"}),
        ({"context": {"traits": {}}}, {}),
        ({"context": {"traits": "pro"}}, {}),
    ],
    ids=["context-only", "empty-top-level", "top-level-wins", "empty-context", "not-an-object"],
)  # fmt: skip
def test_identify_traits_sent_as_context_traits_are_its_traits(shared, body, traits):
    user = uid()
    ok(shared.post("/v1/batch", {"batch": [{"type": "identify", "userId": user, **body}]}))
    event = the_event(shared, user_id=user)
    assert event["traits"] == traits
    assert event["context"].get("traits") == body["context"]["traits"]  # context keeps it


def test_utf8_text_is_stored_intact(shared):
    user = uid()
    body = {"userId": user, "event": "Café ☕", "properties": {"emoji": "🎉", "jp": "日本"}}
    response = post_raw(
        shared,
        "/v1/t",
        json.dumps(body, ensure_ascii=False).encode(),
        {"Content-Type": "text/plain"},
    )
    ok(response)
    event = the_event(shared, user_id=user)
    assert event["event"] == "Café ☕"
    assert event["properties"] == {"emoji": "🎉", "jp": "日本"}


# -- Content-Encoding ---------------------------------------------------------------------


def test_gzip_body_is_accepted(shared):
    user = uid()
    body = json.dumps({"userId": user, "event": "Zipped", "properties": {"n": 1}}).encode()
    response = post_raw(
        shared,
        "/v1/track",
        gz(body),
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    ok(response)
    event = the_event(shared, user_id=user)
    assert event["event"] == "Zipped"
    assert event["properties"] == {"n": 1}


def test_gzip_batch_is_accepted(shared):
    user = uid()
    batch = [{"type": "track", "userId": user, "event": f"e{i}"} for i in range(50)]
    response = post_raw(
        shared,
        "/v1/batch",
        gz(json.dumps({"batch": batch}).encode()),
        {"Content-Type": "text/plain", "Content-Encoding": "GZIP"},
    )
    ok(response)
    assert len(shared.events(user_id=user)) == 50


def test_x_gzip_content_encoding_is_gzip(shared):
    """RFC 9110, 8.4.1.3: a recipient treats x-gzip as gzip."""
    user = uid()
    body = gz(json.dumps({"userId": user, "event": "XZipped"}).encode())
    ok(post_raw(shared, "/v1/track", body, {"Content-Encoding": "x-gzip"}))
    assert the_event(shared, user_id=user)["event"] == "XZipped"


def test_identity_content_encoding_is_accepted(shared):
    user = uid()
    response = post_raw(
        shared,
        "/v1/track",
        json.dumps({"userId": user, "event": "Plain"}),
        {"Content-Encoding": "identity"},
    )
    ok(response)
    assert the_event(shared, user_id=user)["event"] == "Plain"


@pytest.mark.parametrize("encoding", ["br", "deflate", "zstd"])
def test_unknown_content_encoding_is_415(shared, encoding):
    user = uid()
    response = post_raw(
        shared,
        "/v1/track",
        json.dumps({"userId": user, "event": "e"}),
        {"Content-Type": "application/json", "Content-Encoding": encoding},
    )
    body = assert_error(response, 415, "unsupported_encoding", "Content-Encoding")
    assert encoding in body["message"]
    assert shared.events(user_id=user) == []


def test_corrupt_gzip_is_400(shared):
    response = post_raw(
        shared,
        "/v1/track",
        b"\x1f\x8b\x08\x00garbage-not-deflate-data",
        {"Content-Encoding": "gzip"},
    )
    assert_error(response, 400, "invalid_gzip", "gzip")


def test_plain_json_sent_as_gzip_is_400(shared):
    response = post_raw(
        shared, "/v1/track", b'{"userId":"u","event":"e"}', {"Content-Encoding": "gzip"}
    )
    assert_error(response, 400, "invalid_gzip", "gzip")


def test_truncated_gzip_is_400_and_nothing_is_stored(shared):
    user = uid()
    data = gz(json.dumps({"userId": user, "event": "Cut", "properties": {"x": "y" * 200}}).encode())
    response = post_raw(shared, "/v1/track", data[: len(data) // 2], {"Content-Encoding": "gzip"})
    assert_error(response, 400, "invalid_gzip", "truncated")
    assert shared.events(user_id=user) == []


def test_gzip_of_several_members_is_read_whole(shared):
    """``cat a.gz b.gz`` is one gzip body (RFC 1952): every member's bytes count."""
    user = uid()
    batch = json.dumps({"batch": [{"type": "track", "userId": user, "event": f"e{i}"}
                                  for i in range(3)]}).encode()  # fmt: skip
    cut = len(batch) // 2
    response = post_raw(
        shared, "/v1/batch", gz(batch[:cut]) + gz(batch[cut:]), {"Content-Encoding": "gzip"}
    )
    ok(response)
    assert sorted(e["event"] for e in shared.events(user_id=user)) == ["e0", "e1", "e2"]


@pytest.mark.parametrize("trailer", [b"garbage", b"\x1f\x8b\x08\x00not-deflate", b"\x1f\x8b"])
def test_bytes_after_the_gzip_stream_are_400_not_ignored(shared, trailer):
    user = uid()
    data = gz(json.dumps({"userId": user, "event": "Tail"}).encode()) + trailer
    response = post_raw(shared, "/v1/track", data, {"Content-Encoding": "gzip"})
    assert_error(response, 400, "invalid_gzip", "gzip")
    assert shared.events(user_id=user) == []


def test_gzip_with_a_broken_trailer_is_400(shared):
    user = uid()
    data = bytearray(gz(json.dumps({"userId": user, "event": "Crc"}).encode()))
    data[-8] ^= 0xFF  # CRC32 of the uncompressed data
    response = post_raw(shared, "/v1/track", bytes(data), {"Content-Encoding": "gzip"})
    assert_error(response, 400, "invalid_gzip", "gzip")
    assert shared.events(user_id=user) == []


# -- writeKey -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    raw = {
        "sources": [
            {"name": "web", "write_key": "wk1"},
            {"name": "ios", "write_key": "wk2"},
        ]
    }
    with running(tmp_path_factory.mktemp("keyed"), raw) as server:
        yield server


def test_write_key_as_basic_auth_username(keyed):
    user = uid()
    ok(keyed.post("/v1/track", {"userId": user, "event": "e"}, auth=("wk1", "")))
    assert the_event(keyed, user_id=user)["source"] == "web"


def test_each_write_key_maps_to_its_source(keyed):
    user = uid()
    ok(keyed.post("/v1/track", {"userId": user, "event": "web"}, auth=("wk1", "")))
    ok(keyed.post("/v1/track", {"userId": user, "event": "ios"}, auth=("wk2", "")))
    stored = {e["event"]: e["source"] for e in keyed.events(user_id=user)}
    assert stored == {"web": "web", "ios": "ios"}
    assert {e["event"] for e in keyed.events(user_id=user, source="ios")} == {"ios"}


def test_write_key_in_the_body(keyed):
    user = uid()
    ok(keyed.post("/v1/identify", {"userId": user, "writeKey": "wk1"}))
    assert the_event(keyed, user_id=user)["source"] == "web"


def test_write_key_in_the_body_of_the_original_track_payload(keyed):
    user = uid()
    ok(keyed.post("/track", {"event_type": "legacy", "user_id": user, "write_key": "wk2"}))
    assert the_event(keyed, user_id=user)["source"] == "ios"


def test_write_key_in_a_segment_body_on_track(keyed):
    user = uid()
    ok(keyed.post("/track", {"event": "seg", "userId": user, "writeKey": "wk2"}))
    assert the_event(keyed, user_id=user)["source"] == "ios"


def test_write_key_in_the_batch_envelope(keyed):
    user = uid()
    batch = [{"type": "track", "userId": user, "event": f"e{i}"} for i in range(3)]
    ok(keyed.post("/v1/batch", {"batch": batch, "writeKey": "wk1"}))
    stored = keyed.events(user_id=user)
    assert len(stored) == 3
    assert {e["source"] for e in stored} == {"web"}


def test_write_key_as_basic_auth_on_a_batch(keyed):
    user = uid()
    batch = [{"type": "identify", "userId": user}]
    ok(keyed.post("/v1/b", {"batch": batch}, auth=("wk2", "")))
    assert the_event(keyed, user_id=user)["source"] == "ios"


def test_write_key_with_a_password_is_still_the_username(keyed):
    user = uid()
    ok(keyed.post("/v1/track", {"userId": user, "event": "e"}, auth=("wk1", "ignored")))
    assert the_event(keyed, user_id=user)["source"] == "web"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/track", {"event": "e"}),
        ("/v1/t", {"event": "e"}),
        ("/track", {"event_type": "e"}),
        ("/v1/batch", {"batch": [{"type": "track", "event": "e"}]}),
    ],
)
def test_missing_write_key_is_401(keyed, path, body):
    user = uid()
    body = {**body, "userId": user, "user_id": user}
    if "batch" in body:
        body["batch"][0]["userId"] = user
    response = keyed.post(path, body)
    assert_error(response, 401, "missing_write_key", "writeKey")
    assert keyed.events(user_id=user) == []


@pytest.mark.parametrize(
    "how", ["basic", "body", "batch-envelope", "basic-on-batch"], ids=lambda how: how
)
def test_unknown_write_key_is_401(keyed, how):
    user = uid()
    item = {"userId": user, "event": "e"}
    if how == "basic":
        response = keyed.post("/v1/track", item, auth=("nope", ""))
    elif how == "body":
        response = keyed.post("/v1/track", {**item, "writeKey": "nope"})
    elif how == "batch-envelope":
        response = keyed.post("/v1/batch", {"batch": [{**item, "type": "track"}], "writeKey": "x"})
    else:
        response = keyed.post("/v1/batch", {"batch": [{**item, "type": "track"}]}, auth=("x", ""))
    assert_error(response, 401, "invalid_write_key", "writeKey")
    assert keyed.events(user_id=user) == []


def test_empty_basic_username_counts_as_missing(keyed):
    user = uid()
    response = keyed.post("/v1/track", {"userId": user, "event": "e"}, auth=("", "wk1"))
    assert_error(response, 401, "missing_write_key", "writeKey")
    assert keyed.events(user_id=user) == []


def test_malformed_basic_credentials_are_401(keyed):
    user = uid()
    response = keyed.post(
        "/v1/track", {"userId": user, "event": "e"}, headers={"Authorization": "Basic %%%"}
    )
    assert_error(response, 401, "invalid_authorization", "Authorization")
    assert keyed.events(user_id=user) == []


def test_open_ingestion_accepts_any_or_no_write_key(shared):
    user = uid()
    ok(shared.post("/v1/track", {"userId": user, "event": "none"}))
    ok(shared.post("/v1/track", {"userId": user, "event": "basic"}, auth=("whatever", "")))
    ok(shared.post("/v1/track", {"userId": user, "event": "body", "writeKey": "anything"}))
    stored = shared.events(user_id=user)
    assert {e["event"] for e in stored} == {"none", "basic", "body"}
    assert {e["source"] for e in stored} == {"default"}


@pytest.mark.parametrize(
    "authorization", ["Basic %%%", "Basic", "Bearer abc", "Basic " + "/w==", "Token x"]
)
def test_open_ingestion_ignores_any_authorization_header(shared, authorization):
    user = uid()
    response = shared.post(
        "/v1/track", {"userId": user, "event": "e"}, headers={"Authorization": authorization}
    )
    ok(response)
    assert the_event(shared, user_id=user)["source"] == "default"


# -- messageId and idempotency ------------------------------------------------------------


def test_message_id_is_kept_when_given(shared):
    user = uid()
    ok(shared.post("/v1/track", {"userId": user, "event": "e", "messageId": f"ajs-{user}"}))
    event = the_event(shared, user_id=user)
    assert event["message_id"] == f"ajs-{user}"


def test_message_id_is_generated_and_unique_when_missing(shared):
    user = uid()
    for _ in range(5):
        ok(shared.post("/v1/track", {"userId": user, "event": "e"}))
    ok(shared.post("/track", {"event_type": "legacy", "user_id": user}))
    batch = [{"type": "track", "userId": user, "event": "b"} for _ in range(4)]
    ok(shared.post("/v1/batch", {"batch": batch}))
    ids = [e["message_id"] for e in shared.events(user_id=user)]
    assert len(ids) == 10
    assert len(set(ids)) == 10
    assert all(isinstance(i, str) and 0 < len(i) < 100 for i in ids)


@pytest.mark.parametrize("path", ["/v1/track", "/track"])
def test_repeated_message_id_is_stored_once(idempotent, path):
    shared = idempotent
    user = uid()
    message_id = f"dup-{user}"
    if path == "/track":
        body = {"event_type": "first", "user_id": user, "message_id": message_id}
        again = {**body, "event_type": "second"}
    else:
        body = {"userId": user, "event": "first", "messageId": message_id}
        again = {**body, "event": "second"}
    ok(shared.post(path, body))
    ok(shared.post(path, again))
    event = the_event(shared, user_id=user)
    assert event["message_id"] == message_id
    assert event["event"] == "first"


def test_repeated_message_id_within_one_batch_is_stored_once(idempotent):
    shared = idempotent
    user = uid()
    message_id = f"dup-{user}"
    batch = [
        {"type": "track", "userId": user, "event": "one", "messageId": message_id},
        {"type": "track", "userId": user, "event": "two", "messageId": message_id},
        {"type": "track", "userId": user, "event": "three"},
    ]
    ok(shared.post("/v1/batch", {"batch": batch}))
    stored = shared.events(user_id=user)
    assert sorted(e["event"] for e in stored) == ["one", "three"]


def test_message_id_of_99_chars_is_accepted(shared):
    user = uid()
    message_id = (user + "x" * 99)[:99]
    ok(shared.post("/v1/track", {"userId": user, "event": "e", "messageId": message_id}))
    assert the_event(shared, user_id=user)["message_id"] == message_id


@pytest.mark.parametrize("path", ["/v1/track", "/track", "/v1/batch"])
def test_message_id_of_100_chars_is_rejected(shared, path):
    user = uid()
    message_id = (user + "x" * 100)[:100]
    if path == "/track":
        response = shared.post(
            "/track", {"event_type": "e", "user_id": user, "message_id": message_id}
        )
        name = "message_id"
    elif path == "/v1/batch":
        item = {"type": "track", "userId": user, "event": "e", "messageId": message_id}
        response = shared.post(path, {"batch": [item]})
        assert response.status_code == 400, response.text
        [rejected] = response.json()["rejected"]
        assert rejected["index"] == 0
        assert "messageId" in rejected["message"]
        assert shared.events(user_id=user) == []
        return
    else:
        response = shared.post(path, {"userId": user, "event": "e", "messageId": message_id})
        name = "messageId"
    body = assert_error(response, 400, "invalid_field", name)
    assert "99" in body["message"]
    assert shared.events(user_id=user) == []


# -- context.ip and X-Forwarded-For -------------------------------------------------------


def test_context_ip_is_filled_from_the_connection(shared):
    user = uid()
    ok(shared.post("/v1/track", {"userId": user, "event": "e", "context": {"locale": "en"}}))
    assert the_event(shared, user_id=user)["context"] == {"locale": "en", "ip": "127.0.0.1"}


def test_context_ip_set_by_the_client_is_kept(shared):
    user = uid()
    ok(shared.post("/v1/track", {"userId": user, "event": "e", "context": {"ip": "203.0.113.9"}}))
    assert the_event(shared, user_id=user)["context"] == {"ip": "203.0.113.9"}


def test_x_forwarded_for_is_ignored_by_default(shared):
    # With no server.trusted_proxies a client must not be able to choose its context.ip.
    # (uvicorn's own proxy-header handling, on by default for loopback peers, would
    # rewrite the peer address from X-Forwarded-For before the app sees it.)
    user = uid()
    response = shared.post(
        "/v1/track",
        {"userId": user, "event": "e"},
        headers={"X-Forwarded-For": "198.51.100.7"},
    )
    ok(response)
    assert the_event(shared, user_id=user)["context"]["ip"] == "127.0.0.1"


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    raw = {"server": {"trusted_proxies": ["127.0.0.1", "10.0.0.0/8"]}}
    with running(tmp_path_factory.mktemp("proxied"), raw) as server:
        yield server


@pytest.mark.parametrize(
    ("forwarded", "expected"),
    [
        ("198.51.100.7", "198.51.100.7"),
        # the client can forge the left part; the right-most untrusted hop is the client
        ("1.2.3.4, 198.51.100.7", "198.51.100.7"),
        ("1.2.3.4, 198.51.100.7, 10.1.2.3", "198.51.100.7"),
        ("198.51.100.7,10.0.0.1 ,  10.9.9.9", "198.51.100.7"),
        ("2001:db8::1, 10.0.0.1", "2001:db8::1"),
        # every hop trusted: the farthest one
        ("10.0.0.5, 10.0.0.6", "10.0.0.5"),
    ],
)
def test_x_forwarded_for_from_a_trusted_proxy(proxied, forwarded, expected):
    user = uid()
    ok(
        proxied.post(
            "/v1/track", {"userId": user, "event": "e"}, headers={"X-Forwarded-For": forwarded}
        )
    )
    assert the_event(proxied, user_id=user)["context"]["ip"] == expected


def test_trusted_proxy_without_x_forwarded_for_uses_the_peer(proxied):
    user = uid()
    ok(proxied.post("/v1/track", {"userId": user, "event": "e"}))
    assert the_event(proxied, user_id=user)["context"]["ip"] == "127.0.0.1"


def test_client_ip_wins_over_x_forwarded_for(proxied):
    user = uid()
    ok(
        proxied.post(
            "/v1/track",
            {"userId": user, "event": "e", "context": {"ip": "192.0.2.1"}},
            headers={"X-Forwarded-For": "198.51.100.7"},
        )
    )
    assert the_event(proxied, user_id=user)["context"]["ip"] == "192.0.2.1"


def test_x_forwarded_for_applies_to_batch_items_and_legacy_track(proxied):
    user = uid()
    headers = {"X-Forwarded-For": "198.51.100.8"}
    batch = [{"type": "track", "userId": user, "event": f"b{i}"} for i in range(2)]
    ok(proxied.post("/v1/batch", {"batch": batch}, headers=headers))
    ok(proxied.post("/track", {"event_type": "legacy", "user_id": user}, headers=headers))
    stored = proxied.events(user_id=user)
    assert len(stored) == 3
    assert {e["context"]["ip"] for e in stored} == {"198.51.100.8"}
