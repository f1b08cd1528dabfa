"""The stored columns (docs/api.md, "Stored columns"), named once.

Every store keeps an event under these names, in this order: commands map onto them
(``Command.values()``), the SQL stores declare their tables from them
(:mod:`eventrouter.store.schema`, the ClickHouse DDL), the S3 archive writes them and
the query API shows them. Each column is declared once, with its kind (text, JSON or
time) and whether every event has it; the tuples below are derived from that.

Plain names, no SQLAlchemy: the commands import them, and loading a database library
for that would slow every process that only routes events.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple

TEXT = "text"
JSON = "json"
TIME = "time"


class StoredColumn(NamedTuple):
    name: str
    #: :data:`TEXT`, :data:`JSON` (an object) or :data:`TIME` (UTC).
    kind: str
    #: Every event has a value (the others are NULL, or ``''`` where a store keeps no
    #: NULL for text: ClickHouse).
    required: bool = False


#: The columns, in their documented order (the order of ``Command.values()`` and of every
#: store's table).
COLUMNS: tuple[StoredColumn, ...] = (
    StoredColumn("message_id", TEXT, required=True),
    StoredColumn("type", TEXT, required=True),
    StoredColumn("event", TEXT),
    StoredColumn("name", TEXT),
    StoredColumn("user_id", TEXT),
    StoredColumn("anonymous_id", TEXT),
    StoredColumn("group_id", TEXT),
    StoredColumn("previous_id", TEXT),
    StoredColumn("session_id", TEXT),
    StoredColumn("source", TEXT, required=True),
    StoredColumn("properties", JSON),
    StoredColumn("traits", JSON),
    StoredColumn("context", JSON),
    StoredColumn("timestamp", TIME, required=True),
    StoredColumn("original_timestamp", TIME),
    StoredColumn("sent_at", TIME),
    StoredColumn("received_at", TIME, required=True),
)

STORED_COLUMNS: tuple[str, ...] = tuple(column.name for column in COLUMNS)
TEXT_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.kind == TEXT)
#: Columns holding a JSON object; a path condition (``properties.plan``) addresses them.
JSON_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.kind == JSON)
TIME_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.kind == TIME)
#: Text columns an event may lack.
OPTIONAL_TEXT_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in COLUMNS if c.kind == TEXT and not c.required
)
#: Time columns an event may lack.
OPTIONAL_TIME_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in COLUMNS if c.kind == TIME and not c.required
)


def iso_utc(value: datetime | None) -> str | None:
    """A stored time as the API shows it: ISO 8601 UTC with milliseconds and ``Z``."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="milliseconds") + "Z"


def shown(event: dict[str, Any]) -> dict[str, Any]:
    """An event's columns as the API shows them (times as :func:`iso_utc`), in place."""
    for column in TIME_COLUMNS:
        if column in event:  # a page of some columns (EventStore.query's ``columns``)
            event[column] = iso_utc(event[column])
    return event
