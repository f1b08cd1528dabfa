"""The Falcon ASGI application factory.

``create_app(config)`` builds every dependency (plugin manager, bus, sinks, store) and
returns a ``falcon.asgi.App``; ``eventrouter.asgi`` holds only ``app = create_app()``.
Tests build an app from a test config instead of patching anything.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

import falcon
import falcon.asgi
import msgspec

from eventrouter import config as config_module
from eventrouter import logs, metrics
from eventrouter.bus.bus import Bus, StartFailed, make_plugin_manager
from eventrouter.bus.context import RouteContext
from eventrouter.config import Config
from eventrouter.edge import ingest, openapi
from eventrouter.edge import query_api as api
from eventrouter.edge.auth import AdminAuth, BearerThrottle
from eventrouter.edge.proxies import TrustedProxies
from eventrouter.edge.sessions import RevokedSessions
from eventrouter.edge.throttle import Throttle
from eventrouter.errors import APIError
from eventrouter.store.query import EventStore

log = logging.getLogger("eventrouter.app")
_encoder = msgspec.json.Encoder()


class Lifespan:
    """Starts the bus (sinks open connections, writer threads start) and stops it after
    the last request, flushing whatever is in flight."""

    def __init__(self, bus: Bus, store: EventStore | None, config: Config) -> None:
        self.bus = bus
        self.store = store
        self.config = config
        #: What plugins' routes share (``eventrouter_register_routes``); its closers
        #: (the dashboard's) are awaited before the bus stops.
        self.routes: RouteContext | None = None
        #: The admin credentials: their revocation list is re-read in the background.
        self.auth: AdminAuth | None = None
        #: Why start-up failed, in one line (a plugin's ``start`` raised), or None.
        self.start_failure: str | None = None

    async def process_startup(self, scope: dict, event: dict) -> None:
        try:
            await self.bus.start()
        except StartFailed as exc:
            self.start_failure = str(exc)
            raise
        if self.auth is not None:
            await asyncio.to_thread(self.auth.revoked.start)
        if self.bus.queued and self.store is not None:
            # The sinks run in workers; the dashboard may be read before one has started.
            await asyncio.to_thread(self.store.ensure_schema)
        # Everything allocated so far (modules, app, plugins) lives as long as the process:
        # keep it out of the cyclic GC's full collections, which otherwise walk it all and
        # hold the GIL for tens of milliseconds at a time under load.
        gc.collect()
        gc.freeze()
        if not self.config.sources:
            log.warning(
                "no [[sources]] configured: ingestion is open and accepts any or no writeKey"
            )

    async def process_shutdown(self, scope: dict, event: dict) -> None:
        if self.routes is not None:
            for close in reversed(self.routes.closers):
                try:
                    await close()
                except Exception:
                    log.exception("shutdown: %r failed", close)
        if self.auth is not None:
            await asyncio.to_thread(self.auth.revoked.stop)
            if self.auth.throttle is not None:
                await self.auth.throttle.close()
        await self.bus.stop()
        if self.store is not None:
            self.store.close()
        metrics.get().flush()  # the last requests' counts, held in memory (metrics.py)


class HealthResource:
    """``GET /health``: the status for everyone; the components with the admin token (or
    a dashboard session), or for everyone under ``server.health_details = "public"``."""

    def __init__(self, bus: Bus, auth: AdminAuth, details: str = "token") -> None:
        self.bus = bus
        self.auth = auth
        self.details = details

    def _shows_details(self, req: falcon.asgi.Request) -> bool:
        if self.details == "public":
            return True
        if self.auth.bearer(req) is None and self.auth.session(req) is None:
            return False  # a load balancer's probe: the status only
        api.check_auth(self.auth, req)  # a wrong bearer token is a 401, as everywhere
        return True

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        details = self._shows_details(req)
        components = await self.bus.health()
        down_required = [c.name for c in components if c.required and not c.up]
        resp.status = 503 if down_required else 200
        resp.content_type = falcon.MEDIA_JSON
        resp.cache_control = ["no-store"]
        status = "down" if down_required else "ok"
        if not details:
            resp.data = _encoder.encode({"status": status})
            return
        resp.data = _encoder.encode(
            {
                "status": status,
                "components": {
                    c.name: {
                        "status": "up" if c.up else "down",
                        "required": c.required,
                        "detail": c.detail,
                        **({"stats": c.stats} if c.stats else {}),
                    }
                    for c in components
                },
            }
        )


class RequestMetrics:
    """The first middleware in, the last out: gives every request its id (logged with
    every line written for it, echoed in ``X-Request-ID``) and times it by route."""

    async def process_request(self, req: falcon.asgi.Request, resp: Any) -> None:
        req.context.started = time.perf_counter()
        rid = logs.new_request_id(req.get_header(logs.REQUEST_ID_HEADER))
        logs.request_id.set(rid)
        resp.set_header(logs.REQUEST_ID_HEADER, rid)

    async def process_response(
        self, req: falcon.asgi.Request, resp: Any, resource: Any, req_succeeded: bool
    ) -> None:
        started = getattr(req.context, "started", None)
        if started is None:
            return
        route = req.uri_template or "unmatched"
        status = f"{str(resp.status)[:1]}xx"
        metrics.get().request_done(route, req.method, status, time.perf_counter() - started)


class MetricsResource:
    """``GET /metrics``: Prometheus text format; queue depths read from the broker at
    scrape time. ``server.metrics = "token"``: the admin token (or a dashboard session)
    is required; ``"off"``: 404."""

    def __init__(self, bus: Bus, auth: AdminAuth, mode: str = "public") -> None:
        self.bus = bus
        self.auth = auth
        self.mode = mode

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if self.mode == "off":
            raise falcon.HTTPNotFound()
        if self.mode == "token":
            api.check_auth(self.auth, req)
        gauges: dict[str, dict[str, float]] = {}
        if self.bus.queued:
            components = await self.bus.health()
            for component in components:
                for key, value in component.stats.items():
                    kind, _, sink = key.partition(":")
                    if kind in ("queue", "dead") and sink and isinstance(value, int | float):
                        gauges.setdefault(kind, {})[sink] = value
        body, content_type = metrics.exposition(gauges)
        resp.content_type = content_type
        resp.data = body


class MetricsListener:
    """Middleware for ``server.metrics_bind``: ``eventrouter serve`` binds that address
    beside the main one, and every worker accepts on both. A request that came in on the
    metrics port may ask for ``/metrics`` only; one on any other port may not."""

    def __init__(self, port: int) -> None:
        self.port = port

    def _on_metrics_port(self, req: Any) -> bool:
        server = req.scope.get("server") or (None, None)
        return server[1] == self.port

    async def process_request(self, req: falcon.asgi.Request, resp: Any) -> None:
        if self._on_metrics_port(req) != (req.path == "/metrics"):
            raise falcon.HTTPNotFound()

    async def process_request_ws(self, req: falcon.asgi.Request, ws: Any) -> None:
        if self._on_metrics_port(req):
            raise falcon.HTTPNotFound()


class EventRouterApp(falcon.asgi.App):
    """A Falcon ASGI app that also exposes the bus and config it was built with."""

    bus: Bus
    #: What the ingestion endpoints share (its ``groups`` counts the dispatch groups).
    ingestor: ingest.Ingestor
    config: Config
    store: EventStore | None
    #: Set by the built-in admin plugin when it mounts ``/admin`` (None without it):
    #: what the dashboard's views share (admin.views.Dashboard) and its live-tail hub.
    dashboard: Any = None
    tail: Any = None
    lifespan: Lifespan
    #: The middleware :func:`create_app` installed, the CORS policy among it, and the
    #: ingestion resources by path: the server's fast path is taken only while these are
    #: all the app has (:meth:`eventrouter.edge.fastpath.FastIngest.for_app`).
    builtin_middleware: list[Any]
    builtin_error_handlers: dict[type, Any]
    builtin_error_serializer: Any
    cors: falcon.CORSMiddleware
    ingestion_routes: dict[str, Any]

    async def _call_lifespan_handlers(self, ver: str, scope: Any, receive: Any, send: Any) -> None:
        """Falcon's lifespan handling, except that when a plugin failed to start, the
        server is told that one line (``sink 'archive' (type jsonl) failed to start:
        PermissionError: ...``) instead of the traceback Falcon formats: uvicorn logs
        the message it is given, and an operator should not have to find the culprit's
        name in a wall of frames. (Falcon does not offer a public hook for this message;
        tests/integration/test_plugin_start.py covers it.)"""

        async def send_named(message: dict) -> None:
            failure = self.lifespan.start_failure
            if message.get("type") == "lifespan.startup.failed" and failure:
                message = {**message, "message": failure}
            await send(message)

        await super()._call_lifespan_handlers(ver, scope, receive, send_named)


def _snake(title: str) -> str:
    title = re.sub(r"^\d+\s*", "", title)  # Falcon titles read "404 Not Found"
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_") or "error"


def _serialize_http_error(req: Any, resp: Any, exc: falcon.HTTPError) -> None:
    resp.content_type = falcon.MEDIA_JSON
    message = exc.description or exc.title or "error"
    resp.data = _encoder.encode({"code": _snake(exc.title or "error"), "message": message})


def is_ingestion(path: str) -> bool:
    return path == "/track" or (path.startswith("/v1/") and not path.startswith("/v1/projects/"))


async def _handle_api_error(req: Any, resp: Any, exc: APIError, params: Any, **_: Any) -> None:
    if not exc.counted and is_ingestion(req.path):  # a request rejected as a whole
        metrics.get().rejected(exc.code)
    resp.status = exc.status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = _encoder.encode(exc.body())
    for name, value in exc.headers.items():
        resp.set_header(name, value)


async def _handle_unexpected(req: Any, resp: Any, exc: Exception, params: Any, **_: Any) -> None:
    log.exception("unhandled error on %s %s", req.method, req.path)
    resp.status = 500
    resp.content_type = falcon.MEDIA_JSON
    resp.data = _encoder.encode({"code": "internal_error", "message": "internal server error"})


def admin_token(config: Config) -> str:
    """The configured admin token, or one generated now and logged once."""
    if config_module.ensure_admin_token(config):
        log.warning(
            "no admin token configured; generated one for this process: %s", config.admin.token
        )
    return config.admin.token


def _token_checked_paths(config: Config) -> Any:
    """Which paths check a bearer token (so a wrong one there is throttled)."""
    health = config.server.health_details == "token"
    metrics_token = config.server.metrics == "token"

    def guarded(path: str) -> bool:
        if path == "/admin/login" or path.startswith("/admin/static/"):
            return False  # public: a bearer token there is never compared
        if path.startswith(("/admin", "/api/")):
            return True
        return (path == "/health" and health) or (path == "/metrics" and metrics_token)

    return guarded


def create_app(
    config: Config | None = None,
    *,
    plugins: Sequence[Any] = (),
    entry_points: bool = True,
) -> EventRouterApp:
    """Build the application. ``plugins`` are registered after the entry-point plugins."""
    config = config if config is not None else config_module.load()
    pm = make_plugin_manager(config, entry_points=entry_points, plugins=plugins)
    bus = Bus(config, pm)
    store_sink = bus.store_sink()
    store = EventStore(store_sink.store()) if store_sink is not None else None

    origins = config.server.cors_origins
    cors = falcon.CORSMiddleware(
        allow_origins="*" if "*" in origins else origins,
        expose_headers=["Retry-After"],
    )
    lifespan = Lifespan(bus, store, config)
    throttle = Throttle.from_config(config)
    auth = AdminAuth(
        admin_token(config),
        revoked=RevokedSessions(store_sink.store() if store_sink is not None else None),
        throttle=throttle,
    )
    lifespan.auth = auth
    middleware: list[Any] = [RequestMetrics()]
    if config.server.metrics_bind:
        middleware.append(MetricsListener(config_module.parse_bind(config.server.metrics_bind)[1]))
    guarded = _token_checked_paths(config)
    proxies = TrustedProxies(config.server.trusted_proxies)
    middleware += [BearerThrottle(auth, throttle, proxies, guarded), lifespan, cors, api.JSONOnly()]
    app = EventRouterApp(middleware=middleware)
    app.builtin_middleware = list(middleware)
    app.cors = cors
    app.req_options.auto_parse_qs_csv = False
    app.resp_options.secure_cookies_by_default = True
    app.set_error_serializer(_serialize_http_error)
    app.add_error_handler(Exception, _handle_unexpected)
    app.add_error_handler(APIError, _handle_api_error)
    # What the ingestion fast path answers errors as; a plugin that changes either
    # (add_error_handler, set_error_serializer) turns the fast path off.
    app.builtin_error_handlers = dict(getattr(app, "_error_handlers", {}))
    app.builtin_error_serializer = _serialize_http_error

    ingestor = ingest.Ingestor(config, bus)
    app.ingestion_routes = ingest.add_routes(app, ingestor)
    api.add_routes(app, api.EventsResource(auth, store))
    app.add_route("/health", HealthResource(bus, auth, config.server.health_details))
    app.add_route("/metrics", MetricsResource(bus, auth, config.server.metrics))
    app.add_route("/openapi.json", openapi.OpenAPIResource())
    app.bus = bus  # for tests and plugins that need the running bus
    app.lifespan = lifespan
    app.ingestor = ingestor
    app.config = config
    app.store = store
    # The dashboard (/admin) and the snippet origin are built-in plugins
    # (eventrouter.admin.plugin, eventrouter.snippet.origin): they mount their routes
    # through the same hook a third-party plugin uses.
    lifespan.routes = RouteContext(config=config, bus=bus, store=store, auth=auth)
    bus.register_routes(app, lifespan.routes)
    return app
