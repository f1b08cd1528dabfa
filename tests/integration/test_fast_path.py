"""The ingestion fast path (router_core/edge/fastpath.py): the same requests, sent to a
server that takes it and to one that sends everything through Falcon
(``server.fast_path = false``), get the same status, headers and body, and store the
same events. Both servers are the app under uvicorn with the production protocol
(``DrainingHttpProtocol``, as ``tests.helpers.LiveServer`` runs it), in this process."""

from __future__ import annotations

import base64
import gzip
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from eventrouter.app import create_app
from eventrouter.errors import APIError
from eventrouter.server import fast_path_of
from tests.helpers import ADMIN_BEARER, LiveServer, make_config
from tests.ingest_support import uid

pytestmark = pytest.mark.slow

WRITE_KEY = "wk-fast"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}
#: Headers that differ between any two responses.
VARYING = {"date", "x-request-id"}


def protocol_server(data_dir: Any, fast: bool) -> LiveServer:
    """The app under uvicorn with the production protocol (LiveServer's), keyed
    sources (one rate-limited), CORS for one origin, the fast path on or off."""
    raw = {
        "server": {"fast_path": fast, "cors_origins": ["https://shop.example"]},
        "sources": [
            {"name": "web", "write_key": WRITE_KEY},
            {
                "name": "slow",
                "write_key": "wk-slow",
                "rate_limit": {"events_per_second": 0.01, "burst": 1},
            },
        ],
    }
    return LiveServer(make_config(data_dir, raw)).start()


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[tuple[LiveServer, LiveServer]]:
    fast = protocol_server(tmp_path_factory.mktemp("fast"), fast=True)
    falcon = protocol_server(tmp_path_factory.mktemp("falcon"), fast=False)
    yield fast, falcon
    fast.stop()
    falcon.stop()


def raw_exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` as bytes; everything the server answers until it closes or goes
    quiet for a moment (one response)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        sock.settimeout(0.5)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return data
            if not chunk:
                return data
            data += chunk


def same(fast: httpx.Response, falcon: httpx.Response) -> None:
    assert fast.status_code == falcon.status_code, (fast.text, falcon.text)
    assert fast.content == falcon.content
    strip = lambda r: {k: v for k, v in r.headers.items() if k not in VARYING}  # noqa: E731
    assert strip(fast) == strip(falcon)
    assert fast.headers["x-request-id"] and falcon.headers["x-request-id"]


def both(servers, path: str, **kwargs: Any) -> httpx.Response:
    fast, falcon = servers
    answers = [s.client.post(path, **kwargs) for s in (fast, falcon)]
    same(*answers)
    return answers[0]


def test_the_fast_path_is_taken_only_where_it_may_be(servers):
    fast, falcon = servers
    taker = fast_path_of(fast.app)
    assert taker is not None and fast_path_of(falcon.app) is None
    before = taker.served
    fast.client.post("/v1/track", json={"userId": uid(), "event": "Seen"}, headers=AUTH)
    assert taker.served == before + 1
    # Not an ingestion POST: the app answers, on either server.
    assert taker.handler({"method": "GET", "path": "/v1/track"}) is None
    assert taker.handler({"method": "POST", "path": "/v1/track/"}) is None
    assert taker.handler({"method": "POST", "path": "/api/v1/events"}) is None


def test_a_plugins_middleware_turns_it_off(tmp_path):
    class Stamp:
        async def process_response(self, req, resp, resource, ok):
            resp.set_header("X-Stamped", "1")

    app = create_app(make_config(tmp_path))
    app.add_middleware(Stamp())
    assert fast_path_of(app) is None


def test_a_plugins_error_handler_or_serializer_turns_it_off(tmp_path):
    async def teapot(req, resp, ex, params):
        resp.status = 418
        resp.media = {"plugin": ex.body()["code"]}

    assert fast_path_of(create_app(make_config(tmp_path))) is not None
    app = create_app(make_config(tmp_path))
    app.add_error_handler(APIError, teapot)
    assert fast_path_of(app) is None
    app = create_app(make_config(tmp_path))
    app.set_error_serializer(lambda req, resp, exc: None)
    assert fast_path_of(app) is None


def test_the_plugins_error_handler_answers_what_it_turned_off(tmp_path):
    async def teapot(req, resp, ex, params):
        resp.status = 418
        resp.media = {"plugin": ex.body()["code"]}

    server = LiveServer(
        make_config(tmp_path, {"sources": [{"name": "web", "write_key": WRITE_KEY}]})
    )
    server.app.add_error_handler(APIError, teapot)
    server.start()
    try:
        response = server.client.post("/v1/track", content=b"{}", headers=AUTH)
    finally:
        server.stop()
    assert response.status_code == 418 and response.json() == {"plugin": "missing_field"}
    assert fast_path_of(server.app) is None


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/track", {"userId": "u-1", "event": "Order Completed", "properties": {"total": 9.5}}),
        ("/v1/t", {"anonymousId": "a-1", "event": "Short path"}),
        ("/v1/identify", {"userId": "u-1", "traits": {"name": "<script>alert(1)</script>"}}),
        ("/v1/page", {"userId": "u-1", "name": "Home"}),
        ("/v1/batch", {"batch": [{"type": "track", "userId": "u-2", "event": "A"}] * 3}),
        ("/track", {"event_type": "legacy", "user_id": "u-3", "properties": {}}),
        ("/track", {"event": "Segment shape", "userId": "u-3"}),
    ],
)
def test_accepted_requests_answer_the_same(servers, path, body):
    response = both(servers, path, json=body, headers=AUTH)
    assert response.status_code == 200 and response.json() == {"success": True}


@pytest.mark.parametrize(
    "path, content, headers, status, code",
    [
        ("/v1/track", b'{"userId": "u"}', {}, 400, "missing_field"),
        ("/v1/track", b'{"userId": "u", "event": ', {}, 400, "invalid_json"),
        ("/v1/track", b"", {}, 400, "empty_body"),
        ("/v1/track", b'{"userId": "\xff", "event": "x"}', {}, 400, "invalid_json"),
        ("/v1/track", b'{"a":' * 100 + b"1" + b"}" * 100, {}, 400, "too_deep"),
        ("/v1/track", b"{}", {"Content-Encoding": "br"}, 415, "unsupported_encoding"),
        ("/v1/track", b"not gzip", {"Content-Encoding": "gzip"}, 400, "invalid_gzip"),
        ("/v1/track", b" " * (33 * 1024), {}, 413, "payload_too_large"),
        ("/v1/batch", b'{"batch": []}', {}, 400, "empty_batch"),
        ("/v1/batch", b'{"batch": [{"type": "track"}]}', {}, 400, "invalid_batch"),
        ("/track", b'{"event_type": 5}', {}, 400, None),
    ],
)
def test_refused_requests_answer_the_same(servers, path, content, headers, status, code):
    response = both(servers, path, content=content, headers={**AUTH, **headers})
    assert response.status_code == status
    if code is not None:
        assert response.json()["code"] == code


def test_a_batch_with_some_items_refused_answers_the_same(servers):
    batch = {
        "batch": [{"type": "track", "userId": "u", "event": "ok"}, {"type": "track", "event": "x"}]
    }
    response = both(servers, "/v1/batch", json=batch, headers=AUTH)
    assert response.json()["accepted"] == 1
    assert [item["index"] for item in response.json()["rejected"]] == [1]


def test_write_keys_are_checked_the_same(servers):
    body = {"userId": "u", "event": "x"}
    missing = both(servers, "/v1/track", json=body)
    assert missing.status_code == 401 and missing.headers["www-authenticate"]
    wrong = {"Authorization": "Basic " + base64.b64encode(b"nope:").decode()}
    assert both(servers, "/v1/track", json=body, headers=wrong).status_code == 401
    malformed = {"Authorization": "Basic ***"}
    assert both(servers, "/v1/track", json=body, headers=malformed).status_code == 401
    in_body = both(servers, "/v1/track", json={**body, "writeKey": WRITE_KEY})
    assert in_body.status_code == 200


def test_rate_limits_answer_the_same(servers):
    slow = {"Authorization": "Basic " + base64.b64encode(b"wk-slow:").decode()}
    body = {"userId": "u", "event": "x"}
    for server in servers:  # each server's own bucket: one event, then 429
        assert server.client.post("/v1/track", json=body, headers=slow).status_code == 200
    limited = both(servers, "/v1/track", json=body, headers=slow)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1


def test_cors_request_ids_and_gzip_answer_the_same(servers):
    body = b'{"userId": "u", "event": "gz"}'
    allowed = {**AUTH, "Origin": "https://shop.example", "X-Request-ID": "trace-42"}
    response = both(
        servers,
        "/v1/track",
        content=gzip.compress(body),
        headers={**allowed, "Content-Encoding": "gzip"},
    )
    assert response.headers["access-control-allow-origin"] == "https://shop.example"
    assert response.headers["x-request-id"] == "trace-42"
    elsewhere = {**AUTH, "Origin": "https://evil.example", "X-Request-ID": b"<script>\xe9"}
    response = both(servers, "/v1/track", content=body, headers=elsewhere)
    assert "access-control-allow-origin" not in response.headers
    assert len(response.headers["x-request-id"]) == 32  # ours, not the client's


def test_chunked_and_expect_continue_bodies(servers):
    body = b'{"userId": "u-chunked", "event": "Chunked"}'
    auth = AUTH["Authorization"].encode()
    chunked = (
        b"POST /v1/track HTTP/1.1\r\nHost: t\r\nAuthorization: %s\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"%x\r\n%s\r\n0\r\n\r\n" % (auth, len(body), body)
    )
    too_big = b"x" * (40 * 1024)
    endless = (
        b"POST /v1/track HTTP/1.1\r\nHost: t\r\nAuthorization: %s\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"%x\r\n%s\r\n0\r\n\r\n" % (auth, len(too_big), too_big)
    )
    expect = (
        b"POST /v1/track HTTP/1.1\r\nHost: t\r\nAuthorization: %s\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (auth, len(body), body)
    )
    for request, status in ((chunked, b" 200 "), (endless, b" 413 "), (expect, b" 200 ")):
        answers = [raw_exchange(s.port, request) for s in servers]
        for answer in answers:
            final = (
                answer.split(b"\r\n\r\n", 1)[-1] if answer.startswith(b"HTTP/1.1 100") else answer
            )
            assert status in final.split(b"\r\n", 1)[0], answer[:200]
            assert b"connection: close" in final.lower()


def test_both_store_the_same_events(servers):
    user = uid()
    for server in servers:
        for n in range(3):
            body = {"userId": user, "event": f"E{n}", "properties": {"n": n, "s": '"><img src=x>'}}
            assert server.client.post("/v1/track", json=body, headers=AUTH).status_code == 200
    stored = []
    for server in servers:
        response = server.client.get(
            "/api/v1/events", params={"user_id": user}, headers=ADMIN_BEARER
        )
        assert response.status_code == 200
        stored.append(
            sorted(
                (e["event"], e["source"], e["properties"]["n"], e["context"]["ip"])
                for e in response.json()["events"]
            )
        )
    assert stored[0] == stored[1] == [(f"E{n}", "web", n, "127.0.0.1") for n in range(3)]


def test_request_metrics_are_counted_the_same(servers):
    for server in servers:
        server.client.post("/v1/identify", json={"userId": "m"}, headers=AUTH)
        server.client.post("/v1/identify", content=b"{", headers=AUTH)
    texts = [s.client.get("/metrics").text for s in servers]
    for text in texts:
        lines = [
            line
            for line in text.splitlines()
            if line.startswith("eventrouter_http_request_duration_seconds_count")
            and 'route="/v1/identify"' in line
        ]
        assert any('status="2xx"' in line for line in lines), lines
        assert any('status="4xx"' in line for line in lines), lines
