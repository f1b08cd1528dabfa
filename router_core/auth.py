"""Sign-in for the admin dashboard and the query API: the admin token, a session cookie, CSRF.

The admin token (``[admin] token`` or ``EVENTROUTER_ADMIN_TOKEN``) is the only
credential. Signing in with it sets a session cookie: a payload signed with a key
derived from the token (so every server process accepts every other's sessions, and
changing the token signs everyone out), ``HttpOnly``, ``SameSite=Strict``, ``Secure``
when the request came over https (directly or, from a trusted proxy, by
``X-Forwarded-Proto``). The payload carries the session's CSRF token, which every
state-changing form echoes in a hidden field and every htmx request in the
``X-CSRF-Token`` header. ``Authorization: Bearer <token>`` is accepted everywhere too, for
scripts; a bearer request needs no CSRF token because a browser never adds that header
on its own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime
from typing import Any

import falcon.asgi
from itsdangerous import BadSignature, URLSafeTimedSerializer

from router_core.keys import digest
from router_core.proxies import TrustedProxies

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
    """The signed payload: ``csrf`` (the form token)."""

    @property
    def csrf(self) -> str:
        return self["csrf"]


class AdminAuth:
    """Checks the bearer token (constant time) or the session cookie."""

    def __init__(self, token: str, lifetime: int = SESSION_LIFETIME) -> None:
        self.token = token.encode()
        self._token_digest = digest(token)
        self.lifetime = lifetime
        key = hmac.new(self.token, b"eventrouter admin session", hashlib.sha256).digest()
        self._serializer = URLSafeTimedSerializer(key, salt="eventrouter.session")

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
            payload = self._serializer.loads(raw, max_age=self.lifetime)
        except BadSignature:  # also SignatureExpired
            return None
        return Session(payload) if isinstance(payload, dict) and "csrf" in payload else None

    def new_session_cookie(self) -> tuple[str, Session]:
        session = Session(csrf=secrets.token_urlsafe(24))
        return self._serializer.dumps(dict(session)), session

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
