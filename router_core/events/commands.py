"""Commands: one immutable, serialisable object per accepted event.

A Command is the normalised form of a Segment call, carrying exactly what a sink needs
to store it (the stored columns, :mod:`eventrouter.columns`) plus ``integrations`` for routing.
Commands are frozen msgspec Structs tagged by ``type``, so any of them round-trips
through :func:`encode` / :func:`decode` (JSON or MessagePack) unchanged: a command read
back from a queue, a dead-letter queue or a replay file is executed exactly as the
original was. Payload dicts are shared, not copied: a plugin that wants to change a
command builds a new one with :func:`msgspec.structs.replace`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar

import msgspec

from eventrouter.columns import STORED_COLUMNS

__all__ = [
    "STORED_COLUMNS",
    "AliasCommand",
    "AnyCommand",
    "Command",
    "GroupCommand",
    "IdentifyCommand",
    "PageCommand",
    "ScreenCommand",
    "TrackCommand",
    "decode",
    "decode_many",
    "encode",
    "encode_many",
]


class Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Fields shared by every command."""

    message_id: str
    source: str
    user_id: str | None = None
    anonymous_id: str | None = None
    session_id: str | None = None
    context: dict[str, Any] = {}
    integrations: dict[str, Any] = {}
    #: Event time corrected for client clock skew (UTC).
    timestamp: datetime
    #: The client's own clock reading, as sent (UTC).
    original_timestamp: datetime | None = None
    sent_at: datetime | None = None
    #: Server clock when the request arrived (UTC).
    received_at: datetime

    kind: ClassVar[str] = ""

    def values(self) -> tuple:
        """The stored columns for this command, in :data:`STORED_COLUMNS`
        order (``eventrouter.columns``): the one place that maps command fields to
        columns."""
        return (
            self.message_id,
            self.kind,
            getattr(self, "event", None),
            getattr(self, "name", None),
            self.user_id,
            self.anonymous_id,
            getattr(self, "group_id", None),
            getattr(self, "previous_id", None),
            self.session_id,
            self.source,
            getattr(self, "properties", None),
            getattr(self, "traits", None),
            self.context,
            self.timestamp,
            self.original_timestamp,
            self.sent_at,
            self.received_at,
        )

    def row(self) -> dict[str, Any]:
        """The stored columns by name."""
        return dict(zip(STORED_COLUMNS, self.values(), strict=True))


class TrackCommand(Command, tag="track"):
    kind: ClassVar[str] = "track"
    event: str
    properties: dict[str, Any] = {}


class IdentifyCommand(Command, tag="identify"):
    kind: ClassVar[str] = "identify"
    traits: dict[str, Any] = {}


class PageCommand(Command, tag="page"):
    kind: ClassVar[str] = "page"
    name: str | None = None
    properties: dict[str, Any] = {}


class ScreenCommand(Command, tag="screen"):
    kind: ClassVar[str] = "screen"
    name: str | None = None
    properties: dict[str, Any] = {}


class GroupCommand(Command, tag="group"):
    kind: ClassVar[str] = "group"
    group_id: str
    traits: dict[str, Any] = {}


class AliasCommand(Command, tag="alias"):
    kind: ClassVar[str] = "alias"
    previous_id: str


AnyCommand = (
    TrackCommand | IdentifyCommand | PageCommand | ScreenCommand | GroupCommand | AliasCommand
)

_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder(AnyCommand)
_msgpack_encoder = msgspec.msgpack.Encoder()
_msgpack_decoder = msgspec.msgpack.Decoder(list[AnyCommand])


def encode(command: Command) -> bytes:
    """Serialise one command to JSON (the ``type`` tag is included)."""
    return _json_encoder.encode(command)


def decode(data: bytes) -> Command:
    """Inverse of :func:`encode`."""
    return _json_decoder.decode(data)


def encode_many(commands: Sequence[Command]) -> bytes:
    """Serialise a batch of commands to MessagePack."""
    return _msgpack_encoder.encode(commands)


def decode_many(data: bytes) -> list[Command]:
    """Inverse of :func:`encode_many`."""
    return _msgpack_decoder.decode(data)
