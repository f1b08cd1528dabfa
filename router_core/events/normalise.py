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

The free-form objects arrive as raw JSON (see :class:`eventrouter.events.model.RawDecoder`)
and leave as raw JSON text in the Command; a rule that must look inside one does the
least it can.

* ``context`` arrives one level deep: a dict whose values are raw JSON. Every event's
  context gets a rule (``ip``), and the rules read its keys; as a dict, each key is
  there once, spelt plainly (the decoder unescapes ``"\\u0069p"`` and keeps the last
  of duplicate keys, as a dict decode always did), so ``{"ip": "a", "ip": "b"}`` cannot
  carry a second address past anonymisation. The batch-level context merges in at
  dict speed; the dict is encoded once, its values copied as they came.
* ``properties`` and ``traits`` stay text. A page's ``name``/``category`` is spliced
  into ``properties`` when a two-key Struct decode (msgspec skips the rest) proves
  both absent; otherwise the object is decoded, given the keys and encoded again.
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
    #: The batch-level ``context`` with each value as raw JSON, as the items' own
    #: contexts arrive (:func:`_context`); made on first use, once per request.
    _raw_context: dict[str, msgspec.Raw] | None = None

    def raw_context(self) -> dict[str, msgspec.Raw]:
        if self._raw_context is None:
            self._raw_context = {k: msgspec.Raw(_encode(v)) for k, v in self.context.items()}
        return self._raw_context


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
_decode_any = msgspec.json.Decoder().decode
_NULL = msgspec.Raw(b"null")
_EMPTY_OBJECT = re.compile(rb"\{\s*\}")


class _PageKeys(msgspec.Struct):
    """The keys of a page's or screen's ``properties`` that ``name``/``category`` fill."""

    name: Any = msgspec.UNSET
    category: Any = msgspec.UNSET


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


def _context(msg_context: dict[str, msgspec.Raw] | None, env: Arrival) -> dict[str, Any]:
    """The event's context after the rules, as a dict whose values are raw JSON (or the
    plain values a rule put there): the batch-level context merged in (item keys win),
    ``ip`` filled from the connection or anonymised. A dict: each key once, so a second
    ``ip`` (``{"ip": "a", "ip": "b"}``, ``{"ip": "a", "\\u0069p": "b"}``) cannot stay
    behind; the decoder kept the last one, as a dict decode always did."""
    if env.context:
        ctx = {**env.raw_context(), **msg_context} if msg_context else env.raw_context().copy()
    elif msg_context is None:
        ctx = {}
    else:
        ctx = msg_context  # the message's own: no one else holds it
    if env.ip and "ip" not in ctx:
        ctx["ip"] = env.ip
    elif env.ip_mode != ipanon.KEEP and "ip" in ctx:
        ip = ctx["ip"]
        if ip.__class__ is msgspec.Raw:
            ctx["ip"] = _decode_any(ip)
        ipanon.apply(ctx, env.ip_mode)  # the client's own context.ip
    return ctx


def _value(value: Any) -> Any:
    """A context value as a dict decode gives it (decoded if it is raw JSON)."""
    return _decode_any(value) if value.__class__ is msgspec.Raw else value


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
    context = _context(msg.context, env)
    session_id = None if msg.session_id is None else _ident(msg.session_id)
    kind = kind or msg.__struct_config__.tag
    if session_id is None and "sessionId" in context:
        session_id = _ident(_value(context["sessionId"]))
    message_id = msg.message_id or new_message_id()
    context_json = msgspec.Raw(_encode(context))
    integrations = _integrations(msg.integrations, env)
    sent_at = utc(sent_at)
    # Each kind calls its class with plain keywords: a call with ``**fields`` costs the
    # constructor three times as much (a dict built, then unpacked by name).
    if kind == "track":
        properties = msg.properties  # _raw() inlined for the common case, raw text
        if properties.__class__ is not msgspec.Raw or properties == _NULL:
            properties = _raw(properties)
        return c.TrackCommand(
            message_id=message_id,
            source=env.source,
            user_id=user_id,
            anonymous_id=anonymous_id,
            session_id=session_id,
            context=context_json,
            integrations=integrations,
            timestamp=timestamp,
            original_timestamp=original,
            sent_at=sent_at,
            received_at=env.received_at,
            event=msg.event,
            properties=properties or c.EMPTY_OBJECT,
        )
    if kind == "identify":
        traits = _raw(msg.traits)
        if _is_empty(traits):
            # RudderStack's SDKs (rudder-sdk-python, -node, -js) send an identify's traits
            # only as context.traits, which RudderStack's own server reads them from.
            in_context = context.get("traits")
            if in_context.__class__ is msgspec.Raw:
                if memoryview(in_context)[0] == _OPEN_BRACE and not _is_empty(in_context):
                    traits = in_context
            elif in_context.__class__ is dict and in_context:  # from a batch's context
                traits = msgspec.Raw(_encode(in_context))
        return c.IdentifyCommand(
            message_id=message_id,
            source=env.source,
            user_id=user_id,
            anonymous_id=anonymous_id,
            session_id=session_id,
            context=context_json,
            integrations=integrations,
            timestamp=timestamp,
            original_timestamp=original,
            sent_at=sent_at,
            received_at=env.received_at,
            traits=traits or c.EMPTY_OBJECT,
        )
    if kind == "page" or kind == "screen":
        properties = _raw(msg.properties)
        defaults = {}
        if msg.category is not None:
            defaults["category"] = msg.category
        if msg.name is not None:
            defaults["name"] = msg.name
        if defaults:
            properties = _with_defaults(properties, defaults)
        return (c.PageCommand if kind == "page" else c.ScreenCommand)(
            message_id=message_id,
            source=env.source,
            user_id=user_id,
            anonymous_id=anonymous_id,
            session_id=session_id,
            context=context_json,
            integrations=integrations,
            timestamp=timestamp,
            original_timestamp=original,
            sent_at=sent_at,
            received_at=env.received_at,
            name=msg.name,
            properties=properties or c.EMPTY_OBJECT,
        )
    if kind == "group":
        group_id = _ident(msg.group_id)
        if group_id is None:
            raise InvalidEvent("missing_field", "groupId: required field is missing")
        return c.GroupCommand(
            message_id=message_id,
            source=env.source,
            user_id=user_id,
            anonymous_id=anonymous_id,
            session_id=session_id,
            context=context_json,
            integrations=integrations,
            timestamp=timestamp,
            original_timestamp=original,
            sent_at=sent_at,
            received_at=env.received_at,
            group_id=group_id,
            traits=_raw(msg.traits) or c.EMPTY_OBJECT,
        )
    if kind == "alias":
        previous_id = _ident(msg.previous_id)
        if previous_id is None:
            raise InvalidEvent("missing_field", "previousId: required field is missing")
        return c.AliasCommand(
            message_id=message_id,
            source=env.source,
            user_id=user_id,
            anonymous_id=anonymous_id,
            session_id=session_id,
            context=context_json,
            integrations=integrations,
            timestamp=timestamp,
            original_timestamp=original,
            sent_at=sent_at,
            received_at=env.received_at,
            previous_id=previous_id,
        )
    raise InvalidEvent("invalid_type", f"type: unknown event type {kind!r}")


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
        context=msgspec.Raw(_encode(_context(msg.context, env))),
        timestamp=timestamp,
        original_timestamp=original,
        received_at=env.received_at,
    )
