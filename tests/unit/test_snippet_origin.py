"""The CDN origin: the library's URLs, caching headers, validators, encodings and CORS, and
the Segment-compatible settings document."""

from __future__ import annotations

import gzip

import brotli
import falcon.testing
import pytest

from eventrouter.app import create_app
from eventrouter.snippet import library
from eventrouter.snippet.origin import choose_encoding
from tests.helpers import make_config

LOADER = "/analytics.js/v1/wk-web/analytics.min.js"
LATEST = "/snippet/v1/latest/analytics.min.js"


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> falcon.testing.TestClient:
    raw = {"sources": [{"name": "web", "write_key": "wk-web"}]}
    return falcon.testing.TestClient(create_app(make_config(tmp_path_factory.mktemp("o"), raw)))


@pytest.fixture(scope="module")
def asset() -> library.Asset:
    return library.build()


def versioned(asset: library.Asset) -> str:
    return f"/snippet/v1/{asset.digest}/analytics.min.js"


def test_versioned_url_is_immutable(client, asset):
    response = client.simulate_get(versioned(asset))
    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert response.headers["content-type"] == "application/javascript; charset=utf-8"
    assert response.content == asset.identity
    assert response.headers["etag"] == f'"{asset.digest}"'


@pytest.mark.parametrize("path", [LOADER, LATEST])
def test_loader_and_latest_urls_are_short_lived(client, asset, path):
    response = client.simulate_get(path)
    assert response.status_code == 200
    assert response.headers["cache-control"].startswith("public, max-age=300,")
    assert "stale-while-revalidate" in response.headers["cache-control"]
    assert response.content == asset.identity


def test_unknown_version_and_write_key_are_404(client, asset):
    old = client.simulate_get("/snippet/v1/0123456789abcdef/analytics.min.js")
    assert old.status_code == 404
    assert asset.digest in old.json["message"]
    unknown = client.simulate_get("/analytics.js/v1/nope/analytics.min.js")
    assert unknown.status_code == 404
    assert unknown.json == {"code": "not_found", "message": "writeKey: not the key of any source"}
    assert client.simulate_get("/v1/projects/nope/settings").status_code == 404


def test_any_write_key_when_ingestion_is_open(tmp_path):
    open_client = falcon.testing.TestClient(create_app(make_config(tmp_path)))
    assert open_client.simulate_get("/analytics.js/v1/anything/analytics.min.js").status_code == 200


@pytest.mark.parametrize(
    ("accept", "encoding"),
    [
        ("gzip, deflate, br", "br"),
        ("gzip", "gzip"),
        ("br;q=0.5, gzip", "gzip"),
        ("br;q=0, gzip;q=0", None),
        ("identity", None),
        ("*", "br"),
        ("*;q=0.1, gzip;q=0.9", "gzip"),
        ("", None),
        (None, None),
    ],
)
def test_encoding_negotiation(accept, encoding):
    assert choose_encoding(accept) == encoding


def test_precompressed_bodies_decode_to_the_library(client, asset):
    br = client.simulate_get(LOADER, headers={"Accept-Encoding": "br, gzip"})
    assert br.headers["content-encoding"] == "br"
    assert br.headers["vary"] == "Accept-Encoding"
    assert brotli.decompress(br.content) == asset.identity
    gz = client.simulate_get(LOADER, headers={"Accept-Encoding": "gzip"})
    assert gz.headers["content-encoding"] == "gzip"
    assert gzip.decompress(gz.content) == asset.identity
    # strong validators differ per representation
    assert len({br.headers["etag"], gz.headers["etag"], f'"{asset.digest}"'}) == 3


def test_if_none_match_gives_304(client):
    first = client.simulate_get(LOADER, headers={"Accept-Encoding": "gzip"})
    etag = first.headers["etag"]
    again = client.simulate_get(LOADER, headers={"Accept-Encoding": "gzip", "If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    assert again.headers["cache-control"] == first.headers["cache-control"]
    weak = client.simulate_get(
        LOADER, headers={"Accept-Encoding": "gzip", "If-None-Match": f'"x", W/{etag}'}
    )
    assert weak.status_code == 304
    # the gzip validator does not validate the brotli representation
    other = client.simulate_get(LOADER, headers={"Accept-Encoding": "br", "If-None-Match": etag})
    assert other.status_code == 200


def test_any_page_may_load_it(client):
    response = client.simulate_get(LOADER, headers={"Origin": "https://shop.example"})
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.headers["cross-origin-resource-policy"] == "cross-origin"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_head_has_the_headers_and_no_body(client, asset):
    response = client.simulate_head(versioned(asset))
    assert response.status_code == 200
    assert response.headers["etag"] == f'"{asset.digest}"'
    assert response.content == b""


def test_settings_point_analytics_next_at_this_host(client):
    response = client.simulate_get(
        "/v1/projects/wk-web/settings", host="collect.example", port=8443
    )
    assert response.status_code == 200
    body = response.json
    assert list(body["integrations"]) == ["Segment.io"]  # nothing else to load
    segment = body["integrations"]["Segment.io"]
    assert segment["apiKey"] == "wk-web"
    assert segment["apiHost"] == "collect.example:8443/v1"
    assert segment["protocol"] == "http"
    assert body["metrics"]["sampleRate"] == 0
    assert body["remotePlugins"] == []
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.headers["etag"]
    https = client.simulate_get("/v1/projects/wk-web/settings", protocol="https")
    assert https.json["integrations"]["Segment.io"]["protocol"] == "https"


def test_build_is_deterministic_and_versioned():
    first = library.build.__wrapped__()
    second = library.build.__wrapped__()
    assert first.identity == second.identity
    assert first.encoded == second.encoded
    assert b"__LIBRARY_" not in first.identity
    assert library.LIBRARY_NAME.encode() in first.identity


def test_settings_believe_forwarded_host_only_from_trusted_proxies(tmp_path):
    raw = {"server": {"trusted_proxies": ["10.0.0.0/8"]}}
    client = falcon.testing.TestClient(create_app(make_config(tmp_path, raw)))
    headers = {"X-Forwarded-Host": "cdn.example", "X-Forwarded-Proto": "https"}
    edge = client.simulate_get(
        "/v1/projects/k/settings", headers=headers, remote_addr="10.2.3.4", host="origin-1"
    )
    segment = edge.json["integrations"]["Segment.io"]
    assert (segment["apiHost"], segment["protocol"]) == ("cdn.example/v1", "https")
    spoofed = client.simulate_get(
        "/v1/projects/k/settings", headers=headers, remote_addr="192.0.2.9", host="origin-1"
    )
    segment = spoofed.json["integrations"]["Segment.io"]
    assert (segment["apiHost"], segment["protocol"]) == ("origin-1/v1", "http")
