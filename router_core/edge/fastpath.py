"""The ingestion fast path: ``POST`` to an ingestion route answered by the server's HTTP
protocol without the ASGI messages, Falcon's request and response objects or its
middleware stack.

Under single-event load the edge spent about 25 µs a request in uvicorn's ASGI cycle and
in Falcon's request handling against about 8 µs in our own event work (bench/README.md,
"Where the queue-mode edge's time goes"). For the handful of ingestion routes, whose
every response is a small JSON body of known length, none of that is needed: the server's
protocol (:class:`eventrouter.server.DrainingHttpProtocol`) hands such a request to
:meth:`FastIngest.serve`, which reads the body from the connection's buffer, runs the
very same resource code as the Falcon route (``handle`` of
:mod:`eventrouter.edge.ingest`'s resources, with a :class:`RequestHead` built from the
raw headers) and writes the status line, headers and body in one ``transport.write``.

What the app's middleware does for these routes is done here too, so a response reads
the same from either path (tests/integration/test_fast_path.py compares them header by
header):

- the request id (:class:`eventrouter.app.RequestMetrics`): the client's sane
  ``X-Request-ID`` or a new one, echoed, and set for every log line of the request;
- the request's duration in ``eventrouter_http_request_duration_seconds`` by route,
  method and status class;
- CORS (Falcon's ``CORSMiddleware`` as the app configures it):
  ``Access-Control-Allow-Origin`` and ``-Expose-Headers`` for an allowed ``Origin``;
- errors: an :class:`APIError` as its JSON body and headers, counted as rejected events
  unless already counted (``_handle_api_error``); anything else logged and answered
  ``500 internal_error``.

The protocol takes the fast path only when all of this is all there is: ``server.
fast_path`` is on (the default), the app's middleware is the built-in stack, the route
still resolves to the built-in resource (no plugin replaced it), and the request did not
arrive on ``server.metrics_bind``'s port. Anything else (another method, a path with a
trailing slash, a WebSocket, a plugin's middleware) goes through Falcon as before.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from uvicorn.protocols.http.httptools_impl import STATUS_LINE
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from eventrouter import logs, metrics
from eventrouter.edge.ingest import (
    BodyReader,
    RequestHead,
    too_large,
)
from eventrouter.errors import APIError

log = logging.getLogger("eventrouter.app")
_encoder = msgspec.json.Encoder()

#: A resource's ``handle``: the response body, or an :class:`APIError`.
Handler = Callable[[RequestHead, BodyReader], Awaitable[bytes]]

_REQUEST_ID = logs.REQUEST_ID_HEADER.lower().encode()
_JSON_TAIL = b"content-type: application/json\r\n"
_INTERNAL_ERROR = _encoder.encode({"code": "internal_error", "message": "internal server error"})


class FastIngest:
    """One app's ingestion routes, served from the HTTP protocol (see the module)."""

    def __init__(
        self,
        handlers: dict[str, Handler],
        *,
        allow_origins: str | frozenset[str],
        expose_headers: str | None,
        metrics_port: int | None,
    ) -> None:
        #: ``path -> handle``: the exact paths of the ingestion routes.
        self.handlers = handlers
        self.allow_origins = allow_origins
        self.expose_headers = expose_headers.encode("latin-1") if expose_headers else None
        self.metrics_port = metrics_port
        #: Requests this process answered here (tests check the path was taken).
        self.served = 0

    @classmethod
    def for_app(cls, app: Any) -> FastIngest | None:
        """The fast path of ``app`` (an :class:`eventrouter.app.EventRouterApp`), or None
        when it may not be taken: switched off, or middleware, routes, error handlers
        or an error serializer that are not the built-in ones (a plugin's), which only
        the Falcon path runs."""
        config = app.config
        if not config.server.fast_path:
            return None
        middleware = getattr(app, "_unprepared_middleware", None)  # Falcon's own list
        if middleware is None or list(middleware) != list(app.builtin_middleware):
            log.info("ingestion fast path off: the app has middleware of a plugin's")
            return None
        error_handlers = getattr(app, "_error_handlers", None)  # Falcon's own dict
        if (
            error_handlers is None
            or error_handlers != app.builtin_error_handlers
            or getattr(app, "_serialize_error", None) is not app.builtin_error_serializer
        ):
            log.info("ingestion fast path off: a plugin changed how errors are answered")
            return None
        handlers: dict[str, Handler] = {}
        router = getattr(app, "_router", None)
        for path, resource in app.ingestion_routes.items():
            found = router.find(path) if router is not None else None
            if found is None or found[0] is not resource:
                log.info("ingestion fast path off: %s is not the built-in route", path)
                return None
            handlers[path] = resource.handle
        cors = app.cors
        metrics_port = None
        if config.server.metrics_bind:
            from eventrouter.config import parse_bind

            metrics_port = parse_bind(config.server.metrics_bind)[1]
        return cls(
            handlers,
            allow_origins=cors.allow_origins,
            expose_headers=cors.expose_headers,
            metrics_port=metrics_port,
        )

    def handler(self, scope: dict) -> Handler | None:
        """The handler of a request whose headers have arrived, or None: the app serves
        it. Only ``POST`` to an ingestion route's exact path, not on the metrics port."""
        if scope["method"] != "POST":
            return None
        handle = self.handlers.get(scope["path"])
        if handle is None:
            return None
        if self.metrics_port is not None and (scope.get("server") or (None, None))[1] == (
            self.metrics_port
        ):
            return None  # the app answers 404 there (MetricsListener)
        return handle

    async def serve(self, cycle: Any, handle: Handler) -> None:
        """Answer one request on uvicorn's ``cycle`` (a ``RequestResponseCycle``, whose
        body the protocol fills as it arrives), as ``cycle.run_asgi`` would have run the
        app: an error that escapes is logged and answered 500 if nothing was sent."""
        started = time.perf_counter()
        self.served += 1
        scope = cycle.scope
        content_length = None
        content_encoding = authorization = forwarded_for = sent_id = origin = None
        for name, value in scope["headers"]:  # lower-cased by the protocol
            if name == b"content-length":
                content_length = int(value)  # llhttp accepted it: digits only
            elif name == b"content-encoding":
                content_encoding = value.decode("latin-1")
            elif name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"x-forwarded-for":
                forwarded_for = value.decode("latin-1")
            elif name == _REQUEST_ID:
                sent_id = value.decode("latin-1")
            elif name == b"origin":
                origin = value.decode("latin-1")
        client = scope.get("client")
        head = RequestHead(
            content_length=content_length,
            content_encoding=content_encoding,
            authorization=authorization,
            peer=client[0] if client else None,
            forwarded_for=forwarded_for,
        )
        rid = logs.new_request_id(sent_id)
        logs.request_id.set(rid)
        extra: list[tuple[str, str]] = []
        try:
            try:
                body = await handle(head, _Reader(cycle, content_length))
                status = 200
            except _Disconnected:
                return  # nobody to answer; nothing was accepted
            except APIError as exc:
                if not exc.counted:  # a request rejected as a whole
                    metrics.get().rejected(exc.code)
                status = exc.status
                body = _encoder.encode(exc.body())
                extra = list(exc.headers.items())
            except Exception:
                log.exception("unhandled error on %s %s", scope["method"], scope["path"])
                status = 500
                body = _INTERNAL_ERROR
            if not cycle.disconnected:
                await self._respond(cycle, status, rid, origin, extra, body)
            metrics.get().request_done(
                scope["path"], "POST", f"{status // 100}xx", time.perf_counter() - started
            )
        except BaseException as exc:  # as uvicorn's run_asgi: the server must not die
            cycle.logger.error("Exception in ASGI application\n", exc_info=exc)
            if not cycle.response_started:
                with contextlib.suppress(Exception):
                    await cycle.send_500_response()
            else:
                cycle.transport.close()
        finally:
            cycle.on_response = lambda: None

    async def _respond(
        self,
        cycle: Any,
        status: int,
        rid: str,
        origin: str | None,
        extra: list[tuple[str, str]],
        body: bytes,
    ) -> None:
        """Status line, headers and body in one write; the cycle's state as uvicorn's
        ``send`` leaves it for a complete response."""
        if cycle.flow.write_paused:
            await cycle.flow.drain()
            if cycle.disconnected:
                return
        cycle.response_started = True
        cycle.waiting_for_100_continue = False
        parts = [STATUS_LINE[status]]
        for name, value in cycle.default_headers:  # date, server
            parts += (name, b": ", value, b"\r\n")
        parts += (_REQUEST_ID, b": ", rid.encode(), b"\r\n")
        for name, value in extra:  # Retry-After, WWW-Authenticate: our own values
            parts += (name.lower().encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n")
        if origin is not None and (self.allow_origins == "*" or origin in self.allow_origins):
            allowed = "*" if self.allow_origins == "*" else origin  # an allowed one only
            parts += (b"access-control-allow-origin: ", allowed.encode("latin-1"), b"\r\n")
            if self.expose_headers:
                parts += (b"access-control-expose-headers: ", self.expose_headers, b"\r\n")
        parts += (b"content-length: ", b"%d" % len(body), b"\r\n", _JSON_TAIL)
        if not cycle.keep_alive:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", body)
        if cycle.access_log:
            cycle.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(cycle.scope),
                cycle.scope["method"],
                get_path_with_query_string(cycle.scope),
                cycle.scope["http_version"],
                status,
            )
        cycle.transport.write(b"".join(parts))
        cycle.response_complete = True
        cycle.message_event.set()
        if not cycle.keep_alive:
            cycle.transport.close()
        cycle.on_response()


class _Reader:
    """A :data:`BodyReader` of uvicorn's cycle: the body as the protocol buffers it,
    waited for as ``RequestResponseCycle.receive`` waits (``100 Continue`` first when
    the client expects it), cut at the limit as it arrives."""

    __slots__ = ("content_length", "cycle")

    def __init__(self, cycle: Any, content_length: int | None) -> None:
        self.cycle = cycle
        self.content_length = content_length

    async def __call__(self, limit: int) -> bytes:
        cycle = self.cycle
        if self.content_length is not None and self.content_length > limit:
            raise too_large(limit)
        if cycle.waiting_for_100_continue and not cycle.transport.is_closing():
            cycle.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            cycle.waiting_for_100_continue = False
        while cycle.more_body and not cycle.disconnected:
            if len(cycle.body) > limit:
                raise too_large(limit)
            cycle.flow.resume_reading()
            await cycle.message_event.wait()
            cycle.message_event.clear()
        if cycle.disconnected:
            raise _Disconnected()
        if len(cycle.body) > limit:
            raise too_large(limit)
        body = bytes(cycle.body)
        cycle.body = bytearray()
        return body


class _Disconnected(Exception):
    """The client went away before its body arrived: nothing to answer."""
