def test_original_track_payload_is_stored_and_queryable(server):
    body = {
        "event_type": "page_view",
        "properties": {"path": "/home"},
        "timestamp": "2025-05-28T09:47:35+05:30",
        "user_id": "u1",
        "session_id": "s1",
    }
    response = server.post("/track", body)
    assert response.status_code == 200
    assert response.json() == {"success": True}
    [event] = server.events()
    assert event["event"] == "page_view"
    assert event["type"] == "track"
    assert event["user_id"] == "u1"
    assert event["session_id"] == "s1"
    assert event["properties"] == {"path": "/home"}
    assert event["timestamp"] == "2025-05-28T04:17:35.000Z"
