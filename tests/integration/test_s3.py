"""The ``s3`` sink against moto's standalone S3 server over real HTTP on loopback.

What an operator of the archive relies on: Hive-style keys by source, UTC day and hour
(an event from last year and one from next month included); gzip NDJSON objects, each
one gzip member holding exactly the stored columns; a second write of the same batch
overwriting its objects rather than duplicating them; ``batch.max_bytes`` cutting
objects; multipart uploads for large objects; Parquet readable back with pyarrow; the
200 of embedded mode only once the objects are in the bucket; ``eventrouter worker``
archiving from the queue; an unreachable S3 failing writes (503 on the edge; retried,
then held until S3 answers, in the worker); config errors naming the key.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from eventrouter import config as config_module
from eventrouter.bus.bus import WORKER, Bus, StartFailed, make_plugin_manager
from eventrouter.config import Config, ConfigError
from eventrouter.events.commands import (
    STORED_COLUMNS,
    AliasCommand,
    Command,
    GroupCommand,
    IdentifyCommand,
    PageCommand,
    ScreenCommand,
    TrackCommand,
)
from eventrouter.sinks.s3 import MIN_PART_SIZE, ndjson_lines
from tests.helpers import LiveServer, eventually, free_port, make_config
from tests.integration.test_worker import post_batches, ready
from tests.queue_support import WorkerThread, amqp_env, queue_env, unique  # noqa: F401
from tests.s3_support import S3Env, closed_endpoint, s3_env, start_moto  # noqa: F401

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

# ruff: noqa: F811 - pytest fixtures are parameters

KEY = re.compile(
    r"^(?P<prefix>.+)/source=(?P<source>[^/]+)/dt=(?P<dt>\d{4}-\d{2}-\d{2})/"
    r"hour=(?P<hour>\d{2})/(?P<name>[0-9a-f-]{36})\.(?P<ext>ndjson\.gz|parquet)$"
)
FAST_RETRY = {"attempts": 3, "initial_backoff": "10ms", "max_duration": "5s"}


def track(message_id: str, at: datetime, source: str = "web", **fields: Any) -> TrackCommand:
    fields = {"user_id": "u1", "event": "Signed Up", "properties": {"plan": "pro"}, **fields}
    return TrackCommand(
        message_id=message_id, source=source, timestamp=at, received_at=at, **fields
    )


def s3_config(tmp_path, sink: dict[str, Any], **extra: Any) -> Config:
    return make_config(tmp_path, {"sinks": {"archive": sink}, **extra})


def deliver(config: Config, *batches: Sequence[Command], sink: str = "archive") -> Bus:
    """Start a worker-role bus, write each batch to ``sink`` as ``eventrouter worker``
    would (raising its failure), stop; return the bus (its sinks keep their stats)."""

    async def main() -> Bus:
        bus = Bus(config, make_plugin_manager(config), role=WORKER, only=[sink])
        await bus.start()
        try:
            for batch in batches:
                await bus.deliver(sink, batch)
        finally:
            await bus.stop()
        return bus

    return asyncio.run(main())


# -- object layout and content ---------------------------------------------------------
def test_keys_are_hive_style_by_source_utc_day_and_hour(s3_env: S3Env, tmp_path):
    """One object per (source, day, hour) of the event timestamps, in UTC, whatever the
    batch's order: an event from last year, one from next month, two hours of one day,
    two sources (one with characters a key must escape), a non-UTC offset."""
    now = datetime.now(UTC).replace(microsecond=0)
    last_year = now.replace(year=now.year - 1, month=3, day=14, hour=23)
    next_month = (now.replace(day=1) + timedelta(days=40)).replace(hour=0, minute=5)
    today_9 = now.replace(hour=9, minute=0)
    today_10 = now.replace(hour=10, minute=59)
    plus_two = datetime.fromisoformat(f"{today_10:%Y-%m-%d}T12:30:00+02:00")
    events = [
        track("a1", today_9),
        track("b1", last_year),
        track("a2", today_9 + timedelta(minutes=30)),
        track("c1", next_month),
        track("d1", today_10),
        track("e1", today_9, source="ios app/v2"),
        track("d2", plus_two),  # 10:30 UTC
    ]
    assert plus_two.utcoffset() == timedelta(hours=2)
    bucket = s3_env.bucket()
    deliver(s3_config(tmp_path, s3_env.sink(bucket)), events)

    found = s3_env.events(bucket)
    by_partition = {}
    for key, lines in found.items():
        match = KEY.match(key)
        assert match, key
        assert match["prefix"] == "events"
        assert match["ext"] == "ndjson.gz"
        by_partition[(match["source"], match["dt"], match["hour"])] = [
            line["message_id"] for line in lines
        ]
    assert by_partition == {
        ("web", f"{today_9:%Y-%m-%d}", "09"): ["a1", "a2"],
        ("web", f"{last_year:%Y-%m-%d}", "23"): ["b1"],
        ("web", f"{next_month:%Y-%m-%d}", "00"): ["c1"],
        ("web", f"{today_10:%Y-%m-%d}", "10"): ["d1", "d2"],
        ("ios%20app%2Fv2", f"{today_9:%Y-%m-%d}", "09"): ["e1"],
    }
    assert len(found) == 5  # one object per partition
    [d2] = [line for lines in found.values() for line in lines if line["message_id"] == "d2"]
    assert d2["timestamp"] == f"{today_10:%Y-%m-%d}T10:30:00Z"  # stored in UTC too


def test_second_write_of_a_batch_overwrites_its_objects(s3_env: S3Env, tmp_path):
    """Object names derive from the events they hold: the same batch written twice (a
    redelivery) leaves the same objects, not a second copy of each event. A batch of
    4,500 events is encoded and compressed in pieces yet is one gzip member."""
    at = datetime(2025, 5, 28, 4, 17, 35, 123456, tzinfo=UTC)
    batch = [track(f"m{i:05d}", at, properties={"i": i}) for i in range(4500)]
    bucket = s3_env.bucket()
    config = s3_config(tmp_path, s3_env.sink(bucket, prefix="/archive/raw/"))
    deliver(config, batch, batch)

    [key] = s3_env.keys(bucket)
    assert key.startswith("archive/raw/source=web/dt=2025-05-28/hour=04/")
    lines = s3_env.lines(bucket, key)
    assert [line["message_id"] for line in lines] == [c.message_id for c in batch]
    assert [line["properties"]["i"] for line in lines] == list(range(4500))
    head = s3_env.client.head_object(Bucket=bucket, Key=key)
    assert head["ContentType"] == "application/gzip"
    assert head["Metadata"] == {"events": "4500"}


@pytest.mark.parametrize("level", [1, 3, 5, 6, 9])
def test_every_compression_level_uploads_gzip_that_zcat_reads(s3_env: S3Env, tmp_path, level):
    """ISA-L (levels 1-5) or zlib (6-9): the object is one standard gzip member, which
    ``zcat`` and Python's ``gzip`` read back to the same lines, compressed in pieces."""
    at = datetime(2025, 5, 28, 4, 17, 35, tzinfo=UTC)
    batch = [
        track(f"m{i:05d}", at, properties={"i": i, "pad": "x" * (i % 50)}) for i in range(5000)
    ]
    bucket = s3_env.bucket()
    deliver(s3_config(tmp_path, s3_env.sink(bucket, compression_level=level)), batch)
    [key] = s3_env.keys(bucket)
    lines = s3_env.lines(bucket, key)  # one gzip member, as gzip.decompress reads it
    assert [line["properties"]["i"] for line in lines] == list(range(5000))
    body = s3_env.body(bucket, key)
    zcat = subprocess.run(["zcat"], input=body, capture_output=True, check=True)
    assert zcat.stdout.splitlines() == [ndjson_lines([c]).rstrip(b"\n") for c in batch]


def test_max_bytes_cuts_objects_between_events(s3_env: S3Env, tmp_path):
    at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    batch = [track(f"m{i:03d}", at, properties={"pad": "x" * 300}) for i in range(100)]
    line_size = len(ndjson_lines(batch[:1]))
    bucket = s3_env.bucket()
    sink = s3_env.sink(bucket, batch={"max_bytes": 20_000})
    deliver(s3_config(tmp_path, sink), batch)

    keys = s3_env.keys(bucket)
    per_object = 20_000 // line_size
    assert len(keys) == -(-100 // per_object)  # ceil
    seen = []
    for key in keys:
        lines = s3_env.lines(bucket, key)
        assert len(lines) * line_size <= 20_000
        seen.extend(line["message_id"] for line in lines)
    assert sorted(seen) == [c.message_id for c in batch]  # each event once


def test_large_object_goes_up_as_multipart_upload(s3_env: S3Env, tmp_path):
    """Hard-to-compress events make a ~12 MB object; with the threshold and part size at
    S3's 5 MiB minimum it goes up in parts (the ETag of a multipart object ends ``-N``)."""
    at = datetime(2025, 6, 1, 12, tzinfo=UTC)
    batch = [
        track(f"m{i:05d}", at, properties={"blob": os.urandom(3000).hex()}) for i in range(2000)
    ]
    bucket = s3_env.bucket()
    sink = s3_env.sink(bucket, multipart_threshold=MIN_PART_SIZE, multipart_chunksize=MIN_PART_SIZE)
    bus = deliver(s3_config(tmp_path, sink), batch)

    [key] = s3_env.keys(bucket)
    head = s3_env.client.head_object(Bucket=bucket, Key=key)
    parts = int(head["ETag"].strip('"').rsplit("-", 1)[1])
    assert parts == -(-head["ContentLength"] // MIN_PART_SIZE) >= 2
    lines = s3_env.lines(bucket, key)
    assert [line["properties"]["blob"] for line in lines] == [c.properties["blob"] for c in batch]
    sink_stats = bus.sinks["archive"]
    assert (sink_stats.objects, sink_stats.multipart_objects) == (1, 1)


def test_parquet_objects_read_back_with_pyarrow(s3_env: S3Env, tmp_path):
    import pyarrow.parquet as pq

    at = datetime(2025, 2, 3, 4, 5, 6, 789000, tzinfo=UTC)
    commands = every_kind(at)
    bucket = s3_env.bucket()
    deliver(s3_config(tmp_path, s3_env.sink(bucket, format="parquet")), commands)

    [key] = s3_env.keys(bucket)
    assert KEY.match(key)["ext"] == "parquet"
    # Not threaded: Arrow's pool can abort the interpreter at exit after reading from a
    # Python file object (apache/arrow#50482).
    table = pq.read_table(io.BytesIO(s3_env.body(bucket, key)), use_threads=False)
    assert table.column_names == list(STORED_COLUMNS)
    assert str(table.schema.field("timestamp").type) == "timestamp[us, tz=UTC]"
    rows = table.to_pylist()
    for row, command in zip(rows, commands, strict=True):
        expected = command.row()
        for column in ("properties", "traits", "context"):
            value = row[column]
            assert (None if value is None else json.loads(value)) == expected[column], column
        for column in STORED_COLUMNS:
            if column not in ("properties", "traits", "context"):
                assert row[column] == expected[column], column


def test_storage_class_and_encryption_are_requested(s3_env: S3Env, tmp_path):
    bucket = s3_env.bucket()
    sink = s3_env.sink(bucket, storage_class="STANDARD_IA", server_side_encryption="AES256")
    deliver(s3_config(tmp_path, sink), [track("m1", datetime(2025, 1, 1, tzinfo=UTC))])
    [key] = s3_env.keys(bucket)
    head = s3_env.client.head_object(Bucket=bucket, Key=key)
    assert (head["StorageClass"], head["ServerSideEncryption"]) == ("STANDARD_IA", "AES256")


def every_kind(at: datetime) -> list[Command]:
    common = {
        "source": "web",
        "timestamp": at,
        "received_at": at + timedelta(seconds=1),
        "context": {"ip": "10.0.0.1", "library": {"name": "t"}},
    }
    return [
        TrackCommand(message_id="t", user_id="u", event="Buy", properties={"n": 1}, **common),
        IdentifyCommand(
            message_id="i", anonymous_id="a", traits={"plan": "pro"}, sent_at=at, **common
        ),
        PageCommand(message_id="p", user_id="u", name="Home", properties={}, **common),
        ScreenCommand(message_id="s", user_id="u", name="Cart", session_id="s1", **common),
        GroupCommand(message_id="g", user_id="u", group_id="acme", traits={"x": 1}, **common),
        AliasCommand(
            message_id="a",
            user_id="u",
            previous_id="old",
            original_timestamp=at.astimezone(timezone(timedelta(hours=-7))),
            **common,
        ),
    ]


# -- embedded mode: the 200 waits for the upload ------------------------------------------
def test_embedded_200_means_archived_with_every_column(s3_env: S3Env, start_server, tmp_path):
    """Every kind of call, from two sources, next to the SQLite store: once the 200
    arrives the objects are in the bucket (no waiting), and each line holds exactly the
    stored columns, equal to what the query API shows for the same event."""
    bucket = s3_env.bucket()
    server = start_server(
        {
            "sources": [
                {"name": "web", "write_key": "wk-web"},
                {"name": "ios", "write_key": "wk-ios"},
            ],
            "sinks": {
                "local": {"type": "sqlite", "url": f"sqlite:///{tmp_path / 'local.db'}"},
                "archive": s3_env.sink(bucket),
            },
        }
    )
    posted = {
        "web": [
            {"type": "track", "messageId": unique(), "userId": "u1", "event": "Order Completed",
             "properties": {"total": 42.5, "items": [{"sku": "a"}]},
             "timestamp": "2025-05-28T09:47:35.250+05:30"},
            {"type": "identify", "messageId": unique(), "userId": "u1",
             "traits": {"email": "u1@example.com"}},
            {"type": "page", "messageId": unique(), "anonymousId": "anon-1", "name": "Pricing",
             "properties": {"path": "/pricing"}},
            {"type": "group", "messageId": unique(), "userId": "u1", "groupId": "acme",
             "traits": {"seats": 10}},
            {"type": "alias", "messageId": unique(), "userId": "u1", "previousId": "anon-1"},
        ],
        "ios": [
            {"type": "screen", "messageId": unique(), "userId": "u2", "name": "Cart",
             "properties": {"items": 3}, "context": {"sessionId": "sess-9"}},
        ],
    }  # fmt: skip
    for source, batch in posted.items():
        response = server.post("/v1/batch", {"batch": batch, "writeKey": f"wk-{source}"})
        assert response.status_code == 200, response.text

    archived = {
        line["message_id"]: (key, line)
        for key, lines in s3_env.events(bucket).items()
        for line in lines
    }  # read at once: the 200 promised they are there
    stored = {event["message_id"]: event for event in server.events()}
    for source, batch in posted.items():
        for sent in batch:
            key, line = archived[sent["messageId"]]
            assert list(line) == list(STORED_COLUMNS)
            assert f"/source={source}/" in key
            row = stored[sent["messageId"]]
            for column in STORED_COLUMNS:
                if column in ("timestamp", "original_timestamp", "sent_at", "received_at"):
                    assert same_time(line[column], row[column]), (column, line, row)
                else:
                    assert line[column] == row[column], (column, line, row)
            assert line["type"] == sent["type"]
            assert line["source"] == source
            for field, column in (
                ("event", "event"),
                ("name", "name"),
                ("userId", "user_id"),
                ("anonymousId", "anonymous_id"),
                ("groupId", "group_id"),
                ("previousId", "previous_id"),
                ("properties", "properties"),
                ("traits", "traits"),
            ):
                if field not in sent:
                    continue
                expected = sent[field]
                if column == "properties" and sent["type"] in ("page", "screen"):
                    expected = {**expected, "name": sent["name"]}  # as Segment does
                assert line[column] == expected, column
            assert line["timestamp"].endswith("Z")
    track_line = archived[posted["web"][0]["messageId"]][1]
    assert track_line["timestamp"].startswith("2025-05-28T04:17:35.25")  # UTC
    assert archived[posted["ios"][0]["messageId"]][1]["session_id"] == "sess-9"

    health = server.health().json()["components"]["sink:archive"]
    assert health["status"] == "up", health
    assert health["stats"]["uploaded_events"] == 6


def same_time(ours: str | None, theirs: str | None) -> bool:
    if ours is None or theirs is None:
        return ours is theirs
    parse = datetime.fromisoformat
    return abs(parse(ours) - parse(theirs)) < timedelta(milliseconds=1)


def test_embedded_concurrent_requests_share_objects(s3_env: S3Env, start_server):
    """Requests that arrive while an upload is in flight join the next one (group
    commit): 100 concurrent single-event requests make far fewer than 100 objects."""
    import httpx

    bucket = s3_env.bucket()
    server = start_server({"sinks": {"archive": s3_env.sink(bucket, batch={"timeout": "50ms"})}})
    ids = [unique("m") for _ in range(100)]

    async def send_all() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            responses = await asyncio.gather(
                *(client.post("/v1/track", json={"userId": "u", "event": "E", "messageId": m})
                  for m in ids)
            )  # fmt: skip
        return [r.status_code for r in responses]

    assert asyncio.run(send_all()) == [200] * 100
    found = s3_env.events(bucket)
    assert sorted(line["message_id"] for lines in found.values() for line in lines) == sorted(ids)
    assert len(found) < 50


def test_unreachable_s3_answers_503_and_leaks_no_secret(
    s3_env: S3Env, start_server, monkeypatch, caplog
):
    secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY-s3cr3t"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    caplog.set_level(logging.DEBUG, logger="eventrouter")
    sink = {
        "type": "s3",
        "bucket": "archive",
        "endpoint_url": closed_endpoint(),
        "request_attempts": 1,
        "retry": FAST_RETRY,
    }
    server = start_server({"sinks": {"archive": sink}})
    response = server.post("/v1/track", {"userId": "u", "event": "E"})
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "unavailable"
    health = server.health()
    assert health.status_code == 503
    component = health.json()["components"]["sink:archive"]
    assert component["status"] == "down"
    assert "EndpointConnectionError" in component["detail"], component
    assert component["stats"]["failed_writes"] == FAST_RETRY["attempts"]
    assert secret not in health.text
    assert secret not in caplog.text
    assert "sink:archive: write of 1 events failed" in caplog.text


def test_missing_bucket_is_reported_by_health(s3_env: S3Env, start_server):
    server = start_server({"sinks": {"archive": s3_env.sink(unique("nobucket"))}})
    health = server.health()
    assert health.status_code == 503
    component = health.json()["components"]["sink:archive"]
    assert component["status"] == "down"
    assert "404" in component["detail"] or "Not Found" in component["detail"], component


# -- queue mode: eventrouter worker ------------------------------------------------------
def test_worker_archives_the_queue(s3_env: S3Env, queue_env):
    """Edge → broker → ``eventrouter worker`` → S3: every event archived once, the
    worker's batch (up to ``batch.max_events``) in as few objects as it has partitions."""
    bucket = s3_env.bucket()
    sinks = {"archive": s3_env.sink(bucket, batch={"max_events": 5000, "timeout": "200ms"})}
    config = queue_env.config(sinks=sinks)
    ids = [unique("m") for _ in range(300)]
    server = LiveServer(config).start()
    try:
        post_batches(server, ids, 50)
    finally:
        server.stop()
    with WorkerThread(config) as worker:
        consumer = worker.worker.consumers[0]
        eventually(lambda: consumer.written >= 300, "300 events archived")
    found = s3_env.events(bucket)
    archived = [line["message_id"] for lines in found.values() for line in lines]
    assert sorted(archived) == sorted(ids)
    assert (consumer.retries, consumer.dead_lettered) == (0, 0)
    assert len(found) <= 2  # one partition (two if the posts straddled an hour)
    assert ready(queue_env, queue_env.queue_name("archive")) == 0


def test_worker_holds_the_batch_while_s3_is_down_and_archives_it_after(s3_env: S3Env, amqp_env):
    """S3 down: the worker retries per ``retry``; with the retries spent and S3's health
    probe failing, the batch is not at fault, so it is held (unacknowledged), not
    dead-lettered. Once the endpoint answers, the held batch is archived."""
    port = free_port()
    bucket = s3_env.bucket()
    sink = {
        "type": "s3",
        "bucket": bucket,
        "endpoint_url": f"http://127.0.0.1:{port}",
        "request_attempts": 1,
        "retry": FAST_RETRY,
    }
    config = amqp_env.config(sinks={"archive": sink})
    ids = [unique("m") for _ in range(20)]
    server = LiveServer(config).start()
    try:
        post_batches(server, ids, 20)
    finally:
        server.stop()
    with WorkerThread(config) as worker:
        consumer = worker.worker.consumers[0]
        eventually(lambda: consumer.held == 1, "the batch held while S3 is down")
        assert consumer.retries >= FAST_RETRY["attempts"] - 1
        assert "EndpointConnectionError" in consumer.last_error
        assert s3_env.keys(bucket) == []
        # The same process's moto backend, now also answering on the configured port.
        second = start_moto(port)
        try:
            eventually(lambda: consumer.written == 20, "the held batch archived")
        finally:
            second.stop()
    assert consumer.dead_lettered == 0
    assert ready(amqp_env, amqp_env.dead_queue_name("archive")) == 0
    archived = [line["message_id"] for lines in s3_env.events(bucket).values() for line in lines]
    assert sorted(archived) == sorted(ids)


# -- configuration ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, r"sinks\.archive\.bucket: required key is missing"),
        ({"bucket": "Not_A_Bucket"}, r"sinks\.archive\.bucket: Expected `str` matching"),
        ({"bucket": "b1b", "bucket_name": "x"}, r"sinks\.archive\.bucket_name: unknown key"),
        ({"bucket": "b1b", "format": "csv"}, r"sinks\.archive\.format: Invalid enum value"),
        ({"bucket": "b1b", "endpoint_url": "127.0.0.1:9000"}, r"sinks\.archive\.endpoint_url"),
        (
            {"bucket": "b1b", "multipart_chunksize": 1024},
            r"sinks\.archive\.multipart_chunksize: Expected `int` >= 5242880",
        ),
        ({"bucket": "b1b", "compression_level": 0}, r"sinks\.archive\.compression_level"),
        ({"bucket": "b1b", "read_timeout": "soon"}, r"sinks\.archive\.read_timeout: 'soon'"),
    ],
)
def test_config_errors_name_the_key(tmp_path, options, expected):
    config = s3_config(tmp_path, {"type": "s3", **options})
    with pytest.raises(ConfigError, match=expected):
        Bus(config, make_plugin_manager(config))


def test_documented_examples_are_valid():
    text = (Path(__file__).resolve().parents[2] / "docs" / "s3.md").read_text("utf-8")
    blocks = re.findall(r"^( *)```toml\n(.*?)^ *```", text, re.MULTILINE | re.DOTALL)
    assert len(blocks) >= 2
    for _, block in blocks:
        config = config_module.parse(tomllib.loads(textwrap.dedent(block)), "s3.md", {})
        bus = Bus(config, make_plugin_manager(config))  # validates the s3 keys
        assert {sink.config.type for sink in bus.sinks.values()} == {"s3"}


def test_parquet_without_pyarrow_fails_at_start_saying_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    sink = {"type": "s3", "bucket": "b1b", "endpoint_url": closed_endpoint(), "format": "parquet"}
    config = s3_config(tmp_path, sink)
    bus = Bus(config, make_plugin_manager(config))  # validation does not need it
    with pytest.raises(
        StartFailed, match=r"^sink 'archive' \(type s3\) failed to start: RuntimeError: "
    ) as exc:
        asyncio.run(bus.start())
    assert "sinks.archive.format = 'parquet' needs pyarrow" in str(exc.value)
    assert "pip install 'eventrouter[parquet]'" in str(exc.value)
    assert isinstance(exc.value.__cause__, RuntimeError)
