"""``/admin/privacy``: delete a user's data, and suppress or unsuppress ids.

The same operations as ``eventrouter privacy``. Every change is a POST with the
session's CSRF token, and a deletion takes two: *Review* counts what would go (a dry
run in every store) and shows a confirmation form, where the operator types the user
id again before *Delete permanently*. The result page shows the rows deleted per store.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import falcon
import falcon.asgi

from admin.views import Dashboard, _View
from plugins.suppress import PLUGIN_NAME as SUPPRESSOR
from router_core import erasure
from router_core.auth import Session
from router_core.config import ConfigError
from router_core.errors import APIError
from router_core.privacy import describe, suppression_list
from router_core.suppressions import KINDS, USER_ID, InvalidId, SuppressionList

PATH = "/admin/privacy"
#: How long the page waits for a ClickHouse delete mutation before showing "pending".
MUTATION_WAIT = 20.0


class PrivacyView(_View):
    def __init__(self, dashboard: Dashboard) -> None:
        super().__init__(dashboard)
        self._list: SuppressionList | None = None

    def suppressions(self) -> SuppressionList:
        if self._list is None:
            try:
                self._list = suppression_list(self.d.config, self.d.bus)
            except ConfigError as exc:
                raise APIError(503, "no_store", exc.message) from None
            self.d.closers.append(self._list.close)
        return self._list

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        session = self.d.require(req)
        await self._page(req, resp, session, user_id=req.get_param("user_id") or "")

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if (signed := await self.signed_form(req, resp)) is None:
            return
        session, form = signed
        action = form.get("action", "")
        handler = {
            "review": self._review,
            "delete": self._delete,
            "suppress": self._suppress,
            "unsuppress": self._unsuppress,
        }.get(action)
        if handler is None:
            self.error(req, resp, APIError(400, "invalid_param", f"action: {action!r}"), session)
            return
        try:
            await handler(req, resp, session, form)
        except APIError as exc:
            self.error(req, resp, exc, session)

    # -- the page -------------------------------------------------------------------------
    async def _page(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        session: Session | None,
        *,
        status: int = 200,
        user_id: str = "",
        notice: str = "",
        error: str = "",
    ) -> None:
        rows, list_error = [], ""
        try:
            rows = await asyncio.to_thread(self.suppressions().list)
        except APIError as exc:
            list_error = exc.message
        except Exception as exc:
            list_error = f"the suppression list could not be read: {type(exc).__name__}: {exc}"
        self.d.render(
            req,
            resp,
            "privacy.html",
            status=status,
            user_id=user_id,
            kinds=KINDS,
            suppressions=rows,
            list_error=list_error,
            notice=notice,
            error=error,
            refresh=self.d.config.privacy.refresh,
            session=session,
        )

    # -- deleting --------------------------------------------------------------------------
    async def _review(self, req, resp, session, form: dict[str, str]) -> None:
        user_id = _required(form, "user_id")
        deletion = await self._run(user_id, dry_run=True)
        self._confirm(req, resp, session, deletion, suppress=bool(form.get("suppress")))

    def _confirm(self, req, resp, session, deletion, *, suppress: bool, error: str = "") -> None:
        self.d.render(
            req,
            resp,
            "privacy_confirm.html",
            status=400 if error else 200,
            deletion=deletion,
            lines=describe(deletion),
            suppress=suppress,
            error=error,
            session=session,
        )

    async def _delete(self, req, resp, session, form: dict[str, str]) -> None:
        user_id = _required(form, "user_id")
        suppress = bool(form.get("suppress"))
        if form.get("confirm", "").strip() != user_id:
            deletion = await self._run(user_id, dry_run=True)
            error = "Type the user id exactly as shown to confirm the deletion."
            self._confirm(req, resp, session, deletion, suppress=suppress, error=error)
            return
        if suppress:  # first, so that events arriving meanwhile are dropped
            await self._change("add", USER_ID, user_id, "deleted")
        deletion = await self._run(user_id, dry_run=False)
        self.d.render(
            req,
            resp,
            "privacy_result.html",
            status=500 if deletion.failed else 200,
            deletion=deletion,
            lines=describe(deletion),
            suppressed=suppress,
            user_path=quote(user_id, safe=""),
            session=session,
        )

    async def _run(self, user_id: str, *, dry_run: bool) -> erasure.Deletion:
        return await asyncio.to_thread(
            erasure.delete_user, self.d.bus.sinks, user_id, dry_run=dry_run, wait=MUTATION_WAIT
        )

    # -- suppressing -----------------------------------------------------------------------
    async def _suppress(self, req, resp, session, form: dict[str, str]) -> None:
        kind, ident = form.get("kind", ""), form.get("id", "").strip()
        added = await self._change("add", kind, ident, form.get("reason", "").strip())
        state = "suppressed" if added else "was suppressed already"
        await self._page(req, resp, session, notice=f"{kind} {ident!r} {state}.")

    async def _unsuppress(self, req, resp, session, form: dict[str, str]) -> None:
        kind, ident = form.get("kind", ""), form.get("id", "")
        removed = await self._change("remove", kind, ident)
        state = "is no longer suppressed" if removed else "was not suppressed"
        await self._page(req, resp, session, notice=f"{kind} {ident!r} {state}.")

    async def _change(self, method: str, *args: Any) -> bool:
        """Change the list, then re-read it in this process at once (the others follow
        within ``[privacy] refresh``)."""
        suppressions = self.suppressions()
        try:
            changed = await asyncio.to_thread(getattr(suppressions, method), *args)
        except InvalidId as exc:
            raise APIError(400, "invalid_param", str(exc)) from None
        suppressor = self.d.bus.pm.get_plugin(SUPPRESSOR)
        if suppressor is not None:
            await asyncio.to_thread(suppressor.refresh)
        return changed


def _required(form: dict[str, str], name: str) -> str:
    value = form.get(name, "").strip()
    if not value:
        raise APIError(400, "invalid_param", f"{name}: required")
    return value
