"""Signed-out dashboard sessions, shared by every server process and machine.

A session is a signed cookie (``router_core.auth``): any process holding the admin
token can check one without asking anyone, which is also why signing out cannot simply
forget it. Signing out records the session's id here, in the admin store's
``admin_revoked_sessions`` table (the store the suppression list lives in, so there is
no extra service to run), and every server process re-reads the table every
:data:`REFRESH_INTERVAL` seconds on a thread of its own. The process that signed the
session out refuses it at once; every other one within ``REFRESH_INTERVAL``. A row is
kept until the session would have expired anyway.

- SQLite and PostgreSQL: primary key ``sid``; expired rows are deleted by the next
  sign-out.
- ClickHouse: a ``MergeTree`` ordered by ``sid``, read with ``expires_at > now()``; one
  small row per sign-out is kept (18.16 has no TTL).

If the store cannot be read, the ids read last stay in force. A process that has not
read the table once since it started (:attr:`RevokedSessions.unread`) cannot tell a
signed-out session from another, so it refuses every session until it has (bearer
tokens still work): the dashboard needs that store anyway.

Without an SQL store the ids are kept in the process that signed them out only.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

import sqlalchemy.exc
from sqlalchemy import Column, DateTime, Engine, MetaData, String, Table, delete, inspect, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url

from router_core.db import make_engine, sqlite_path
from router_core.suppressions import clickhouse_client, clickhouse_table_exists, write_retrying

log = logging.getLogger("eventrouter.sessions")

#: Seconds between reads of the table in each server process.
REFRESH_INTERVAL = 2.0
#: Seconds between repeated warnings while the store cannot be read.
WARN_INTERVAL = 60.0
TABLE = "admin_revoked_sessions"

metadata = MetaData()
revoked_sessions = Table(
    TABLE,
    metadata,
    Column("sid", String(64), primary_key=True),
    #: UTC, naive: when the session would have expired.
    Column("expires_at", DateTime, nullable=False),
)
CLICKHOUSE_DDL = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (sid String, expires_at DateTime('UTC')) "
    "ENGINE = MergeTree ORDER BY sid"
)
CLICKHOUSE_EXISTS = (
    f"SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = '{TABLE}'"
)


def _naive_utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None, microsecond=0)


class RevokedSessions:
    """This process's copy of the signed-out session ids (``sid in revoked``)."""

    def __init__(self, url: str | None, refresh: float = REFRESH_INTERVAL) -> None:
        self.url = url
        self.dialect = make_url(url).get_backend_name() if url else None
        self.refresh_interval = refresh
        #: sid → Unix time it expires; replaced whole (the event loop reads it unlocked).
        self._ids: dict[str, float] = {}
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._table_seen = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_at = float("-inf")
        self.errors = 0
        self.last_error: str | None = None
        #: Started (by the app's lifespan) and the table not read yet: refuse sessions.
        self.unread = False

    def __contains__(self, sid: object) -> bool:
        return sid in self._ids

    # -- signing out ----------------------------------------------------------------------
    def revoke(self, sid: str, expires_at: float) -> None:
        """Refuse ``sid`` from now on, here and (through the store) everywhere. Blocking.

        :raises Exception: the store could not be written (it is refused here anyway)."""
        self._merge({sid: expires_at})
        if self.url is None:
            return
        if self.dialect == "clickhouse":
            self._clickhouse_insert(sid, expires_at)
            return
        self._ensure()
        insert = pg_insert if self.dialect == "postgresql" else sqlite_insert
        now = _naive_utc(time.time())
        add = insert(revoked_sessions).values(sid=sid, expires_at=_naive_utc(expires_at))

        def write() -> None:
            with self.engine.begin() as connection:
                connection.execute(add.on_conflict_do_nothing())
                connection.execute(
                    delete(revoked_sessions).where(revoked_sessions.c.expires_at < now)
                )

        write_retrying(self.url, write)

    # -- reading ---------------------------------------------------------------------------
    def start(self) -> None:
        """Read the table now, then every ``refresh_interval`` seconds on a thread."""
        if self.url is None or self._thread is not None:
            return
        self.unread = not self.refresh()
        self._thread = threading.Thread(target=self._loop, name="sessions-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            self.refresh()

    def refresh(self) -> bool:
        """Merge the table's live rows into this process's copy; False if it failed (the
        copy stays as it was)."""
        try:
            rows = self._read()
        except Exception as exc:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            now = time.monotonic()
            if now - self._warned_at >= WARN_INTERVAL:
                self._warned_at = now
                log.warning("signed-out sessions not re-read from the store: %s", self.last_error)
            return False
        self._merge(rows)
        self.unread = False
        return True

    def _merge(self, rows: dict[str, float]) -> None:
        now = time.time()
        with self._lock:
            merged = {sid: at for sid, at in self._ids.items() if at > now}
            merged.update({sid: at for sid, at in rows.items() if at > now})
            self._ids = merged

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.url)
        return self._engine

    def _exists(self) -> bool:
        """Whether the table exists (a missing SQLite file is not created to find out)."""
        if self._table_seen:
            return True
        if self.dialect == "sqlite":
            path = sqlite_path(self.url)
            if path is not None and not path.exists():
                return False
        if self.dialect == "clickhouse":
            self._table_seen = clickhouse_table_exists(self.url, CLICKHOUSE_EXISTS)
        else:
            self._table_seen = inspect(self.engine).has_table(TABLE)
        return self._table_seen

    def _read(self) -> dict[str, float]:
        if self.url is None or not self._exists():
            return {}
        if self.dialect == "clickhouse":
            client = clickhouse_client(self.url)
            try:
                rows = client.execute(
                    f"SELECT sid, toUInt32(expires_at) FROM {TABLE} WHERE expires_at > now()"
                )
            finally:
                client.disconnect()
            return {sid: float(at) for sid, at in rows}
        now = _naive_utc(time.time())
        statement = select(revoked_sessions.c.sid, revoked_sessions.c.expires_at).where(
            revoked_sessions.c.expires_at > now
        )
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        return {sid: at.replace(tzinfo=UTC).timestamp() for sid, at in rows}

    def _ensure(self) -> None:
        if self._table_seen:
            return

        def create() -> None:
            try:
                metadata.create_all(self.engine, tables=[revoked_sessions])
            except sqlalchemy.exc.OperationalError as exc:
                if "already exists" not in str(exc):  # another process created it meanwhile
                    raise

        write_retrying(self.url, create)
        self._table_seen = True

    def _clickhouse_insert(self, sid: str, expires_at: float) -> None:
        client = clickhouse_client(self.url)
        try:
            client.execute(CLICKHOUSE_DDL)
            client.execute(
                f"INSERT INTO {TABLE} (sid, expires_at) VALUES",
                [(sid, datetime.fromtimestamp(int(expires_at), UTC))],
            )
        finally:
            client.disconnect()
        self._table_seen = True
