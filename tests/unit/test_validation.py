"""Bad input: every rejection is a 400 with JSON ``{"code", "message"}`` naming the field,
and nothing of a rejected request is stored."""

from __future__ import annotations

import json

import pytest

from tests.ingest_support import assert_error, gz, post_raw, running, the_event, uid


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    with running(tmp_path_factory.mktemp("validation")) as server:
        yield server


@pytest.fixture(scope="module")
def stored_count(shared):
    """How many events the shared server holds (rejections must not change it)."""

    def count():
        return len(shared.events())

    return count


def ev(**extra):
    """A valid track body with ``extra`` on top."""
    return {"userId": "u", "event": "e", **extra}


def legacy(**extra):
    """A valid original ``/track`` payload with ``extra`` on top."""
    return {"event_type": "e", "user_id": "u", **extra}


BAD_SINGLE = [
    # identity
    ("/v1/track", {"event": "e"}, "missing_field", ("userId", "anonymousId")),
    ("/v1/identify", {"traits": {}}, "missing_field", ("userId", "anonymousId")),
    ("/v1/t", ev(userId=None), "missing_field", ("userId",)),
    ("/v1/track", ev(userId=""), "missing_field", ("userId",)),
    # required per type
    ("/v1/track", {"userId": "u"}, "missing_field", ("event",)),
    ("/v1/track", ev(event=""), "invalid_field", ("event",)),
    ("/v1/track", ev(event=None), "invalid_field", ("event",)),
    ("/v1/group", {"userId": "u"}, "missing_field", ("groupId",)),
    ("/v1/g", {"userId": "u", "groupId": ""}, "missing_field", ("groupId",)),
    ("/v1/alias", {"userId": "u"}, "missing_field", ("previousId",)),
    ("/v1/a", {"userId": "u", "previousId": ""}, "missing_field", ("previousId",)),
    # wrong types
    ("/v1/track", ev(event=5), "invalid_field", ("event", "str")),
    ("/v1/track", ev(properties="x"), "invalid_field", ("properties",)),
    ("/v1/track", ev(properties=[1]), "invalid_field", ("properties",)),
    ("/v1/identify", {"userId": {}}, "invalid_field", ("userId",)),
    ("/v1/identify", {"userId": ["u"]}, "invalid_field", ("userId",)),
    ("/v1/identify", {"userId": True}, "invalid_field", ("userId",)),
    ("/v1/identify", {"anonymousId": 1.5}, "invalid_field", ("anonymousId",)),
    ("/v1/identify", {"userId": "u", "traits": "x"}, "invalid_field", ("traits",)),
    ("/v1/group", {"userId": "u", "groupId": {}}, "invalid_field", ("groupId",)),
    ("/v1/page", {"userId": "u", "name": 5}, "invalid_field", ("name",)),
    ("/v1/screen", {"userId": "u", "category": []}, "invalid_field", ("category",)),
    ("/v1/track", ev(context=[]), "invalid_field", ("context",)),
    ("/v1/track", ev(integrations=1), "invalid_field", ("integrations",)),
    ("/v1/track", ev(messageId=5), "invalid_field", ("messageId",)),
    # timestamps
    ("/v1/track", ev(timestamp="yesterday"), "invalid_timestamp", ("timestamp",)),
    ("/v1/track", ev(timestamp=5), "invalid_field", ("timestamp",)),
    ("/v1/track", ev(timestamp="2025-13-01T00:00:00Z"), "invalid_timestamp", ("timestamp",)),
    ("/v1/track", ev(sentAt="now"), "invalid_timestamp", ("sentAt",)),
    ("/v1/track", ev(originalTimestamp="x"), "invalid_timestamp", ("originalTimestamp",)),
    ("/v1/track", ev(timestamp="1969-07-20T20:17:40Z"), "invalid_timestamp", ("Timestamp",)),
    ("/v1/track", ev(timestamp="2300-01-01T00:00:00Z"), "invalid_timestamp", ("Timestamp",)),
    ("/track", legacy(timestamp="yesterday"), "invalid_timestamp", ("timestamp",)),
    ("/track", legacy(timestamp=5), "invalid_field", ("timestamp",)),
    ("/track", legacy(properties="x"), "invalid_field", ("properties",)),
    ("/track", legacy(event_type=""), "invalid_field", ("event_type",)),
    # a body of the wrong shape
    ("/v1/track", [ev()], "invalid_field", ("body", "object")),
    ("/v1/track", "a string", "invalid_field", ("body",)),
    ("/track", [1, 2], "invalid_field", ("body",)),
]


@pytest.mark.parametrize(("path", "body", "code", "names"), BAD_SINGLE)
def test_bad_single_event_is_400_naming_the_field(shared, stored_count, path, body, code, names):
    before = stored_count()
    assert_error(shared.post(path, body), 400, code, *names)
    assert stored_count() == before


@pytest.mark.parametrize(
    "content",
    [b"{", b'{"userId": "u", "event": "e",}', b"not json", b"\xff\xfe"],
)
@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch", "/track"])
def test_invalid_json_is_400(shared, stored_count, path, content):
    before = stored_count()
    response = post_raw(shared, path, content, {"Content-Type": "application/json"})
    assert_error(response, 400, "invalid_json", "JSON")
    assert stored_count() == before


@pytest.mark.parametrize(
    ("path", "valid"),
    [
        ("/v1/track", ev()),
        ("/v1/batch", {"batch": [{**ev(), "type": "track"}]}),
        ("/track", legacy()),
    ],
)
def test_valid_json_followed_by_junk_is_400(shared, stored_count, path, valid):
    before = stored_count()
    content = json.dumps(valid).encode() + b" trailing"
    response = post_raw(shared, path, content, {"Content-Type": "application/json"})
    assert_error(response, 400, "invalid_json", "JSON")
    assert stored_count() == before


@pytest.mark.parametrize("path", ["/v1/track", "/v1/t", "/v1/batch", "/track"])
@pytest.mark.parametrize("headers", [{}, {"Content-Type": "text/plain"}])
def test_empty_body_is_400(shared, path, headers):
    response = post_raw(shared, path, b"", headers)
    assert_error(response, 400, "empty_body", "body")


def test_empty_gzip_body_is_400(shared):
    response = post_raw(shared, "/v1/track", gz(b""), {"Content-Encoding": "gzip"})
    assert_error(response, 400, "empty_body", "body")


def test_body_type_must_match_the_endpoint(shared, stored_count):
    before = stored_count()
    response = shared.post("/v1/track", {"type": "identify", "userId": "u", "event": "e"})
    assert_error(response, 400, "invalid_type", "type")
    assert stored_count() == before


def test_body_type_equal_to_the_endpoint_is_fine(shared):
    user = uid()
    response = shared.post("/v1/p", {"type": "page", "userId": user, "name": "Home"})
    assert response.status_code == 200, response.text
    assert the_event(shared, user_id=user)["name"] == "Home"


def test_user_id_as_a_number_is_accepted(shared):
    response = shared.post("/v1/track", {"userId": 123456789012, "event": "numeric"})
    assert response.status_code == 200, response.text
    event = the_event(shared, user_id="123456789012")
    assert event["user_id"] == "123456789012"
    assert event["event"] == "numeric"


def test_original_track_user_id_as_a_number_is_accepted(shared):
    response = shared.post("/track", {"event_type": "numeric", "user_id": 987654321098})
    assert response.status_code == 200, response.text
    assert the_event(shared, user_id="987654321098")["event"] == "numeric"


def test_empty_user_id_falls_back_to_anonymous_id(shared):
    anon = uid("anon")
    response = shared.post("/v1/track", {"userId": "", "anonymousId": anon, "event": "e"})
    assert response.status_code == 200, response.text
    event = the_event(shared, anonymous_id=anon)
    assert event["user_id"] is None


def test_rejected_batch_items_name_their_field(shared):
    user = uid()
    batch = [
        {"type": "track", "userId": user, "event": "ok"},
        {"type": "track", "userId": user, "event": 5},
        {"type": "identify", "userId": {}},
        {"type": "track", "userId": user, "event": "e", "timestamp": 5},
        {"type": "track", "userId": user, "event": "e", "timestamp": "yesterday"},
        {"type": "alias", "userId": user},
        {"type": "group", "userId": user},
        {"type": "track", "userId": user, "event": "e", "messageId": "m" * 100},
        {"type": "track", "userId": user, "event": "e", "properties": "x"},
        {"type": "track", "event": "e"},
    ]
    response = shared.post("/v1/batch", {"batch": batch})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 1
    names = {
        1: "event",
        2: "userId",
        3: "timestamp",
        4: "timestamp",
        5: "previousId",
        6: "groupId",
        7: "messageId",
        8: "properties",
        9: "anonymousId",
    }
    assert [r["index"] for r in body["rejected"]] == list(names)
    for rejected in body["rejected"]:
        assert names[rejected["index"]] in rejected["message"], rejected
    assert [e["event"] for e in shared.events(user_id=user)] == ["ok"]


def test_error_responses_are_json_even_for_text_plain_requests(shared):
    response = post_raw(shared, "/v1/t", b'{"event":"e"}', {"Content-Type": "text/plain"})
    assert_error(response, 400, "missing_field", "userId")
