"""Signed-out dashboard sessions, shared by every server process and machine.

A session is a signed cookie (``eventrouter.edge.auth``): any process holding the admin
token can check one without asking anyone, which is also why signing out cannot simply
forget it. Signing out records the session's id here, in the admin store's
``admin_revoked_sessions`` table (the store the suppression list lives in, so there is
no extra service to run), and every server process re-reads the table every
:data:`REFRESH_INTERVAL` seconds on a thread of its own. The process that signed the
session out refuses it at once; every other one within ``REFRESH_INTERVAL``. A row is
kept until the session would have expired anyway.

Each store keeps the table its own way (``Store.admin_tables()``; on SQLite and
PostgreSQL expired rows are deleted by the next sign-out).

If the store cannot be read, the ids read last stay in force. A process that has not
read the table once since it started (:attr:`RevokedSessions.unread`) cannot tell a
signed-out session from another, so it refuses every session until it has (bearer
tokens still work): the dashboard needs that store anyway.

Without an admin store the ids are kept in the process that signed them out only.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

from eventrouter.store.admin_tables import RefreshErrors
from eventrouter.store.interface import REVOKED_SESSIONS, Store

log = logging.getLogger("eventrouter.sessions")

#: Seconds between reads of the table in each server process.
REFRESH_INTERVAL = 2.0
#: Seconds between repeated warnings while the store cannot be read.
WARN_INTERVAL = 60.0


class RevokedSessions:
    """This process's copy of the signed-out session ids (``sid in revoked``)."""

    def __init__(self, store: Store | None, refresh: float = REFRESH_INTERVAL) -> None:
        """:param store: the admin store (None, or a store that keeps no admin tables:
        the ids stay in this process)."""
        self.store = store.admin_tables() if store is not None else None
        self.refresh_interval = refresh
        #: sid → Unix time it expires; replaced whole (the event loop reads it unlocked).
        self._ids: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = RefreshErrors(
            log, "signed-out sessions not re-read from the store", WARN_INTERVAL
        )
        #: Started (by the app's lifespan) and the table not read yet: refuse sessions.
        self.unread = False

    def __contains__(self, sid: object) -> bool:
        return sid in self._ids

    # -- signing out ----------------------------------------------------------------------
    def revoke(self, sid: str, expires_at: float) -> None:
        """Refuse ``sid`` from now on, here and (through the store) everywhere. Blocking.

        :raises Exception: the store could not be written (it is refused here anyway)."""
        self._merge({sid: expires_at})
        store = self.store
        if store is None:
            return
        store.ensure(REVOKED_SESSIONS)
        store.revoke_session(sid, datetime.fromtimestamp(int(expires_at), UTC))

    # -- reading ---------------------------------------------------------------------------
    def start(self) -> None:
        """Read the table now, then every ``refresh_interval`` seconds on a thread."""
        if self.store is None or self._thread is not None:
            return
        self.unread = not self.refresh()
        self._thread = threading.Thread(target=self._loop, name="sessions-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.store is not None:
            self.store.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            self.refresh()

    def refresh(self) -> bool:
        """Merge the table's live rows into this process's copy; False if it failed (the
        copy stays as it was)."""
        try:
            rows = self._read()
        except Exception as exc:
            self.failures.failed(exc)
            return False
        self.failures.succeeded()
        self._merge(rows)
        self.unread = False
        return True

    def _merge(self, rows: dict[str, float]) -> None:
        now = time.time()
        with self._lock:
            merged = {sid: at for sid, at in self._ids.items() if at > now}
            merged.update({sid: at for sid, at in rows.items() if at > now})
            self._ids = merged

    def _read(self) -> dict[str, float]:
        store = self.store
        if store is None or not store.exists(REVOKED_SESSIONS):
            return {}
        return store.revoked_sessions()
