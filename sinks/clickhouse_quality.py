"""The data-quality tables in ClickHouse (``ClickHouseStore.quality_tables()``).

ClickHouse has no ``ON CONFLICT``: rejected events go to a ``ReplacingMergeTree`` keyed
by ``(source, message_id)`` and are read with ``FINAL`` (each once, the first
write: its version ``keep`` decreases with time); the catalogue and
the violation counts are plain ``MergeTree`` tables of the counts each flush adds, summed
when read (``GROUP BY``). DDL valid on Debian's 18.16 and on a current server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from eventrouter.store.quality import (
    CATALOGUE,
    REJECTED,
    VIOLATIONS,
    CatalogueCount,
    QualityTables,
    Rejected,
    ViolationCount,
)

#: ``keep`` of a rejected event: larger for an earlier write, which ``FINAL`` keeps.
KEEP_FIRST = 2**63

DDL = {
    REJECTED: (
        f"CREATE TABLE IF NOT EXISTS {REJECTED} (source String, message_id String, "
        "type String, name String, received_at DateTime('UTC'), rejected_at DateTime('UTC'), "
        "plan_version String, violations String, command String, keep UInt64) "
        "ENGINE = ReplacingMergeTree(keep) ORDER BY (source, message_id)"
    ),
    CATALOGUE: (
        f"CREATE TABLE IF NOT EXISTS {CATALOGUE} (source String, kind String, name String, "
        "path String, json_type String, count UInt64, first_seen DateTime('UTC'), "
        "last_seen DateTime('UTC')) ENGINE = MergeTree ORDER BY (source, kind, name, path)"
    ),
    VIOLATIONS: (
        f"CREATE TABLE IF NOT EXISTS {VIOLATIONS} (hour DateTime('UTC'), source String, "
        "kind String, name String, rule String, path String, policy String, count UInt64, "
        "example String, last_seen DateTime('UTC')) "
        "ENGINE = MergeTree ORDER BY (hour, source, kind, name, rule, path)"
    ),
}


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ClickHouseQualityTables(QualityTables):
    """The quality tables, each exchange on a native client of its own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._ready: set[str] = set()

    @contextmanager
    def client(self) -> Iterator[Any]:
        from eventrouter.sinks.clickhouse_store import client_for

        client = client_for(self.url)
        try:
            yield client
        finally:
            client.disconnect()

    def _ensure(self, client: Any, table: str) -> None:
        if table not in self._ready:
            client.execute(DDL[table])
            self._ready.add(table)

    def _read(self, table: str, query: str, params: dict[str, Any]) -> list[Any]:
        from clickhouse_driver.errors import ServerException

        try:
            with self.client() as client:
                return client.execute(query, params)
        except ServerException as exc:
            # 60: unknown table, 81: unknown database: nothing written yet.
            if exc.code in (60, 81):
                return []
            raise

    # -- rejected events
    def record_rejected(self, rows: Sequence[Rejected]) -> None:
        if not rows:
            return
        # The replacing key keeps the highest ``keep``: the first write, as elsewhere.
        keep = KEEP_FIRST - time.time_ns()
        with self.client() as client:
            self._ensure(client, REJECTED)
            client.execute(
                f"INSERT INTO {REJECTED} (source, message_id, type, name, received_at, "
                "rejected_at, plan_version, violations, command, keep) VALUES",
                [
                    (
                        r.source,
                        r.message_id,
                        r.type,
                        r.name,
                        _utc(r.received_at),
                        _utc(r.rejected_at),
                        r.plan_version,
                        r.violations,
                        r.command,
                        keep,
                    )
                    for r in rows
                ],
            )

    def rejected(
        self, source: str | None, since: datetime | None, limit: int, offset: int = 0
    ) -> list[Rejected]:
        where = ["1"]
        params: dict[str, Any] = {"limit": int(limit), "offset": int(offset)}
        if source is not None:
            where.append("source = %(source)s")
            params["source"] = source
        if since is not None:
            where.append("rejected_at >= %(since)s")
            params["since"] = _utc(since)
        rows = self._read(
            REJECTED,
            "SELECT source, message_id, type, name, received_at, rejected_at, plan_version, "
            f"violations, command FROM {REJECTED} FINAL WHERE {' AND '.join(where)} "
            "ORDER BY rejected_at, source, message_id LIMIT %(offset)s, %(limit)s",
            params,
        )
        return [
            Rejected(s, m, t, n, _utc(rec), _utc(rej), v, vi, c)
            for s, m, t, n, rec, rej, v, vi, c in rows
        ]

    # -- catalogue
    def add_catalogue(self, rows: Sequence[CatalogueCount]) -> None:
        if not rows:
            return
        with self.client() as client:
            self._ensure(client, CATALOGUE)
            client.execute(
                f"INSERT INTO {CATALOGUE} (source, kind, name, path, json_type, count, "
                "first_seen, last_seen) VALUES",
                [
                    (
                        r.source,
                        r.kind,
                        r.name,
                        r.path,
                        r.json_type,
                        r.count,
                        _utc(r.first_seen),
                        _utc(r.last_seen),
                    )
                    for r in rows
                ],
            )

    def catalogue(self, source: str | None, search: str | None) -> list[CatalogueCount]:
        where = ["1"]
        params: dict[str, Any] = {}
        if source is not None:
            where.append("source = %(source)s")
            params["source"] = source
        if search:
            where.append("position(lower(name), lower(%(search)s)) > 0")
            params["search"] = search
        rows = self._read(
            CATALOGUE,
            "SELECT source, kind, name, path, json_type, sum(count), min(first_seen), "
            f"max(last_seen) FROM {CATALOGUE} WHERE {' AND '.join(where)} "
            "GROUP BY source, kind, name, path, json_type "
            "ORDER BY source, kind, name, path, json_type",
            params,
        )
        return [
            CatalogueCount(s, k, n, p, t, int(c), _utc(f), _utc(last))
            for s, k, n, p, t, c, f, last in rows
        ]

    # -- violation counts
    def add_violations(self, rows: Sequence[ViolationCount]) -> None:
        if not rows:
            return
        with self.client() as client:
            self._ensure(client, VIOLATIONS)
            client.execute(
                f"INSERT INTO {VIOLATIONS} (hour, source, kind, name, rule, path, policy, "
                "count, example, last_seen) VALUES",
                [
                    (
                        _utc(r.hour),
                        r.source,
                        r.kind,
                        r.name,
                        r.rule,
                        r.path,
                        r.policy,
                        r.count,
                        r.example,
                        _utc(r.last_seen),
                    )
                    for r in rows
                ],
            )

    def violations(self, source: str | None, since: datetime | None) -> list[ViolationCount]:
        where = ["1"]
        params: dict[str, Any] = {}
        if source is not None:
            where.append("source = %(source)s")
            params["source"] = source
        if since is not None:
            where.append("hour >= %(since)s")
            params["since"] = _utc(since)
        rows = self._read(
            VIOLATIONS,
            "SELECT hour, source, kind, name, rule, path, policy, sum(count), any(example), "
            f"max(last_seen) FROM {VIOLATIONS} WHERE {' AND '.join(where)} "
            "GROUP BY hour, source, kind, name, rule, path, policy "
            "ORDER BY hour DESC, source, kind, name, rule, path, policy",
            params,
        )
        return [
            ViolationCount(_utc(h), s, k, n, r, p, po, int(c), e, _utc(last))
            for h, s, k, n, r, p, po, c, e, last in rows
        ]
