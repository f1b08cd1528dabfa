"""Deleting a user's data from every SQL store (a GDPR erasure request).

Who "the user" is, found across every store first, then applied to each:

- the user id, and the ``previous_id`` of every alias call the user made (an older id
  of the same person);
- their anonymous ids: every ``anonymous_id`` seen on an event of those user ids, the
  ``previous_id`` of their alias calls, and on PostgreSQL the ``identities`` table's
  links.

What is deleted, per store: every event whose ``user_id`` is one of the user ids; every
event with no ``user_id`` whose ``anonymous_id`` is one of the anonymous ids (the
user's activity before they signed in); every alias event naming one of the user ids
as ``previous_id``. An event that another user id made on a shared device is left
alone. PostgreSQL also loses the user's ``users`` row and their ``identities`` rows.

ClickHouse deletes with ``ALTER TABLE events DELETE WHERE ...``, a mutation (valid on
18.16 and on current servers): it runs in the background, and this module waits for it
up to ``wait`` seconds (``system.mutations``). Other sink types (S3) cannot delete one
user's rows: they are reported as skipped, with the reason (docs/privacy.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from sqlalchemy import ColumnElement, Engine, delete, func, inspect, or_, select, text

from router_core.db import make_engine
from router_core.schema import events
from router_core.sink import Sink
from router_core.suppressions import clickhouse_client, write_retrying

#: Statuses of one store's part of a deletion.
DELETED = "deleted"
WOULD_DELETE = "would delete"
PENDING = "pending"
SKIPPED = "skipped"
FAILED = "failed"

S3_REASON = (
    "S3 objects are immutable batches: the user's events stay in the archive "
    "(docs/privacy.md#s3-archives)"
)
#: Seconds between looks at ``system.mutations`` while a ClickHouse delete runs.
MUTATION_POLL = 0.2


class StoreDeletion(msgspec.Struct, kw_only=True):
    sink: str
    type: str
    status: str
    #: Event rows deleted (or, in a dry run, that would be).
    events: int = 0
    #: ``users`` and ``identities`` rows (PostgreSQL).
    users: int = 0
    identities: int = 0
    detail: str = ""


class Deletion(msgspec.Struct, kw_only=True):
    user_id: str
    #: The user id and its aliased older ids.
    user_ids: list[str]
    anonymous_ids: list[str]
    dry_run: bool
    stores: list[StoreDeletion]

    @property
    def failed(self) -> bool:
        return any(store.status == FAILED for store in self.stores)

    @property
    def events(self) -> int:
        return sum(store.events for store in self.stores)


def delete_user(
    sinks: dict[str, Sink],
    user_id: str,
    *,
    only: Sequence[str] | None = None,
    dry_run: bool = False,
    wait: float = 60.0,
) -> Deletion:
    """Delete ``user_id``'s events and identity rows from ``sinks`` (or ``only`` these).

    Blocking. A store that fails is reported as ``failed`` and the others go on.
    """
    if not user_id:
        raise ValueError("user_id: must not be empty")
    chosen = [(name, sinks[name]) for name in (only or sinks)]
    results: dict[str, StoreDeletion] = {}
    stores: list[_Store] = []
    for name, sink in chosen:
        if not sink.queryable:
            detail = S3_REASON if sink.config.type == "s3" else "this sink type cannot delete"
            results[name] = StoreDeletion(
                sink=name, type=sink.config.type, status=SKIPPED, detail=detail
            )
            continue
        stores.append(_Store(name, sink.config.type, sink.url))
    user_ids, anonymous_ids = {user_id}, set()

    def each_store(step: Callable[[_Store], Any]) -> None:
        """``step`` for every store that has not failed yet; a failure is its result."""
        for store in stores:
            if store.name in results:
                continue
            try:
                step(store)
            except Exception as exc:
                results[store.name] = store.failed(exc)

    def aliases(store: _Store) -> None:
        previous = store.previous_ids(user_id)
        user_ids.update(previous)
        anonymous_ids.update(previous)

    def erase(store: _Store) -> None:
        results[store.name] = store.delete(user_ids, anonymous_ids, dry_run, wait)

    try:
        # The identity graph of every store, before any delete.
        each_store(aliases)
        each_store(lambda store: anonymous_ids.update(store.anonymous_ids(user_ids)))
        each_store(erase)
    finally:
        for store in stores:
            store.close()
    return Deletion(
        user_id=user_id,
        user_ids=sorted(user_ids),
        anonymous_ids=sorted(anonymous_ids),
        dry_run=dry_run,
        stores=[results[name] for name, _ in chosen],
    )


class _Store:
    """One SQL store's part: SQLAlchemy Core on SQLite and PostgreSQL, the native
    client on ClickHouse (mutations are not SQLAlchemy statements)."""

    def __init__(self, name: str, type_: str, url: str) -> None:
        self.name = name
        self.type = type_
        self.url = url
        self.clickhouse = type_ == "clickhouse"
        self._engine: Engine | None = None
        self._client: Any = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.url)
        return self._engine

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = clickhouse_client(self.url)
        return self._client

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
        if self._client is not None:
            self._client.disconnect()

    def failed(self, exc: Exception) -> StoreDeletion:
        detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        return StoreDeletion(sink=self.name, type=self.type, status=FAILED, detail=detail)

    def _has_table(self, name: str) -> bool:
        return inspect(self.engine).has_table(name)

    @property
    def empty(self) -> bool:
        """An SQLite or PostgreSQL store whose sink never started: no ``events`` yet."""
        return not self.clickhouse and not self._has_table("events")

    # -- the identity graph -------------------------------------------------------------
    def previous_ids(self, user_id: str) -> set[str]:
        """Older ids the user aliased to ``user_id``."""
        if self.empty:
            return set()
        if self.clickhouse:
            rows = self.client.execute(
                "SELECT DISTINCT previous_id FROM events WHERE type = 'alias' "
                "AND user_id = %(user)s AND previous_id != ''",
                {"user": user_id},
            )
            return {row[0] for row in rows}
        statement = (
            select(events.c.previous_id)
            .distinct()
            .where(
                events.c.type == "alias",
                events.c.user_id == user_id,
                events.c.previous_id.is_not(None),
            )
        )
        return self._with_identities(statement, "previous_id", {user_id})

    def anonymous_ids(self, user_ids: set[str]) -> set[str]:
        """Anonymous ids seen on the events of ``user_ids`` (and linked in ``identities``)."""
        if self.empty:
            return set()
        if self.clickhouse:
            rows = self.client.execute(
                "SELECT DISTINCT anonymous_id FROM events "
                "WHERE user_id IN %(users)s AND anonymous_id != ''",
                {"users": tuple(user_ids)},
            )
            return {row[0] for row in rows}
        statement = (
            select(events.c.anonymous_id)
            .distinct()
            .where(events.c.user_id.in_(user_ids), events.c.anonymous_id.is_not(None))
        )
        return self._with_identities(statement, "anonymous_id", user_ids)

    def _with_identities(self, statement: Any, kind: str, user_ids: set[str]) -> set[str]:
        """The ids ``statement`` finds in ``events``, and on PostgreSQL those of ``kind``
        linked to ``user_ids`` in the ``identities`` table."""
        with self.engine.connect() as connection:
            found = set(connection.execute(statement).scalars())
            if self.type == "postgres" and self._has_table("identities"):
                linked = text(
                    "SELECT identity FROM identities WHERE user_id = ANY(:users) AND kind = :kind"
                )
                rows = connection.execute(linked, {"users": sorted(user_ids), "kind": kind})
                found |= set(rows.scalars())
        return found

    # -- deleting -------------------------------------------------------------------------
    def delete(
        self, user_ids: set[str], anonymous_ids: set[str], dry_run: bool, wait: float
    ) -> StoreDeletion:
        if self.clickhouse:
            return self._delete_clickhouse(user_ids, anonymous_ids, dry_run, wait)
        if self.empty:
            return StoreDeletion(
                sink=self.name, type=self.type, status=WOULD_DELETE if dry_run else DELETED
            )
        c = events.c
        matches: list[ColumnElement] = [c.user_id.in_(user_ids), c.previous_id.in_(user_ids)]
        if anonymous_ids:
            matches.append(c.user_id.is_(None) & c.anonymous_id.in_(anonymous_ids))
        condition = or_(*matches)
        result = StoreDeletion(
            sink=self.name, type=self.type, status=WOULD_DELETE if dry_run else DELETED
        )

        def run() -> StoreDeletion:
            with self.engine.begin() as connection:
                if dry_run:
                    count = select(func.count()).select_from(events).where(condition)
                    result.events = connection.execute(count).scalar() or 0
                else:
                    result.events = connection.execute(delete(events).where(condition)).rowcount
                if self.type == "postgres":
                    self._identity_rows(connection, user_ids, dry_run, result)
            return result

        return run() if dry_run else write_retrying(self.url, run)

    def _identity_rows(
        self, connection: Any, user_ids: set[str], dry_run: bool, result: StoreDeletion
    ) -> None:
        """PostgreSQL's ``users`` row and ``identities`` links of ``user_ids``."""
        ids = {"users": sorted(user_ids)}
        tables = {
            "users": "users WHERE user_id = ANY(:users)",
            "identities": (
                "identities WHERE user_id = ANY(:users) "
                "OR (kind = 'previous_id' AND identity = ANY(:users))"
            ),
        }
        for table, where in tables.items():
            if not self._has_table(table):
                continue
            if dry_run:
                n = connection.execute(text(f"SELECT count(*) FROM {where}"), ids).scalar()
            else:
                n = connection.execute(text(f"DELETE FROM {where}"), ids).rowcount
            setattr(result, table, n or 0)

    def _delete_clickhouse(
        self, user_ids: set[str], anonymous_ids: set[str], dry_run: bool, wait: float
    ) -> StoreDeletion:
        # ``user_id`` and friends are String: '' where absent, never NULL.
        where = "user_id IN %(users)s OR previous_id IN %(users)s"
        params: dict[str, Any] = {"users": tuple(sorted(user_ids))}
        if anonymous_ids:
            where += " OR (user_id = '' AND anonymous_id IN %(anonymous)s)"
            params["anonymous"] = tuple(sorted(anonymous_ids))
        client = self.client
        count = client.execute(f"SELECT count() FROM events WHERE {where}", params)[0][0]
        result = StoreDeletion(sink=self.name, type=self.type, status=WOULD_DELETE, events=count)
        if dry_run or not count:
            result.status = WOULD_DELETE if dry_run else DELETED
            return result
        client.execute(f"ALTER TABLE events DELETE WHERE {where}", params)
        result.status = PENDING
        deadline = time.monotonic() + wait
        while True:
            running = client.execute(
                "SELECT count() FROM system.mutations WHERE database = currentDatabase() "
                "AND table = 'events' AND is_done = 0"
            )[0][0]
            if not running:
                result.status = DELETED
                return result
            if time.monotonic() >= deadline:
                result.detail = (
                    "the mutation is still running: the rows disappear when it finishes "
                    "(see system.mutations)"
                )
                return result
            time.sleep(MUTATION_POLL)
