"""Sign-in for the admin dashboard and the query API: the admin token, a session cookie, CSRF.

The admin token (``[admin] token`` or ``EVENTROUTER_ADMIN_TOKEN``) is the only
credential. Signing in with it sets a session cookie: a payload signed with a key
derived from the token, ``HttpOnly``, ``SameSite=Strict``, ``Secure`` per
``admin.secure_cookies`` (by default when the request came over https, directly or,
from a trusted proxy, by ``X-Forwarded-Proto``). The payload carries the session's id
and its CSRF token, which every state-changing form echoes in a hidden field and every
htmx request in the ``X-CSRF-Token`` header. ``Authorization: Bearer <token>`` is
accepted everywhere too, for scripts; a bearer request needs no CSRF token because a
browser never adds that header on its own.

A session's version is the admin token itself: the signing key is derived from it, so
every server process accepts every other's sessions, and a new token (a restart with
another one) refuses every cookie signed before. Signing out records the session's id
as revoked (:mod:`eventrouter.edge.sessions`, shared through the admin store): the other
sessions stay valid, that one is refused everywhere, and its open live-tail sockets are
closed. Failed attempts at the token are throttled (:mod:`eventrouter.edge.throttle`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import falcon.asgi
from itsdangerous import BadSignature, URLSafeTimedSerializer

from eventrouter.edge.keys import digest
from eventrouter.edge.proxies import TrustedProxies
from eventrouter.edge.sessions import RevokedSessions
from eventrouter.edge.throttle import Throttle
from eventrouter.errors import APIError

SESSION_COOKIE = "eventrouter_session"
#: Double-submit token for the sign-in form, which comes before any session.
LOGIN_CSRF_COOKIE = "eventrouter_login_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SESSION_LIFETIME = 12 * 3600


class Unauthorized(Exception):
    """No valid session or bearer token; ``wrong_token``: a bearer token was sent, and
    it is not the admin token (a script's mistake, not a browser to send to sign-in)."""

    def __init__(self, message: str, *, wrong_token: bool = False) -> None:
        super().__init__(message)
        self.wrong_token = wrong_token


class CSRFError(Exception):
    """A state-changing request without the session's CSRF token."""


class Session(dict):
    """The signed payload: ``sid`` (the session's id), ``csrf`` (the form token)."""

    #: Unix time the cookie was signed (not in the payload: itsdangerous's timestamp).
    issued_at: float = 0.0

    @property
    def csrf(self) -> str:
        return self["csrf"]

    @property
    def sid(self) -> str:
        return self["sid"]


class AdminAuth:
    """Checks the bearer token (constant time) or the session cookie."""

    def __init__(
        self,
        token: str,
        lifetime: int = SESSION_LIFETIME,
        *,
        revoked: RevokedSessions | None = None,
        throttle: Throttle | None = None,
    ) -> None:
        self.token = token.encode()
        self._token_digest = digest(token)
        self.lifetime = lifetime
        key = hmac.new(self.token, b"eventrouter admin session", hashlib.sha256).digest()
        self._serializer = URLSafeTimedSerializer(key, salt="eventrouter.session")
        #: Signed-out session ids (shared through the admin store when there is one).
        self.revoked = revoked if revoked is not None else RevokedSessions(None)
        #: Failed sign-ins and wrong bearer tokens (checked by the callers: it is async).
        self.throttle = throttle

    # -- credentials ------------------------------------------------------------------------
    def token_matches(self, value: str) -> bool:
        """Constant time, the length included: both sides are compared as SHA-256
        digests (``compare_digest`` of unequal lengths returns at once)."""
        return hmac.compare_digest(digest(value.strip()), self._token_digest)

    def bearer(self, req: falcon.asgi.Request) -> bool | None:
        """True for a valid bearer token, False for a wrong one, None when none is sent."""
        scheme, _, value = (req.auth or "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        # ``Bearer`` with no token is a script's mistake too: a 401, not a sign-in page.
        return bool(value.strip()) and self.token_matches(value)

    def session(self, req: Any) -> Session | None:
        """The request's session, if its cookie is present, signed by us and not expired."""
        raw = _cookie(req, SESSION_COOKIE)
        if not raw:
            return None
        try:
            payload, signed = self._serializer.loads(
                raw, max_age=self.lifetime, return_timestamp=True
            )
        except BadSignature:  # also SignatureExpired
            return None
        # A cookie without a session id predates revocation: it could not be signed out.
        if not isinstance(payload, dict) or "csrf" not in payload or "sid" not in payload:
            return None
        session = Session(payload)
        session.issued_at = signed.timestamp()
        return session if self.current(session) else None

    def new_session_cookie(self) -> tuple[str, Session]:
        session = Session(sid=secrets.token_urlsafe(16), csrf=secrets.token_urlsafe(24))
        session.issued_at = time.time()
        return self._serializer.dumps(dict(session)), session

    def current(self, session: Session) -> bool:
        """Not signed out, not expired: checked again by long-lived live-tail sockets.
        Fails closed while this process has not read the signed-out ids yet."""
        return (
            not self.revoked.unread
            and session.sid not in self.revoked
            and time.time() < session.issued_at + self.lifetime
        )

    def revoke(self, session: Session) -> None:
        """Sign ``session`` out everywhere (blocking: it writes the admin store).

        :raises Exception: the store could not be written; this process refuses the
        session anyway, and the others until it expires do not."""
        self.revoked.revoke(session.sid, session.issued_at + self.lifetime + 60)

    def authenticate(self, req: falcon.asgi.Request) -> Session | None:
        """The session (None for a bearer request).

        :raises Unauthorized: neither a valid bearer token nor a valid session."""
        bearer = self.bearer(req)
        if bearer is True:
            return None
        if bearer is False:
            raise Unauthorized("the admin token is not valid", wrong_token=True)
        session = self.session(req)
        if session is None:
            raise Unauthorized("sign in first")
        return session

    def check_csrf(self, session: Session | None, sent: str | None) -> None:
        """``sent`` must be the session's CSRF token (bearer requests need none).

        :raises CSRFError: it is missing or wrong."""
        if session is None:
            return
        if not sent or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            raise CSRFError("the form's CSRF token is missing or stale: reload the page")


def _cookie(req: Any, name: str) -> str | None:
    values = req.get_cookie_values(name)
    return values[0] if values else None


def is_https(req: falcon.asgi.Request, proxies: TrustedProxies) -> bool:
    """The browser reached us over https (its cookies must then be ``Secure``): directly,
    or through a proxy in ``server.trusted_proxies`` that says so in X-Forwarded-Proto."""
    return proxies.scheme(req) == "https"


def secure_cookies(req: falcon.asgi.Request, proxies: TrustedProxies, mode: str) -> bool:
    """``admin.secure_cookies``: ``always``, ``never``, or ``auto`` (:func:`is_https`)."""
    if mode == "auto":
        return is_https(req, proxies)
    return mode == "always"


def too_many_attempts(retry_after: int) -> APIError:
    return APIError(
        429,
        "too_many_attempts",
        f"too many failed attempts at the admin token: retry in {retry_after}s",
        headers={"Retry-After": str(retry_after)},
    )


class BearerThrottle:
    """Middleware: a bearer token on a path that checks it (``guarded``) is first
    checked against the throttle (``429`` while it is empty: the token is then not
    compared at all), and a wrong one is charged to it. The resources check the token
    again and answer ``401`` as before."""

    def __init__(
        self,
        auth: AdminAuth,
        throttle: Throttle,
        proxies: TrustedProxies,
        guarded: Callable[[str], bool],
    ) -> None:
        self.auth = auth
        self.throttle = throttle
        self.proxies = proxies
        self.guarded = guarded

    async def _check(self, req: falcon.asgi.Request) -> None:
        scheme, _, value = (req.auth or "").partition(" ")
        if scheme.lower() != "bearer" or not self.guarded(req.path):
            return
        client = self.proxies.client_ip(req)
        if retry_after := await self.throttle.retry_after(client):
            raise too_many_attempts(retry_after)
        if not value.strip() or not self.auth.token_matches(value):
            await self.throttle.failed(client)

    async def process_request(self, req: falcon.asgi.Request, resp: Any) -> None:
        await self._check(req)

    async def process_request_ws(self, req: falcon.asgi.Request, ws: Any) -> None:
        try:
            await self._check(req)
        except APIError as exc:  # a handshake cannot carry a JSON body: refuse it
            raise falcon.HTTPTooManyRequests(headers=exc.headers) from None


def set_cookie(resp: falcon.asgi.Response, name: str, value: str, *, secure: bool, max_age: int):
    resp.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        secure=secure,
        http_only=True,
        same_site="Strict",
    )


def clear_cookie(resp: falcon.asgi.Response, name: str, *, secure: bool) -> None:
    """Expire the cookie (Falcon writes no ``Max-Age=0``: an expiry in the past does it)."""
    resp.set_cookie(
        name,
        "",
        expires=datetime(1970, 1, 1, tzinfo=UTC),
        path="/",
        secure=secure,
        http_only=True,
        same_site="Strict",
    )


def login_csrf(req: Any) -> str | None:
    return _cookie(req, LOGIN_CSRF_COOKIE)
