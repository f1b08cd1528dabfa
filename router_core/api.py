"""The query API: ``GET /api/v1/events`` and ``GET /api/v1/events/{message_id}``.

Both require ``Authorization: Bearer <admin token>`` and read through the store query
layer (:mod:`router_core.store`), the same one the admin dashboard uses.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from datetime import datetime
from typing import Any

import falcon
import falcon.asgi
import msgspec
import sqlalchemy.exc

from router_core.errors import APIError
from router_core.store import (
    DEFAULT_LIMIT,
    PATH_COLUMNS,
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


class AdminAuth:
    """Checks the bearer token with a constant-time comparison."""

    def __init__(self, token: str) -> None:
        self.token = token.encode()

    def check(self, req: falcon.asgi.Request) -> None:
        header = req.auth or ""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value:
            raise APIError(
                401,
                "unauthorized",
                "Authorization: send 'Bearer <admin token>'",
                headers={"WWW-Authenticate": 'Bearer realm="eventrouter"'},
            )
        if not hmac.compare_digest(value.strip().encode(), self.token):
            raise APIError(
                401,
                "unauthorized",
                "Authorization: the admin token is not valid",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )


def _param(req: falcon.asgi.Request, name: str) -> str | None:
    """A query parameter; a blank one (``name=``, as HTML forms send it) is not given."""
    return req.get_param(name) or None


def _time_param(req: falcon.asgi.Request, name: str) -> datetime | None:
    value = _param(req, name)
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise APIError(400, "invalid_param", f"{name}: {value!r} is not an ISO 8601 time") from None


def parse_filter(req: falcon.asgi.Request) -> tuple[EventFilter, int, str | None]:
    """Query parameters → filter, limit, cursor; 400 naming any bad or unknown parameter."""
    paths = [name for name in req.params if name.partition(".")[0] in PATH_COLUMNS]
    unknown = sorted(set(req.params) - _PARAMS - set(paths))
    if unknown:
        raise APIError(400, "invalid_param", f"{unknown[0]}: unknown parameter")
    for name, value in req.params.items():
        if isinstance(value, list):
            raise APIError(400, "invalid_param", f"{name}: given more than once")
    try:
        conditions = [
            PathCondition.parse(name, req.params[name])
            for name in sorted(paths)
            if req.params[name]  # blank, as HTML forms send it: not given
        ]
    except InvalidQuery as exc:
        raise APIError(400, "invalid_param", str(exc)) from None
    where = EventFilter(
        type=_param(req, "type"),
        event=_param(req, "event"),
        user_id=_param(req, "user_id"),
        anonymous_id=_param(req, "anonymous_id"),
        session_id=_param(req, "session_id"),
        source=_param(req, "source"),
        since=_time_param(req, "since"),
        until=_time_param(req, "until"),
        paths=conditions,
    )
    raw_limit = _param(req, "limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        try:
            limit = int(raw_limit)
        except ValueError:
            raise APIError(400, "invalid_param", f"limit: {raw_limit!r} is not a number") from None
    return where, limit, _param(req, "cursor")


class EventsResource:
    def __init__(self, auth: AdminAuth, store: EventStore | None) -> None:
        self.auth = auth
        self.store = store

    def _store(self) -> EventStore:
        if self.store is None:
            raise APIError(503, "no_store", "no SQL sink is configured to query")
        return self.store

    async def _read(self, method: Any, *args: Any) -> Any:
        """Run a store read in a thread; a store that cannot be read (down, or its
        schema not created yet by a worker or ``eventrouter migrate``) answers 503."""
        try:
            return await asyncio.to_thread(method, *args)
        except sqlalchemy.exc.DBAPIError as exc:
            log.error("store read failed: %s", exc)
            raise APIError(
                503,
                "store_unavailable",
                f"the store cannot be read ({type(exc.orig).__name__}); retry later",
                headers={"Retry-After": "5"},
            ) from None

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        self.auth.check(req)
        store = self._store()
        where, limit, cursor = parse_filter(req)
        try:
            page = await self._read(store.query, where, limit, cursor)
        except InvalidQuery as exc:
            raise APIError(400, "invalid_param", str(exc)) from None
        resp.content_type = falcon.MEDIA_JSON
        resp.data = _encoder.encode(page)

    async def on_get_one(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, message_id: str
    ) -> None:
        self.auth.check(req)
        event = await self._read(self._store().get, message_id)
        if event is None:
            raise APIError(404, "not_found", f"message_id: no event {message_id!r}")
        resp.content_type = falcon.MEDIA_JSON
        resp.data = _encoder.encode(event)


def add_routes(app: falcon.asgi.App, resource: EventsResource) -> None:
    app.add_route("/api/v1/events", resource)
    # ``path``: a client-chosen messageId may contain "/" (sent percent-encoded).
    app.add_route("/api/v1/events/{message_id:path}", resource, suffix="one")
