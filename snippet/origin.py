"""The CDN origin: the analytics library and the Segment-compatible settings.

- ``/snippet/v1/{digest}/analytics.min.js``: the library by content hash, cached for a
  year (``immutable``).
- ``/snippet/v1/latest/analytics.min.js``: the current library, cached five minutes.
- ``/analytics.js/v1/{writeKey}/analytics.min.js``: the library for a source, at the
  URL Segment's snippet loads; five minutes.
- ``/v1/projects/{writeKey}/settings``: settings that make @segment/analytics-next send
  to this server; five minutes.

Every response has a strong ETag (``304`` for ``If-None-Match``), the gzip or brotli
bytes picked by ``Accept-Encoding`` (with ``Vary: Accept-Encoding``), and CORS headers
that let any page load it. A writeKey that names no source is a ``404`` when sources
are configured (any key works when ingestion is open).
"""

from __future__ import annotations

import functools
from typing import Any

import falcon
import falcon.asgi
import msgspec

from eventrouter.bus.hookspecs import hookimpl
from eventrouter.config import Config
from eventrouter.edge import proxies
from eventrouter.edge.keys import WriteKeys
from eventrouter.snippet import library

IMMUTABLE = "public, max-age=31536000, immutable"
#: Short enough that a new release reaches pages within minutes; edges may serve a stale
#: copy while they fetch the new one.
SHORT = "public, max-age=300, stale-while-revalidate=3600, stale-if-error=86400"
_encoder = msgspec.json.Encoder()


def _weight(token: str) -> tuple[str, float]:
    """``gzip;q=0.5`` → (``gzip``, 0.5)."""
    coding, *params = (part.strip() for part in token.split(";"))
    q = 1.0
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value)
            except ValueError:
                q = 0.0
    return coding.lower(), q


def choose_encoding(accept_encoding: str | None) -> str | None:
    """The encoding to send: brotli, then gzip, if the client takes it (q > 0); else
    None (identity). ``*`` stands for any coding not named."""
    if not accept_encoding:
        return None
    weights = dict(_weight(token) for token in accept_encoding.split(",") if token.strip())
    best = None
    for coding in library.ENCODINGS:
        q = weights.get(coding, weights.get("*", 0.0))
        if q > 0 and (best is None or q > best[1]):
            best = (coding, q)
    return best[0] if best else None


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    # weak comparison, as RFC 9110 prescribes for If-None-Match
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return etag in tags


def serve_asset(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, asset: library.Asset, cache: str
) -> None:
    encoding = choose_encoding(req.get_header("Accept-Encoding"))
    etag = asset.etag(encoding)
    resp.set_header("ETag", etag)
    resp.set_header("Cache-Control", cache)
    resp.set_header("Vary", "Accept-Encoding")
    _public_headers(resp)
    if _matches(req.get_header("If-None-Match"), etag):
        resp.status = falcon.HTTP_304
        return
    resp.content_type = asset.content_type
    if encoding:
        resp.set_header("Content-Encoding", encoding)
    resp.data = asset.body(encoding)


def _public_headers(resp: falcon.asgi.Response) -> None:
    resp.set_header("Access-Control-Allow-Origin", "*")
    resp.set_header("Cross-Origin-Resource-Policy", "cross-origin")
    resp.set_header("Timing-Allow-Origin", "*")
    resp.set_header("X-Content-Type-Options", "nosniff")


def _not_found(resp: falcon.asgi.Response, message: str) -> None:
    resp.status = falcon.HTTP_404
    resp.content_type = falcon.MEDIA_JSON
    resp.set_header("Cache-Control", "public, max-age=60")
    _public_headers(resp)
    resp.data = _encoder.encode({"code": "not_found", "message": message})


class Origin:
    """What every origin resource shares: the built library and the known writeKeys."""

    def __init__(self, config: Config) -> None:
        self.asset = library.build()
        self.write_keys = WriteKeys((s.write_key, s.name) for s in config.sources)
        self.proxies = proxies.TrustedProxies(config.server.trusted_proxies)

    def known(self, write_key: str) -> bool:
        return not self.write_keys or write_key in self.write_keys


class VersionedLibrary:
    def __init__(self, origin: Origin) -> None:
        self.origin = origin

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, version: str):
        asset = self.origin.asset
        if version == "latest":
            serve_asset(req, resp, asset, SHORT)
        elif version == asset.digest:
            serve_asset(req, resp, asset, IMMUTABLE)
        else:
            _not_found(resp, f"version: no library {version!r} here (current: {asset.digest})")

    on_head = on_get


class SourceLibrary:
    """``/analytics.js/v1/{writeKey}/analytics.min.js``, the URL the loader snippet uses."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, write_key: str):
        if not self.origin.known(write_key):
            _not_found(resp, "writeKey: not the key of any source")
            return
        serve_asset(req, resp, self.origin.asset, SHORT)

    on_head = on_get


class ProjectSettings:
    """``/v1/projects/{writeKey}/settings``: only the ``Segment.io`` integration, pointed
    at this host, so @segment/analytics-next (``cdnURL`` set to this server) sends its
    events here and loads no other destination."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, write_key: str):
        if not self.origin.known(write_key):
            _not_found(resp, "writeKey: not the key of any source")
            return
        forwarded = self.origin.proxies
        asset = _settings_asset(write_key, forwarded.host(req), forwarded.scheme(req))
        serve_asset(req, resp, asset, SHORT)

    on_head = on_get


@functools.lru_cache(maxsize=256)
def _settings_asset(write_key: str, host: str, scheme: str) -> library.Asset:
    body = _encoder.encode(settings(write_key, host, scheme))
    return library.Asset.build("settings.json", falcon.MEDIA_JSON, body)


def settings(write_key: str, host: str, scheme: str) -> dict:
    """The settings document, as Segment's CDN serves it, minus everything but the
    ``Segment.io`` integration (any other key would make analytics-next load that
    destination's legacy code from Segment's CDN)."""
    return {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": f"{host}/v1",
                "protocol": scheme,
                "unbundledIntegrations": [],
                "addBundledMetadata": True,
                "maybeBundledConfigIds": {},
            }
        },
        "plan": {
            "track": {"__default": {"enabled": True, "integrations": {}}},
            "identify": {"__default": {"enabled": True}},
            "group": {"__default": {"enabled": True}},
        },
        "edgeFunction": {},
        "analyticsNextEnabled": True,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
    }


@hookimpl
def eventrouter_register_routes(app: falcon.asgi.App, routes: Any) -> None:
    """The snippet origin is a built-in plugin (the ``snippet`` entry point): it mounts
    the analytics.js library and project settings routes through the same hook a
    third-party plugin uses."""
    add_routes(app, routes.config)


def add_routes(app: falcon.asgi.App, config: Config) -> None:
    origin = Origin(config)
    app.add_route("/snippet/v1/{version}/analytics.min.js", VersionedLibrary(origin))
    app.add_route("/analytics.js/v1/{write_key}/analytics.min.js", SourceLibrary(origin))
    app.add_route("/v1/projects/{write_key}/settings", ProjectSettings(origin))
