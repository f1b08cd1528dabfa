"""The official Segment Python SDK (segment-analytics-python), pointed at our host,
delivers every call type and the events are stored."""

from __future__ import annotations

import datetime

import pytest
from segment.analytics import Client
from segment.analytics.request import APIError

pytestmark = pytest.mark.slow

WRITE_KEY = "sdk-write-key"


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_segment_python_sdk_delivers_every_call(start_server, gzip):
    server = start_server({"sources": [{"name": "backend", "write_key": WRITE_KEY}]})
    errors: list[Exception] = []
    client = Client(
        WRITE_KEY,
        host=server.url,
        sync_mode=True,
        gzip=gzip,
        max_retries=1,
        on_error=lambda error, _items: errors.append(error),
    )
    when = datetime.datetime(2025, 5, 28, 4, 17, 35, tzinfo=datetime.UTC)
    client.track("user-1", "Order Completed", {"revenue": 42.5, "plan": "pro"}, timestamp=when)
    client.identify("user-1", {"email": "a@example.com", "plan": "pro"})
    client.page("user-1", "Docs", "Install", {"path": "/docs/install"})
    client.group("user-1", "acme", {"name": "Acme Inc"})
    client.alias("anon-previous", "user-1")  # (previous_id, user_id)
    client.screen("user-1", "Mobile", "Home")
    client.flush()
    assert errors == []

    events = {e["type"]: e for e in server.events()}
    assert set(events) == {"track", "identify", "page", "group", "alias", "screen"}
    assert all(e["source"] == "backend" for e in events.values())
    assert all(e["user_id"] == "user-1" for e in events.values())
    track = events["track"]
    assert track["event"] == "Order Completed"
    assert track["properties"] == {"revenue": 42.5, "plan": "pro"}
    assert track["original_timestamp"] == "2025-05-28T04:17:35.000Z"
    assert track["context"]["library"]["name"] == "analytics-python"
    assert track["context"]["ip"] == "127.0.0.1"
    assert events["identify"]["traits"] == {"email": "a@example.com", "plan": "pro"}
    assert events["page"]["name"] == "Install"
    assert events["page"]["properties"]["category"] == "Docs"
    assert events["page"]["properties"]["path"] == "/docs/install"
    assert events["group"]["group_id"] == "acme"
    assert events["group"]["traits"] == {"name": "Acme Inc"}
    assert events["alias"]["previous_id"] == "anon-previous"
    assert events["screen"]["name"] == "Home"


def test_segment_python_sdk_with_a_wrong_write_key_is_refused(start_server):
    server = start_server({"sources": [{"name": "backend", "write_key": WRITE_KEY}]})
    client = Client("wrong-key", host=server.url, sync_mode=True, max_retries=1)
    # In sync mode the SDK raises the API's error instead of retrying a 4xx forever.
    with pytest.raises(APIError) as raised:
        client.track("user-1", "Order Completed")
    assert raised.value.status == 401
    assert raised.value.code == "invalid_write_key"
    assert server.events() == []
