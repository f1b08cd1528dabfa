"""Queue mode on a ``kafka://`` queue, against a real Kafka-protocol broker (tansu).

The queue-mode promises on Kafka: the edge's 200 after every delivery report, records
keyed by user, one consumer group per sink, offsets committed after the write (a killed
worker loses nothing), dead-letter topics with ``eventrouter dead-letters``, the spool
while the broker is down, and ``eventrouter replay --from``.
"""

from __future__ import annotations

import pytest

from tests.helpers import LiveServer, eventually, unique
from tests.kafka_support import kafka_env, tansu_broker  # noqa: F401 - fixtures
from tests.queue_support import WorkerThread

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

# ruff: noqa: F811 - pytest fixtures are parameters


def test_accepted_events_reach_the_store_through_the_worker(kafka_env):
    server = LiveServer(kafka_env.config()).start()
    try:
        ids = [unique("m") for _ in range(30)]
        for message_id in ids[:10]:
            response = server.post(
                "/v1/track", {"userId": "u1", "event": "Signed Up", "messageId": message_id}
            )
            assert response.status_code == 200, response.text
        batch = [
            {"type": "track", "anonymousId": f"a{i % 4}", "event": "x", "messageId": m}
            for i, m in enumerate(ids[10:])
        ]
        response = server.post("/v1/batch", {"batch": batch})
        assert response.status_code == 200, response.text
        assert kafka_env.stored_ids() == []  # nothing is stored until a worker runs
        with WorkerThread(kafka_env.config()):
            eventually(lambda: len(kafka_env.stored_ids()) == 30, "30 events stored")
        assert sorted(kafka_env.stored_ids()) == sorted(ids)
    finally:
        server.stop()
