"""Inbound message shapes: the Segment HTTP Tracking API and the original `/track` payload.

These Structs describe what clients *send*. They are decoded straight from request bytes
by prebuilt msgspec decoders (see :data:`SINGLE_DECODERS`), so a wrong type, a missing
required field or a malformed timestamp becomes a :class:`msgspec.ValidationError` whose
message names the JSON path (``... - at `$.event```). Normalisation into immutable
Commands happens in :mod:`eventrouter.events.normalise`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

#: messageId must stay below 100 characters (Segment's rule).
MessageId = Annotated[str, msgspec.Meta(max_length=99)]
#: Identifiers may arrive as numbers from some SDKs; they are stored as strings.
Identifier = str | int
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
#: ISO 8601 / RFC 3339; one without an offset is taken as UTC (the schema says so for
#: the OpenAPI document, decoding is unchanged).
Timestamp = Annotated[
    datetime,
    msgspec.Meta(
        extra_json_schema={"format": "date-time"},
        description="ISO 8601 time; without an offset it is taken as UTC",
    ),
]


class Message(msgspec.Struct, kw_only=True, rename="camel", tag_field="type"):
    """Fields common to every Segment call."""

    user_id: Identifier | None = None
    anonymous_id: Identifier | None = None
    message_id: MessageId | None = None
    timestamp: Timestamp | None = None
    original_timestamp: Timestamp | None = None
    sent_at: Timestamp | None = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None
    #: Not part of Segment's spec; many SDKs put a session id here or in context.
    session_id: Identifier | None = None
    write_key: str | None = None


class Track(Message, tag="track"):
    event: NonEmpty
    properties: dict[str, Any] | None = None


class Identify(Message, tag="identify"):
    traits: dict[str, Any] | None = None


class Page(Message, tag="page"):
    name: str | None = None
    category: str | None = None
    properties: dict[str, Any] | None = None


class Screen(Message, tag="screen"):
    name: str | None = None
    category: str | None = None
    properties: dict[str, Any] | None = None


class Group(Message, tag="group"):
    group_id: Identifier
    traits: dict[str, Any] | None = None


class Alias(Message, tag="alias"):
    previous_id: Identifier


AnyMessage = Track | Identify | Page | Screen | Group | Alias


class BatchBody(msgspec.Struct, kw_only=True, rename="camel"):
    """`/v1/batch` and `/v1/import`: items stay raw so each is validated on its own."""

    batch: list[msgspec.Raw]
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None
    sent_at: Timestamp | None = None
    write_key: str | None = None


class LegacyTrack(msgspec.Struct, kw_only=True):
    """The original `/track` payload: ``{event_type, properties, timestamp, user_id, session_id}``.

    ``anonymous_id`` and ``context`` are accepted as extensions so a client without a
    user id can still be identified, as Segment requires.
    """

    event_type: NonEmpty
    properties: dict[str, Any] | None = None
    timestamp: Timestamp | None = None
    user_id: Identifier | None = None
    anonymous_id: Identifier | None = None
    session_id: Identifier | None = None
    message_id: MessageId | None = None
    context: dict[str, Any] | None = None
    write_key: str | None = None
    #: Segment's spelling, accepted too; :attr:`key` is whichever was sent.
    write_key_camel: str | None = msgspec.field(default=None, name="writeKey")

    @property
    def key(self) -> str | None:
        """The writeKey from the body, spelt ``write_key`` or ``writeKey``."""
        return self.write_key or self.write_key_camel


SINGLE_DECODERS: dict[str, msgspec.json.Decoder] = {
    "track": msgspec.json.Decoder(Track),
    "identify": msgspec.json.Decoder(Identify),
    "page": msgspec.json.Decoder(Page),
    "screen": msgspec.json.Decoder(Screen),
    "group": msgspec.json.Decoder(Group),
    "alias": msgspec.json.Decoder(Alias),
}
ANY_DECODER = msgspec.json.Decoder(AnyMessage)
BATCH_DECODER = msgspec.json.Decoder(BatchBody)
LEGACY_DECODER = msgspec.json.Decoder(LegacyTrack)
