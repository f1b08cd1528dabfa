"""The dashboard's Privacy page, driven over HTTP as a browser (or a script) does:
review a change, tick linked ids, confirm with the token the review issued."""

from __future__ import annotations

import re
from collections.abc import Iterable
from html import unescape
from typing import Any

import httpx

from tests.admin_support import SESSION_COOKIE, sign_in
from tests.helpers import ADMIN_TOKEN

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def hidden(html: str, name: str) -> str:
    """The value of the hidden input ``name`` (the first one)."""
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no {name} in the page"
    return unescape(match.group(1))


def token_of(html: str) -> str:
    return hidden(html, "confirm_token")


def linked(html: str) -> dict[str, dict[str, Any]]:
    """The review's linked ids: id → the text of each cell by class, and ``checked``."""
    rows = {}
    for ident, row in re.findall(r'<tr data-linked="([^"]*)">(.*?)</tr>', html, re.S):
        cells = {
            name: unescape(re.sub(r"<[^>]+>", "", value)).strip()
            for name, value in re.findall(r'<td class="(\w+)">(.*?)</td>', row, re.S)
        }
        cells["checked"] = bool(re.search(r'name="follow"[^>]* checked', row))
        rows[unescape(ident)] = cells
    return rows


def cells(html: str, sink: str) -> dict[str, str]:
    """The counts row of one sink in a review or a result."""
    row = re.search(rf'<tr data-sink="{sink}">(.*?)</tr>', html, re.S).group(1)
    return {k: unescape(v) for k, v in re.findall(r'<td class="(\w+)">([^<]*)</td>', row)}


class PrivacyPage:
    """One signed-in browser (or, with ``bearer``, a script) on ``/admin/privacy``."""

    def __init__(self, base_url: str, *, bearer: bool = False, cookie: str | None = None):
        if bearer:
            self.client = httpx.Client(base_url=base_url, headers=BEARER, timeout=60)
            self.csrf = ""
        else:
            cookie = cookie or sign_in(base_url)
            self.client = httpx.Client(
                base_url=base_url, cookies={SESSION_COOKIE: cookie}, timeout=60
            )
            self.csrf = hidden(self.client.get("/admin/privacy").text, "csrf_token")

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> PrivacyPage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def post(self, csrf: bool = True, **data: Any) -> httpx.Response:
        if csrf and self.csrf:
            data["csrf_token"] = self.csrf
        return self.client.post("/admin/privacy", data=data)

    # -- deleting ----------------------------------------------------------------------------
    def review(
        self, user_id: str, follow: Iterable[str] = (), *, suppress: bool = False
    ) -> httpx.Response:
        data: dict[str, Any] = {"action": "review", "user_id": user_id, "follow": list(follow)}
        if suppress:
            data["suppress"] = "1"
        return self.post(**data)

    def delete(
        self,
        token: str | None,
        user_id: str,
        follow: Iterable[str] = (),
        *,
        suppress: bool = False,
        confirm: str | None = None,
        csrf: bool = True,
    ) -> httpx.Response:
        data: dict[str, Any] = {
            "action": "delete",
            "user_id": user_id,
            "follow": list(follow),
            "confirm": user_id if confirm is None else confirm,
        }
        if token is not None:
            data["confirm_token"] = token
        if suppress:
            data["suppress"] = "1"
        return self.post(csrf=csrf, **data)

    def reviewed_delete(
        self, user_id: str, follow: Iterable[str] = (), *, suppress: bool = False
    ) -> httpx.Response:
        """Review, then confirm what was reviewed."""
        review = self.review(user_id, follow, suppress=suppress)
        assert review.status_code == 200, review.text
        return self.delete(token_of(review.text), user_id, follow, suppress=suppress)

    # -- suppressing -------------------------------------------------------------------------
    def review_change(self, action: str, kind: str, ident: str, reason: str = "") -> httpx.Response:
        return self.post(action=f"review_{action}", kind=kind, id=ident, reason=reason)

    def change(
        self, action: str, kind: str, ident: str, token: str | None, reason: str = ""
    ) -> httpx.Response:
        data = {"action": action, "kind": kind, "id": ident, "reason": reason}
        if token is not None:
            data["confirm_token"] = token
        return self.post(**data)

    def reviewed_change(
        self, action: str, kind: str, ident: str, reason: str = ""
    ) -> httpx.Response:
        review = self.review_change(action, kind, ident, reason)
        assert review.status_code == 200, review.text
        return self.change(action, kind, ident, token_of(review.text), reason)
