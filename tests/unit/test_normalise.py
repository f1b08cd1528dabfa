"""Normalisation: Segment's timestamp rules, messageId, context, and the Commands built.

The pure functions are tested directly; then the same rules end to end, reading the
stored ``timestamp`` / ``original_timestamp`` / ``sent_at`` / ``received_at`` back.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest

from eventrouter.errors import InvalidEvent
from eventrouter.events import commands as c
from eventrouter.events import model as m
from eventrouter.events.normalise import Arrival, event_times, legacy_to_command, to_command, utc
from tests.ingest_support import iso, now, parse_time, running, the_event, uid

RECEIVED = datetime(2025, 5, 28, 12, 0, 0, 500000, tzinfo=UTC)
MS = timedelta(milliseconds=1)


def dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


# -- utc ----------------------------------------------------------------------------------


def test_utc_converts_offsets():
    value = utc(dt("2025-05-28T09:47:35+05:30"))
    assert value == dt("2025-05-28T04:17:35+00:00")
    assert value.tzinfo is UTC
    assert value.hour == 4


def test_utc_takes_naive_as_utc():
    value = utc(datetime(2025, 5, 28, 4, 17, 35))
    assert value.tzinfo is UTC
    assert value.hour == 4


def test_utc_normalises_a_zero_offset_zone():
    value = utc(datetime(2025, 1, 1, tzinfo=timezone(timedelta(0), "GMT")))
    assert value.tzinfo is UTC


def test_utc_none():
    assert utc(None) is None


# -- event_times --------------------------------------------------------------------------


def test_no_times_at_all_means_received_at():
    assert event_times(None, None, None, RECEIVED) == (RECEIVED, None)


def test_sent_at_without_any_timestamp_means_received_at():
    assert event_times(None, None, RECEIVED - timedelta(hours=3), RECEIVED) == (RECEIVED, None)


def test_timestamp_without_sent_at_is_kept_as_given():
    ts = dt("2024-01-02T03:04:05+00:00")
    assert event_times(ts, None, None, RECEIVED) == (ts, ts)


def test_skew_correction_for_a_fast_client_clock():
    # The device clock is an hour fast: it stamped the event and sent it "in the future".
    real_event_time = RECEIVED - timedelta(seconds=10)
    fast = timedelta(hours=1)
    original = real_event_time + fast
    sent_at = RECEIVED + fast
    timestamp, kept = event_times(None, original, sent_at, RECEIVED)
    assert timestamp == RECEIVED - (sent_at - original) == real_event_time
    assert kept == original


def test_skew_correction_for_a_slow_client_clock():
    slow = timedelta(minutes=-7, seconds=-3)
    original = RECEIVED - timedelta(minutes=2) + slow
    sent_at = RECEIVED + slow
    timestamp, _ = event_times(original, None, sent_at, RECEIVED)
    assert timestamp == RECEIVED - timedelta(minutes=2)


def test_original_timestamp_is_preferred_over_timestamp():
    original = RECEIVED - timedelta(minutes=5)
    other = RECEIVED - timedelta(days=3)
    timestamp, kept = event_times(other, original, RECEIVED, RECEIVED)
    assert kept == original
    assert timestamp == original


def test_event_times_takes_naive_times_as_utc():
    original = datetime(2025, 5, 28, 11, 59, 30)  # no tzinfo: UTC
    sent_at = datetime(2025, 5, 28, 11, 59, 59)
    timestamp, kept = event_times(original, None, sent_at, RECEIVED)
    assert kept == dt("2025-05-28T11:59:30+00:00") and kept.tzinfo is UTC
    assert timestamp == RECEIVED - timedelta(seconds=29) and timestamp.tzinfo is UTC


def test_event_times_converts_offsets_to_utc():
    original = dt("2025-05-28T17:29:30+05:30")  # 11:59:30Z
    sent_at = dt("2025-05-28T06:59:59-05:00")  # 11:59:59Z
    timestamp, kept = event_times(None, original, sent_at, RECEIVED)
    assert kept == dt("2025-05-28T11:59:30+00:00")
    assert kept.tzinfo is UTC
    assert timestamp == RECEIVED - timedelta(seconds=29)
    assert timestamp.tzinfo is UTC


@pytest.mark.parametrize(
    ("timestamp", "original", "sent_at", "name"),
    [
        (datetime(1969, 12, 31, 23, 59, tzinfo=UTC), None, None, "originalTimestamp"),
        (None, datetime(2200, 1, 1, tzinfo=UTC), None, "originalTimestamp"),
        (RECEIVED, None, datetime(1900, 1, 1, tzinfo=UTC), "sentAt"),
        # both in range, but the correction lands before 1970
        (datetime(1970, 1, 1, tzinfo=UTC), None, datetime(2199, 1, 1, tzinfo=UTC), "timestamp"),
    ],
)
def test_out_of_range_times_are_rejected(timestamp, original, sent_at, name):
    with pytest.raises(InvalidEvent) as info:
        event_times(timestamp, original, sent_at, RECEIVED)
    assert info.value.status == 400
    assert info.value.code == "invalid_timestamp"
    assert info.value.message.startswith(f"{name}:")


# -- to_command ---------------------------------------------------------------------------


def env(**kwargs) -> Arrival:
    return Arrival(received_at=RECEIVED, source="web", ip="10.1.1.1", **kwargs)


def decode(kind: str, **body):
    return m.SINGLE_DECODERS[kind].decode(msgspec.json.encode(body))


def test_to_command_track():
    msg = decode(
        "track",
        userId="u1",
        event="Signed Up",
        properties={"plan": "pro"},
        messageId="m1",
        sessionId=17,
    )
    command = to_command(msg, env(), "track")
    assert isinstance(command, c.TrackCommand)
    assert command.message_id == "m1"
    assert command.source == "web"
    assert command.event == "Signed Up"
    assert command.properties == {"plan": "pro"}
    assert command.session_id == "17"
    assert command.context == {"ip": "10.1.1.1"}
    assert command.timestamp == RECEIVED
    assert command.received_at == RECEIVED
    assert command.original_timestamp is None
    assert command.sent_at is None
    row = command.row()
    assert tuple(row) == c.STORED_COLUMNS
    assert row["type"] == "track"
    assert row["traits"] is None


def test_to_command_generates_unique_message_ids():
    msg = decode("identify", userId="u1")
    ids = {to_command(msg, env(), "identify").message_id for _ in range(100)}
    assert len(ids) == 100


def test_to_command_takes_the_type_from_a_batch_item():
    msg = m.ANY_DECODER.decode(b'{"type":"group","userId":"u","groupId":"g","traits":{"n":1}}')
    command = to_command(msg, env())
    assert isinstance(command, c.GroupCommand)
    assert command.group_id == "g"
    assert command.traits == {"n": 1}
    assert command.row()["type"] == "group"


@pytest.mark.parametrize(
    ("kind", "body", "name"),
    [
        ("track", {"event": "e"}, "userId"),
        ("track", {"event": "e", "userId": "", "anonymousId": ""}, "anonymousId"),
        ("group", {"userId": "u", "groupId": ""}, "groupId"),
        ("alias", {"userId": "u", "previousId": ""}, "previousId"),
    ],
)
def test_to_command_rejects_missing_identifiers(kind, body, name):
    with pytest.raises(InvalidEvent) as info:
        to_command(decode(kind, **body), env(), kind)
    assert info.value.code == "missing_field"
    assert name in info.value.message


def test_to_command_page_and_screen_put_name_and_category_in_properties():
    for kind, cls in (("page", c.PageCommand), ("screen", c.ScreenCommand)):
        msg = decode(kind, userId="u", name="Home", category="Top", properties={"a": 1})
        command = to_command(msg, env(), kind)
        assert isinstance(command, cls)
        assert command.name == "Home"
        assert command.properties == {"a": 1, "name": "Home", "category": "Top"}


def test_to_command_merges_the_envelope_item_keys_winning():
    msg = decode(
        "track",
        userId="u",
        event="e",
        context={"locale": "fr", "ip": "192.0.2.1"},
        integrations={"All": True},
    )
    batch_context = {"locale": "en", "library": {"name": "x"}}
    batch_integrations = {"All": False, "Mixpanel": True}
    command = to_command(
        msg, env(context=batch_context, integrations=batch_integrations, sent_at=None)
    )
    assert command.context == {"locale": "fr", "library": {"name": "x"}, "ip": "192.0.2.1"}
    assert command.integrations == {"All": True, "Mixpanel": True}
    # the envelope's dicts are not modified for the next item
    assert batch_context == {"locale": "en", "library": {"name": "x"}}
    assert batch_integrations == {"All": False, "Mixpanel": True}


def test_to_command_uses_the_envelope_sent_at_unless_the_item_has_one():
    batch_sent = RECEIVED + timedelta(minutes=10)
    item_sent = RECEIVED + timedelta(minutes=1)
    original = iso(RECEIVED)
    own = to_command(
        decode("track", userId="u", event="e", timestamp=original, sentAt=iso(item_sent)),
        env(sent_at=batch_sent),
    )
    inherited = to_command(
        decode("track", userId="u", event="e", timestamp=original), env(sent_at=batch_sent)
    )
    assert own.sent_at == item_sent
    assert own.timestamp == RECEIVED - timedelta(minutes=1)
    assert inherited.sent_at == batch_sent
    assert inherited.timestamp == RECEIVED - timedelta(minutes=10)


def test_commands_round_trip_through_json_and_msgpack():
    msg = decode("alias", userId="u", previousId="p", timestamp="2025-01-01T00:00:00Z")
    command = to_command(msg, env(), "alias")
    assert c.decode(c.encode(command)) == command
    assert c.decode_many(c.encode_many([command, command])) == [command, command]


def test_legacy_to_command():
    msg = m.LEGACY_DECODER.decode(
        b'{"event_type":"page_view","properties":{"path":"/home"},'
        b'"timestamp":"2025-05-28T09:47:35+05:30","user_id":"u1","session_id":"s1"}'
    )
    command = legacy_to_command(msg, env())
    assert isinstance(command, c.TrackCommand)
    assert command.event == "page_view"
    assert command.properties == {"path": "/home"}
    assert command.user_id == "u1"
    assert command.session_id == "s1"
    assert command.timestamp == dt("2025-05-28T04:17:35+00:00")
    assert command.original_timestamp == command.timestamp
    assert command.source == "web"
    assert command.context == {"ip": "10.1.1.1"}


# -- end to end ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    with running(tmp_path_factory.mktemp("normalise")) as server:
        yield server


def post_ok(server, path, body):
    response = server.post(path, body)
    assert response.status_code == 200, response.text


def test_received_at_is_the_server_clock(shared):
    user = uid()
    before = now()
    post_ok(
        shared, "/v1/track", {"userId": user, "event": "e", "timestamp": "2020-01-01T00:00:00Z"}
    )
    after = now()
    event = the_event(shared, user_id=user)
    received = parse_time(event["received_at"])
    # stored to the millisecond: allow the truncation
    assert before - MS <= received <= after
    assert event["timestamp"] == "2020-01-01T00:00:00.000Z"


def test_no_timestamp_at_all_means_received_at(shared):
    user = uid()
    before = now()
    post_ok(shared, "/v1/identify", {"userId": user})
    after = now()
    event = the_event(shared, user_id=user)
    assert event["timestamp"] == event["received_at"]
    assert before - MS <= parse_time(event["timestamp"]) <= after
    assert event["original_timestamp"] is None
    assert event["sent_at"] is None


def test_client_clock_an_hour_fast_is_corrected(shared):
    user = uid()
    fast = timedelta(hours=1)
    real = now()
    event_time = real - timedelta(seconds=30)
    body = {
        "userId": user,
        "event": "Skewed",
        "timestamp": iso(event_time + fast),
        "sentAt": iso(real + fast),
    }
    post_ok(shared, "/v1/track", body)
    event = the_event(shared, user_id=user)
    received = parse_time(event["received_at"])
    sent_at = parse_time(event["sent_at"])
    original = parse_time(event["original_timestamp"])
    timestamp = parse_time(event["timestamp"])
    assert sent_at == parse_time(body["sentAt"])
    assert original == parse_time(body["timestamp"])
    # the rule, to the millisecond the API shows
    assert abs(timestamp - (received - (sent_at - original))) <= MS
    # and what it means: the event happened about 30 s before it arrived, not in an hour
    assert timedelta(seconds=29) <= received - timestamp <= timedelta(seconds=31)


def test_original_timestamp_is_preferred_over_timestamp_end_to_end(shared):
    user = uid()
    real = now()
    body = {
        "userId": user,
        "event": "Both",
        "originalTimestamp": iso(real - timedelta(minutes=5)),
        "timestamp": iso(real - timedelta(days=2)),
        "sentAt": iso(real),
    }
    post_ok(shared, "/v1/track", body)
    event = the_event(shared, user_id=user)
    assert event["original_timestamp"] == body["originalTimestamp"]
    received = parse_time(event["received_at"])
    age = received - parse_time(event["timestamp"])
    assert timedelta(minutes=5) - timedelta(seconds=2) <= age <= timedelta(minutes=5, seconds=2)


def test_timestamp_without_sent_at_is_kept_as_given_end_to_end(shared):
    user = uid()
    post_ok(
        shared,
        "/v1/track",
        {"userId": user, "event": "Import", "timestamp": "2019-03-04T05:06:07.891Z"},
    )
    event = the_event(shared, user_id=user)
    assert event["timestamp"] == "2019-03-04T05:06:07.891Z"
    assert event["original_timestamp"] == "2019-03-04T05:06:07.891Z"
    assert event["sent_at"] is None


def test_offsets_are_converted_to_utc(shared):
    user = uid()
    post_ok(
        shared,
        "/v1/page",
        {"userId": user, "timestamp": "2025-05-28T09:47:35.250+05:30"},
    )
    post_ok(
        shared,
        "/v1/screen",
        {"userId": user, "timestamp": "2025-05-27T23:47:35-04:30"},
    )
    stored = {e["type"]: e for e in shared.events(user_id=user)}
    assert stored["page"]["timestamp"] == "2025-05-28T04:17:35.250Z"
    assert stored["screen"]["timestamp"] == "2025-05-28T04:17:35.000Z"


def test_naive_timestamp_is_taken_as_utc(shared):
    user = uid()
    post_ok(shared, "/v1/track", {"userId": user, "event": "e", "timestamp": "2025-05-28T04:17:35"})
    assert the_event(shared, user_id=user)["timestamp"] == "2025-05-28T04:17:35.000Z"


def test_batch_sent_at_applies_to_items(shared):
    user = uid()
    real = now()
    skew = timedelta(hours=2)
    body = {
        "sentAt": iso(real + skew),
        "batch": [
            {
                "type": "track",
                "userId": user,
                "event": "inherits",
                "timestamp": iso(real - timedelta(minutes=1) + skew),
            },
            {"type": "track", "userId": user, "event": "no-timestamp"},
        ],
    }
    post_ok(shared, "/v1/batch", body)
    stored = {e["event"]: e for e in shared.events(user_id=user)}
    inherits = stored["inherits"]
    assert inherits["sent_at"] == body["sentAt"]
    received = parse_time(inherits["received_at"])
    age = received - parse_time(inherits["timestamp"])
    assert timedelta(seconds=58) <= age <= timedelta(seconds=62)
    plain = stored["no-timestamp"]
    assert plain["timestamp"] == plain["received_at"]
    assert plain["sent_at"] == body["sentAt"]


def test_every_item_of_a_batch_shares_the_request_received_at(shared):
    user = uid()
    batch = [{"type": "track", "userId": user, "event": f"e{i}"} for i in range(20)]
    post_ok(shared, "/v1/batch", {"batch": batch})
    assert len({e["received_at"] for e in shared.events(user_id=user)}) == 1


def test_corrected_timestamp_outside_the_storable_range_is_400(shared):
    user = uid()
    response = shared.post(
        "/v1/track",
        {
            "userId": user,
            "event": "e",
            "timestamp": "1970-01-01T00:00:01Z",
            "sentAt": "2199-01-01T00:00:00Z",
        },
    )
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "invalid_timestamp"
    assert body["message"].startswith("timestamp:")
    assert shared.events(user_id=user) == []
