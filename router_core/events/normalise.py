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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

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


def _context(msg_context: dict | None, env: Arrival) -> dict:
    if env.context:
        ctx = {**env.context, **msg_context} if msg_context else dict(env.context)
    else:
        ctx = msg_context if msg_context is not None else {}
    if env.ip and "ip" not in ctx:
        ctx["ip"] = env.ip
    elif env.ip_mode != ipanon.KEEP and "ip" in ctx:
        ipanon.apply(ctx, env.ip_mode)  # the client's own context.ip
    return ctx


def _integrations(msg_integrations: dict | None, env: Arrival) -> dict:
    if env.integrations:
        return {**env.integrations, **msg_integrations} if msg_integrations else env.integrations
    return msg_integrations if msg_integrations is not None else {}


#: The command class for each event type.
_COMMANDS: dict[str, type[c.Command]] = {
    "track": c.TrackCommand,
    "identify": c.IdentifyCommand,
    "page": c.PageCommand,
    "screen": c.ScreenCommand,
    "group": c.GroupCommand,
    "alias": c.AliasCommand,
}
#: The event type of each inbound message class (its ``type`` tag).
_KINDS: dict[type, str] = {cls: cls.__struct_config__.tag for cls in m.AnyMessage.__args__}


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
    if session_id is None and "sessionId" in context:
        session_id = _ident(context["sessionId"])
    kind = kind or _KINDS[type(msg)]
    fields: dict[str, Any] = {}
    if kind == "track":
        fields["event"] = msg.event
        fields["properties"] = msg.properties or {}
    elif kind == "identify":
        traits = msg.traits
        if not traits:
            # RudderStack's SDKs (rudder-sdk-python, -node, -js) send an identify's traits
            # only as context.traits, which RudderStack's own server reads them from.
            in_context = context.get("traits")
            if in_context.__class__ is dict and in_context:
                traits = dict(in_context)
        fields["traits"] = traits or {}
    elif kind in ("page", "screen"):
        properties = msg.properties or {}
        if msg.category is not None:
            properties.setdefault("category", msg.category)
        if msg.name is not None:
            properties.setdefault("name", msg.name)
        fields["name"] = msg.name
        fields["properties"] = properties
    elif kind == "group":
        group_id = _ident(msg.group_id)
        if group_id is None:
            raise InvalidEvent("missing_field", "groupId: required field is missing")
        fields["group_id"] = group_id
        fields["traits"] = msg.traits or {}
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
        properties=msg.properties or {},
        user_id=user_id,
        anonymous_id=anonymous_id,
        session_id=_ident(msg.session_id),
        context=_context(msg.context, env),
        timestamp=timestamp,
        original_timestamp=original,
        received_at=env.received_at,
    )
