"""``/v1/batch`` (and ``/v1/import``, ``/v1/b``): partial acceptance, envelope merging,
and what a rejected batch answers."""

from __future__ import annotations

import json

import pytest

from eventrouter.bus.hookspecs import hookimpl
from tests.ingest_support import assert_error, running, the_event, uid


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    with running(tmp_path_factory.mktemp("batch")) as server:
        yield server


def track(user, event="e", **extra):
    return {"type": "track", "userId": user, "event": event, **extra}


def test_all_valid_batch_answers_plain_success(shared):
    user = uid()
    response = shared.post("/v1/batch", {"batch": [track(user, f"e{i}") for i in range(10)]})
    assert response.status_code == 200
    assert response.json() == {"success": True}
    assert sorted(e["event"] for e in shared.events(user_id=user)) == [f"e{i}" for i in range(10)]


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/import", "/v1/b"])
def test_mixed_batch_stores_exactly_the_valid_items(shared, path):
    user = uid()
    batch = [
        track(user, "ok-0"),
        {"type": "track", "userId": user},  # 1: no event
        {"type": "identify", "userId": user, "traits": {"a": 1}},
        {"type": "group", "userId": user},  # 3: no groupId
        {"type": "alias", "userId": user},  # 4: no previousId
        {"type": "track", "event": "anonymous"},  # 5: neither userId nor anonymousId
        {"type": "shout", "userId": user},  # 6: unknown type
        track(user, "ok-7", timestamp="yesterday"),  # 7: bad timestamp
        track(user, "ok-8"),
        {"userId": user, "event": "no type"},  # 9: no type
        track(user, 5),  # 10: wrong type for event
        track(user, "props", properties="x"),  # 11: wrong type for properties
        "not an object",  # 12
        {"type": "page", "userId": user, "name": "Home"},
    ]
    response = shared.post(path, {"batch": batch})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert body["accepted"] == 4
    rejected = {r["index"]: r for r in body["rejected"]}
    assert sorted(rejected) == [1, 3, 4, 5, 6, 7, 9, 10, 11, 12]
    for item in body["rejected"]:
        assert set(item) == {"index", "code", "message"}
    expected = {
        1: ("missing_field", "event"),
        3: ("missing_field", "groupId"),
        4: ("missing_field", "previousId"),
        5: ("missing_field", "userId"),
        6: ("invalid_type", "type"),
        7: ("invalid_timestamp", "timestamp"),
        9: ("missing_field", "type"),
        10: ("invalid_field", "event"),
        11: ("invalid_field", "properties"),
    }
    for index, (code, name) in expected.items():
        assert rejected[index]["code"] == code, rejected[index]
        assert name in rejected[index]["message"], rejected[index]
    assert rejected[12]["code"] == "invalid_field"
    stored = shared.events(user_id=user)
    assert sorted((e["type"], e["event"]) for e in stored) == [
        ("identify", None),
        ("page", None),
        ("track", "ok-0"),
        ("track", "ok-8"),
    ]


def test_unknown_type_is_named_in_the_rejection(shared):
    user = uid()
    response = shared.post("/v1/batch", {"batch": [track(user), {"type": "shout", "userId": user}]})
    assert response.status_code == 200, response.text
    [rejected] = response.json()["rejected"]
    assert rejected["index"] == 1
    assert rejected["code"] == "invalid_type"
    assert "type" in rejected["message"]
    assert "shout" in rejected["message"]


def test_all_invalid_batch_is_400_with_the_rejected_list(server):
    batch = [
        {"type": "track", "userId": "u"},
        {"type": "unknown", "userId": "u"},
        {"type": "identify"},
    ]
    response = server.post("/v1/batch", {"batch": batch})
    body = assert_error(response, 400, "invalid_batch", "batch")
    assert [r["index"] for r in body["rejected"]] == [0, 1, 2]
    assert [r["code"] for r in body["rejected"]] == [
        "missing_field",
        "invalid_type",
        "missing_field",
    ]
    assert server.events() == []


def test_batch_item_too_large_is_rejected_alone(shared):
    user = uid()
    big = track(user, "big", properties={"blob": "x" * (33 * 1024)})
    batch = [track(user, "small-0"), big, track(user, "small-2")]
    response = shared.post("/v1/batch", {"batch": batch})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 2
    [rejected] = body["rejected"]
    assert rejected["index"] == 1
    assert rejected["code"] == "event_too_large"
    assert "32 KB" in rejected["message"]
    assert sorted(e["event"] for e in shared.events(user_id=user)) == ["small-0", "small-2"]


def item_of(user: str, event: str, size: int) -> dict:
    """A track item whose compact JSON is exactly ``size`` bytes."""
    item = track(user, event, properties={"blob": ""})
    item["properties"]["blob"] = "x" * (size - len(json.dumps(item, separators=(",", ":"))))
    assert len(json.dumps(item, separators=(",", ":"))) == size
    return item


def test_batch_item_of_exactly_32_kb_is_stored_one_byte_more_is_not(shared):
    user = uid()
    batch = [item_of(user, "fits", 32 * 1024), item_of(user, "too-big", 32 * 1024 + 1)]
    response = shared.client.post(
        "/v1/batch",
        content=json.dumps({"batch": batch}, separators=(",", ":")),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 1
    assert [(r["index"], r["code"]) for r in body["rejected"]] == [(1, "event_too_large")]
    event = the_event(shared, user_id=user)
    assert event["event"] == "fits"
    assert len(event["properties"]["blob"]) > 32000


@pytest.mark.parametrize(
    ("body", "code", "name"),
    [
        ({}, "missing_field", "batch"),
        ({"events": []}, "missing_field", "batch"),
        ({"batch": []}, "empty_batch", "batch"),
        ({"batch": {"type": "track"}}, "invalid_field", "batch"),
        ({"batch": None}, "invalid_field", "batch"),
        ({"batch": [{"type": "track"}], "context": "x"}, "invalid_field", "context"),
        ({"batch": [{"type": "track"}], "sentAt": "soon"}, "invalid_timestamp", "sentAt"),
        ([{"type": "track", "userId": "u", "event": "e"}], "invalid_field", "body"),
    ],
)
def test_bad_batch_envelope_is_400_naming_the_field(server, body, code, name):
    assert_error(server.post("/v1/batch", body), 400, code, name)
    assert server.events() == []


# -- the envelope's context, integrations and sentAt --------------------------------------


def test_batch_context_is_merged_into_items_item_keys_winning(shared):
    user = uid()
    response = shared.post(
        "/v1/batch",
        {
            "context": {"library": {"name": "analytics-python"}, "locale": "en-GB", "app": "a"},
            "batch": [
                track(user, "plain"),
                track(user, "own", context={"locale": "fr-FR", "ip": "192.0.2.5"}),
            ],
        },
    )
    assert response.status_code == 200, response.text
    stored = {e["event"]: e["context"] for e in shared.events(user_id=user)}
    assert stored["plain"] == {
        "library": {"name": "analytics-python"},
        "locale": "en-GB",
        "app": "a",
        "ip": "127.0.0.1",
    }
    assert stored["own"] == {
        "library": {"name": "analytics-python"},
        "locale": "fr-FR",
        "app": "a",
        "ip": "192.0.2.5",
    }


def test_batch_context_ip_applies_to_every_item(shared):
    user = uid()
    response = shared.post(
        "/v1/batch",
        {"context": {"ip": "198.51.100.1"}, "batch": [track(user, "a"), track(user, "b")]},
    )
    assert response.status_code == 200, response.text
    assert {e["context"]["ip"] for e in shared.events(user_id=user)} == {"198.51.100.1"}


def test_items_do_not_share_one_context_object(shared):
    # The connection ip is added per item; an item's own context must not leak to another.
    user = uid()
    response = shared.post(
        "/v1/batch",
        {
            "context": {"shared": True},
            "batch": [
                track(user, "a", context={"only": "a"}),
                track(user, "b"),
                track(user, "c", context={"only": "c"}),
            ],
        },
    )
    assert response.status_code == 200, response.text
    stored = {e["event"]: e["context"] for e in shared.events(user_id=user)}
    assert stored == {
        "a": {"shared": True, "only": "a", "ip": "127.0.0.1"},
        "b": {"shared": True, "ip": "127.0.0.1"},
        "c": {"shared": True, "only": "c", "ip": "127.0.0.1"},
    }


class Recorder:
    """A pipeline plugin that records every command it sees (integrations are not a
    stored column, so they are read from the commands the bus was handed)."""

    def __init__(self):
        self.seen = []

    @hookimpl
    async def eventrouter_process_batch(self, commands):
        self.seen.extend(commands)


def test_batch_integrations_are_merged_into_items(start_server):
    recorder = Recorder()
    server = start_server(plugins=[recorder])
    user = uid()
    response = server.post(
        "/v1/batch",
        {
            "integrations": {"All": False, "Mixpanel": True},
            "batch": [
                track(user, "plain"),
                track(user, "own", integrations={"All": True, "Amplitude": False}),
            ],
        },
    )
    assert response.status_code == 200, response.text
    by_event = {command.event: command for command in recorder.seen}
    assert sorted(by_event) == ["own", "plain"]
    assert by_event["plain"].integrations == {"All": False, "Mixpanel": True}
    assert by_event["own"].integrations == {"All": True, "Mixpanel": True, "Amplitude": False}
    assert len(server.events(user_id=user)) == 2


def test_single_event_integrations_are_kept(start_server):
    recorder = Recorder()
    server = start_server(plugins=[recorder])
    user = uid()
    body = {"userId": user, "event": "e", "integrations": {"Segment.io": False}}
    assert server.post("/v1/track", body).status_code == 200
    [command] = recorder.seen
    assert command.integrations == {"Segment.io": False}
