"""Segment's size limits: 32 KB per event, 500 KB and 2500 events per batch, enforced on
the bytes received and on what they decompress to."""

from __future__ import annotations

import json
import tracemalloc
import zlib

import pytest

from tests.ingest_support import assert_error, gz, post_raw, running, the_event, uid

#: Every test runs with each body scanner (eventrouter.scan): compiled and pure Python.
pytestmark = pytest.mark.usefixtures("scanner")

KB = 1024
JSON = {"Content-Type": "application/json"}
GZIP = {"Content-Type": "application/json", "Content-Encoding": "gzip"}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    with running(tmp_path_factory.mktemp("limits")) as server:
        yield server


def sized(body: dict, size: int, field: str = "pad") -> bytes:
    """``body`` as compact JSON padded to exactly ``size`` bytes through ``properties``."""
    body = {**body, "properties": {field: ""}}
    base = len(json.dumps(body, separators=(",", ":")).encode())
    body["properties"][field] = "x" * (size - base)
    data = json.dumps(body, separators=(",", ":")).encode()
    assert len(data) == size
    return data


def sized_batch(user: str, size: int) -> bytes:
    """A valid batch of exactly ``size`` bytes: track items of at most ~30 KB each."""
    items: list[dict] = []
    remaining = size - len(b'{"batch":[]}')
    while remaining:
        item = {"type": "track", "userId": user, "event": "e", "properties": {"p": ""}}
        overhead = len(json.dumps(item, separators=(",", ":"))) + (1 if items else 0)
        if remaining < overhead:  # no room for another item: widen the last one
            items[-1]["properties"]["p"] += "x" * remaining
            break
        take = min(30 * KB, remaining - overhead)
        item["properties"]["p"] = "x" * take
        items.append(item)
        remaining -= overhead + take
    data = json.dumps({"batch": items}, separators=(",", ":")).encode()
    assert len(data) == size
    return data


# -- one event ----------------------------------------------------------------------------


def big(path: str, user: str) -> dict:
    if path == "/track":
        return {"event_type": "big", "user_id": user}
    return {"userId": user, "event": "big"}


@pytest.mark.parametrize("path", ["/v1/track", "/v1/t", "/track"])
def test_event_of_exactly_32_kb_is_accepted(shared, path):
    user = uid()
    response = post_raw(shared, path, sized(big(path, user), 32 * KB), JSON)
    assert response.status_code == 200, response.text
    assert the_event(shared, user_id=user)["event"] == "big"


@pytest.mark.parametrize("path", ["/v1/track", "/v1/identify", "/v1/t", "/track"])
def test_event_over_32_kb_is_413(shared, path):
    user = uid()
    response = post_raw(shared, path, sized(big(path, user), 32 * KB + 1), JSON)
    assert_error(response, 413, "payload_too_large", "body", "32 KB")
    assert shared.events(user_id=user) == []


def test_event_over_32_kb_sent_chunked_is_413(shared):
    # No Content-Length: the limit is enforced while the body streams in.
    user = uid()
    data = sized({"userId": user, "event": "big"}, 40 * KB)

    def chunks():
        for start in range(0, len(data), 4 * KB):
            yield data[start : start + 4 * KB]

    request = shared.client.build_request("POST", "/v1/track", content=chunks(), headers=JSON)
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    response = shared.client.send(request)
    assert_error(response, 413, "payload_too_large", "body")
    assert shared.events(user_id=user) == []


def test_chunked_event_under_the_limit_is_accepted(shared):
    user = uid()
    data = sized({"userId": user, "event": "chunked"}, 20 * KB)
    chunks = [data[i : i + 1000] for i in range(0, len(data), 1000)]
    response = shared.client.post("/v1/track", content=iter(chunks), headers=JSON)
    assert response.status_code == 200, response.text
    assert the_event(shared, user_id=user)["event"] == "chunked"


def test_gzipped_event_is_limited_by_its_decompressed_size(shared):
    user = uid()
    data = sized({"userId": user, "event": "big"}, 32 * KB + 1)
    compressed = gz(data)
    assert len(compressed) < 2 * KB
    response = post_raw(shared, "/v1/track", compressed, GZIP)
    assert_error(response, 413, "payload_too_large", "body", "decompresses")
    assert shared.events(user_id=user) == []


def test_gzipped_event_of_exactly_32_kb_is_accepted(shared):
    user = uid()
    data = sized({"userId": user, "event": "big"}, 32 * KB)
    response = post_raw(shared, "/v1/track", gz(data), GZIP)
    assert response.status_code == 200, response.text
    assert the_event(shared, user_id=user)["event"] == "big"


# -- batches ------------------------------------------------------------------------------


def test_batch_of_exactly_500_kb_is_accepted(shared):
    user = uid()
    data = sized_batch(user, 500 * KB)
    response = post_raw(shared, "/v1/batch", data, JSON)
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True}
    assert len(shared.events(user_id=user)) == len(json.loads(data)["batch"])


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/import", "/v1/b"])
def test_batch_over_500_kb_is_413(shared, path):
    user = uid()
    response = post_raw(shared, path, sized_batch(user, 500 * KB + 1), JSON)
    assert_error(response, 413, "payload_too_large", "body", "500 KB")
    assert shared.events(user_id=user) == []


def test_gzip_bomb_is_413_without_inflating_past_the_limit(shared):
    # 50 MB of zeros inside a valid JSON string compresses to ~50 KB: under the raw limit.
    user = uid()
    prefix = json.dumps({"batch": [{"type": "track", "userId": user, "event": "bomb"}]})
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [compressor.compress(prefix[:-1].encode() + b',"pad":"')]
    zeros = b"0" * (1024 * 1024)
    for _ in range(50):
        parts.append(compressor.compress(zeros))
    parts.append(compressor.compress(b'"}'))
    parts.append(compressor.flush())
    bomb = b"".join(parts)
    assert len(bomb) < 500 * KB
    # The server runs in this process: tracemalloc sees what decompressing costs it.
    tracemalloc.start()
    try:
        response = post_raw(shared, "/v1/batch", bomb, GZIP)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_error(response, 413, "payload_too_large", "decompresses", "500 KB limit")
    # at most the 500 KB limit is ever inflated, not the 50 MB
    assert peak < 8 * 1024 * KB, peak
    assert shared.events(user_id=user) == []


def test_gzip_bomb_on_a_single_event_endpoint_is_413(shared):
    bomb = gz(b"\0" * (50 * 1024 * 1024), level=9)
    assert len(bomb) < 500 * KB
    response = post_raw(shared, "/v1/track", bomb, GZIP)
    assert_error(response, 413, "payload_too_large", "body")


def test_2500_events_in_a_batch_are_accepted(shared):
    user = uid()
    batch = [{"type": "track", "userId": user, "event": "e"} for _ in range(2500)]
    response = shared.post("/v1/batch", {"batch": batch})
    assert response.status_code == 200, response.text
    assert len(shared.events(user_id=user)) == 2500


def test_2501_events_in_a_batch_are_400(shared):
    user = uid()
    batch = [{"type": "track", "userId": user, "event": "e"} for _ in range(2501)]
    data = json.dumps({"batch": batch}).encode()
    assert len(data) < 500 * KB
    response = post_raw(shared, "/v1/batch", data, JSON)
    body = assert_error(response, 400, "too_many_events", "batch", "2500")
    assert "2501" in body["message"]
    assert shared.events(user_id=user) == []
