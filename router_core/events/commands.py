"""Commands: one immutable, serialisable object per accepted event.

A Command is the normalised form of a Segment call, carrying exactly what a sink needs
to store it (the stored columns, :mod:`eventrouter.columns`) plus ``integrations`` for routing.
Commands are frozen msgspec Structs tagged by ``type``, so any of them round-trips
through :func:`encode` / :func:`decode` and :func:`encode_many` / :func:`decode_many`
unchanged: a command read back from a queue, a dead-letter queue or a replay file is
executed exactly as the original was.

The free-form parts (``properties``, ``traits``, ``context``) travel as raw JSON text
(:class:`msgspec.Raw`) from the edge, through the queue, to every sink, which writes
the bytes as they are. The fields keep their names and their contract for stages:

- reading ``command.properties`` (``traits``, ``context``) gives a dict, decoded from
  the text on first access and kept on the command (the next read is free). It is a
  decoded copy: changing it in place changes nothing that is stored;
- changing one is as before: ``msgspec.structs.replace(command, properties=new_dict)``
  (or a constructor given dicts). The new command holds the dict, and the dict is
  encoded once, where a sink or the queue needs text (:attr:`Command.properties_json`).
  Every field a stage did not replace keeps its bytes.

Sinks read the text: :meth:`Command.values` and the ``*_json`` properties give
:class:`msgspec.Raw`. docs/plugins.md ("Reading and changing an event") gives the cost
of each.

How: each free-form field is a msgspec field holding the raw text (or a dict a stage
put there); msgspec reads and writes its fields by slot, so the class attribute of the
same name is free to be :class:`_FreeForm`, the descriptor that decodes on read.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar

import msgspec

from eventrouter.columns import STORED_COLUMNS

__all__ = [
    "EMPTY_OBJECT",
    "FREE_FORM",
    "STORED_COLUMNS",
    "AliasCommand",
    "AnyCommand",
    "Command",
    "GroupCommand",
    "IdentifyCommand",
    "PageCommand",
    "ScreenCommand",
    "TrackCommand",
    "as_raw",
    "decode",
    "decode_many",
    "decode_many_v1",
    "encode",
    "encode_many",
    "raw_json_of",
]

#: ``{}`` as raw JSON: the value of a free-form field an event did not send.
EMPTY_OBJECT = msgspec.Raw(b"{}")
#: The free-form fields (stored as JSON columns).
FREE_FORM = ("properties", "traits", "context")

_json_encoder = msgspec.json.Encoder()
_object_decoder = msgspec.json.Decoder(dict[str, Any])


def as_raw(value: Any) -> msgspec.Raw:
    """``value`` (a dict, JSON text as bytes or str, or :class:`msgspec.Raw`) as raw JSON."""
    if isinstance(value, msgspec.Raw):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return msgspec.Raw(bytes(value))
    if isinstance(value, str):
        return msgspec.Raw(value.encode())
    return msgspec.Raw(_json_encoder.encode(value))


def _object(raw: msgspec.Raw) -> dict[str, Any]:
    return _object_decoder.decode(raw)


class Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", dict=True):
    """Fields shared by every command.

    ``dict=True`` gives each command a ``__dict__``, where :class:`_FreeForm` keeps the
    decoded free-form fields.
    """

    message_id: str
    source: str
    user_id: str | None = None
    anonymous_id: str | None = None
    session_id: str | None = None
    #: Raw JSON text (an object), or a dict a stage put there; reading it gives a dict
    #: (:class:`_FreeForm`), :attr:`context_json` the text.
    context: msgspec.Raw = EMPTY_OBJECT
    integrations: dict[str, Any] = {}
    #: Event time corrected for client clock skew (UTC).
    timestamp: datetime
    #: The client's own clock reading, as sent (UTC).
    original_timestamp: datetime | None = None
    sent_at: datetime | None = None
    #: Server clock when the request arrived (UTC).
    received_at: datetime

    kind: ClassVar[str] = ""

    @property
    def context_json(self) -> msgspec.Raw:
        """``context`` as raw JSON text (encoded here if a stage replaced it by a dict)."""
        return as_raw(_CONTEXT.__get__(self))

    def values(self) -> tuple:
        """The stored columns for this command, in :data:`STORED_COLUMNS`
        order (``eventrouter.columns``): the one place that maps command fields to
        columns. The JSON columns are raw JSON text (:class:`msgspec.Raw`, None where
        the command has no such field), exactly as they are to be stored."""
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
            getattr(self, "properties_json", None),
            getattr(self, "traits_json", None),
            as_raw(_CONTEXT.__get__(self)),
            self.timestamp,
            self.original_timestamp,
            self.sent_at,
            self.received_at,
        )

    def row(self) -> dict[str, Any]:
        """The stored columns by name, the JSON ones decoded (dicts, or None where the
        command has no such field)."""
        row = dict(zip(STORED_COLUMNS, self.values(), strict=True))
        for name in FREE_FORM:
            if row[name] is not None:
                row[name] = getattr(self, name)
        return row


class _WithProperties(Command, frozen=True, kw_only=True):
    #: Raw JSON text, or a dict a stage put there; reading it gives a dict.
    properties: msgspec.Raw = EMPTY_OBJECT

    @property
    def properties_json(self) -> msgspec.Raw:
        """``properties`` as raw JSON text (encoded here if a stage replaced it)."""
        return as_raw(_PROPERTIES.__get__(self))


class _WithTraits(Command, frozen=True, kw_only=True):
    #: Raw JSON text, or a dict a stage put there; reading it gives a dict.
    traits: msgspec.Raw = EMPTY_OBJECT

    @property
    def traits_json(self) -> msgspec.Raw:
        """``traits`` as raw JSON text (encoded here if a stage replaced it)."""
        return as_raw(_TRAITS.__get__(self))


class _FreeForm:
    """The class attribute of a free-form field: reading it on a command gives a dict.

    The field's own slot (msgspec's member descriptor, kept here) holds the raw JSON
    text, or a dict a stage gave to ``msgspec.structs.replace`` or a constructor. Text
    is decoded on first read and the dict kept in the command's ``__dict__`` under the
    field's name (msgspec never looks there: not serialised, not compared, not copied
    by ``replace``)."""

    __slots__ = ("name", "slot")

    def __init__(self, owner: type, name: str) -> None:
        self.name = name
        self.slot = owner.__dict__[name]  # the member descriptor msgspec made
        setattr(owner, name, self)

    def __get__(self, command: Command | None, owner: type | None = None) -> Any:
        if command is None:
            return self
        value = self.slot.__get__(command, owner)
        if value.__class__ is not msgspec.Raw:
            return value  # a dict a stage put there (shared, as it always was)
        cache = command.__dict__
        try:
            return cache[self.name]
        except KeyError:
            decoded = cache[self.name] = _object(value)
            return decoded

    def __set__(self, command: Command, value: Any) -> None:
        raise AttributeError(f"{type(command).__name__} is immutable: use msgspec.structs.replace")


_CONTEXT = _FreeForm(Command, "context").slot
_PROPERTIES = _FreeForm(_WithProperties, "properties").slot
_TRAITS = _FreeForm(_WithTraits, "traits").slot
_SLOTS = {"context": _CONTEXT, "properties": _PROPERTIES, "traits": _TRAITS}


def raw_json_of(commands: Sequence[Command], name: str) -> list[msgspec.Raw]:
    """The raw JSON text of free-form field ``name`` of every command, in order: what
    ``command.<name>_json`` gives, read for the whole batch at once (the field's slot
    through ``map``, no Python call per command). Every command must have the field; a
    dict a stage put there is encoded, as the property does."""
    values = list(map(_SLOTS[name].__get__, commands))
    if set(map(type, values)) - {msgspec.Raw}:
        values = list(map(as_raw, values))
    return values


class TrackCommand(_WithProperties, tag="track"):
    kind: ClassVar[str] = "track"
    event: str


class IdentifyCommand(_WithTraits, tag="identify"):
    kind: ClassVar[str] = "identify"


class PageCommand(_WithProperties, tag="page"):
    kind: ClassVar[str] = "page"
    name: str | None = None


class ScreenCommand(_WithProperties, tag="screen"):
    kind: ClassVar[str] = "screen"
    name: str | None = None


class GroupCommand(_WithTraits, tag="group"):
    kind: ClassVar[str] = "group"
    group_id: str


class AliasCommand(Command, tag="alias"):
    kind: ClassVar[str] = "alias"
    previous_id: str


AnyCommand = (
    TrackCommand | IdentifyCommand | PageCommand | ScreenCommand | GroupCommand | AliasCommand
)

_json_decoder = msgspec.json.Decoder(AnyCommand)
_json_many_decoder = msgspec.json.Decoder(list[AnyCommand])
_msgpack_v1_decoder = msgspec.msgpack.Decoder(list[dict[str, Any]])


def encode(command: Command) -> bytes:
    """Serialise one command to JSON (the ``type`` tag is included; the free-form
    fields are spliced in as they are)."""
    return _json_encoder.encode(command)


def decode(data: bytes) -> Command:
    """Inverse of :func:`encode`."""
    return _json_decoder.decode(data)


def encode_many(commands: Sequence[Command]) -> bytes:
    """Serialise a batch of commands: a JSON array of :func:`encode`'s objects (the
    queue's message format ``commands/2``, :mod:`eventrouter.queue.broker`)."""
    return _json_encoder.encode(commands)


def decode_many(data: bytes) -> list[Command]:
    """Inverse of :func:`encode_many`: the free-form fields stay raw (undecoded)."""
    return _json_many_decoder.decode(data)


def decode_many_v1(data: bytes) -> list[Command]:
    """Commands from the previous message format, ``commands/1``: a MessagePack array
    of commands with the free-form fields as MessagePack maps (what edges of the
    previous release publish and spool). Read through JSON so they come out exactly as
    :func:`decode_many` makes them: a rolling upgrade's path, not a hot one."""
    return decode_many(_json_encoder.encode(_msgpack_v1_decoder.decode(data)))
