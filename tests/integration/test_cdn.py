"""The nginx edge (``deploy/nginx/eventrouter-edge.conf``) in front of a real origin.

Debian's nginx runs the shipped config, with only the upstream servers and ``listen``
substituted, on a free loopback port. Each test gets a fresh edge (an empty cache); the
origin is shared. What is asserted is what a browser or an operator sees: the
``X-Cache-Status`` of each response, the bytes and encodings, 304s, the stored event's
``context.ip``, and the library served while the origin is down.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import brotli
import httpx
import pytest

from tests.cdn_support import EDGE_CONF, PURGE, Edge, make_prefix, nginx_test
from tests.helpers import ADMIN_BEARER, LiveServer, free_port, make_config

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

WRITE_KEY = "wk-web"
LOADER = f"/analytics.js/v1/{WRITE_KEY}/analytics.min.js"
SETTINGS = f"/v1/projects/{WRITE_KEY}/settings"
AUTH = (WRITE_KEY, "")
#: An address of the loopback network other than the edge's and the origin's: requests
#: from it show which address ends up in ``context.ip``.
BROWSER_ADDRESS = "127.0.0.2"


def origin_config(tmp_path):
    return make_config(
        tmp_path,
        {
            "sources": [{"name": "web", "write_key": WRITE_KEY}],
            "server": {"trusted_proxies": ["127.0.0.1/32"]},
        },
    )


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> Iterator[LiveServer]:
    server = LiveServer(origin_config(tmp_path_factory.mktemp("origin"))).start()
    yield server
    server.stop()


def start_edge(*origins: str) -> Edge:
    return Edge(origins).start()


@pytest.fixture
def edge(origin) -> Iterator[Edge]:
    edge = start_edge(f"127.0.0.1:{origin.port}")
    yield edge
    edge.stop()
    edge.remove()


@pytest.fixture
def client(edge) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=edge.url, timeout=30) as client:
        yield client


@dataclass
class Fetched:
    status_code: int
    headers: httpx.Headers
    raw: bytes  # the body as sent: not decompressed


def get(client: httpx.Client, path: str, encoding: str = "identity", **headers: str) -> Fetched:
    headers = {"Accept-Encoding": encoding, **headers}
    with client.stream("GET", path, headers=headers) as response:
        return Fetched(response.status_code, response.headers, b"".join(response.iter_raw()))


def cache_status(response: Fetched | httpx.Response) -> str | None:
    return response.headers.get("X-Cache-Status")


# -- the shipped file ------------------------------------------------------------------------
def test_shipped_config_passes_nginx_t():
    prefix = make_prefix()
    try:
        checked = nginx_test(EDGE_CONF, prefix)
        assert checked.returncode == 0, checked.stderr
        assert "syntax is ok" in checked.stderr
        assert (prefix / "cache").is_dir()  # every path it writes is under the prefix
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


# -- the library -----------------------------------------------------------------------------
def test_library_is_cached_and_tracking_query_strings_share_the_entry(client, origin):
    first = get(client, LOADER)
    second = get(client, LOADER)
    tracked = get(client, f"{LOADER}?utm_source=x&utm_medium=email&fbclid=abc&gclid=def")
    assert [r.status_code for r in (first, second, tracked)] == [200, 200, 200]
    assert [cache_status(r) for r in (first, second, tracked)] == ["MISS", "HIT", "HIT"]
    direct = origin.client.get(LOADER, headers={"Accept-Encoding": "identity"})
    for response in (first, second, tracked):
        assert response.raw == direct.content
        assert "Content-Encoding" not in response.headers
        assert response.headers["ETag"] == direct.headers["ETag"]
        assert response.headers["Cache-Control"] == direct.headers["Cache-Control"]
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert response.headers["Vary"] == "Accept-Encoding"  # for caches after the edge


def test_brotli_and_gzip_are_cached_as_separate_variants(client, origin):
    identity = origin.client.get(LOADER, headers={"Accept-Encoding": "identity"}).content
    seen = {}
    for encoding, requests in {
        "br": ["br", "gzip, deflate, br, zstd", "br;q=1.0, gzip;q=0.8"],
        "gzip": ["gzip", "gzip, deflate", "br;q=0, gzip", "deflate, gzip;q=0.5"],
    }.items():
        responses = [get(client, LOADER, accept) for accept in requests]
        assert [cache_status(r) for r in responses] == ["MISS"] + ["HIT"] * (len(requests) - 1)
        direct = get(origin.client, LOADER, encoding)
        for accept, response in zip(requests, responses, strict=True):
            assert response.headers.get("Content-Encoding") == encoding, accept
            assert response.raw == direct.raw, accept
            assert response.headers["ETag"] == direct.headers["ETag"], accept
        seen[encoding] = responses[0].raw
    assert gzip.decompress(seen["gzip"]) == identity
    assert brotli.decompress(seen["br"]) == identity
    # the identity variant is the third and last one: no other Accept-Encoding makes a fourth
    assert cache_status(get(client, LOADER, "deflate")) == "MISS"
    assert cache_status(get(client, LOADER, "identity")) == "HIT"
    assert cache_status(get(client, LOADER, "")) == "HIT"


def test_if_none_match_gets_a_304_from_the_edge(client):
    for encoding in ("br", "gzip", "identity"):
        fresh = get(client, LOADER, encoding)
        etag = fresh.headers["ETag"]
        revalidated = get(client, LOADER, encoding, **{"If-None-Match": etag})
        assert revalidated.status_code == 304, encoding
        assert revalidated.raw == b""
        assert revalidated.headers["ETag"] == etag
        assert cache_status(revalidated) == "HIT"
        changed = get(client, LOADER, encoding, **{"If-None-Match": '"something-else"'})
        assert changed.status_code == 200


def test_versioned_url_is_cached_and_a_pinned_copy_is_served_from_disk(client, origin, edge):
    etag = origin.client.get(LOADER, headers={"Accept-Encoding": "identity"}).headers["ETag"]
    digest = etag.strip('"')
    versioned = f"/snippet/v1/{digest}/analytics.min.js"
    # nothing pinned: fetched from the origin and cached for a year
    fetched = [get(client, versioned, "gzip") for _ in range(2)]
    assert [cache_status(r) for r in fetched] == ["MISS", "HIT"]
    assert fetched[0].headers["Cache-Control"] == "public, max-age=31536000, immutable"

    identity = get(origin.client, versioned).raw
    gzipped = get(origin.client, versioned, "gzip").raw
    pinned = edge.pinned / versioned.lstrip("/")
    pinned.parent.mkdir(parents=True)
    pinned.write_bytes(identity)
    pinned.with_name(pinned.name + ".gz").write_bytes(gzipped)

    from_disk = get(client, versioned, "gzip, deflate, br")
    assert from_disk.status_code == 200
    assert cache_status(from_disk) == "PINNED"
    assert from_disk.headers["Content-Encoding"] == "gzip"  # the precompressed file
    assert from_disk.raw == gzipped
    plain = get(client, versioned, "identity")
    assert cache_status(plain) == "PINNED"
    assert plain.raw == identity
    assert "Content-Encoding" not in plain.headers
    for response in (from_disk, plain):
        assert response.headers["Content-Type"] == "application/javascript; charset=utf-8"
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert response.headers["Vary"] == "Accept-Encoding"


def test_purge_script_empties_a_urls_entries(client, edge):
    urls = [LOADER, SETTINGS]
    for path in urls:
        for encoding in ("br", "gzip", "identity"):
            assert cache_status(get(client, path, encoding)) == "MISS"
            assert cache_status(get(client, path, encoding)) == "HIT"
    purged = subprocess.run(
        [str(PURGE), str(edge.prefix), f"{edge.url}{LOADER}?utm_source=newsletter"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.endswith("3 cached file(s) removed\n")
    for encoding in ("br", "gzip", "identity"):
        assert cache_status(get(client, LOADER, encoding)) == "MISS"
        assert cache_status(get(client, SETTINGS, encoding)) == "HIT"  # not named: kept


# -- the settings ----------------------------------------------------------------------------
def test_settings_are_cached_and_name_the_edge(client, edge):
    # A client's own X-Forwarded-Host / Forwarded must not end up in the cached document.
    first = get(
        client,
        SETTINGS,
        **{"X-Forwarded-Host": "evil.example", "Forwarded": "host=evil.example;proto=https"},
    )
    second = get(client, f"{SETTINGS}?utm_campaign=spring")
    assert [cache_status(r) for r in (first, second)] == ["MISS", "HIT"]
    for response in (first, second):
        assert response.status_code == 200
        segment = json.loads(response.raw)["integrations"]["Segment.io"]
        assert segment["apiHost"] == f"127.0.0.1:{edge.port}/v1"
        assert segment["protocol"] == "http"
        assert segment["apiKey"] == WRITE_KEY


def test_unknown_write_key_is_a_404_from_the_origin(client):
    responses = [get(client, "/v1/projects/nope/settings") for _ in range(2)]
    assert [r.status_code for r in responses] == [404, 404]
    assert [cache_status(r) for r in responses] == ["MISS", "HIT"]  # briefly (max-age=60)
    assert json.loads(responses[0].raw)["code"] == "not_found"


# -- ingestion -------------------------------------------------------------------------------
def test_track_passes_through_with_the_browsers_address(edge, origin):
    """The browser connects from 127.0.0.2. nginx (loopback, trusted by the origin)
    appends that address to X-Forwarded-For; an address the browser claims itself
    (203.0.113.7, as if from an earlier hop nobody trusts) is not believed."""
    event = f"Edge Event {uuid.uuid4().hex[:8]}"
    transport = httpx.HTTPTransport(local_address=BROWSER_ADDRESS)
    with httpx.Client(base_url=edge.url, transport=transport, timeout=30) as browser:
        responses = [
            browser.post(
                "/v1/track",
                json={"userId": "u-edge", "event": event, "properties": {"n": n}},
                auth=AUTH,
                headers=headers,
            )
            for n, headers in enumerate([{}, {"X-Forwarded-For": "203.0.113.7"}])
        ]
        original = browser.post(
            "/track", json={"event_type": event, "user_id": "u-edge", "write_key": WRITE_KEY}
        )
    for response in [*responses, original]:
        assert response.status_code == 200, response.text
        assert response.json() == {"success": True}
        assert "X-Cache-Status" not in response.headers
    stored = [e for e in origin.events() if e["event"] == event]
    assert len(stored) == 3
    assert {e["context"]["ip"] for e in stored} == {BROWSER_ADDRESS}
    assert {e["source"] for e in stored} == {"web"}


def test_bodies_up_to_the_apis_limit_reach_the_origin(client):
    """The edge's limit is above the API's 500 KB: the origin's own JSON 413 answers a
    body just over 500 KB, nginx only one far beyond it."""
    just_over = client.post(
        "/v1/batch", content=b" " * 520_000, auth=AUTH, headers={"Content-Type": "text/plain"}
    )
    assert just_over.status_code == 413
    assert just_over.json()["code"] == "payload_too_large"
    far_over = client.post(
        "/v1/batch", content=b" " * 700_000, auth=AUTH, headers={"Content-Type": "text/plain"}
    )
    assert far_over.status_code == 413
    assert "nginx" in far_over.text  # refused at the edge, never sent to an origin


def test_admin_api_health_and_metrics_are_not_exposed(client):
    bearer = ADMIN_BEARER
    for path in ("/admin/", "/admin/events", "/api/v1/events", "/health", "/metrics", "/"):
        response = client.get(path, headers=bearer)
        assert response.status_code == 404, path
        assert "X-Cache-Status" not in response.headers


# -- several origins, and none ---------------------------------------------------------------
def test_an_origin_that_is_down_is_skipped(origin):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    edge = start_edge(dead, f"127.0.0.1:{origin.port}")
    try:
        with httpx.Client(base_url=edge.url, timeout=30) as client:
            event = f"Failover {uuid.uuid4().hex[:8]}"
            for n in range(4):  # round robin: half of them try the dead origin first
                response = client.post("/v1/track", json={"userId": "u", "event": event}, auth=AUTH)
                assert response.status_code == 200, (n, response.text)
            assert get(client, LOADER).status_code == 200
        assert len([e for e in origin.events() if e["event"] == event]) == 4
    finally:
        edge.stop()
        edge.remove()


def test_cached_library_survives_its_origin(tmp_path):
    origin = LiveServer(origin_config(tmp_path)).start()
    edge = start_edge(f"127.0.0.1:{origin.port}")
    try:
        with httpx.Client(base_url=edge.url, timeout=30) as client:
            warm = {enc: get(client, LOADER, enc) for enc in ("br", "gzip")}
            assert cache_status(get(client, SETTINGS, "br")) == "MISS"
            origin.stop()
            for encoding, before in warm.items():
                after = get(client, LOADER, encoding)
                assert after.status_code == 200
                assert cache_status(after) in ("HIT", "STALE")
                assert after.raw == before.raw
            assert get(client, SETTINGS, "br").status_code == 200
            # what was never cached really cannot be had: the origin is gone
            assert get(client, LOADER, "identity").status_code == 502
    finally:
        origin.stop()
        edge.stop()
        edge.remove()
