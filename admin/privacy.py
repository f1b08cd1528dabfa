"""``/admin/privacy``: delete a user's data, and suppress or unsuppress ids.

The same operations as ``eventrouter privacy``. Every change is a POST with the
session's CSRF token, and each takes two steps, a review and a confirmation:

- *Review deletion* counts what would go (a dry run in every store) and lists every
  id linked to the user (aliased older ids, anonymous ids), each with a checkbox, how
  it is linked, what following it would take, and a flag when the link crosses
  sources. Only the user id's own data goes unless a linked id is ticked; *Update the
  counts* reviews the ticked set. *Delete permanently* then needs the user id typed
  again and the confirmation token of that exact review;
- *Review suppression* and *Unsuppress…* show the change (and the id's current
  state) with a token for it; the page's *Suppress* or *Unsuppress* button makes it.

The tokens (:mod:`admin.confirm`) are bound to the session and to the exact change
reviewed, expire after 10 minutes and work once, whichever server process the
confirmation reaches. A POST without one, or with one for another session or other
ids, an expired or a used one, changes nothing and is answered 400 or 403 with the
reason. The result page shows the rows deleted per store.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any
from urllib.parse import quote

import falcon
import falcon.asgi

from eventrouter.admin.confirm import CONFIRM_FIELD, ConfirmationError, Confirmations, UsedTokens
from eventrouter.admin.views import Dashboard, _View
from eventrouter.config import ConfigError
from eventrouter.edge.auth import Session
from eventrouter.errors import APIError
from eventrouter.privacy import erasure
from eventrouter.privacy.cli import deletion_lines, suppression_list
from eventrouter.privacy.suppressions import KINDS, USER_ID, InvalidId, SuppressionList, check

PATH = "/admin/privacy"
#: How long the page waits for a ClickHouse delete mutation before showing "pending".
MUTATION_WAIT = 20.0


class PrivacyView(_View):
    def __init__(self, dashboard: Dashboard) -> None:
        super().__init__(dashboard)
        self._list: SuppressionList | None = None
        self._confirmations: Confirmations | None = None

    def suppressions(self) -> SuppressionList:
        if self._list is None:
            try:
                self._list = suppression_list(self.d.config, self.d.bus)
            except ConfigError as exc:
                raise APIError(503, "no_store", exc.message) from None
            self.d.closers.append(self._list.close)
        return self._list

    def confirmations(self) -> Confirmations:
        """The tokens, with their used-token record in the admin store (where the
        suppression list is)."""
        if self._confirmations is None:
            used = UsedTokens(self.suppressions().store)
            self._confirmations = Confirmations(self.d.config.admin.token or "", used)
            self.d.closers.append(self._confirmations.close)
        return self._confirmations

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
            "review_suppress": self._review_change,
            "review_unsuppress": self._review_change,
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

    # -- confirmation tokens ---------------------------------------------------------------
    async def _confirmed(
        self, session: Session | None, form: dict[str, str], action: str, *change: Any
    ) -> None:
        """Check, then spend, the form's token for ``action`` on ``change``.

        :raises ConfirmationError: refused (nothing was spent unless it was valid)."""
        confirmations = self.confirmations()
        claim = confirmations.check(form.get(CONFIRM_FIELD), session, action, *change)
        await asyncio.to_thread(confirmations.use, claim)

    def _refused(self, req, resp, session, exc: ConfirmationError) -> None:
        code = "confirmation_required" if exc.status == 400 else "confirmation_refused"
        self.error(req, resp, APIError(exc.status, code, exc.message), session)

    # -- deleting --------------------------------------------------------------------------
    async def _review(self, req, resp, session, form: dict[str, str]) -> None:
        user_id = _required(form, "user_id")
        follow = await _follow(req)
        deletion = await self._run(user_id, follow, dry_run=True)
        self._confirm(req, resp, session, deletion, suppress=bool(form.get("suppress")))

    def _confirm(self, req, resp, session, deletion, *, suppress: bool, error: str = "") -> None:
        """The review: what would go, the linked ids, and a token for exactly that."""
        token = self.confirmations().issue(
            session, "delete", deletion.user_id, sorted(deletion.followed), suppress
        )
        self.d.render(
            req,
            resp,
            "privacy_confirm.html",
            status=400 if error else 200,
            deletion=deletion,
            lines=deletion_lines(deletion),
            suppress=suppress,
            confirm_token=token,
            lifetime=int(self.confirmations().lifetime // 60),
            error=error,
            session=session,
        )

    async def _delete(self, req, resp, session, form: dict[str, str]) -> None:
        user_id = _required(form, "user_id")
        suppress = bool(form.get("suppress"))
        follow = await _follow(req)
        confirmations = self.confirmations()
        try:
            claim = confirmations.check(
                form.get(CONFIRM_FIELD), session, "delete", user_id, follow, suppress
            )
        except ConfirmationError as exc:
            if not exc.other_change:
                self._refused(req, resp, session, exc)
                return
            # A valid token of this session, for another set of ids (ticked after the
            # counts were shown): nothing is deleted; the review of what was sent is.
            deletion = await self._run(user_id, follow, dry_run=True)
            error = (
                "The ids sent differ from those reviewed (a box was ticked or cleared "
                "after the counts were shown): nothing was deleted. Check the counts "
                "below for the ids now ticked, then confirm again."
            )
            self._confirm(req, resp, session, deletion, suppress=suppress, error=error)
            return
        if form.get("confirm", "").strip() != user_id:
            deletion = await self._run(user_id, follow, dry_run=True)
            error = "Type the user id exactly as shown to confirm the deletion."
            self._confirm(req, resp, session, deletion, suppress=suppress, error=error)
            return
        try:
            await asyncio.to_thread(confirmations.use, claim)
        except ConfirmationError as exc:
            self._refused(req, resp, session, exc)
            return
        if suppress:  # first, so that events arriving meanwhile are dropped
            await self._change("add", USER_ID, user_id, "deleted")
        deletion = await self._run(user_id, follow, dry_run=False)
        self.d.render(
            req,
            resp,
            "privacy_result.html",
            status=500 if deletion.failed else 200,
            deletion=deletion,
            lines=deletion_lines(deletion),
            suppressed=suppress,
            user_path=quote(user_id, safe=""),
            session=session,
        )

    async def _run(self, user_id: str, follow: list[str], *, dry_run: bool) -> erasure.Deletion:
        return await asyncio.to_thread(
            partial(
                erasure.delete_user,
                self.d.bus.sinks,
                user_id,
                follow=follow,
                dry_run=dry_run,
                wait=MUTATION_WAIT,
            )
        )

    # -- suppressing -----------------------------------------------------------------------
    async def _review_change(self, req, resp, session, form: dict[str, str]) -> None:
        """Show a suppress or unsuppress, and the id's current state, with a token."""
        action = form["action"].removeprefix("review_")
        kind, ident = form.get("kind", ""), form.get("id", "")
        if action == "suppress":  # typed in; an unsuppress names a listed id as it is
            ident = ident.strip()
        reason = form.get("reason", "").strip()
        try:
            check(kind, ident, reason)
        except InvalidId as exc:
            raise APIError(400, "invalid_param", str(exc)) from None
        rows = await asyncio.to_thread(self.suppressions().list)
        current = next((s for s in rows if (s.kind, s.id) == (kind, ident)), None)
        self.d.render(
            req,
            resp,
            "privacy_change.html",
            action=action,
            kind=kind,
            id=ident,
            reason=reason,
            current=current,
            confirm_token=self.confirmations().issue(session, action, kind, ident),
            lifetime=int(self.confirmations().lifetime // 60),
            refresh=self.d.config.privacy.refresh,
            session=session,
        )

    async def _suppress(self, req, resp, session, form: dict[str, str]) -> None:
        kind, ident = form.get("kind", ""), form.get("id", "").strip()
        try:
            await self._confirmed(session, form, "suppress", kind, ident)
        except ConfirmationError as exc:
            self._refused(req, resp, session, exc)
            return
        added = await self._change("add", kind, ident, form.get("reason", "").strip())
        state = "suppressed" if added else "was suppressed already"
        await self._page(req, resp, session, notice=f"{kind} {ident!r} {state}.")

    async def _unsuppress(self, req, resp, session, form: dict[str, str]) -> None:
        kind, ident = form.get("kind", ""), form.get("id", "")
        try:
            await self._confirmed(session, form, "unsuppress", kind, ident)
        except ConfirmationError as exc:
            self._refused(req, resp, session, exc)
            return
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
        await self.d.bus.suppressions_changed()
        return changed


def _required(form: dict[str, str], name: str) -> str:
    value = form.get(name, "").strip()
    if not value:
        raise APIError(400, "invalid_param", f"{name}: required")
    return value


async def _follow(req: falcon.asgi.Request) -> list[str]:
    """The ticked linked ids (``follow``, repeated), sorted, without duplicates: the
    parsed form keeps every value of a repeated field (``signed_form``'s dict keeps the
    last one only)."""
    media = await req.get_media() or {}
    values = media.get("follow", [])
    values = values if isinstance(values, list) else [values]
    return sorted({value for value in values if isinstance(value, str) and value})
