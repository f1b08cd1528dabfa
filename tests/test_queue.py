"""The queue pipeline end to end: edge → broker → ``eventrouter worker`` → SQLite."""

from __future__ import annotations

from tests.helpers import LiveServer, eventually
from tests.queue_support import WorkerThread, queue_env, unique  # noqa: F401 - fixture

# ruff: noqa: F811 - pytest fixtures are parameters


def test_accepted_events_reach_the_store_through_the_worker(queue_env):
    server = LiveServer(queue_env.config()).start()
    try:
        ids = [unique("m") for _ in range(30)]
        for message_id in ids[:10]:
            response = server.post(
                "/v1/track", {"userId": "u1", "event": "Signed Up", "messageId": message_id}
            )
            assert response.status_code == 200, response.text
        batch = [{"type": "track", "userId": "u1", "event": "x", "messageId": m} for m in ids[10:]]
        response = server.post("/v1/batch", {"batch": batch})
        assert response.status_code == 200, response.text
        assert queue_env.stored_ids() == []  # nothing is stored until a worker runs
        with WorkerThread(queue_env.config()):
            eventually(lambda: len(queue_env.stored_ids()) == 30, "30 events stored")
        assert sorted(queue_env.stored_ids()) == sorted(ids)
        stored = server.events(user_id="u1")
        assert {e["message_id"] for e in stored} == set(ids)
    finally:
        server.stop()
