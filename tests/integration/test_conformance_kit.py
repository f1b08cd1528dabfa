"""The sink conformance kit (router_core/testing.py) on every built-in sink and on the
webhook example (in integration/: its concurrent-writers case starts processes).

file and sqlite need nothing; postgres and clickhouse their servers on loopback; s3
moto's server; the queue publisher RabbitMQ and Redis; the webhook a local HTTP receiver.
How the kit reads back what it cannot query: tests/conformance_support.py.
"""

from __future__ import annotations

import pytest

from eventrouter.testing import SinkConformance
from tests.conformance_support import QUEUE_SINKS, QueuePublisherConformance, s3_reader
from tests.integration.test_example_plugin import PACKAGE as WEBHOOK_PACKAGE
from tests.integration.test_example_plugin import Receiver
from tests.queue_support import queue_env  # noqa: F401
from tests.s3_support import s3_env  # noqa: F401
from tests.store_support import store_sink

# ruff: noqa: F811 - pytest fixtures are parameters

pytestmark = pytest.mark.slow


def test_the_file_sink_conforms(tmp_path, capsys):
    kit = SinkConformance("file", {"path": str(tmp_path / "events.jsonl"), "fsync": False})
    results = kit.check()
    table = capsys.readouterr().out
    assert "redelivered batch" in table and "stored twice (at_least_once)" in table
    assert all(r.passed for r in results)


def test_the_sqlite_sink_conforms(tmp_path, capsys):
    options = {"url": f"sqlite:///{tmp_path}/events.db", "indexes": ["message_id"]}
    results = SinkConformance("sqlite", options).check()
    assert "stored once" in capsys.readouterr().out
    assert all(r.passed for r in results)


def test_without_its_message_id_index_sqlite_says_it_is_at_least_once(tmp_path, capsys):
    results = SinkConformance("sqlite", {"url": f"sqlite:///{tmp_path}/events.db"}).check()
    assert "stored twice (at_least_once)" in capsys.readouterr().out
    assert all(r.passed for r in results)


# -- the sinks that need a service (tests/conformance_support.py) ------------------------
@pytest.mark.parametrize("kind", ["postgres", "clickhouse"])
def test_the_sql_sinks_conform(kind, tmp_path, capsys):
    with store_sink(kind, tmp_path) as table:
        options = {key: value for key, value in table.items() if key != "type"}
        results = SinkConformance(kind, options).check()
    print(capsys.readouterr().out)
    assert all(r.passed for r in results)


def test_the_s3_sink_conforms(s3_env, capsys):
    table = s3_env.sink(s3_env.bucket(), prefix="conformance")
    options = {key: value for key, value in table.items() if key != "type"}
    results = SinkConformance("s3", options, read_back=s3_reader(s3_env)).check()
    # Objects are named after their batch: a batch written again replaces its objects.
    assert "stored once" in capsys.readouterr().out
    assert all(r.passed for r in results)


def test_the_queue_publisher_conforms(queue_env, capsys):
    """The edge's queue publisher, on RabbitMQ and on Redis: what it confirmed is in
    every sink's queue (read back by consuming them)."""
    queue_env.sinks |= set(QUEUE_SINKS)  # deleted afterwards
    options = {
        "url": queue_env.url,
        "prefix": queue_env.prefix,
        "spool": {"dir": str(queue_env.tmp_path / "spool")},
    }
    results = QueuePublisherConformance("queue", options).check()
    table = capsys.readouterr().out
    # A message published twice is queued twice: the sinks behind dedup by message_id.
    assert "stored twice (at_least_once)" in table
    assert all(r.passed for r in results)


def test_the_webhook_example_conforms(monkeypatch, capsys):
    """examples/eventrouter-webhook posting to an HTTP receiver on 127.0.0.1."""
    monkeypatch.syspath_prepend(str(WEBHOOK_PACKAGE))  # and the writer processes' path
    import eventrouter_webhook

    receiver = Receiver()
    try:
        kit = SinkConformance(
            "webhook",
            {"url": receiver.url, "max_events_per_request": 1000},
            plugins=[eventrouter_webhook],
            read_back=lambda sink: [row["message_id"] for b in receiver.batches() for row in b],
        )
        results = kit.check()
    finally:
        receiver.close()
    # The endpoint gets a batch again when it is sent again; its X-Eventrouter-Batch-Id
    # is the same, for a receiver that wants to drop the repeat.
    assert "stored twice (at_least_once)" in capsys.readouterr().out
    assert all(r.passed for r in results)
