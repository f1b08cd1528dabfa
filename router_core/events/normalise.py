"""Normalisation: inbound messages become immutable Commands.

Segment's rules, applied here once for every entry point:

* ``messageId`` is kept when given (< 100 chars, checked at decode) and generated otherwise;
* ``receivedAt`` is the server clock when the request arrived;
* ``originalTimestamp`` is the client's clock: ``originalTimestamp`` if sent, else
  ``timestamp``; with ``sentAt`` the event time is corrected for client clock skew,
  ``timestamp = receivedAt - (sentAt - originalTimestamp)``; without ``sentAt`` a given
  timestamp is trusted as is (server-side libraries and imports set it on purpose);
  with neither, ``timestamp = receivedAt``;
* batch-level ``context``, ``integrations`` and ``sentAt`` apply to every item, the
  item's own keys winning;
* ``context.ip`` is filled from the connection when the client did not set it, and
  anonymised per the source's ``ip`` setting (:mod:`eventrouter.events.ipanon`).

The free-form objects arrive as raw JSON text (:class:`msgspec.Raw`, see
:class:`eventrouter.events.model.RawDecoder`) and leave as raw JSON text in the
Command: a rule that must look inside one does the least it can.

* The keys a rule reads (``context.ip``, ``sessionId``, ``traits``; a page's
  ``properties.name``/``category``) are decoded into a small Struct of those keys
  alone: msgspec skips the rest at C speed, unescapes key spellings and keeps the last
  of duplicate keys, as a dict would.
* Adding a key the object lacks (``context.ip`` from the connection, a page's
  ``name``/``category``) splices the member into the text.
* Anything else, a key present that a rule may change (the client's own
  ``context.ip``), a batch-level ``context`` to merge, decodes the object to a dict,
  applies the rule as a dict and encodes it again. The decode keeps the last of
  duplicate keys and the encode writes each key once, so ``{"ip": "a", "ip": "b"}``
  or ``{"ip": "a", "\\u0069p": "b"}`` cannot carry a second address past
  anonymisation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from eventrouter.errors import InvalidEvent
from eventrouter.events import commands as c
from eventrouter.events import ipanon
from eventrouter.events import model as m
from eventrouter.events.ids import new_message_id

#: Timestamps outside this range are rejected: every store can hold what is inside it.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class Arrival:
    """What a request contributes to each event it carries."""

    received_at: datetime
    source: str
    ip: str | None = None
    #: ``[privacy] ip`` / ``sources[].ip`` of the request's source; ``ip`` above is
    #: anonymised already, a client-supplied ``context.ip`` is anonymised per event.
    ip_mode: str = ipanon.KEEP
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None
    sent_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: ``"ip":<ip as JSON>``, the member spliced into a context without ``ip``; and the
    #: batch-level ``context`` as raw JSON (its items without a context share it).
    #: Made on first use, once per request.
    _ip_member: bytes | None = None
    _context_json: msgspec.Raw | None = None

    def ip_member(self) -> bytes:
        if self._ip_member is None:
            self._ip_member = b'"ip":' + _encode(self.ip)
        return self._ip_member

    def context_json(self) -> msgspec.Raw:
        if self._context_json is None:
            self._context_json = msgspec.Raw(_encode(self.context))
        return self._context_json


def utc(value: datetime | None) -> datetime | None:
    """Aware UTC; a naive timestamp is taken to be UTC already."""
    if value is None:
        return None
    tzinfo = value.tzinfo
    if tzinfo is UTC:  # what msgspec returns for "Z" and "+00:00": the common case
        return value
    if tzinfo is None:
        return value.replace(tzinfo=UTC)
    if value.utcoffset():
        return value.astimezone(UTC)
    return value.replace(tzinfo=UTC)


def _ident(value: str | int | None) -> str | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def event_times(
    timestamp: datetime | None,
    original: datetime | None,
    sent_at: datetime | None,
    received_at: datetime,
) -> tuple[datetime, datetime | None]:
    """Return ``(timestamp, original_timestamp)`` by Segment's clock-skew rule."""
    original = utc(timestamp if original is None else original)
    if original is None:
        return received_at, None
    _checked(original, "originalTimestamp")
    if sent_at is None:
        return original, original
    sent_at = _checked(utc(sent_at), "sentAt")
    try:
        corrected = received_at - (sent_at - original)
    except OverflowError:
        raise InvalidEvent("invalid_timestamp", "timestamp: skew correction overflows") from None
    return _checked(corrected, "timestamp"), original


def _checked(value: datetime, name: str) -> datetime:
    if not EARLIEST <= value < LATEST:
        raise InvalidEvent("invalid_timestamp", f"{name}: {value.isoformat()} is out of range")
    return value


_encode = msgspec.json.Encoder().encode
_decode_object = msgspec.json.Decoder(dict[str, Any]).decode
_NULL = msgspec.Raw(b"null")
_EMPTY_OBJECT = re.compile(rb"\{\s*\}")


class _ContextKeys(msgspec.Struct):
    """The keys of ``context`` the rules read. msgspec finds them at C speed, skipping
    the rest, with key spellings unescaped (``"\\u0069p"`` is ``ip``) and the last of
    duplicate keys winning, exactly as a dict decode would."""

    ip: Any = msgspec.UNSET
    sessionId: Any = None  # the JSON key
    traits: msgspec.Raw = None


class _PageKeys(msgspec.Struct):
    """The keys of a page's or screen's ``properties`` that ``name``/``category`` fill."""

    name: Any = msgspec.UNSET
    category: Any = msgspec.UNSET


_context_keys = msgspec.json.Decoder(_ContextKeys).decode
_page_keys = msgspec.json.Decoder(_PageKeys).decode
#: JSON whitespace: what may stand between the braces of an empty object.
_WHITESPACE = frozenset(b" \t\n\r")
_CLOSE_BRACE = ord("}")


def _splice(data: bytes, member: bytes) -> bytes:
    """The JSON object ``data`` with ``member`` (``"key":value``) added as its first key
    (the caller knows the object has no such key)."""
    second = data[1]
    if second == _CLOSE_BRACE or (second in _WHITESPACE and _EMPTY_OBJECT.fullmatch(data)):
        return b"{" + member + b"}"
    return b"{" + member + b"," + data[1:]


def _raw(value: msgspec.Raw | dict[str, Any] | None) -> msgspec.Raw | None:
    """A free-form field as sent: None when absent or ``null``. A dict (a message
    decoded by the dict-typed Structs of :mod:`~eventrouter.events.model`, as a caller
    outside the edge may) is encoded."""
    if value is None:
        return None
    if value.__class__ is dict:
        return msgspec.Raw(_encode(value))
    return None if value == _NULL else value


#: What :func:`_context` returns: the context to store, the keys the rules read, and the
#: context as a dict when it had to be decoded (then the rules read that).
_Context = tuple[msgspec.Raw, "_ContextKeys", dict[str, Any] | None]


def _context(msg_context: msgspec.Raw | None, env: Arrival) -> _Context:
    msg_context = _raw(msg_context)
    if env.context:
        if msg_context is not None:
            return _context_dict({**env.context, **_decode_object(msg_context)}, env)
        raw = env.context_json()
    else:
        raw = c.EMPTY_OBJECT if msg_context is None else msg_context
    keys = _context_keys(raw)
    if keys.ip is not msgspec.UNSET:
        # The client sent an ip (in some spelling, maybe twice): ruled on as a dict and
        # encoded again, each key once, so no copy of it can stay behind.
        return _context_dict(_decode_object(raw), env)
    if env.ip:
        raw = msgspec.Raw(_splice(bytes(raw), env.ip_member()))
    return raw, keys, None


def _context_dict(ctx: dict[str, Any], env: Arrival) -> _Context:
    """The ``ip`` rules on a decoded context; encoded once, each key once."""
    if env.ip and "ip" not in ctx:
        ctx["ip"] = env.ip
    elif env.ip_mode != ipanon.KEEP and "ip" in ctx:
        ipanon.apply(ctx, env.ip_mode)  # the client's own context.ip
    return msgspec.Raw(_encode(ctx)), _ContextKeys(sessionId=ctx.get("sessionId")), ctx


def _with_defaults(properties: msgspec.Raw | None, defaults: dict[str, str]) -> msgspec.Raw:
    """A page's or screen's properties with ``defaults`` set where the key is absent."""
    if properties is None:
        return msgspec.Raw(_encode(defaults))
    present = _page_keys(properties)
    if present.name is msgspec.UNSET and present.category is msgspec.UNSET:
        data = bytes(properties)
        for key, value in defaults.items():
            data = _splice(data, b'"%s":%s' % (key.encode(), _encode(value)))
        return msgspec.Raw(data)
    decoded = _decode_object(properties)
    changed = False
    for key, value in defaults.items():
        if key not in decoded:
            decoded[key] = value
            changed = True
    return msgspec.Raw(_encode(decoded)) if changed else properties


def _is_empty(value: msgspec.Raw | None) -> bool:
    return value is None or _EMPTY_OBJECT.fullmatch(bytes(value)) is not None


def _integrations(msg_integrations: dict | None, env: Arrival) -> dict:
    if env.integrations:
        return {**env.integrations, **msg_integrations} if msg_integrations else env.integrations
    return msg_integrations if msg_integrations is not None else {}


_OPEN_BRACE = ord("{")

#: The command class for each event type.
_COMMANDS: dict[str, type[c.Command]] = {
    "track": c.TrackCommand,
    "identify": c.IdentifyCommand,
    "page": c.PageCommand,
    "screen": c.ScreenCommand,
    "group": c.GroupCommand,
    "alias": c.AliasCommand,
}


def to_command(msg: m.AnyMessage, env: Arrival, kind: str | None = None) -> c.Command:
    """Validate the cross-field rules of one message and build its Command.

    ``kind`` is the type implied by the endpoint (``/v1/track``); batch items carry
    their own ``type``. This runs once per accepted event (bench/floor.py times it),
    so the common fields go straight into the one constructor call.
    """
    # _ident inlined for the common case, a non-empty string (this runs for every event).
    user_id = msg.user_id
    if user_id.__class__ is not str or not user_id:
        user_id = _ident(user_id)
    anonymous_id = msg.anonymous_id
    if anonymous_id.__class__ is not str or not anonymous_id:
        anonymous_id = _ident(anonymous_id)
    if user_id is None and anonymous_id is None:
        raise InvalidEvent("missing_field", "userId or anonymousId: one of them is required")
    sent_at = msg.sent_at or env.sent_at
    timestamp, original = event_times(
        msg.timestamp, msg.original_timestamp, sent_at, env.received_at
    )
    context, keys, context_dict = _context(msg.context, env)
    session_id = None if msg.session_id is None else _ident(msg.session_id)
    kind = kind or msg.__struct_config__.tag
    if session_id is None and keys.sessionId is not None:
        session_id = _ident(keys.sessionId)
    fields: dict[str, Any] = {}
    if kind == "track":
        fields["event"] = msg.event
        properties = msg.properties  # _raw() inlined for the common case, raw text
        if properties.__class__ is not msgspec.Raw or properties == _NULL:
            properties = _raw(properties)
        fields["properties"] = properties or c.EMPTY_OBJECT
    elif kind == "identify":
        traits = _raw(msg.traits)
        if _is_empty(traits):
            # RudderStack's SDKs (rudder-sdk-python, -node, -js) send an identify's traits
            # only as context.traits, which RudderStack's own server reads them from.
            if context_dict is not None:
                in_context = context_dict.get("traits")
                if in_context.__class__ is dict and in_context:
                    traits = msgspec.Raw(_encode(in_context))
            else:
                in_context = keys.traits
                if (
                    in_context is not None
                    and memoryview(in_context)[0] == _OPEN_BRACE
                    and not _is_empty(in_context)
                ):
                    traits = in_context
        fields["traits"] = traits or c.EMPTY_OBJECT
    elif kind in ("page", "screen"):
        properties = _raw(msg.properties)
        defaults = {}
        if msg.category is not None:
            defaults["category"] = msg.category
        if msg.name is not None:
            defaults["name"] = msg.name
        if defaults:
            properties = _with_defaults(properties, defaults)
        fields["name"] = msg.name
        fields["properties"] = properties or c.EMPTY_OBJECT
    elif kind == "group":
        group_id = _ident(msg.group_id)
        if group_id is None:
            raise InvalidEvent("missing_field", "groupId: required field is missing")
        fields["group_id"] = group_id
        fields["traits"] = _raw(msg.traits) or c.EMPTY_OBJECT
    elif kind == "alias":
        previous_id = _ident(msg.previous_id)
        if previous_id is None:
            raise InvalidEvent("missing_field", "previousId: required field is missing")
        fields["previous_id"] = previous_id
    else:
        raise InvalidEvent("invalid_type", f"type: unknown event type {kind!r}")
    return _COMMANDS[kind](
        message_id=msg.message_id or new_message_id(),
        source=env.source,
        user_id=user_id,
        anonymous_id=anonymous_id,
        session_id=session_id,
        context=context,
        integrations=_integrations(msg.integrations, env),
        timestamp=timestamp,
        original_timestamp=original,
        sent_at=utc(sent_at),
        received_at=env.received_at,
        **fields,
    )


def legacy_to_command(msg: m.LegacyTrack, env: Arrival) -> c.TrackCommand:
    """The original ``/track`` payload as a track command (``event_type`` → ``event``)."""
    user_id = _ident(msg.user_id)
    anonymous_id = _ident(msg.anonymous_id)
    if user_id is None and anonymous_id is None:
        raise InvalidEvent("missing_field", "user_id or anonymous_id: one of them is required")
    timestamp, original = event_times(msg.timestamp, None, None, env.received_at)
    return c.TrackCommand(
        message_id=msg.message_id or new_message_id(),
        source=env.source,
        event=msg.event_type,
        properties=_raw(msg.properties) or c.EMPTY_OBJECT,
        user_id=user_id,
        anonymous_id=anonymous_id,
        session_id=_ident(msg.session_id),
        context=_context(msg.context, env)[0],
        timestamp=timestamp,
        original_timestamp=original,
        received_at=env.received_at,
    )
