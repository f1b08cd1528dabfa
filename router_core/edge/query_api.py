"""The query API: ``GET /api/v1/events`` and ``GET /api/v1/events/{message_id}``.

Both require ``Authorization: Bearer <admin token>`` or a dashboard session, and read
through the store query layer (:mod:`eventrouter.store.query`), the same one the admin
dashboard uses.

Every answer under ``/api/v1/`` is ``application/json`` with ``X-Content-Type-Options:
nosniff``, errors included, and a request carrying ``HX-Request`` (htmx sends it) is
refused: the dashboard's pages must never fetch this JSON and swap it in as markup
(:class:`JSONOnly`; docs/admin.md, "Escaping and the dashboard").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import falcon
import falcon.asgi
import msgspec
import sqlalchemy.exc

from eventrouter.edge.auth import AdminAuth, Unauthorized
from eventrouter.errors import APIError
from eventrouter.store.interface import StoreUnavailable
from eventrouter.store.query import (
    DEFAULT_LIMIT,
    PATH_COLUMNS,
    AmbiguousEvent,
    EventFilter,
    EventStore,
    InvalidQuery,
    PathCondition,
)

_PARAMS = frozenset(
    {
        "type",
        "event",
        "user_id",
        "anonymous_id",
        "session_id",
        "source",
        "since",
        "until",
        "limit",
        "cursor",
    }
)
_encoder = msgspec.json.Encoder()
log = logging.getLogger("eventrouter.api")
API_PREFIX = "/api/v1/"
HTMX_HEADER = "HX-Request"


class JSONOnly:
    """Middleware: JSON for scripts, never a fragment for htmx, under :data:`API_PREFIX`."""

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if not _is_api(req):
            return
        _json_headers(resp)
        if req.get_header(HTMX_HEADER) is not None:
            raise APIError(
                400,
                "htmx_refused",
                f"{HTMX_HEADER}: the query API does not answer htmx requests; "
                "the dashboard's own routes are under /admin/",
            )

    async def process_response(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, resource: Any, ok: bool
    ) -> None:
        if _is_api(req):
            _json_headers(resp)


def _is_api(req: falcon.asgi.Request) -> bool:
    return req.path.startswith(API_PREFIX) or req.path == API_PREFIX.rstrip("/")


def _json_headers(resp: falcon.asgi.Response) -> None:
    resp.content_type = falcon.MEDIA_JSON
    resp.set_header("X-Content-Type-Options", "nosniff")


def check_auth(auth: AdminAuth, req: falcon.asgi.Request) -> None:
    """A valid bearer token or dashboard session, else 401 naming what to send."""
    try:
        auth.authenticate(req)
    except Unauthorized as exc:
        bearer = exc.wrong_token
        raise APIError(
            401,
            "unauthorized",
            "Authorization: the admin token is not valid"
            if bearer
            else "Authorization: send 'Bearer <admin token>' (or sign in to the dashboard)",
            headers={
                "WWW-Authenticate": 'Bearer error="invalid_token"'
                if bearer
                else 'Bearer realm="eventrouter"'
            },
        ) from exc


def _param(params: Mapping[str, Any], name: str) -> str | None:
    """A query parameter; a blank one (``name=``, as HTML forms send it) is not given."""
    return params.get(name) or None


def _time_param(params: Mapping[str, Any], name: str) -> datetime | None:
    value = _param(params, name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise APIError(400, "invalid_param", f"{name}: {value!r} is not an ISO 8601 time") from None
    # A time without an offset (an HTML datetime-local field sends one) is UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def filter_from_params(params: Mapping[str, Any]) -> tuple[EventFilter, int, str | None]:
    """Query parameters → filter, limit, cursor; 400 naming any bad or unknown parameter.

    The dashboard passes its own query parameters through here too, so both read a
    bookmarkable URL the same way."""
    paths = [name for name in params if name.partition(".")[0] in PATH_COLUMNS]
    unknown = sorted(set(params) - _PARAMS - set(paths))
    if unknown:
        raise APIError(400, "invalid_param", f"{unknown[0]}: unknown parameter")
    for name, value in params.items():
        if isinstance(value, list):
            raise APIError(400, "invalid_param", f"{name}: given more than once")
    try:
        conditions = [
            PathCondition.parse(name, params[name])
            for name in sorted(paths)
            if params[name]  # blank, as HTML forms send it: not given
        ]
    except InvalidQuery as exc:
        raise APIError(400, "invalid_param", str(exc)) from None
    where = EventFilter(
        type=_param(params, "type"),
        event=_param(params, "event"),
        user_id=_param(params, "user_id"),
        anonymous_id=_param(params, "anonymous_id"),
        session_id=_param(params, "session_id"),
        source=_param(params, "source"),
        since=_time_param(params, "since"),
        until=_time_param(params, "until"),
        paths=conditions,
    )
    raw_limit = _param(params, "limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        try:
            limit = int(raw_limit)
        except ValueError:
            raise APIError(400, "invalid_param", f"limit: {raw_limit!r} is not a number") from None
    return where, limit, _param(params, "cursor")


async def read_store(method: Any, *args: Any) -> Any:
    """Run a blocking store read in a thread; a store that cannot be read (down, or its
    schema not created yet by a worker or ``eventrouter migrate``) answers 503; a message
    id that several sources have, asked for without a source, 409 naming them."""
    try:
        return await asyncio.to_thread(method, *args)
    except AmbiguousEvent as exc:
        raise APIError(
            409,
            "ambiguous_message_id",
            f"{exc.summary}: add ?source=NAME",
            extra={"sources": exc.sources},
        ) from None
    except (sqlalchemy.exc.DBAPIError, StoreUnavailable) as exc:
        log.error("store read failed: %s", exc)
        cause = exc.cause if isinstance(exc, StoreUnavailable) else type(exc.orig).__name__
        raise APIError(
            503,
            "store_unavailable",
            f"the store cannot be read ({cause}); retry later",
            headers={"Retry-After": "5"},
        ) from None


class EventsResource:
    def __init__(self, auth: AdminAuth, store: EventStore | None) -> None:
        self.auth = auth
        self.store = store

    def _store(self) -> EventStore:
        if self.store is None:
            raise APIError(503, "no_store", "no SQL sink is configured to query")
        return self.store

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        check_auth(self.auth, req)
        store = self._store()
        where, limit, cursor = filter_from_params(req.params)
        try:
            page = await read_store(store.query, where, limit, cursor)
        except InvalidQuery as exc:
            raise APIError(400, "invalid_param", str(exc)) from None
        resp.content_type = falcon.MEDIA_JSON
        resp.data = _encoder.encode(page)

    async def on_get_one(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, message_id: str
    ) -> None:
        check_auth(self.auth, req)
        source = req.params.get("source") or None
        if isinstance(source, list):
            raise APIError(400, "invalid_param", "source: given more than once")
        event = await read_store(self._store().get, message_id, source)
        if event is None:
            where = f" from source {source!r}" if source is not None else ""
            raise APIError(404, "not_found", f"message_id: no event {message_id!r}{where}")
        resp.content_type = falcon.MEDIA_JSON
        resp.data = _encoder.encode(event)


def add_routes(app: falcon.asgi.App, resource: EventsResource) -> None:
    """Mount the query API's routes (the app's middleware includes :class:`JSONOnly`)."""
    app.add_route("/api/v1/events", resource)
    # ``path``: a client-chosen messageId may contain "/" (sent percent-encoded).
    app.add_route("/api/v1/events/{message_id:path}", resource, suffix="one")
