"""The dashboard's resources: pages, the htmx fragments they load, the live-tail socket.

Every view answers a full page to a plain request and just the fragment to an htmx one
(``HX-Request``), so each URL works bookmarked, reloaded and from the back button.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

import falcon
import falcon.asgi
import msgspec
from falcon import WebSocketDisconnected

from eventrouter.admin import explorer, tail
from eventrouter.admin.charts import chart_geometry
from eventrouter.admin.render import Renderer
from eventrouter.bus.bus import Bus
from eventrouter.config import Config
from eventrouter.edge import proxies
from eventrouter.edge.auth import (
    CSRF_FIELD,
    CSRF_HEADER,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    AdminAuth,
    CSRFError,
    Session,
    Unauthorized,
    clear_cookie,
    login_csrf,
    secure_cookies,
    set_cookie,
)
from eventrouter.edge.query_api import read_store
from eventrouter.errors import APIError
from eventrouter.queue import broker, deadletters
from eventrouter.snippet import loader_snippet
from eventrouter.store.query import EventFilter, EventStore, InvalidQuery

log = logging.getLogger("eventrouter.admin")
LOGIN_PATH = "/admin/login"
HOME_PATH = "/admin/events"
#: How far back event names are suggested from, and how long a process keeps the list.
EVENT_NAMES_WINDOW = timedelta(days=30)
EVENT_NAMES_TTL = 60.0
#: Dead letters read (and put back) per sink to find the newest reason.
DEAD_LETTER_PEEK = 100


def _is_htmx(req: falcon.asgi.Request) -> bool:
    return req.get_header("HX-Request") == "true" and req.get_header("HX-Boosted") != "true"


def _safe_next(value: str | None) -> str:
    """Where to go after signing in: a dashboard path of ours, never another site."""
    if value and value.startswith("/admin/") and not value.startswith("//"):
        parts = urlsplit(value)
        if not parts.scheme and not parts.netloc and "\\" not in value:
            return value
    return HOME_PATH


class Dashboard:
    """What every view shares: config, auth, store, rendering."""

    def __init__(
        self,
        config: Config,
        bus: Bus,
        store: EventStore | None,
        auth: AdminAuth,
        renderer: Renderer,
        hub: tail.TailHub,
    ) -> None:
        self.config = config
        self.bus = bus
        self.store = store
        self.auth = auth
        self.renderer = renderer
        self.hub = hub
        self.proxies = proxies.TrustedProxies(config.server.trusted_proxies)
        #: What views opened lazily and the app's shutdown closes (``close``).
        self.closers: list[Callable[[], None]] = []

    async def close(self) -> None:
        """At the app's shutdown: the live-tail hub, then what views opened."""
        await self.hub.close()
        for close in self.closers:
            await asyncio.to_thread(close)
        self.closers.clear()

    # -- auth --------------------------------------------------------------------------------
    def require(self, req: falcon.asgi.Request) -> Session | None:
        """The session (None for bearer requests); otherwise off to the sign-in page."""
        try:
            return self.auth.authenticate(req)
        except Unauthorized as exc:
            if exc.wrong_token:
                raise falcon.HTTPUnauthorized(
                    title="unauthorized",
                    description=str(exc),
                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
                ) from None
            if _is_htmx(req):  # htmx follows HX-Redirect with a full page load
                raise falcon.HTTPUnauthorized(
                    title="unauthorized",
                    description="sign in first",
                    headers={"HX-Redirect": LOGIN_PATH},
                ) from None
            raise falcon.HTTPSeeOther(
                f"{LOGIN_PATH}?{urlencode({'next': req.relative_uri})}"
            ) from None

    def https(self, req: falcon.asgi.Request) -> bool:
        """Whether the dashboard's cookies get ``Secure`` (``admin.secure_cookies``)."""
        return secure_cookies(req, self.proxies, self.config.admin.secure_cookies)

    def render(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, template: str, **context: Any
    ) -> None:
        session = context.pop("session", None)
        self.renderer.render(
            resp,
            template,
            csrf=session.csrf if session else "",
            signed_in=session is not None,
            path=req.path,
            **context,
        )

    def store_or_error(self) -> EventStore:
        if self.store is None:
            raise APIError(503, "no_store", "no SQL sink is configured for the dashboard to query")
        return self.store

    async def read(self, method: Any, *args: Any) -> Any:
        try:
            return await read_store(method, *args)
        except InvalidQuery as exc:
            raise APIError(400, "invalid_param", str(exc)) from None


class _View:
    def __init__(self, dashboard: Dashboard) -> None:
        self.d = dashboard

    def error(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        exc: APIError,
        session: Session | None,
    ) -> None:
        """A 4xx/5xx shown in the page (or in the fragment's place), naming the problem."""
        template = "_error.html" if _is_htmx(req) else "error.html"
        self.d.render(req, resp, template, status=exc.status, error=exc.body(), session=session)
        for name, value in exc.headers.items():
            resp.set_header(name, value)

    async def signed_form(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response
    ) -> tuple[Session, dict[str, str]] | None:
        """A signed-in POST's session and form, once its CSRF token checks out; None
        after answering 403 naming the problem."""
        session = self.d.require(req)
        form = await _form(req)
        try:
            self.d.auth.check_csrf(session, form.get(CSRF_FIELD) or req.get_header(CSRF_HEADER))
        except CSRFError as exc:
            self.error(req, resp, APIError(403, "csrf", str(exc)), session)
            return None
        return session, form


# -- sign-in ---------------------------------------------------------------------------------
class LoginView(_View):
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        self._form(req, resp, status=200, error=None)

    def _form(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        *,
        status: int,
        error: str | None,
    ) -> None:
        token = secrets.token_urlsafe(24)
        set_cookie(resp, LOGIN_CSRF_COOKIE, token, secure=self.d.https(req), max_age=3600)
        self.d.renderer.render(
            resp,
            "login.html",
            status=status,
            csrf=token,
            signed_in=False,
            path=req.path,
            next=_safe_next(req.get_param("next")),
            error=error,
        )

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        form = await _form(req)
        sent = form.get(CSRF_FIELD)
        expected = login_csrf(req)
        if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
            self._form(
                req, resp, status=403, error="The form expired or came from elsewhere: try again."
            )
            return
        # Throttled before the token is compared (a throttled guess learns nothing);
        # only failures are charged, so the right token is never slowed.
        throttle, client = self.d.auth.throttle, self.d.proxies.client_ip(req)
        if throttle is not None and (retry_after := await throttle.retry_after(client)):
            error = f"Too many failed sign-ins: try again in {retry_after} s."
            self._form(req, resp, status=429, error=error)
            resp.set_header("Retry-After", str(retry_after))
            return
        if not self.d.auth.token_matches(form.get("token", "")):
            if throttle is not None:
                await throttle.failed(client)
            self._form(req, resp, status=401, error="That admin token is not valid.")
            return
        cookie, _ = self.d.auth.new_session_cookie()
        secure = self.d.https(req)
        set_cookie(resp, SESSION_COOKIE, cookie, secure=secure, max_age=self.d.auth.lifetime)
        clear_cookie(resp, LOGIN_CSRF_COOKIE, secure=secure)
        resp.status = falcon.HTTP_303
        resp.location = _safe_next(form.get("next"))


class LogoutView(_View):
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if (signed := await self.signed_form(req, resp)) is None:
            return
        session, _ = signed
        if session is not None:  # a bearer request has no session to sign out
            try:
                await asyncio.to_thread(self.d.auth.revoke, session)
            except Exception as exc:  # refused here already; the others until it expires
                log.error("sign-out: the admin store could not record it: %s", exc)
        clear_cookie(resp, SESSION_COOKIE, secure=self.d.https(req))
        resp.status = falcon.HTTP_303
        resp.location = LOGIN_PATH


async def _form(req: falcon.asgi.Request) -> dict[str, str]:
    """An urlencoded form body; a field sent twice keeps its last value."""
    if (req.content_type or "").split(";")[0].strip() != falcon.MEDIA_URLENCODED:
        raise falcon.HTTPUnsupportedMediaType(
            title="unsupported_media_type",
            description="send the form as application/x-www-form-urlencoded",
        )
    media = await req.get_media()
    return {k: (v[-1] if isinstance(v, list) else v) for k, v in (media or {}).items()}


class RootView(_View):
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        self.d.require(req)  # like every other admin URL: a wrong bearer token is a 401
        raise falcon.HTTPSeeOther(HOME_PATH)


# -- the explorer ---------------------------------------------------------------------------
class EventsView(_View):
    """``/admin/events``: filters, results newest first, keyset pages, chart panels."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        session = self.d.require(req)
        htmx = _is_htmx(req)
        try:
            query = explorer.parse(req.params)
        except APIError as exc:
            if htmx:
                self.error(req, resp, exc, session)
                return
            self._page(req, resp, session, None, None, exc)
            return
        try:
            page = await self.d.read(
                self.d.store_or_error().query,
                query.where,
                query.limit,
                query.cursor,
                explorer.ROW_COLUMNS,
            )
        except APIError as exc:
            if htmx:
                self.error(req, resp, exc, session)
            else:
                self._page(req, resp, session, query, None, exc)
            return
        if htmx:
            self.d.render(req, resp, "_results.html", q=query, page=page, session=session)
            resp.set_header("HX-Push-Url", _url(HOME_PATH, query.query_string(cursor=True)))
            return
        self._page(req, resp, session, query, page, None)

    def _page(self, req, resp, session, query, page, error: APIError | None) -> None:
        self.d.render(
            req,
            resp,
            "events.html",
            status=error.status if error else 200,
            q=query,
            page=page,
            error=error.body() if error else None,
            form=_form_values(req, query),
            ranges=explorer.RANGE_LABELS,
            types=explorer.TYPES,
            sources=[s.name for s in self.d.config.sources],
            session=session,
        )


def _form_values(req: falcon.asgi.Request, query: explorer.ExplorerQuery | None) -> dict:
    """What the filter form shows: the parsed query, or on an error what was sent."""
    if query is not None:
        return {
            **query.fields,
            "range": query.range,
            "since": query.since_text,
            "until": query.until_text,
            "where": [f"{'.'.join((c.column, *c.path))} = {c.value}" for c in query.conditions],
            "breakdown": query.breakdown or "",
        }
    params = req.params
    rows = params.get("where") or []
    rows = rows if isinstance(rows, list) else [rows]
    rows += [f"{k} = {v}" for k, v in params.items() if k.partition(".")[0] in _PATHS]
    values = {k: v if isinstance(v, str) else "" for k, v in params.items() if k in _FORM_FIELDS}
    return {"range": explorer.DEFAULT_RANGE, **values, "where": rows}


_PATHS = explorer.PATH_COLUMNS
_FORM_FIELDS = (*explorer.FILTER_FIELDS, "range", "since", "until", "breakdown")


def _url(path: str, query_string: str) -> str:
    return f"{path}?{query_string}" if query_string else path


class EventView(_View):
    """``/admin/event?message_id=...&source=...``: one event as formatted JSON.

    The ids are query values, never path segments: a messageId of ``..`` or
    ``../../api/v1/events/x`` cannot steer the URL anywhere else. ``source`` may be left
    out when only one source has the id. The older ``/admin/events/{message_id}`` (with
    an optional ``?source=``) still answers, for bookmarks; the dashboard links here."""

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, message_id: str | None = None
    ) -> None:
        session = self.d.require(req)
        try:
            if message_id is None:
                message_id = _one_param(req, "message_id", required=True)
            source = _one_param(req, "source")
            event = await self.d.read(self.d.store_or_error().get, message_id, source)
        except APIError as exc:  # a 409 too, when several sources have the id
            self.error(req, resp, exc, session)
            return
        if event is None:
            where = f" from source {source!r}" if source is not None else ""
            error = APIError(404, "not_found", f"no event {message_id!r}{where}")
            self.error(req, resp, error, session)
            return
        template = "_event.html" if _is_htmx(req) else "event.html"
        self.d.render(req, resp, template, event=event, session=session)


def _one_param(req: falcon.asgi.Request, name: str, *, required: bool = False) -> str | None:
    """A query parameter given at most once (blank = not given); 400 naming it."""
    value = req.params.get(name)
    if isinstance(value, list):
        raise APIError(400, "invalid_param", f"{name}: given more than once")
    if not value:
        if required:
            raise APIError(400, "invalid_param", f"{name}: required")
        return None
    return value


class ChartView(_View):
    """``/admin/chart``: event counts over time for the current filters, as SVG."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        session = self.d.require(req)
        try:
            query = explorer.parse(req.params)
            store = self.d.store_or_error()
            now = datetime.now(UTC)
            since, until = query.where.since, query.where.until or now
            if since is None:  # all time, or a custom range open at the start
                span = await self.d.read(store.time_span, query.where)
                since = span[0] if span else until
                until = max(until, span[1]) if span and query.where.until is None else until
            step = explorer.choose_step(since, until)
            counts = await self.d.read(store.count_by_time, query.where, step)
        except APIError as exc:
            self.error(req, resp, exc, session)
            return
        buckets = explorer.fill_buckets(counts, since, until, step)
        self.d.render(
            req,
            resp,
            "_chart.html",
            chart=chart_geometry(buckets, step),
            total=sum(n for _, n in counts),
            step=explorer.step_label(step),
            session=session,
        )


class BreakdownView(_View):
    """``/admin/breakdown?dimension=event``: the most frequent values of a column or
    JSON path among the events matching the filters."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        session = self.d.require(req)
        params = dict(req.params)
        dimension = params.pop("dimension", None) or params.get("breakdown") or "event"
        try:
            if isinstance(dimension, list):
                raise APIError(400, "invalid_param", "dimension: given more than once")
            explorer.parse({**params, "breakdown": dimension})  # validates the dimension
            query = explorer.parse(params)
            rows = await self.d.read(self.d.store_or_error().top, query.where, dimension, 11)
        except APIError as exc:
            self.error(req, resp, exc, session)
            return
        if dimension == "event":  # only track calls have one: not a value worth a row
            rows = [(value, n) for value, n in rows if value is not None]
        rows = rows[:10]
        most = max((n for _, n in rows), default=0)
        self.d.render(
            req,
            resp,
            "_breakdown.html",
            dimension=dimension,
            rows=rows,
            most=most,
            q=query,
            session=session,
        )


class EventNamesView(_View):
    """``/admin/event-names``: a ``<datalist>`` of the track event names seen in the last
    :data:`EVENT_NAMES_WINDOW`, most frequent first. Every explorer page asks for it, and
    a full GROUP BY is not cheap on a large store: each process keeps the list for
    :data:`EVENT_NAMES_TTL` seconds."""

    def __init__(self, dashboard: Dashboard) -> None:
        super().__init__(dashboard)
        self._names: list[str] = []
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        session = self.d.require(req)
        async with self._lock:  # one query refreshes it for every waiting request
            if time.monotonic() - self._fetched_at > EVENT_NAMES_TTL:
                since = datetime.now(UTC) - EVENT_NAMES_WINDOW
                try:
                    self._names = await self.d.read(self.d.store_or_error().event_names, since)
                    self._fetched_at = time.monotonic()
                except APIError:
                    pass  # suggestions are a convenience: no store, no suggestions
        self.d.render(req, resp, "_event_names.html", names=self._names, session=session)


class ConditionRowView(_View):
    """``/admin/condition-row``: one more empty property-condition row for the form."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        session = self.d.require(req)
        self.d.render(req, resp, "_condition.html", value="", session=session)


# -- live tail ------------------------------------------------------------------------------
class LiveView(_View):
    """``/admin/live``: the live tail page; its socket is ``/admin/live/ws``."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        session = self.d.require(req)
        try:
            query = explorer.parse(req.params)
        except APIError as exc:
            self.error(req, resp, exc, session)
            return
        context = {
            "q": query,
            "socket": _url("/admin/live/ws", query.query_string(breakdown=False)),
            "available": self.d.hub.available,
            "feed": self.d.hub.source,
            "session": session,
        }
        if _is_htmx(req):
            self.d.render(req, resp, "_live_panel.html", **context)
            resp.set_header("HX-Push-Url", _url("/admin/live", query.query_string()))
            return
        self.d.render(
            req,
            resp,
            "live.html",
            form=_form_values(req, query),
            types=explorer.TYPES,
            sources=[s.name for s in self.d.config.sources],
            **context,
        )

    async def on_websocket(self, req: falcon.asgi.Request, ws: falcon.asgi.WebSocket) -> None:
        origin = req.get_header("Origin")
        if origin and urlsplit(origin).netloc not in (req.netloc, req.forwarded_host):
            # Cross-site WebSocket hijacking: the session cookie rides along on any
            # page's connection attempt, so only our own pages may open the tail.
            await ws.close(code=4403)
            return
        try:
            session = self.d.auth.authenticate(req)
            query = explorer.parse(req.params)
        except (Unauthorized, APIError):
            await ws.close(code=4401)
            return
        if not self.d.hub.available:
            await ws.close(code=4503)
            return
        await ws.accept()
        await LiveSession(self.d, ws, query.where, session).run()


class LiveSession:
    """One open tail: forwards matching events, pauses and resumes on request."""

    #: Events held back while paused (the oldest beyond are dropped).
    HELD = 500
    #: Seconds between checks that the socket's session is still signed in.
    SESSION_CHECK = 1.0

    def __init__(
        self,
        dashboard: Dashboard,
        ws: falcon.asgi.WebSocket,
        where: EventFilter,
        session: Session | None = None,
    ):
        self.d = dashboard
        self.ws = ws
        self.where = where
        #: None for a bearer-token socket (the token lasts as long as the process).
        self.session = session
        self.paused = False
        self.held: list[dict[str, Any]] = []
        self.dropped = 0

    async def run(self) -> None:
        subscription = await self.d.hub.subscribe()
        receive = asyncio.create_task(self.ws.receive_text())
        get = asyncio.create_task(subscription.get())
        try:
            await self._send_controls()
            while True:
                done, _ = await asyncio.wait(
                    {receive, get}, timeout=self.SESSION_CHECK, return_when=asyncio.FIRST_COMPLETED
                )
                if self.session is not None and not self.d.auth.current(self.session):
                    # Signed out (here, or elsewhere and read from the store) or expired.
                    await self.ws.close(code=4401)
                    return
                if receive in done:
                    await self._on_message(receive.result())
                    receive = asyncio.create_task(self.ws.receive_text())
                if get in done:
                    rows = [e for e in get.result() if tail.matches(self.where, e)]
                    get = asyncio.create_task(subscription.get())
                    if self.paused:
                        if rows:
                            self._hold(rows)
                            await self._send_controls()
                    elif rows:
                        await self._send_rows(rows)
        except WebSocketDisconnected:
            pass
        finally:
            for task in (receive, get):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnected):
                    await task
            await self.d.hub.unsubscribe(subscription)

    async def _on_message(self, text: str) -> None:
        try:
            message = msgspec.json.decode(text)
        except msgspec.DecodeError:
            return
        action = message.get("action") if isinstance(message, dict) else None
        if action == "pause":
            self.paused = True
        elif action == "resume":
            self.paused = False
            held, self.held = self.held, []
            if held:
                await self._send_rows(held)
        else:
            return
        await self._send_controls()

    def _hold(self, rows: list[dict[str, Any]]) -> None:
        self.held.extend(rows)
        if len(self.held) > self.HELD:
            self.dropped += len(self.held) - self.HELD
            del self.held[: len(self.held) - self.HELD]

    async def _send_rows(self, rows: list[dict[str, Any]]) -> None:
        # Newest first, like the explorer: the batch arrives oldest first.
        html = self.d.renderer.fragment("_live_rows.html", events=list(reversed(rows)))
        await self.ws.send_text(html)

    async def _send_controls(self) -> None:
        html = self.d.renderer.fragment(
            "_live_controls.html", paused=self.paused, held=len(self.held), dropped=self.dropped
        )
        await self.ws.send_text(html)


# -- users, status, sources -------------------------------------------------------------------
class UserView(_View):
    """``/admin/user?user_id=...``: traits from identify calls, and the user's timeline.
    (``/admin/users/{user_id}`` still answers, for bookmarks; the dashboard links here:
    no path segment can carry a user id of ``..``.)"""

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, user_id: str | None = None
    ):
        session = self.d.require(req)
        try:
            if user_id is None:
                user_id = _one_param(req, "user_id", required=True)
            cursor = _one_param(req, "cursor")
        except APIError as exc:
            self.error(req, resp, exc, session)
            return
        where = EventFilter(user_id=user_id)
        try:
            store = self.d.store_or_error()
            # Three independent reads at once: the page waits for the slowest, not the sum
            # (each failure collected, so none is left unretrieved; the first is shown).
            results = await asyncio.gather(
                self.d.read(store.query, where, explorer.PAGE_SIZE, cursor, explorer.ROW_COLUMNS),
                self.d.read(store.identify_traits, user_id),
                self.d.read(store.time_span, where),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            page, traits, span = results
        except APIError as exc:
            self.error(req, resp, exc, session)
            return
        if not page.events and cursor is None:
            self.error(
                req, resp, APIError(404, "not_found", f"no events for user {user_id!r}"), session
            )
            return
        self.d.render(
            req,
            resp,
            "user.html",
            user_id=user_id,
            traits=traits,
            page=page,
            first_seen=span[0] if span else None,
            last_seen=span[1] if span else None,
            session=session,
        )


class StatusView(_View):
    """``/admin/status``: each sink's queue depth, dead letters and last error; the store."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        session = self.d.require(req)
        components = await self.d.bus.health()
        size = error = None
        if self.d.store is not None:
            try:
                size = await self.d.read(self.d.store.size)
            except APIError as exc:
                error = exc.body()["message"]
        broker_stats = next((c.stats for c in components if c.name == "broker"), {})
        dead_reasons = await asyncio.to_thread(self._dead_letter_reasons, broker_stats)
        sinks = []
        for name, sink_config in self.d.config.sinks.items():
            component = next((c for c in components if c.name == f"sink:{name}"), None)
            sinks.append(
                {
                    "name": name,
                    "type": sink_config.type,
                    "status": ("up" if component.up else "down") if component else "in workers",
                    "detail": component.detail if component else "",
                    "queue": broker_stats.get(f"queue:{name}"),
                    "dead": broker_stats.get(f"dead:{name}"),
                    "dead_reason": dead_reasons.get(name),
                    "stats": component.stats if component else {},
                }
            )
        sink_components = {f"sink:{name}" for name in self.d.config.sinks}
        others = [c for c in components if c.name not in sink_components]
        store_sink = self.d.bus.store_sink()
        self.d.render(
            req,
            resp,
            "status.html",
            sinks=sinks,
            components=others,
            size=size,
            store_error=error,
            store_name=store_sink.name if store_sink else None,
            queued=self.d.config.queue is not None,
            session=session,
        )

    def _dead_letter_reasons(self, stats: dict[str, Any]) -> dict[str, str]:
        """The newest dead letter's reason per sink that has any (read, then put back)."""
        reasons: dict[str, str] = {}
        if self.d.config.queue is None:
            return reasons
        for name in self.d.config.sinks:
            if not stats.get(f"dead:{name}"):
                continue
            try:
                letters = deadletters.list_dead_letters(self.d.config, name, DEAD_LETTER_PEEK)
            except broker.BROKER_ERRORS as exc:
                reasons[name] = f"(could not read the dead letters: {exc})"
                continue
            if letters:
                reasons[name] = letters[-1].reason
        return reasons


class SourcesView(_View):
    """``/admin/sources``: each source's writeKey and ready-to-paste snippet."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        session = self.d.require(req)
        origin = self.d.proxies.origin(req)
        sources = [
            {
                "name": source.name,
                "write_key": source.write_key,
                "snippet": loader_snippet(source.write_key, origin),
            }
            for source in self.d.config.sources
        ]
        self.d.render(req, resp, "sources.html", sources=sources, origin=origin, session=session)
