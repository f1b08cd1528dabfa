"""The data-quality tables a store keeps beside its events (``Store.quality_tables()``).

- ``rejected_events``: the events a plan with ``on_violation = "drop"`` kept out of the
  store, each once per ``(source, message_id)``, with its violations and the whole
  command as JSON (what ``eventrouter violations replay`` ingests again);
- ``event_catalogue``: per source, event kind and name, every property path seen with
  its JSON type, a count and the first and last time seen. Each process aggregates in
  memory and adds its counts in one write per flush, never a query per event;
- ``violation_counts``: per hour, source, event, rule and path, how many events broke
  the rule under which policy, with one example payload.

Blocking throughout: call it from a thread.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime

import msgspec

REJECTED = "rejected_events"
CATALOGUE = "event_catalogue"
VIOLATIONS = "violation_counts"
TABLES = (REJECTED, CATALOGUE, VIOLATIONS)
#: The catalogue's ``path`` of the entry itself (its volume), beside its property paths.
ENTRY = ""
#: At most this many bytes of an example payload are kept.
MAX_EXAMPLE = 4096


class Rejected(msgspec.Struct, frozen=True):
    """One dropped event: ``violations`` and ``command`` are JSON text."""

    source: str
    message_id: str
    type: str
    name: str
    received_at: datetime
    rejected_at: datetime
    plan_version: str
    violations: str
    command: str


class CatalogueCount(msgspec.Struct, frozen=True):
    """What one process saw of one path of one entry since its last flush."""

    source: str
    kind: str
    name: str
    path: str
    json_type: str
    count: int
    first_seen: datetime
    last_seen: datetime


class ViolationCount(msgspec.Struct, frozen=True):
    """What one process saw of one rule broken at one path, in one hour."""

    hour: datetime
    source: str
    kind: str
    name: str
    rule: str
    path: str
    policy: str
    count: int
    example: str
    last_seen: datetime


class QualityTables(ABC):
    """The data-quality tables of one store. Every server and worker process writes
    them at once, so each write must hold whatever the number of writers. Times are
    aware UTC datetimes. Reading a table that was never written finds nothing."""

    @abstractmethod
    def record_rejected(self, rows: Sequence[Rejected]) -> None:
        """Keep ``rows``; one already kept (same source and message id) stays as it was."""

    @abstractmethod
    def rejected(
        self, source: str | None, since: datetime | None, limit: int, offset: int = 0
    ) -> list[Rejected]:
        """Kept rows, oldest rejection first, of ``source`` (every one for None) rejected
        at or after ``since``."""

    @abstractmethod
    def add_catalogue(self, rows: Sequence[CatalogueCount]) -> None:
        """Add ``rows``' counts to the catalogue, widening first and last seen."""

    @abstractmethod
    def catalogue(self, source: str | None, search: str | None) -> list[CatalogueCount]:
        """The catalogue summed over every process, by source, kind, name, path and type;
        ``search`` keeps entries whose name contains it (case-insensitive)."""

    @abstractmethod
    def add_violations(self, rows: Sequence[ViolationCount]) -> None:
        """Add ``rows``' counts (an example stays once one is kept)."""

    @abstractmethod
    def violations(self, source: str | None, since: datetime | None) -> list[ViolationCount]:
        """Violation counts summed per hour, source, kind, name, rule, path and policy,
        newest hour first, each with an example."""

    def close(self) -> None:
        """Close what the tables opened."""
        return None
