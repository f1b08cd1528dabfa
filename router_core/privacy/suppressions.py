"""The suppression list: user ids and anonymous ids whose new events are never stored.

It lives in one place, the admin store (``[admin] store``, else the first queryable
store), in a ``suppressions`` table that ``eventrouter privacy suppress`` and the
dashboard's Privacy page write, and that every server and worker process reads every
``[privacy] refresh`` seconds (``plugins/suppress.py``). One table, read by all: a
suppression made on one machine reaches every edge and every worker, and survives
restarts, with no extra service to run. Each store keeps the table its own way
(``Store.admin_tables()``; :mod:`eventrouter.store.admin_tables` for the SQL stores).
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from eventrouter.store.admin_tables import admin_tables_of
from eventrouter.store.interface import SUPPRESSIONS, Store

USER_ID = "user_id"
ANONYMOUS_ID = "anonymous_id"
KINDS = (USER_ID, ANONYMOUS_ID)
MAX_ID_LENGTH = 1000
MAX_REASON_LENGTH = 500


class Suppression(msgspec.Struct, frozen=True):
    kind: str
    id: str
    reason: str
    suppressed_at: datetime


class InvalidId(ValueError):
    """A kind or an id the list cannot hold; the message names the field."""


def check(kind: str, ident: str, reason: str = "") -> None:
    """:raises InvalidId: an unknown kind, an empty or overlong id or reason."""
    if kind not in KINDS:
        raise InvalidId(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    if not ident or not ident.strip():
        raise InvalidId(f"{kind}: must not be empty")
    if len(ident) > MAX_ID_LENGTH:
        raise InvalidId(f"{kind}: longer than {MAX_ID_LENGTH} characters")
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidId(f"reason: longer than {MAX_REASON_LENGTH} characters")


class SuppressionList:
    """The ``suppressions`` table of one store. Blocking: call it from a thread.

    :raises NoAdminTables: the store keeps no admin tables."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.tables = admin_tables_of(store)

    def close(self) -> None:
        self.tables.close()

    def __enter__(self) -> SuppressionList:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ------------------------------------------------------------------------
    def ensure(self) -> None:
        """Create the table if it is missing."""
        self.tables.ensure(SUPPRESSIONS)

    def add(self, kind: str, ident: str, reason: str = "") -> bool:
        """Suppress ``ident``; False when it was suppressed already (its reason stays)."""
        check(kind, ident, reason)
        self.ensure()
        return self.tables.suppress(kind, ident, reason, _now())

    def remove(self, kind: str, ident: str) -> bool:
        """Lift a suppression; False when ``ident`` was not suppressed."""
        check(kind, ident)
        if not self.exists():
            return False
        return self.tables.unsuppress(kind, ident, _now())

    # -- reading ------------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether the table exists (no SQLite file or database is created to find out)."""
        return self.tables.exists(SUPPRESSIONS)

    def list(self) -> list[Suppression]:
        """Every suppression, newest first."""
        if not self.exists():
            return []
        rows = self.tables.suppressions()
        return [Suppression(kind, ident, reason, _utc(at)) for kind, ident, reason, at in rows]

    def ids(self) -> dict[str, frozenset[str]]:
        """``{"user_id": {...}, "anonymous_id": {...}}``: what the pipeline drops."""
        found: dict[str, set[str]] = {kind: set() for kind in KINDS}
        if self.exists():
            for kind, ident in self.tables.suppressed_ids():
                if kind in found:
                    found[kind].add(ident)
        return {kind: frozenset(values) for kind, values in found.items()}


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
