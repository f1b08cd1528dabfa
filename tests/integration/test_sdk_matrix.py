"""The compatibility matrix: published Segment and RudderStack server SDKs, unchanged and
pointed at a running ``eventrouter serve``, send every call type (track, identify, page,
screen, group, alias), and every messageId they sent is read back through
``GET /api/v1/events``.

Python SDKs run in this process; the Node.js ones run in ``node`` (tests/sdk_node/send.mjs)
from the versions pinned in tests/sdk_node/package-lock.json, installed with ``npm ci``
into ~/.cache/eventrouter-tests/ (never into the repository). Each SDK talks to the server
through a recording loopback forwarder, so the test also pins how it sends (path,
Content-Type, Content-Encoding, gzip or not): what README.md's "Works with" table says.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import pytest
import rudderstack.analytics
import segment.analytics

from tests.helpers import ADMIN_TOKEN, HANG_GUARD, ServeProcess
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow

SOURCE = "matrix"
WRITE_KEY = "wk-matrix"
SDK_NODE = Path(__file__).resolve().parents[1] / "sdk_node"
NODE_CACHE = Path.home() / ".cache" / "eventrouter-tests"
NODE_PINS = json.loads((SDK_NODE / "package.json").read_text())["dependencies"]

#: What every SDK sends, per call type (tests/sdk_node/send.mjs sends the same values).
TRACK = {"event": "Order Completed", "properties": {"revenue": 42.5, "plan": "pro"}}
PAGE = {"category": "Docs", "name": "Install", "properties": {"path": "/docs/install"}}
SCREEN = {"name": "Home", "properties": {"tab": "feed"}}
GROUP = {"group_id": "acme", "traits": {"name": "Acme Inc"}}
CALL_TYPES = ["track", "identify", "page", "screen", "group", "alias"]


def identify_traits(user_id: str) -> dict[str, str]:
    return {"email": f"{user_id}@example.com", "plan": "pro"}


def previous_id(user_id: str) -> str:
    return f"{user_id}-anon"


# -- the server --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServeProcess]:
    """One real ``eventrouter serve`` (two gunicorn workers, embedded SQLite) with the
    source ``matrix``; each test uses its own userId, so none sees another's events."""
    root = tmp_path_factory.mktemp("sdk-matrix")
    config = root / "eventrouter.toml"
    config.write_text(
        f'[[sources]]\nname = "{SOURCE}"\nwrite_key = "{WRITE_KEY}"\n', encoding="utf-8"
    )
    process = ServeProcess(root, "--config", str(config), workers=2).wait_ready()
    yield process
    assert process.stop() == 0, process.log()


def stored_events(server: ServeProcess, user_id: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{server.url}/api/v1/events",
        params={"user_id": user_id, "limit": 100},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=HANG_GUARD,
    )
    assert response.status_code == 200, response.text
    return response.json()["events"]


# -- what crossed the wire ---------------------------------------------------------------------
@dataclass(frozen=True)
class WireRequest:
    """One HTTP request exactly as a client sent it."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        """The body, gunzipped when it is gzip (whatever the headers say)."""
        return json.loads(gzip.decompress(self.body) if self.gzipped else self.body)

    @property
    def gzipped(self) -> bool:
        return self.body.startswith(b"\x1f\x8b")


class RecordingProxy(TcpProxy):
    """A loopback forwarder to the server that keeps every byte the clients sent."""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self._streams: list[bytearray] = []

    def _pipe(self, source: socket.socket, sink: socket.socket | None) -> None:
        if sink is None or _peer(sink) != self.target:  # server → client: just forward
            super()._pipe(source, sink)
            return
        stream = bytearray()
        with self._lock:
            self._streams.append(stream)
        try:
            while data := source.recv(65536):
                stream += data  # recorded before the server can have answered it
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def requests(self) -> list[WireRequest]:
        with self._lock:
            streams = [bytes(stream) for stream in self._streams]
        return [request for stream in streams for request in _parse_requests(stream)]


def _peer(sock: socket.socket) -> tuple[str, int] | None:
    try:
        return sock.getpeername()
    except OSError:
        return None


def _parse_requests(stream: bytes) -> Iterator[WireRequest]:
    """The HTTP/1.1 requests one connection carried."""
    while stream:
        head, found, stream = stream.partition(b"\r\n\r\n")
        assert found, f"an incomplete request head: {head[:200]!r}"
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        # Every SDK here sends a Content-Length; a chunked body would need parsing here.
        assert "transfer-encoding" not in headers, headers
        length = int(headers.get("content-length", "0"))
        body, stream = stream[:length], stream[length:]
        yield WireRequest(method, path, headers, body)


@pytest.fixture
def wire(server) -> Iterator[RecordingProxy]:
    proxy = RecordingProxy(server.port).start()
    yield proxy
    proxy.stop()


# -- the Python SDKs ---------------------------------------------------------------------------
def send_with_python_sdk(client_class: type, url: str, user_id: str, use_gzip: bool) -> list:
    """Every call through a Python SDK's ``Client`` (its default background consumer), then
    ``shutdown()`` (flush and join). Returns ``[(type, messageId)]`` as the SDK made them:
    each call returns ``(queued, message)``, the message carrying the generated id."""
    errors: list[str] = []
    client = client_class(
        WRITE_KEY,
        host=url,
        gzip=use_gzip,
        max_retries=2,
        on_error=lambda error, batch: errors.append(f"{error!r} for {len(batch)} events"),
    )
    results = [
        client.track(user_id, TRACK["event"], TRACK["properties"]),
        client.identify(user_id, identify_traits(user_id)),
        client.page(user_id, PAGE["category"], PAGE["name"], PAGE["properties"]),
        client.screen(user_id, name=SCREEN["name"], properties=SCREEN["properties"]),
        client.group(user_id, GROUP["group_id"], GROUP["traits"]),
        client.alias(previous_id(user_id), user_id),
    ]
    closing = threading.Thread(target=client.shutdown, daemon=True)
    closing.start()
    closing.join(HANG_GUARD)
    assert not closing.is_alive(), f"{client_class.__module__}: shutdown() never returned"
    assert errors == [], errors
    assert all(queued for queued, _ in results), results
    return [(message["type"], message["messageId"]) for _, message in results]


#: A sender: ``(url, user_id, pytest's request) -> [(type, messageId)]``.
Sender = Callable[[str, str, pytest.FixtureRequest], list]


def python_sdk(client_class: type, use_gzip: bool) -> Sender:
    return lambda url, user_id, _: send_with_python_sdk(client_class, url, user_id, use_gzip)


# -- the Node.js SDKs --------------------------------------------------------------------------
@pytest.fixture(scope="session")
def node_sdks() -> Path:
    """The folder whose ``node_modules`` holds the SDKs pinned in
    tests/sdk_node/package-lock.json: ``npm ci`` once per lock file, reused afterwards.

    ``--omit=optional`` leaves out rudder-sdk-node's optional ``bull``/``ioredis`` (its
    Redis-backed persistent queue, not used here); ``--ignore-scripts`` runs no package's
    install script."""
    lock = (SDK_NODE / "package-lock.json").read_bytes()
    root = NODE_CACHE / f"sdk-node-{hashlib.sha256(lock).hexdigest()}"
    installed = root / "installed"
    if installed.is_file():
        return root
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.fail("node and npm (node 20) are needed to install the Node.js SDKs under test")
    NODE_CACHE.mkdir(parents=True, exist_ok=True)
    # Moved into place once complete, so an interrupted install is never reused.
    with tempfile.TemporaryDirectory(
        dir=NODE_CACHE, prefix="sdk-node-tmp-", ignore_cleanup_errors=True
    ) as scratch:
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(SDK_NODE / name, Path(scratch) / name)
        try:
            result = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--omit=optional", "--ignore-scripts"],
                cwd=scratch,
                capture_output=True,
                text=True,
                timeout=300,
            )
        except subprocess.TimeoutExpired:
            pytest.fail("`npm ci` for tests/sdk_node took over 300 s (is the registry reachable?)")
        if result.returncode != 0:
            pytest.fail(
                f"`npm ci` for tests/sdk_node failed (is the npm registry reachable?):\n"
                f"{result.stdout}{result.stderr}"
            )
        (Path(scratch) / "installed").write_text(result.stdout, encoding="utf-8")
        os.chmod(scratch, 0o755)  # mkdtemp's 0700 is not what a cache folder needs
        if root.exists() and not installed.is_file():
            shutil.rmtree(root)  # a partial copy left by an interrupted run
        with contextlib.suppress(OSError):  # another session may have just installed it
            os.replace(scratch, root)
    if not installed.is_file():
        pytest.fail(f"the Node.js SDKs were installed but {root} is not complete")
    return root


def node_sdk(sdk: str, use_gzip: bool) -> Sender:
    """Run tests/sdk_node/send.mjs for ``sdk``; the SDK's own ids come back on stdout."""

    def send(url: str, user_id: str, request: pytest.FixtureRequest) -> list:
        sdk_root = request.getfixturevalue("node_sdks")  # installed only when needed
        node = shutil.which("node")
        if node is None:
            pytest.fail("node (20) is needed to run the Node.js SDKs")
        argv = [node, str(SDK_NODE / "send.mjs"), sdk, url, WRITE_KEY]
        result = subprocess.run(
            [*argv, "on" if use_gzip else "off", user_id],
            capture_output=True,
            text=True,
            timeout=HANG_GUARD,
            env={**os.environ, "SDK_NODE_ROOT": str(sdk_root)},
        )
        assert result.returncode == 0, f"{sdk} SDK failed:\n{result.stdout}{result.stderr}"
        sent = json.loads(result.stdout.splitlines()[-1])["sent"]
        return [(item["type"], item["messageId"]) for item in sent]

    return send


# -- the matrix --------------------------------------------------------------------------------
FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class SDK:
    send: Sender
    library: str  # the context.library.name it sets
    version: str  # the context.library.version it sets: the version installed
    content_type: str
    gzip: bool
    #: Where its identify traits arrive: "traits", or only "context.traits".
    identify_traits_in: str = "traits"


def python_sdks(client_class: type, package: str, traits_in: str) -> dict[str, SDK]:
    """A Python SDK plain and gzip: both post application/json, gzip adding the header."""
    prefix = package.split("-")[0]
    return {
        f"{prefix}-python-{'gzip' if use_gzip else 'plain'}": SDK(
            python_sdk(client_class, use_gzip),
            "analytics-python",
            version(package),
            "application/json",
            gzip=use_gzip,
            identify_traits_in=traits_in,
        )
        for use_gzip in (False, True)
    }


RUDDER_NODE = NODE_PINS["@rudderstack/rudder-sdk-node"]
MATRIX = {
    **python_sdks(segment.analytics.Client, "segment-analytics-python", "traits"),
    # rudder-sdk-python is a fork of analytics-python and keeps its library name; it
    # sends identify traits only as context.traits.
    **python_sdks(rudderstack.analytics.Client, "rudder-sdk-python", "context.traits"),
    # analytics-node has no gzip option: it always posts plain JSON.
    "segment-node": SDK(
        node_sdk("segment", False),
        "@segment/analytics-node",
        NODE_PINS["@segment/analytics-node"],
        "application/json",
        gzip=False,
    ),
    # rudder-sdk-node gzips by default, posting the gzip Buffer through axios, whose
    # default Content-Type for a Buffer is the form one.
    "rudder-node-gzip": SDK(
        node_sdk("rudder", True), "analytics-node", RUDDER_NODE, FORM, gzip=True
    ),
    "rudder-node-plain": SDK(
        node_sdk("rudder", False), "analytics-node", RUDDER_NODE, "application/json", gzip=False
    ),
}


@pytest.mark.parametrize("name", list(MATRIX))
def test_every_call_of_the_sdk_is_stored_once(request, server, wire, name):
    sdk = MATRIX[name]
    user_id = f"user-{name}"
    sent = sdk.send(f"http://127.0.0.1:{wire.port}", user_id, request)

    # The SDK made one message of each call type, each with its own id.
    assert sorted(kind for kind, _ in sent) == sorted(CALL_TYPES)
    sent_ids = {message_id: kind for kind, message_id in sent}
    assert len(sent_ids) == len(CALL_TYPES), sent

    # How it sent them: the wire carries exactly those messageIds, as the table says.
    requests = wire.requests()
    assert requests, "the SDK sent nothing"
    for sent_request in requests:
        assert (sent_request.method, sent_request.path) == ("POST", "/v1/batch")
        assert sent_request.headers.get("content-type") == sdk.content_type
        assert sent_request.headers.get("content-encoding") == ("gzip" if sdk.gzip else None)
        assert sent_request.gzipped is sdk.gzip
        assert sent_request.headers["authorization"].startswith("Basic ")
    on_the_wire = [item["messageId"] for r in requests for item in r.json()["batch"]]
    assert sorted(on_the_wire) == sorted(sent_ids)

    # Every messageId is stored exactly once, and nothing else for this user.
    stored = stored_events(server, user_id)
    assert sorted(e["message_id"] for e in stored) == sorted(sent_ids)
    events = {e["type"]: e for e in stored}
    for event in stored:
        assert event["type"] == sent_ids[event["message_id"]]
        assert event["source"] == SOURCE
        assert event["user_id"] == user_id
        assert event["context"]["library"] == {"name": sdk.library, "version": sdk.version}

    assert events["track"]["event"] == TRACK["event"]
    assert events["track"]["properties"] == TRACK["properties"]
    identify = events["identify"]
    assert identify["traits"] == identify_traits(user_id)
    if sdk.identify_traits_in == "context.traits":
        # rudder-sdk-python sends identify traits only as context.traits (RudderStack's
        # server reads them there); eventrouter takes them as the traits, and context
        # keeps its copy (docs/api.md, normalisation).
        assert identify["context"]["traits"] == identify_traits(user_id)
    assert events["page"]["name"] == PAGE["name"]
    assert events["page"]["properties"] == {
        **PAGE["properties"],
        "category": PAGE["category"],
        "name": PAGE["name"],
    }
    assert events["screen"]["name"] == SCREEN["name"]
    assert events["screen"]["properties"] == {**SCREEN["properties"], "name": SCREEN["name"]}
    assert events["group"]["group_id"] == GROUP["group_id"]
    assert events["group"]["traits"] == GROUP["traits"]
    assert events["alias"]["previous_id"] == previous_id(user_id)
