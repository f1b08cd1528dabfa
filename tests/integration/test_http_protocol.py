"""The server's HTTP protocol (router_core/server.py): a response of known length goes
out in one write, and everything HTTP/1.1 promises still holds on the wire: keep-alive,
pipelining, HEAD, chunked streams whose head shows before their first chunk, fixed-length
streams, a failure after the start. First on a small ASGI app under uvicorn with
``DrainingHttpProtocol``, then on a real ``eventrouter serve``."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO

import httpx
import pytest
import uvicorn

from eventrouter.server import DrainingHttpProtocol
from tests.helpers import ADMIN_BEARER, HANG_GUARD, ServeProcess, eventually, free_port

pytestmark = pytest.mark.slow


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def read_head(stream: BinaryIO) -> tuple[int, dict[str, str]]:
    status_line = stream.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


def read_chunks(stream: BinaryIO) -> bytes:
    body = b""
    while size := int(stream.readline().strip(), 16):
        body += stream.read(size)
        assert stream.read(2) == b"\r\n"
    assert stream.read(2) == b"\r\n"
    return body


def read_reply(stream: BinaryIO, *, head: bool = False) -> Reply:
    """One response off a connection's byte stream (several may follow it)."""
    status, headers = read_head(stream)
    if head:
        body = b""
    elif headers.get("transfer-encoding") == "chunked":
        body = read_chunks(stream)
    else:
        body = stream.read(int(headers["content-length"]))
    return Reply(status, headers, body)


# -- a small ASGI app under the protocol --------------------------------------------


class StreamingApp:
    """``/fixed``: 5 bytes with content-length; ``/pieces``: 10 bytes of known length
    in two body messages; ``/stream``: chunked, its first chunk only once ``/release``
    was asked; ``/broken``: fails after its start."""

    def __init__(self) -> None:
        self.released: asyncio.Event | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if self.released is None:
            self.released = asyncio.Event()
        path = scope["path"]
        if path == "/fixed":
            await start(send, [(b"content-length", b"5")])
            await send({"type": "http.response.body", "body": b"hello"})
        elif path == "/pieces":
            await start(send, [(b"Content-Length", b"10")])
            await send({"type": "http.response.body", "body": b"01234", "more_body": True})
            await asyncio.sleep(0)
            await send({"type": "http.response.body", "body": b"56789"})
        elif path == "/stream":
            await start(send, [])
            await self.released.wait()
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            await send({"type": "http.response.body", "body": b"-last"})
        elif path == "/release":
            self.released.set()
            await start(send, [(b"content-length", b"2")])
            await send({"type": "http.response.body", "body": b"ok"})
        elif path == "/broken":
            await start(send, [(b"content-length", b"5")])
            raise RuntimeError("the app failed after its start (expected by the test)")


async def start(send: Any, headers: list) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": headers})


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(
        StreamingApp(),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http=DrainingHttpProtocol,
        lifespan="off",
        log_level="critical",
    )
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    eventually(lambda: running.started or not thread.is_alive(), "the test server starting")
    assert running.started, "the test server's thread ended before it started"
    yield f"127.0.0.1:{port}"
    running.should_exit = True
    thread.join(timeout=HANG_GUARD)


def connect(address: str) -> tuple[socket.socket, BinaryIO]:
    host, port = address.split(":")
    sock = socket.create_connection((host, int(port)), timeout=HANG_GUARD)
    return sock, sock.makefile("rb")


def request(method: str, path: str) -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


def test_keep_alive_answers_each_request_on_one_connection(server):
    sock, stream = connect(server)
    with sock, stream:
        for _ in range(3):
            sock.sendall(request("GET", "/fixed"))
            reply = read_reply(stream)
            assert (reply.status, reply.body) == (200, b"hello")
            assert reply.headers["content-length"] == "5"
            assert "connection" not in reply.headers  # kept alive


def test_pipelined_requests_are_answered_in_order(server):
    sock, stream = connect(server)
    with sock, stream:
        sock.sendall(
            request("GET", "/fixed") + request("GET", "/pieces") + request("GET", "/fixed")
        )
        bodies = [read_reply(stream).body for _ in range(3)]
    assert bodies == [b"hello", b"0123456789", b"hello"]


def test_head_sends_the_headers_only_and_the_connection_goes_on(server):
    sock, stream = connect(server)
    with sock, stream:
        sock.sendall(request("HEAD", "/fixed") + request("GET", "/fixed"))
        head = read_reply(stream, head=True)
        assert head.status == 200
        assert head.headers["content-length"] == "5"
        assert read_reply(stream).body == b"hello"  # no stray body bytes before it


def test_a_chunked_stream_shows_its_head_before_its_first_chunk(server):
    sock, stream = connect(server)
    with sock, stream:
        sock.sendall(request("GET", "/stream"))
        status, headers = read_head(stream)  # the app is still waiting for /release
        assert status == 200
        assert headers["transfer-encoding"] == "chunked"
        released = connect(server)
        with released[0], released[1]:
            released[0].sendall(request("GET", "/release"))
            assert read_reply(released[1]).body == b"ok"
        assert read_chunks(stream) == b"first-last"
        sock.sendall(request("GET", "/fixed"))  # and the connection is kept
        assert read_reply(stream).body == b"hello"


def test_a_fixed_length_body_in_several_messages(server):
    sock, stream = connect(server)
    with sock, stream:
        sock.sendall(request("GET", "/pieces"))
        reply = read_reply(stream)
    assert reply.body == b"0123456789"
    assert reply.headers["content-length"] == "10"


def test_a_failure_after_the_start_closes_the_connection(server):
    sock, stream = connect(server)
    with sock, stream:
        sock.sendall(request("GET", "/broken"))
        status, headers = read_head(stream)  # the head went out, as uvicorn's does
        assert (status, headers["content-length"]) == (200, "5")
        assert stream.read() == b""  # then the connection closed: no body, no hang


# -- the real server -----------------------------------------------------------------


@pytest.fixture(scope="module")
def serve(tmp_path_factory) -> Iterator[ServeProcess]:
    process = ServeProcess(tmp_path_factory.mktemp("serve"), workers=1).wait_ready()
    yield process
    assert process.stop() == 0


def test_serve_pipelines_ingestion_head_and_metrics_on_one_connection(serve):
    body = b'{"userId": "u1", "event": "Pipelined"}'
    track = (
        b"POST /v1/track HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    sock, stream = connect(serve.url.removeprefix("http://"))
    with sock, stream:
        sock.sendall(
            track
            + track
            + request("HEAD", "/admin/static/admin.css")
            + request("HEAD", "/health")  # no HEAD there: a 405 of known length, no body
            + request("GET", "/metrics")
        )
        first, second = read_reply(stream), read_reply(stream)
        head = read_reply(stream, head=True)
        refused = read_reply(stream, head=True)
        scraped = read_reply(stream)
    assert (first.status, first.body) == (200, b'{"success":true}')
    assert (second.status, second.body) == (200, b'{"success":true}')
    assert head.status == 200 and int(head.headers["content-length"]) > 0
    assert refused.status == 405
    assert scraped.status == 200
    assert b"eventrouter_events_received_total" in scraped.body
    assert len(scraped.body) == int(scraped.headers["content-length"])


def test_serve_answers_the_dashboard_static_files_and_the_live_tail(serve):
    from websockets.sync.client import connect as ws_connect

    with httpx.Client(base_url=serve.url, timeout=HANG_GUARD) as client:
        login = client.get("/admin/login")
        assert login.status_code == 200 and "<form" in login.text
        fetched = client.get("/admin/static/htmx.min.js")  # a stream of known length
        assert fetched.status_code == 200
        assert len(fetched.content) == int(fetched.headers["content-length"]) > 1000
    ws_url = serve.url.replace("http://", "ws://") + "/admin/live/ws"
    with ws_connect(
        ws_url, additional_headers=ADMIN_BEARER, origin=serve.url, open_timeout=HANG_GUARD
    ) as ws:
        httpx.post(f"{serve.url}/v1/track", json={"userId": "u2", "event": "Tailed"})
        # Other frames (the tail's earlier events, keep-alives) may come first; each
        # recv is bounded by the hang guard, and the tail ends with the event.
        for _ in range(100):
            if "Tailed" in ws.recv(timeout=HANG_GUARD):
                break
        else:
            pytest.fail("the live tail never showed the event")
