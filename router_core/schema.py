"""The stored-event table shared by the SQL stores and the query layer.

Column names are fixed by DESIGN.md so tools can rely on them. Timestamps are UTC.
``message_id`` is unique: a redelivered event (an SDK retry, a replay) is stored once.
"""

from __future__ import annotations

from sqlalchemy import JSON, Column, DateTime, Index, MetaData, String, Table, Text

metadata = MetaData()


def _json() -> JSON:
    # none_as_null: an absent ``traits`` is SQL NULL, not the JSON text 'null'.
    return JSON(none_as_null=True)


events = Table(
    "events",
    metadata,
    Column("message_id", String(100), nullable=False),
    Column("type", String(16), nullable=False),
    Column("event", Text),
    Column("name", Text),
    Column("user_id", Text),
    Column("anonymous_id", Text),
    Column("group_id", Text),
    Column("previous_id", Text),
    Column("session_id", Text),
    Column("source", Text, nullable=False),
    Column("properties", _json()),
    Column("traits", _json()),
    Column("context", _json()),
    Column("timestamp", DateTime, nullable=False),
    Column("original_timestamp", DateTime),
    Column("sent_at", DateTime),
    Column("received_at", DateTime, nullable=False),
    Index("ux_events_message_id", "message_id", unique=True),
    # Newest-first keyset pagination and the time-range filter.
    Index("ix_events_timestamp", "timestamp", "message_id"),
    Index("ix_events_user_id", "user_id", "timestamp"),
    Index("ix_events_anonymous_id", "anonymous_id", "timestamp"),
    Index("ix_events_event", "event", "timestamp"),
)
