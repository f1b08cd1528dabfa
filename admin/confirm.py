"""One-time confirmation tokens for the dashboard's destructive actions.

A privacy delete, a suppress and an unsuppress each take two POSTs: a review, which
changes nothing and shows exactly what would change, with a confirmation token in the
form; then the confirmation, which must carry that token. The token is:

- **bound** to the session that reviewed (a keyed digest of its ``sid`` and CSRF
  token, random values of each sign-in; ``bearer`` for a script using the admin token;
  a signed-out session is refused before its token is looked at) and to the exact
  change reviewed (the action, and for a delete the user id, the exact set of linked
  ids ticked and the suppress flag; the kind and id for a suppress or unsuppress);
- **short-lived**: it expires :data:`LIFETIME` seconds (10 minutes) after the review;
- **single use**: the first confirmation that presents it records it as used, in the
  admin store that the suppression list already lives in; any later one is refused.

How, and why. The token is a signed, self-contained value (itsdangerous, as the
session cookie): a random nonce (``secrets.token_urlsafe``), the two binding digests
and the expiry, signed with a key derived from the admin token. Single use is enforced
by a store-backed record of used nonces (:class:`UsedTokens`). The dashboard runs in
several gunicorn workers, often on several machines: a dict in one process would let
the confirmation POST land on a worker that never saw the review. The other choice, a
table of issued tokens, was rejected because:

- its rows would hold what the token is bound to: the ids of the user being erased,
  kept in the store after their erasure. The used-token table holds only a nonce and
  an expiry: no personal data;
- a review would write to the store, and every review that is never confirmed would
  leave a row to clean up; a signed token costs nothing until it is used;
- any process that shares the admin token can check a token without a read, and a
  changed admin token (which signs everyone out) voids every outstanding token.

A token is checked before it is used: a token for another session or other ids, or an
expired one, is refused without being spent, so a stray or forged request cannot burn
the operator's. The CSRF token is still required on every POST: it is a different
defence (it proves the form came from our page; this proves a review of this exact
change came first).

Used nonces are recorded in the admin store (``Store.admin_tables()``), each store
the way it can make a use count once whatever the number of processes: on SQLite and
PostgreSQL one ``INSERT ... ON CONFLICT DO NOTHING``, atomic; on ClickHouse, which has
no insert-if-absent, the earliest of the uses recorded wins (``sinks/clickhouse_store.py``
says how close a race it decides). Nonces are kept until they expire.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from itsdangerous import BadSignature, URLSafeSerializer

from eventrouter.edge.auth import Session
from eventrouter.store.admin_tables import admin_tables_of
from eventrouter.store.interface import CONFIRMATIONS_USED, Store

#: The form field that carries the token.
CONFIRM_FIELD = "confirm_token"
#: Seconds a token stays valid after the review that issued it.
LIFETIME = 600
#: What a script's requests (the bearer token, no session) are bound to.
BEARER = "bearer"


class ConfirmationError(Exception):
    """A confirmation refused: ``status`` 400 (none sent) or 403, and a message that
    says what to do; ``other_change``: the token is valid, for this session, but for
    another change than the one sent (the caller may show a fresh review)."""

    def __init__(self, status: int, message: str, *, other_change: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.other_change = other_change


class Claim(msgspec.Struct, frozen=True):
    """A checked token, not yet used."""

    nonce: str
    expires_at: datetime


class UsedTokens:
    """The ``confirmations_used`` table of the admin store. Blocking: call it from a
    thread.

    :raises NoAdminTables: the store keeps no admin tables."""

    def __init__(self, store: Store) -> None:
        self.tables = admin_tables_of(store)

    def close(self) -> None:
        self.tables.close()

    def use(self, nonce: str, expires_at: datetime) -> bool:
        """Record ``nonce`` as used; False when it was used already."""
        self.tables.ensure(CONFIRMATIONS_USED)
        return self.tables.use_confirmation(nonce, expires_at)


class Confirmations:
    """Issues and checks the tokens; ``used`` records single use (see the module)."""

    def __init__(
        self,
        admin_token: str,
        used: UsedTokens,
        *,
        lifetime: float = LIFETIME,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = hmac.new(
            admin_token.encode(), b"eventrouter admin confirmation", hashlib.sha256
        ).digest()
        self._serializer = URLSafeSerializer(self._key, salt="eventrouter.confirm")
        self.used = used
        self.lifetime = lifetime
        self.clock = clock

    def close(self) -> None:
        self.used.close()

    # -- what a token is bound to ------------------------------------------------------------
    def _tag(self, *parts: Any) -> str:
        return hmac.new(self._key, msgspec.json.encode(parts), hashlib.sha256).hexdigest()[:32]

    def session_tag(self, session: Session | None) -> str:
        """The session's identity: a keyed digest of its id and CSRF token, random
        values of each sign-in that the token itself never reveals."""
        if session is None:
            return BEARER
        return self._tag("session", session.get("sid", ""), session.csrf)

    # -- issuing and checking -------------------------------------------------------------
    def issue(self, session: Session | None, action: str, *change: Any) -> str:
        """A token for ``action`` on exactly ``change``, by this session."""
        return self._serializer.dumps(
            {
                "n": secrets.token_urlsafe(18),
                "s": self.session_tag(session),
                "c": self._tag(action, *change),
                "e": int(self.clock() + self.lifetime),
            }
        )

    def check(self, token: str | None, session: Session | None, action: str, *change: Any) -> Claim:
        """The token's claim, if it is ours, for this session and this exact change, and
        not expired; nothing is recorded (see :meth:`use`).

        :raises ConfirmationError: it is not."""
        if not token:
            raise ConfirmationError(
                400, f"{CONFIRM_FIELD}: required: review the change first, then confirm it"
            )
        try:
            payload = self._serializer.loads(token)
        except BadSignature:
            raise ConfirmationError(
                403, f"{CONFIRM_FIELD}: not a token this dashboard issued: review again"
            ) from None
        if not isinstance(payload, dict) or not {"n", "s", "c", "e"} <= payload.keys():
            raise ConfirmationError(403, f"{CONFIRM_FIELD}: malformed: review again")
        if not hmac.compare_digest(str(payload["s"]), self.session_tag(session)):
            raise ConfirmationError(
                403, "This confirmation was issued to another session: review the change again."
            )
        if not hmac.compare_digest(str(payload["c"]), self._tag(action, *change)):
            raise ConfirmationError(
                403,
                "This confirmation was issued for another change than the one sent "
                "(other ids, or another action): review the change again.",
                other_change=True,
            )
        expires = int(payload["e"])
        if self.clock() >= expires:
            minutes = self.lifetime / 60
            raise ConfirmationError(
                403, f"This confirmation expired ({minutes:g} minutes): review the change again."
            )
        return Claim(str(payload["n"]), datetime.fromtimestamp(expires, UTC))

    def use(self, claim: Claim) -> None:
        """Spend the token: blocking (a store write).

        :raises ConfirmationError: it was used already."""
        if not self.used.use(claim.nonce, claim.expires_at):
            raise ConfirmationError(
                403,
                "This confirmation was used already: nothing was changed again. "
                "Review the change again to repeat it.",
            )
