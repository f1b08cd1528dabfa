"""The stored-event table shared by the SQL stores and the query layer.

Column names are fixed (docs/api.md, "Stored columns") so tools can rely on them, and named once, in
:mod:`eventrouter.columns`; each store declares its table from them with its own
JSON and time types (:func:`event_columns`). Timestamps are UTC.
Only the time-ordered index is part of the table: keys arrive in order, so it costs
almost nothing to maintain. Indexes on random keys (``message_id``, ``anonymous_id``,
often ``user_id``) dirty one page per event once they outgrow memory, and each store
chooses them itself (see :data:`OPTIONAL_INDEXES`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON as JSON_TYPE
from sqlalchemy import Column, DateTime, Index, MetaData, String, Table, Text

from eventrouter.columns import COLUMNS, JSON, TIME

metadata = MetaData()
#: Text columns of a bounded length (the others are ``Text``).
_LENGTHS = {"message_id": 100, "type": 16}


def _json() -> JSON_TYPE:
    # none_as_null: an absent ``traits`` is SQL NULL, not the JSON text 'null'.
    return JSON_TYPE(none_as_null=True)


def event_columns(json_type: Any, time_type: Any) -> list[Column]:
    """The stored columns, in order, with a store's JSON and time types
    (each SQL sink declares its own ``events`` table from these)."""

    def sql_type(name: str, kind: str) -> Any:
        if kind == JSON:
            return json_type
        if kind == TIME:
            return time_type
        return String(_LENGTHS[name]) if name in _LENGTHS else Text

    return [Column(c.name, sql_type(c.name, c.kind), nullable=not c.required) for c in COLUMNS]


events = Table(
    "events",
    metadata,
    *event_columns(_json(), DateTime),
    # Newest-first keyset pagination and the time-range filter.
    Index("ix_events_timestamp", "timestamp", "message_id"),
)

#: Optional indexes by the column they serve. ``message_id`` is UNIQUE on
#: ``(message_id, source)``: with it, a redelivered event is stored once (``INSERT OR
#: IGNORE``), and a messageId is unique per source only, so that one source cannot
#: suppress another's events by reusing their ids (``message_id`` first: it also serves
#: the lookup of an id without a source). The others lead with the filter column and end
#: with ``timestamp`` for newest-first pages per user, event, ...
OPTIONAL_INDEXES: dict[str, Index] = {
    "message_id": Index(
        "ux_events_message_id_source", events.c.message_id, events.c.source, unique=True
    ),
    "user_id": Index("ix_events_user_id", events.c.user_id, events.c.timestamp),
    "anonymous_id": Index("ix_events_anonymous_id", events.c.anonymous_id, events.c.timestamp),
    "session_id": Index("ix_events_session_id", events.c.session_id, events.c.timestamp),
    "event": Index("ix_events_event", events.c.event, events.c.timestamp),
    "type": Index("ix_events_type", events.c.type, events.c.timestamp),
    "source": Index("ix_events_source", events.c.source, events.c.timestamp),
}
#: ``event_user`` (SQLite's ``indexes`` option): the indexes through which retention
#: reads each cohort user's returning events (``SQLiteDialect.retention_statement``):
#: ``(event, user_id, timestamp)``, and ``(event, anonymous_id, timestamp)`` of the
#: events without a user id (the user is ``coalesce(user_id, anonymous_id)``: two plain
#: columns, no index on the expression).
EVENT_USER_INDEXES: tuple[Index, ...] = (
    Index("ix_events_event_user_id", events.c.event, events.c.user_id, events.c.timestamp),
    Index(
        "ix_events_event_anonymous_id",
        events.c.event,
        events.c.anonymous_id,
        events.c.timestamp,
        sqlite_where=events.c.user_id.is_(None),
    ),
)
#: Indexes of earlier schema versions, dropped wherever they are found: the unique index
#: on ``message_id`` alone let one source's event hide another's of the same id.
LEGACY_INDEXES = ("ux_events_message_id",)
# Building an Index from the table's columns attaches it to the table, and create_all
# would then create every one of them on a fresh database (only for the store to drop
# the unwanted ones at once). Detached, each is created when a store asks for it.
for _index in (*OPTIONAL_INDEXES.values(), *EVENT_USER_INDEXES):
    events.indexes.discard(_index)
