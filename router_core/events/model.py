"""Inbound message shapes: the Segment HTTP Tracking API and the original `/track` payload.

These Structs describe what clients *send* (and the OpenAPI document is generated from
them). They are decoded straight from request bytes by prebuilt decoders (see
:data:`SINGLE_DECODERS`), so a wrong type, a missing required field or a malformed
timestamp becomes a :class:`msgspec.ValidationError` whose message names the JSON path
(``... - at `$.event```). Normalisation into immutable Commands happens in
:mod:`eventrouter.events.normalise`.

The free-form objects (``properties``, ``traits``, ``context``) are not decoded at the
edge: :class:`RawDecoder` decodes a twin of each Struct whose free-form fields are
:class:`msgspec.Raw` (the JSON text, checked for syntax, skipped over; ``context`` one
level deep, a dict of raw values, see :data:`RAW_TYPES`), and so they travel as text to
the sinks (:mod:`eventrouter.events.commands`). What the twin accepts
beyond the Struct, a free-form field that is not an object, or a number no float holds
(``1e400``), is refused with the Struct's own error: the strict decoder runs on those
bodies alone.
"""

from __future__ import annotations

import functools
import operator
import types
from datetime import datetime
from typing import Annotated, Any

import msgspec

from eventrouter import scan

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


#: The fields a client sends as free-form JSON objects.
FREE_FORM = ("properties", "traits", "context")
#: ``{`` (an object) and ``n`` (``null``): what may start a free-form field's raw text.
_OBJECT_OR_NULL = frozenset(b"{n")


#: How the raw twin (:func:`_raw_twin`) holds each free-form field. ``context`` is
#: decoded one level, to a dict of raw values: every event's context gets a rule
#: (``context.ip``) and the rules read its keys (``ip``, ``sessionId``, ``traits``); a
#: dict of ``Raw`` is made and encoded again at a fraction of a full decode (its values
#: are skipped over, then copied), and as a dict it holds each key once, spelt plainly.
RAW_TYPES: dict[str, Any] = {
    "properties": msgspec.Raw,
    "traits": msgspec.Raw,
    "context": dict[str, msgspec.Raw] | None,
}


def _raw_twin(cls: type[msgspec.Struct]) -> type[msgspec.Struct]:
    """A subclass of ``cls`` (same tag, names and defaults) whose free-form fields hold
    raw JSON (:data:`RAW_TYPES`; a ``null`` ``properties`` or ``traits`` arrives as
    ``Raw(b"null")``)."""
    free = [f.name for f in msgspec.structs.fields(cls) if f.name in FREE_FORM]

    def body(namespace: dict[str, Any]) -> None:
        namespace["__annotations__"] = {name: RAW_TYPES[name] for name in free}
        namespace.update(dict.fromkeys(free))
        namespace["__module__"] = __name__

    tag = cls.__struct_config__.tag
    kwargs = {"tag": tag} if tag is not None else {}
    return types.new_class(f"Raw{cls.__name__}", (cls,), kwargs, body)


def may_overflow(data: Any) -> bool:
    """Whether ``data`` may hold a number that msgspec refuses as out of range
    (:func:`eventrouter.scan.may_overflow_py`, compiled where it was built). ``False`` is
    certain; ``True`` may be a false alarm, which the strict decoder then settles."""
    return scan.may_overflow(data)


class RawDecoder:
    """Decodes one inbound shape with its free-form fields left as raw JSON, refusing
    exactly what the shape's own decoder refuses, with the same error.

    The raw twin accepts more than the shape (any JSON value where an object is
    required, any number): a body it refuses, or one with such a value (checked after
    decoding, cheaply), goes through the strict decoder, which raises the error a
    dict-decoding edge always raised. Only such bodies pay for the second decode.
    """

    __slots__ = ("_free", "_raw", "_strict", "type")

    def __init__(self, type_: Any) -> None:
        self.type = type_
        members = type_.__args__ if isinstance(type_, types.UnionType) else (type_,)
        twins = tuple(_raw_twin(cls) for cls in members)
        raw_type = twins[0] if len(twins) == 1 else functools.reduce(operator.or_, twins)
        self._raw = msgspec.json.Decoder(raw_type)
        self._strict = msgspec.json.Decoder(type_)
        #: The raw free-form fields of each twin class, checked to be objects here
        #: (``context``, a dict, is checked by the decoder itself).
        self._free = {
            twin: tuple(
                f.name
                for f in msgspec.structs.fields(twin)
                if f.name in FREE_FORM and RAW_TYPES[f.name] is msgspec.Raw
            )
            for twin in twins
        }

    def decode(self, data: Any, *, numbers_checked: bool = False) -> Any:
        """The message in ``data`` (bytes or :class:`msgspec.Raw`), its free-form
        fields as ``Raw`` or None.

        ``numbers_checked``: the caller found no number out of range in a text that
        holds ``data`` (:func:`may_overflow` on a whole batch body, once for its items).

        :raises msgspec.MsgspecError: what the strict decoder raises for ``data``."""
        try:
            message = self._raw.decode(data)
        except msgspec.MsgspecError:
            self._strict.decode(data)  # raises its own error: the raw twin accepts more
            raise
        for name in self._free[message.__class__]:
            value = getattr(message, name)
            if value is not None and memoryview(value)[0] not in _OBJECT_OR_NULL:
                self._strict.decode(data)  # raises: the field must be an object
        if not numbers_checked and scan.may_overflow(data):
            self._strict.decode(data)  # raises when the number is one (not in a string)
        return message


SINGLE_DECODERS: dict[str, RawDecoder] = {
    "track": RawDecoder(Track),
    "identify": RawDecoder(Identify),
    "page": RawDecoder(Page),
    "screen": RawDecoder(Screen),
    "group": RawDecoder(Group),
    "alias": RawDecoder(Alias),
}
ANY_DECODER = RawDecoder(AnyMessage)
BATCH_DECODER = msgspec.json.Decoder(BatchBody)
LEGACY_DECODER = RawDecoder(LegacyTrack)
