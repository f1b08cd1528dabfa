"""The data-quality tables (rejected events, catalogue, violation counts) on every SQL
store: written by several flushes, read back summed, each rejected event kept once."""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest

from eventrouter.store.quality import CatalogueCount, Rejected, ViolationCount
from tests.helpers import recent
from tests.store_support import STORES, store_of, store_sink

NASTY = "<img src=x onerror=alert(1)>\"'><script>"


@pytest.fixture(params=STORES)
def tables(request, tmp_path):
    with store_sink(request.param, tmp_path) as sink:
        if request.param == "clickhouse":
            from clickhouse_driver import Client

            database = sink["url"].rsplit("/", 1)[1]
            client = Client.from_url("clickhouse://default:@127.0.0.1:9000/default")
            client.execute(f"CREATE DATABASE IF NOT EXISTS {database}")
            client.disconnect()
        tables = store_of(sink).quality_tables()
        try:
            yield tables
        finally:
            tables.close()


def test_a_rejected_event_is_kept_once_per_source_and_message_id(tables):
    at = recent(1, microsecond=0)
    assert tables.rejected(None, None, 10) == []  # nothing written yet: nothing found

    def row(source: str, message_id: str, when=at) -> Rejected:
        return Rejected(source, message_id, "track", NASTY, when, when, "v1", "[]", "{}")

    tables.record_rejected([row("shop", "m1"), row("shop", "m2"), row("app", "m1")])
    tables.record_rejected([row("shop", "m1", at + timedelta(hours=1))])  # a retry
    shop = tables.rejected("shop", None, 10)
    assert [r.message_id for r in shop] == ["m1", "m2"]
    assert shop[0].name == NASTY and shop[0].rejected_at == at
    assert len(tables.rejected(None, None, 10)) == 3
    assert tables.rejected("shop", at + timedelta(seconds=1), 10) == []
    assert [r.message_id for r in tables.rejected("shop", None, 1, offset=1)] == ["m2"]


def test_catalogue_counts_from_several_flushes_are_summed(tables):
    first, later = recent(1, microsecond=0), recent(0.5, microsecond=0)
    assert tables.catalogue(None, None) == []
    tables.add_catalogue(
        [
            CatalogueCount("web", "track", "Order Completed", "", "event", 2, first, first),
            CatalogueCount("web", "track", "Order Completed", "total", "number", 2, first, first),
            CatalogueCount("web", "track", NASTY, "", "event", 1, first, first),
        ]
    )
    tables.add_catalogue(
        [CatalogueCount("web", "track", "Order Completed", "total", "number", 3, later, later)]
    )
    rows = tables.catalogue("web", "order")
    assert [(r.path, r.json_type, r.count) for r in rows] == [
        ("", "event", 2),
        ("total", "number", 5),
    ]
    assert rows[1].first_seen == first and rows[1].last_seen == later
    assert [r.name for r in tables.catalogue(None, "<IMG")] == [NASTY]
    assert tables.catalogue("app", None) == []


def test_violation_counts_are_summed_per_hour_rule_and_path(tables):
    hour = recent(1, minute=0, second=0, microsecond=0)
    row = ViolationCount(
        hour,
        "web",
        "track",
        "Order Completed",
        "type",
        "properties.total",
        "drop",
        2,
        '{"total":"' + NASTY + '"}',
        hour + timedelta(minutes=5),
    )
    tables.add_violations([row])
    again = msgspec.structs.replace(
        row, count=3, example="{}", last_seen=hour + timedelta(minutes=9)
    )
    tables.add_violations([again])
    (summed,) = tables.violations("web", hour - timedelta(hours=1))
    assert summed.count == 5 and summed.last_seen == hour + timedelta(minutes=9)
    assert summed.example in ('{"total":"' + NASTY + '"}', "{}")
    assert tables.violations("web", hour + timedelta(hours=1)) == []


@pytest.fixture(params=STORES)
def store_server(request, tmp_path):
    from tests.helpers import LiveServer, make_config

    with store_sink(request.param, tmp_path) as sink:
        plan = tmp_path / "web.toml"
        plan.write_text(
            'on_violation = "drop"\n[events."Order Completed"]\n'
            'required = ["total"]\nproperties.total = { type = "number" }\n'
        )
        raw = {
            "sources": [{"name": "web", "write_key": "key-web"}],
            "sinks": {"local": sink},
            "plugins": {
                "options": {
                    "quality": {"plans": {"web": str(plan)}, "catalogue": True, "flush": "50ms"}
                }
            },
        }
        server = LiveServer(make_config(tmp_path, raw)).start()
        server.sink = sink
        try:
            yield server
        finally:
            server.stop()


def test_a_server_keeps_catalogue_and_dropped_events_in_its_store(store_server):
    from tests.helpers import eventually

    server = store_server
    user = f"u-{NASTY}"
    batch = [
        {
            "type": "track",
            "userId": user,
            "event": "Order Completed",
            "messageId": "ok",
            "properties": {"total": 3},
        },
        {
            "type": "track",
            "userId": user,
            "event": "Order Completed",
            "messageId": "bad",
            "properties": {"total": "3"},
        },
        {"type": "identify", "userId": user, "traits": {"email": "a@example.com"}},
    ]
    response = server.post("/v1/batch", {"batch": batch}, auth=("key-web", ""))
    assert response.status_code == 200, response.text
    assert [e["message_id"] for e in server.events(user_id=user, type="track")] == ["ok"]
    tables = store_of(server.sink).quality_tables()
    try:
        assert [r.message_id for r in tables.rejected("web", None, 10)] == ["bad"]

        def counted() -> list:
            return [
                (r.kind, r.name, r.path, r.json_type, r.count)
                for r in tables.catalogue("web", None)
            ]

        eventually(lambda: len(counted()) == 5, "the catalogue was flushed")
        assert sorted(counted()) == [
            ("identify", "identify", "", "event", 1),
            ("identify", "identify", "email", "string", 1),
            ("track", "Order Completed", "", "event", 2),
            ("track", "Order Completed", "total", "integer", 1),
            ("track", "Order Completed", "total", "string", 1),
        ]
        eventually(lambda: tables.violations("web", None), "the violation counts were flushed")
        (violation,) = tables.violations("web", None)
        assert (violation.path, violation.rule, violation.policy) == (
            "properties.total",
            "type",
            "drop",
        )
    finally:
        tables.close()


def test_a_replay_stores_each_dropped_event_once_on_every_store(store_server, tmp_path):
    import asyncio

    from eventrouter.quality.cli import replay

    server = store_server
    user = "replayed-user"
    bad = {"userId": user, "event": "Order Completed", "messageId": "m-1", "properties": {}}
    assert server.post("/v1/track", bad, auth=("key-web", "")).status_code == 200
    assert server.events(user_id=user) == []
    config = server.config
    plan = tmp_path / "web.toml"
    plan.write_text(plan.read_text().replace('required = ["total"]', "required = []"))
    first = asyncio.run(replay(config, "web", None, dry_run=False))
    assert (first.sent, first.already_stored, first.still_breaking) == (1, 0, 0)
    again = asyncio.run(replay(config, "web", None, dry_run=False))
    assert (again.sent, again.already_stored) == (0, 1)
    assert [e["message_id"] for e in server.events(user_id=user)] == ["m-1"]
