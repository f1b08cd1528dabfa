"""Signing in to a live server's dashboard and watching its live tail over a real
WebSocket, as a browser does."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from urllib.parse import urlencode

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.helpers import ADMIN_TOKEN, HANG_GUARD

SESSION_COOKIE = "eventrouter_session"


def sign_in(base_url: str) -> str:
    """The session cookie a browser gets from the sign-in form."""
    with httpx.Client(base_url=base_url) as client:
        form = client.get("/admin/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
        response = client.post("/admin/login", data={"csrf_token": csrf, "token": ADMIN_TOKEN})
        assert response.status_code == 303, response.text
        return response.cookies[SESSION_COOKIE]


def open_tail(
    base_url: str, cookie: str | None, params: dict | None = None, origin: str | None = None
) -> ClientConnection:
    """The live tail's socket, opened like the page does (same-origin, with the cookie)."""
    ws_url = base_url.replace("http://", "ws://") + "/admin/live/ws"
    if params:
        ws_url += "?" + urlencode(params)
    headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"} if cookie else {}
    return connect(
        ws_url,
        additional_headers=headers,
        origin=origin or base_url,
        open_timeout=HANG_GUARD,
    )


def refused_status(base_url: str, cookie: str | None, origin: str | None = None) -> int:
    """The HTTP status of a refused handshake (fails the test if it was accepted)."""
    try:
        with open_tail(base_url, cookie, origin=origin):
            pytest.fail("the socket was accepted")
    except InvalidStatus as exc:
        return exc.response.status_code
    raise AssertionError("unreachable")


def receive_until(ws: ClientConnection, predicate: Callable[[str], bool], what: str) -> str:
    """The first message ``predicate`` accepts; every message before it is skipped."""
    deadline = time.monotonic() + HANG_GUARD
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"never received: {what}")
        try:
            message = ws.recv(timeout=remaining)
        except TimeoutError:
            pytest.fail(f"never received: {what}")
        if predicate(message):
            return message


def live_ids(message: str) -> list[str]:
    """message_ids of the rows in one live-tail message (newest first)."""
    return re.findall(r'data-message-id="([^"]+)"', message)
