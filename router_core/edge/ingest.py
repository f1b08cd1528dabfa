"""Ingestion resources: ``POST /track``, ``/v1/{track,...,batch,import}`` and the short paths.

Each request is read with a size cap (gunzipped with the same cap), decoded by a
prebuilt msgspec decoder, authenticated by writeKey, normalised into Commands and
dispatched; the ``200 {"success": true}`` is sent only after the acknowledging sinks
(in embedded mode: the SQLite commit) hold every accepted event.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import falcon
import falcon.asgi
import msgspec

from eventrouter import metrics
from eventrouter.bus.bus import Bus
from eventrouter.config import Config
from eventrouter.edge import limits, proxies
from eventrouter.edge.coalesce import MAX_GROUP_EVENTS, Coalescer
from eventrouter.edge.keys import WriteKeys
from eventrouter.edge.ratelimit import PLUGIN_NAME as RATE_LIMITER
from eventrouter.edge.ratelimit import RateLimiter
from eventrouter.errors import APIError, InvalidEvent, from_validation_error
from eventrouter.events import ipanon, model
from eventrouter.events.commands import Command
from eventrouter.events.normalise import Arrival, legacy_to_command, to_command

log = logging.getLogger("eventrouter.ingest")

#: A JSON ``\u0000`` escape: one not preceded by an odd run of backslashes (``\\u0000`` is
#: a backslash followed by the text ``u0000``). JSON forbids a raw NUL in a string.
_NUL_ESCAPE = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")

#: Segment's limits.
MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_EVENTS = 2500

SUCCESS = b'{"success":true}'
#: The body decides, not the Content-Type: real clients post JSON as text/plain
#: (analytics.js, to avoid a CORS preflight), application/x-www-form-urlencoded (axios's
#: default for a Buffer, so rudder-sdk-node's gzip), with any charset, or with none.
#: Whatever the header says, a body that is JSON after its Content-Encoding is read.
_GZIP = ("gzip", "x-gzip")  # RFC 9110 8.4.1.3: x-gzip is gzip
_IDENTITY = ("", "identity")
#: A JSON text never starts with these bytes; a gzip member always does (RFC 1952).
_GZIP_MAGIC = b"\x1f\x8b"
_LEGACY_PROBE = msgspec.json.Decoder(dict[str, msgspec.Raw])


class RequestHead:
    """What an ingestion request says besides its body: the headers and peer the
    ingestion code reads. Built from a Falcon request (:meth:`of`) or, on the server's
    fast path (:mod:`eventrouter.edge.fastpath`), from the raw ASGI scope; every check
    then runs the same code on either."""

    __slots__ = ("authorization", "content_encoding", "content_length", "forwarded_for", "peer")

    def __init__(
        self,
        *,
        content_length: int | None = None,
        content_encoding: str | None = None,
        authorization: str | None = None,
        peer: str | None = None,
        forwarded_for: str | None = None,
    ) -> None:
        self.content_length = content_length
        #: The header as sent (None: absent); :meth:`Ingestor.body` normalises it.
        self.content_encoding = content_encoding
        self.authorization = authorization
        #: The TCP peer's address (a trusted proxy's, behind one).
        self.peer = peer
        self.forwarded_for = forwarded_for

    @classmethod
    def of(cls, req: falcon.asgi.Request) -> RequestHead:
        return cls(
            content_length=req.content_length,
            content_encoding=req.get_header("Content-Encoding"),
            authorization=req.auth,
            peer=req.remote_addr,
            forwarded_for=req.get_header("X-Forwarded-For"),
        )


#: Reads a request's body as sent (before any Content-Encoding), at most ``limit`` bytes:
#: past it, :func:`too_large` is raised (early, from Content-Length, when it says so).
BodyReader = Callable[[int], Awaitable[bytes]]


def falcon_reader(req: falcon.asgi.Request) -> BodyReader:
    """A :data:`BodyReader` of a Falcon request's stream."""

    async def read(limit: int) -> bytes:
        length = req.content_length
        if length is not None:
            if length > limit:
                raise too_large(limit)
            # The stream is bounded by Content-Length: read it in one go.
            return await req.stream.read()
        # Chunked: count as it arrives, so an endless body is cut at the limit.
        chunks = []
        size = 0
        async for chunk in req.stream:
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            chunks.append(chunk)
        return b"".join(chunks)

    return read


def media_body(media: Any) -> bytes:
    """``media`` as the JSON Falcon's default handler writes for ``resp.media`` (so a
    response reads the same from either path)."""
    return json.dumps(media, ensure_ascii=False).encode()


class Ingestor:
    """What every ingestion resource shares: limits, body reading, auth, client IP."""

    def __init__(self, config: Config, bus: Bus) -> None:
        self.bus = bus
        self.sources = WriteKeys((s.write_key, s.name) for s in config.sources)
        self.proxies = proxies.TrustedProxies(config.server.trusted_proxies)
        self.max_json_depth = config.server.max_json_depth
        self.max_json_keys = config.server.max_json_keys
        #: ``context.ip`` treatment per source name (``[privacy] ip`` unless overridden).
        self.ip_default = config.privacy.ip
        self.ip_modes = {s.name: s.ip or config.privacy.ip for s in config.sources}
        #: Per-source rate limits (None: no source has one); a plugin for /health.
        self.limiter = RateLimiter.from_config(config)
        if self.limiter is not None:
            bus.add_plugin(self.limiter, RATE_LIMITER)
        #: The requests of one event-loop turn share one bus dispatch (coalesce.py).
        self.groups = Coalescer(self._dispatch_group, bus.group_limit(MAX_GROUP_EVENTS))

    # -- dispatch ------------------------------------------------------------------------
    async def dispatch(self, commands: Sequence[Command]) -> None:
        """Return once every acknowledging sink holds ``commands``, which share a bus
        dispatch with the other requests of this event-loop turn.

        :raises APIError: the group was refused (503, already counted in the metrics).
        """
        await self.groups.submit(commands)

    async def _dispatch_group(self, commands: Sequence[Command]) -> None:
        """Hand one group of accepted commands to the bus and count what became of them."""
        try:
            await self.bus.dispatch(commands)
        except APIError as exc:  # not durable: a 503, every event of it rejected
            metrics.get().rejected(exc.code, len(commands))
            exc.counted = True
            raise
        metrics.get().accepted(commands)

    async def dispatch_one(self, command: Command) -> None:
        """Admit and dispatch one request's single event: its refusal is raised (a 400
        naming the rule it broke), before it joins any dispatch."""
        if (refused := self.bus.admit((command,))) is not None:
            error = refused[0]
            metrics.get().rejected(error.code, 1)
            error.counted = True
            raise error
        await self.groups.submit((command,))

    # -- body --------------------------------------------------------------------------
    def body(
        self, body: bytes, content_encoding: str | None, limit: int, *, structure: bool = True
    ) -> bytes:
        """The request body as read (:data:`BodyReader`), gunzipped within ``limit``, valid
        UTF-8, and (unless ``structure`` is False: the caller checks it,
        :meth:`BatchResource.handle`) within the nesting and keys limits."""
        encoding = (content_encoding or "").strip().lower()
        if encoding in _GZIP or (not encoding and body.startswith(_GZIP_MAGIC)):
            body = _gunzip(body, limit)
        elif encoding not in _IDENTITY:
            raise APIError(
                415,
                "unsupported_encoding",
                f"Content-Encoding {encoding!r} is not supported; send gzip or no encoding",
            )
        if not body:
            raise InvalidEvent("empty_body", "body: the request body is empty")
        if not body.isascii():
            # msgspec raises UnicodeDecodeError (not one of its own errors) for invalid
            # UTF-8, and only in the parts it decodes: refuse the whole body here.
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidEvent(
                    "invalid_json", f"body: not valid JSON: invalid UTF-8 at byte {exc.start}"
                ) from None
        if structure:
            # Before any decoder: msgspec recurses once per level of nesting.
            limits.check_structure(body, self.max_json_depth, self.max_json_keys)
        if b"\\u0000" in body:
            # PostgreSQL can store no NUL character (text or jsonb): a NUL in any string
            # becomes U+FFFD here, so that the event reads the same from every store.
            body = _NUL_ESCAPE.sub(rb"\1\\ufffd", body)
        return body

    # -- writeKey ----------------------------------------------------------------------
    def header_key(self, authorization: str | None) -> str | None:
        """The Basic-auth writeKey of an ``Authorization`` header, read once per request;
        a wrong one is refused (401) before the body is read. None when absent or when
        ingestion is open."""
        if not self.sources:
            return None
        key = _basic_username(authorization)
        if key and key not in self.sources:
            raise APIError(401, "invalid_write_key", "writeKey: not the key of any source")
        return key

    def source(self, key: str | None) -> str:
        """The source name for the writeKey (header first, else body); 401 when sources
        are configured and the key is missing or unknown. Open ingestion: "default"."""
        if not self.sources:
            return "default"
        if not key:
            raise APIError(
                401,
                "missing_write_key",
                "writeKey: send it as the Basic-auth username or as writeKey in the body",
                headers={"WWW-Authenticate": 'Basic realm="eventrouter"'},
            )
        name = self.sources.name(key)
        if name is None:
            raise APIError(401, "invalid_write_key", "writeKey: not the key of any source")
        return name

    def envelope(self, head: RequestHead, source: str, **batch: Any) -> Arrival:
        ip = self.proxies.client_ip_of(head.peer, head.forwarded_for)
        ip_mode = self.ip_modes.get(source, self.ip_default)
        if ip_mode != ipanon.KEEP:
            ip = ipanon.anonymise(ip, ip_mode)
        return Arrival(
            received_at=datetime.now(UTC), source=source, ip=ip, ip_mode=ip_mode, **batch
        )


def too_large(limit: int) -> APIError:
    return APIError(413, "payload_too_large", f"body: larger than the {limit // 1024} KB limit")


def _gunzip(data: bytes, limit: int) -> bytes:
    """Decompress at most ``limit`` bytes: a gzip bomb costs us ``limit``, not its size.

    A gzip file may hold several members one after the other (RFC 1952, 2.2: what
    ``cat a.gz b.gz`` makes); their contents are joined, as ``gunzip`` joins them.
    Bytes after the last member that do not start another are refused, never ignored:
    they would be events the client sent and we silently dropped."""
    parts: list[bytes] = []
    size = 0
    rest = data
    while True:
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out = decompressor.decompress(rest, limit - size + 1)
        except zlib.error as exc:
            what = "not valid gzip" if not parts else "data after the gzip stream is not gzip"
            raise InvalidEvent("invalid_gzip", f"body: {what} ({exc})") from None
        size += len(out)
        if size > limit or decompressor.unconsumed_tail:
            raise APIError(
                413,
                "payload_too_large",
                f"body: decompresses to more than the {limit // 1024} KB limit",
            )
        if not decompressor.eof:
            raise InvalidEvent("invalid_gzip", "body: gzip stream is truncated")
        parts.append(out)
        rest = decompressor.unused_data
        if not rest:
            return b"".join(parts)


def _basic_username(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeDecodeError, or a header byte over 0x7f
        raise APIError(
            401, "invalid_authorization", "Authorization: malformed Basic credentials"
        ) from None
    return decoded.partition(":")[0] or None


class SingleEventResource:
    """``POST /v1/{type}`` and its short path: one event of the type the path names."""

    def __init__(self, ingestor: Ingestor, kind: str) -> None:
        self.ingestor = ingestor
        self.kind = kind
        self.decoder = model.SINGLE_DECODERS[kind]

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.data = await self.handle(RequestHead.of(req), falcon_reader(req))

    async def handle(self, head: RequestHead, read: BodyReader) -> bytes:
        """The response body for a request accepted whole (else an :class:`APIError`)."""
        ingestor = self.ingestor
        header_key = ingestor.header_key(head.authorization)
        body = ingestor.body(await read(MAX_EVENT_BYTES), head.content_encoding, MAX_EVENT_BYTES)
        try:
            message = self.decoder.decode(body)
        except msgspec.MsgspecError as exc:
            raise from_validation_error(exc) from None
        source = ingestor.source(header_key or message.write_key)
        if ingestor.limiter is not None:
            await ingestor.limiter.admit(source, 1)
        command = to_command(message, ingestor.envelope(head, source), self.kind)
        await ingestor.dispatch_one(command)
        return SUCCESS


class BatchResource:
    """``POST /v1/batch``, ``/v1/import`` and ``/v1/b``: valid items are stored even when
    others are rejected; the response lists each rejected index with its reason."""

    def __init__(self, ingestor: Ingestor) -> None:
        self.ingestor = ingestor

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.data = await self.handle(RequestHead.of(req), falcon_reader(req))

    async def handle(self, head: RequestHead, read: BodyReader) -> bytes:
        """The response body when at least one item was accepted (else an
        :class:`APIError`): success, or the accepted count and each rejected item."""
        ingestor = self.ingestor
        header_key = ingestor.header_key(head.authorization)
        raw = await read(MAX_BATCH_BYTES)
        body = ingestor.body(raw, head.content_encoding, MAX_BATCH_BYTES, structure=False)
        try:
            envelope = model.BATCH_DECODER.decode(body)
        except msgspec.MsgspecError as exc:
            # A body past the limits is refused for that, whatever else is wrong with it.
            limits.check_structure(body, ingestor.max_json_depth, ingestor.max_json_keys)
            raise from_validation_error(exc) from None
        except RecursionError:  # nested past Python's limit, which is past max_json_depth
            raise limits.too_deep(ingestor.max_json_depth) from None
        items = envelope.batch
        # The items are undecoded yet (and so is any context they nest deeper than the
        # limit): checked per item, which costs a tenth of checking the whole body.
        limits.check_batch_structure(body, items, ingestor.max_json_depth, ingestor.max_json_keys)
        if not items:
            raise InvalidEvent("empty_batch", "batch: contains no events")
        if len(items) > MAX_BATCH_EVENTS:
            raise InvalidEvent(
                "too_many_events", f"batch: {len(items)} events, at most {MAX_BATCH_EVENTS} allowed"
            )
        source = ingestor.source(header_key or envelope.write_key)
        if ingestor.limiter is not None:  # every item counts, valid or not: all cost us
            await ingestor.limiter.admit(source, len(items))
        env = ingestor.envelope(
            head,
            source,
            context=envelope.context,
            integrations=envelope.integrations,
            sent_at=envelope.sent_at,
        )
        accepted = []
        indexes = []  # the batch index of each accepted command
        rejected = []
        decode = model.ANY_DECODER.decode
        # One look for numbers no float holds in the whole body, rather than one per item.
        numbers_checked = not model.may_overflow(body)
        for index, raw in enumerate(items):
            try:
                if len(raw) > MAX_EVENT_BYTES:
                    raise APIError(
                        413,
                        "event_too_large",
                        f"event: larger than the {MAX_EVENT_BYTES // 1024} KB limit",
                    )
                try:
                    message = decode(raw, numbers_checked=numbers_checked)
                except msgspec.MsgspecError as exc:
                    raise from_validation_error(exc) from None
                accepted.append(to_command(message, env))
                indexes.append(index)
            except APIError as exc:
                rejected.append({"index": index, "code": exc.code, "message": exc.message})
        if accepted and (refused := ingestor.bus.admit(accepted)) is not None:
            for position, exc in refused.items():
                rejected.append(
                    {"index": indexes[position], "code": exc.code, "message": exc.message}
                )
            accepted = [c for i, c in enumerate(accepted) if i not in refused]
            rejected.sort(key=lambda item: item["index"])
        if rejected:
            for code, n in Counter(item["code"] for item in rejected).items():
                metrics.get().rejected(code, n)
        if not accepted:
            error = APIError(
                400, "invalid_batch", "batch: no valid events", extra={"rejected": rejected}
            )
            error.counted = True  # each item, by its own reason, above
            raise error
        await ingestor.dispatch(accepted)
        if rejected:
            return media_body({"success": True, "accepted": len(accepted), "rejected": rejected})
        return SUCCESS


class LegacyTrackResource:
    """``POST /track``: the original ``{event_type, properties, timestamp, user_id,
    session_id}`` payload, or a Segment track body."""

    def __init__(self, ingestor: Ingestor) -> None:
        self.ingestor = ingestor
        self.segment = model.SINGLE_DECODERS["track"]

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.data = await self.handle(RequestHead.of(req), falcon_reader(req))

    async def handle(self, head: RequestHead, read: BodyReader) -> bytes:
        """The response body for a request accepted whole (else an :class:`APIError`)."""
        ingestor = self.ingestor
        header_key = ingestor.header_key(head.authorization)
        body = ingestor.body(await read(MAX_EVENT_BYTES), head.content_encoding, MAX_EVENT_BYTES)
        try:
            keys = _LEGACY_PROBE.decode(body)
            if "event_type" in keys:
                message = model.LEGACY_DECODER.decode(body)
                source = ingestor.source(header_key or message.key)
                command = legacy_to_command(message, ingestor.envelope(head, source))
            else:
                message = self.segment.decode(body)
                source = ingestor.source(header_key or message.write_key)
                command = to_command(message, ingestor.envelope(head, source), "track")
        except msgspec.MsgspecError as exc:
            raise from_validation_error(exc) from None
        if ingestor.limiter is not None:
            await ingestor.limiter.admit(source, 1)
        await ingestor.dispatch_one(command)
        return SUCCESS


#: ``/v1/<path>`` → event type; the one-letter paths are what @segment/analytics-next uses.
SINGLE_PATHS = {
    "track": "track",
    "identify": "identify",
    "page": "page",
    "screen": "screen",
    "group": "group",
    "alias": "alias",
    "t": "track",
    "i": "identify",
    "p": "page",
    "s": "screen",
    "g": "group",
    "a": "alias",
}
BATCH_PATHS = ("batch", "import", "b")


def add_routes(app: falcon.asgi.App, ingestor: Ingestor) -> dict[str, Any]:
    """Mount the ingestion resources; returns them by path (the server's fast path,
    :mod:`eventrouter.edge.fastpath`, calls their ``handle`` directly)."""
    routes: dict[str, Any] = {"/track": LegacyTrackResource(ingestor)}
    resources = {kind: SingleEventResource(ingestor, kind) for kind in set(SINGLE_PATHS.values())}
    for path, kind in SINGLE_PATHS.items():
        routes[f"/v1/{path}"] = resources[kind]
    batch = BatchResource(ingestor)
    for path in BATCH_PATHS:
        routes[f"/v1/{path}"] = batch
    for path, resource in routes.items():
        app.add_route(path, resource)
    return routes
