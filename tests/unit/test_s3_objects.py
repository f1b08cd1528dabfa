"""The s3 sink's objects (sinks/s3.py), without a store: what a reader of the archive sees
in an object's bytes, and which partition (key) an event lands in.

Every ``compression_level`` (1-9), through ISA-L or the standard zlib, makes one standard
gzip member that ``gzip.decompress`` reads back byte for byte (``zcat`` too: the
integration test of every level, in test_s3.py), however many
pieces it was compressed in; the level mapping is the documented one; without ISA-L
installed the sink falls back to zlib at the configured level; a client's JSON with line
breaks between its tokens still makes one line per event; every event lands in its
source's UTC hour. The upload itself is tested against moto in
tests/integration/test_s3.py.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest

from eventrouter.events.commands import STORED_COLUMNS, TrackCommand
from eventrouter.sinks import s3
from eventrouter.sinks.s3 import (
    ISAL_LEVELS,
    Deflate,
    ParallelGzip,
    deflate_for,
    ndjson_lines,
    one_line_each,
    partitions,
)

AT = datetime(2025, 5, 28, 4, 17, 35, 250000, tzinfo=UTC)


def ndjson(count: int) -> bytes:
    """``count`` lines like a shop's track calls: the same keys, a few pages and products,
    a random id each (so that deflate has work to do)."""
    lines = []
    for i in range(count):
        event = {
            "message_id": os.urandom(8).hex(),
            "event": "Product Viewed",
            "user_id": f"user-{i * 7919 % 100_000}",
            "properties": {"product_id": f"sku-{i * 31 % 977}", "price": i % 300 + 0.95},
            "context": {
                "page": {"path": f"/products/sku-{i * 31 % 977}", "title": "Example Shop"},
                "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) Chrome/126.0",
            },
        }
        lines.append(json.dumps(event, separators=(",", ":")).encode() + b"\n")
    return b"".join(lines)


@pytest.fixture(scope="module")
def pool():
    with ThreadPoolExecutor(2) as executor:
        yield executor


def gzip_of(data: bytes, deflate: Deflate, pool: ThreadPoolExecutor, piece: int) -> bytes:
    gz = ParallelGzip(deflate, pool)
    for start in range(0, len(data), piece):
        gz.add(data[start : start + piece])
    return gz.finish()


@pytest.mark.parametrize("level", range(1, 10))
def test_every_level_is_one_standard_gzip_member(level, pool):
    data = ndjson(5000)
    body = gzip_of(data, deflate_for(level), pool, piece=64 * 1024)
    assert gzip.decompress(body) == data
    # One member: a reader that stops after the first member (Athena's) sees everything.
    reader = zlib.decompressobj(31)
    assert reader.decompress(body) == data
    assert reader.eof and reader.unused_data == b""
    assert body[:10] == ParallelGzip.HEADER


@pytest.mark.parametrize("module", [zlib, s3.isal_zlib], ids=["zlib", "isal"])
def test_pieces_make_the_stream_of_the_whole(module, pool):
    """Primed with the previous piece's tail, the pieces compress about as well as one
    stream does, and decompress to the same bytes however the data was cut."""
    if module is None:
        pytest.fail("isal is a runtime dependency (setup.cfg): it must be installed")
    data = ndjson(3000)
    deflate = Deflate(module, 1)
    whole = gzip_of(data, deflate, pool, piece=len(data))
    cut = gzip_of(data, deflate, pool, piece=10_000)
    assert gzip.decompress(cut) == gzip.decompress(whole) == data
    assert len(cut) < 1.15 * len(whole)
    assert gzip.decompress(gzip_of(b"", deflate, pool, piece=1)) == b""


def test_levels_map_onto_isal_then_zlib():
    assert [deflate_for(level) for level in range(1, 10)] == [
        Deflate(s3.isal_zlib, 1),
        Deflate(s3.isal_zlib, 1),
        Deflate(s3.isal_zlib, 1),  # the default
        Deflate(s3.isal_zlib, 2),
        Deflate(s3.isal_zlib, 2),
        Deflate(zlib, 6),
        Deflate(zlib, 7),
        Deflate(zlib, 8),
        Deflate(zlib, 9),
    ]
    assert ISAL_LEVELS[3] == 1 and deflate_for(3).name == "ISA-L"
    assert deflate_for(6).name == deflate_for(9).name == "zlib"
    # Without ISA-L: zlib at the configured level, as before it was added.
    assert [deflate_for(level, isal=None) for level in range(1, 10)] == [
        Deflate(zlib, level) for level in range(1, 10)
    ]


def test_objects_get_smaller_as_the_level_rises(pool):
    """Sizes fall as the level rises on such events, as docs/s3.md says."""
    data = ndjson(4000)
    sizes = [len(gzip_of(data, deflate_for(level), pool, 256 * 1024)) for level in (3, 5, 6, 9)]
    assert sizes == sorted(sizes, reverse=True)


def test_without_isal_the_sink_falls_back_to_zlib(monkeypatch, pool):
    """A platform without isal's wheels: the module imports, and every level is zlib's.
    (A second copy of sinks/s3.py, loaded while ``import isal`` fails; the real one is
    left alone.)"""
    monkeypatch.setitem(sys.modules, "isal", None)
    spec = importlib.util.spec_from_file_location("s3_without_isal", s3.__file__)
    without = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, without)  # dataclasses look it up there
    spec.loader.exec_module(without)
    assert without.isal_zlib is None and without._crc32 is zlib.crc32
    assert [without.deflate_for(level) for level in range(1, 10)] == [
        without.Deflate(zlib, level) for level in range(1, 10)
    ]
    data = ndjson(2000)
    gz = without.ParallelGzip(without.deflate_for(3), pool)
    for start in range(0, len(data), 50_000):
        gz.add(data[start : start + 50_000])
    assert gzip.decompress(gz.finish()) == data


# -- lines -------------------------------------------------------------------------------
def track(message_id: str, properties: bytes) -> TrackCommand:
    return TrackCommand(
        message_id=message_id,
        source="web",
        user_id="u1",
        event="Signed Up",
        properties=msgspec.Raw(properties),
        timestamp=AT,
        received_at=AT,
    )


def test_json_with_line_breaks_between_tokens_is_still_one_line_per_event():
    commands = [
        track("a", b'{"plan": "pro"}'),
        track("b", b'{\n  "plan": "team",\r\n  "seats": 3\n}'),
        track("c", b'{"note": "two\\nlines"}'),  # an escaped break inside a string stays
    ]
    data = ndjson_lines(commands)
    lines = data.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 4 and b"\r" not in data
    rows = [json.loads(line) for line in lines[:-1]]
    assert [list(row) for row in rows] == [list(STORED_COLUMNS)] * 3
    assert [row["properties"] for row in rows] == [
        {"plan": "pro"},
        {"plan": "team", "seats": 3},
        {"note": "two\nlines"},
    ]
    assert rows[0]["timestamp"] == "2025-05-28T04:17:35.250000Z"


def test_compact_json_is_copied_as_sent():
    raw = b'{"b":1,"a":[1,2,{"c":null}]}'
    [line] = ndjson_lines([track("a", raw)]).splitlines()
    assert b'"properties":' + raw + b"," in line


@pytest.mark.parametrize(
    ("data", "lines", "expected"),
    [
        (b"", 0, True),
        (b"{}\n", 1, True),
        (b"{}\n{}\n", 2, True),
        (b"{}\n{}\n", 1, False),  # a break too many
        (b"{}\n{}", 2, False),  # one too few
        (b"{\n}\n", 1, False),  # a break inside the line
        (b"{}\n{}\n", 3, False),
    ],
)
def test_one_line_each(data, lines, expected):
    assert one_line_each(data, lines) is expected


# -- partitions ----------------------------------------------------------------------------
def test_partitions_by_source_and_utc_hour_in_arrival_order():
    """Whatever the order, offsets and sources of the events (a naive time is UTC), each
    lands in its (source, UTC day, UTC hour), in arrival order, the partitions in the order
    of their first event; the last hour there is (9999-12-31 23:00) included."""
    hour = datetime(2025, 5, 28, 4, 0, tzinfo=UTC)
    plus2 = timezone(timedelta(hours=2))
    times = [
        hour,
        hour + timedelta(minutes=59, seconds=59, microseconds=999_999),
        hour + timedelta(hours=1),  # the next hour
        hour - timedelta(microseconds=1),  # the hour before
        (hour + timedelta(minutes=5)).astimezone(plus2),  # 06:05+02:00 is 04:05Z
        (hour + timedelta(minutes=6)).replace(tzinfo=None),  # naive: UTC
        datetime(9999, 12, 31, 23, 59, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 30, tzinfo=UTC),
        hour + timedelta(minutes=7),
    ]
    sources = ["web", "web", "web", "web", "web", "web", "web", "web", "ios"]
    commands = [
        TrackCommand(
            message_id=str(i), source=source, user_id="u", event="e", timestamp=at, received_at=at
        )
        for i, (at, source) in enumerate(zip(times, sources, strict=True))
    ]
    found = [
        (p.source, p.day.isoformat(), p.hour, [c.message_id for c in p.commands])
        for p in partitions(commands)
    ]
    assert found == [
        ("web", "2025-05-28", 4, ["0", "1", "4", "5"]),
        ("web", "2025-05-28", 5, ["2"]),
        ("web", "2025-05-28", 3, ["3"]),
        ("web", "9999-12-31", 23, ["6", "7"]),
        ("ios", "2025-05-28", 4, ["8"]),
    ]


def test_every_time_is_written_in_utc_whatever_a_plugin_set():
    """Commands carry UTC; a plugin may set a time at another offset, or a naive one
    (taken as UTC): every line's times are UTC with a ``Z`` all the same."""
    plus2 = timezone(timedelta(hours=2))
    commands = [track(str(i), b"{}") for i in range(5)]
    commands[2] = msgspec.structs.replace(commands[2], timestamp=AT.astimezone(plus2))
    commands[3] = msgspec.structs.replace(commands[3], sent_at=AT.replace(tzinfo=None))
    commands[4] = msgspec.structs.replace(commands[4], original_timestamp=AT.astimezone(plus2))
    rows = [json.loads(line) for line in ndjson_lines(commands).splitlines()]
    assert [row["timestamp"] for row in rows] == ["2025-05-28T04:17:35.250000Z"] * 5
    assert rows[3]["sent_at"] == rows[4]["original_timestamp"] == "2025-05-28T04:17:35.250000Z"
    assert rows[0]["sent_at"] is None and rows[0]["original_timestamp"] is None
