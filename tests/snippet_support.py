"""Support for the snippet's browser tests: the website that embeds the snippet, and a
scripted stand-in for the API when a test needs answers the real server will not give.

Both are real HTTP servers on loopback ports, in threads. The website is addressed as
``localhost`` while eventrouter runs on ``127.0.0.1``: a different origin and a different
site, as when a real website embeds the snippet, so every request the library makes is a
cross-origin one that CORS must allow.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.helpers import free_port


class _Server:
    """A ThreadingHTTPServer on a free loopback port, served from a daemon thread."""

    handler: type[BaseHTTPRequestHandler]

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.url = f"http://{host}:{self.port}"
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def start(self) -> _Server:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


class _QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _PageHandler(_QuietHandler):
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        html = self.server.owner.pages.get(path)  # type: ignore[attr-defined]
        if html is None:
            self.reply(404, b"not found", {"Content-Type": "text/plain"})
        else:
            self.reply(200, html.encode(), {"Content-Type": "text/html; charset=utf-8"})


class Website(_Server):
    """The site that embeds the snippet: ``pages`` maps a path to its HTML."""

    handler = _PageHandler

    def __init__(self) -> None:
        super().__init__(host="localhost")
        self.pages: dict[str, str] = {}


def page_html(snippet: str, script: str = "", title: str = "Shop", body: str = "") -> str:
    """A page with the loader snippet in its head, as a site pastes it, followed by the
    page's own calls in a script of their own."""
    calls = f"<script>\n{script}\n</script>" if script else ""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>\n"
        f"{snippet}\n{calls}</head><body><h1>{title}</h1>{body}</body></html>"
    )


def with_load_options(snippet: str, write_key: str, options: dict[str, Any]) -> str:
    """The snippet with ``analytics.load(writeKey, options)``: how a site passes load
    options, as Segment's documentation tells it to (edit the snippet's load call)."""
    call = f"a.load({json.dumps(write_key)})"
    assert snippet.count(call) == 1, f"the snippet no longer calls {call}"
    return snippet.replace(call, f"a.load({json.dumps(write_key)},{json.dumps(options)})")


def with_queued_calls(snippet: str, calls: str) -> str:
    """The snippet with ``calls`` at the end of its own ``<script>``: they run before the
    library can load, so they are certainly queued and replayed."""
    assert snippet.count("</script>") == 1
    return snippet.replace("</script>", f"{calls}\n</script>")


# -- a scripted API -----------------------------------------------------------------------
@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=lambda: {"success": True})


@dataclass
class Received:
    at: float  # time.monotonic() on arrival
    body: dict[str, Any]
    content_type: str
    status: int = 0

    @property
    def names(self) -> list[str]:
        return [item.get("event") or item["type"] for item in self.body["batch"]]

    @property
    def message_ids(self) -> list[str]:
        return [item["messageId"] for item in self.body["batch"]]


class _ApiHandler(_QuietHandler):
    CORS = {
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Expose-Headers": "Retry-After",
    }

    def do_OPTIONS(self) -> None:  # a preflight would show up here: it must not happen
        api = self.server.owner  # type: ignore[attr-defined]
        api.preflights += 1
        self.reply(204, b"", {**self.CORS, "Access-Control-Allow-Methods": "POST"})

    def do_POST(self) -> None:
        api = self.server.owner  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        received = Received(
            time.monotonic(),
            json.loads(self.rfile.read(length)),
            self.headers.get("Content-Type", ""),
        )
        answer = api.answer(received) if self.path == "/v1/batch" else Answer(404)
        received.status = answer.status
        with api.lock:
            api.received.append(received)
        body = json.dumps(answer.body).encode()
        headers = {**self.CORS, "Content-Type": "application/json", **answer.headers}
        self.reply(answer.status, body, headers)


class ScriptedApi(_Server):
    """``POST /v1/batch`` answered by ``answer(received)``; every request is recorded.

    For faults the real server cannot be made to produce on demand (a 429, a 400 for an
    otherwise valid batch). It sends the CORS headers eventrouter sends, no more.
    """

    handler = _ApiHandler

    def __init__(self, answer: Callable[[Received], Answer]) -> None:
        super().__init__()
        self.answer = answer
        self.received: list[Received] = []
        self.preflights = 0
        self.lock = threading.Lock()

    def requests(self) -> list[Received]:
        with self.lock:
            return list(self.received)
