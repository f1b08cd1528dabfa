"""A Python client for eventrouter's (and Segment's) batch API: ``POST /v1/import``.

``Client.upload(events)`` streams any iterable of Segment-shaped event dicts to the
server in batches that respect its limits (2500 events and 500 KB of JSON per request,
32 KB per event), gzip-compressed, with the writeKey as the Basic-auth username. Every
event gets a ``messageId`` before its first attempt, so a retried batch carries the same
ids and a store that deduplicates on ``message_id`` keeps one copy.

``track``/``identify``/``page``/``screen``/``group``/``alias`` queue events; ``flush()``
(and ``close()``, or leaving a ``with`` block) sends them through the same path.

A ``Client`` is not thread-safe: use one per thread (each holds its own connection pool).
"""

from __future__ import annotations

import gzip
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import msgspec

from eventrouter import __version__

#: The server's limits (eventrouter.edge.ingest); the client stays under them.
MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_EVENTS = 2500
#: Headroom under the 500 KB body limit, for the batch envelope and a safety margin.
DEFAULT_BATCH_BYTES = MAX_BATCH_BYTES - 12 * 1024

LIBRARY = {"name": "eventrouter-python", "version": __version__}
_RETRY_STATUSES = frozenset({429}) | frozenset(range(500, 600))
_encode = msgspec.json.Encoder().encode
_BATCH_OPEN = b'{"batch":['
_BATCH_CLOSE = b"]}"


@dataclass(frozen=True)
class Rejection:
    """One event that was not stored: its position in the input, and why."""

    index: int
    code: str
    message: str
    message_id: str | None = None


@dataclass
class UploadResult:
    """What an upload achieved. ``rejections`` are in input order."""

    accepted: int = 0
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return len(self.rejections)

    @property
    def ok(self) -> bool:
        return not self.rejections


class UploadError(Exception):
    """The upload stopped before every event was sent. ``result`` holds what was done
    before it stopped; ``index`` is the input index of the first event of the batch that
    failed: from there on, nothing was sent (or known to be stored)."""

    def __init__(self, message: str, result: UploadResult, index: int) -> None:
        super().__init__(message)
        self.result = result
        self.index = index


class ServerUnavailable(UploadError):
    """Connection errors, 429 or 5xx answers persisted through every retry."""


class AuthenticationError(UploadError):
    """The server refused the writeKey (401/403): every further batch would fail too."""


@dataclass
class _Batch:
    indexes: list[int] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)
    items: list[bytes] = field(default_factory=list)
    size: int = len(_BATCH_OPEN) + len(_BATCH_CLOSE)

    def body(self) -> bytes:
        return _BATCH_OPEN + b",".join(self.items) + _BATCH_CLOSE


class Client:
    """Send events to an eventrouter (or any Segment-compatible) host.

    :param host: base URL, e.g. ``http://127.0.0.1:8000`` (``http://`` is assumed when
        no scheme is given).
    :param write_key: the source's writeKey, sent as the Basic-auth username; ``None``
        for a server with open ingestion.
    :param timeout: seconds for each HTTP request (connect, read, write).
    :param max_retries: retries of one batch after its first attempt, on connection
        errors, ``429`` and ``5xx``; then :class:`ServerUnavailable` is raised.
    :param backoff: first retry delay in seconds; it doubles on each retry up to
        ``max_backoff``, and each wait is drawn between half and all of it (jitter). A
        ``Retry-After`` header replaces it, capped at ``max_backoff`` too, so a retry
        never waits unboundedly.
    :param gzip: compress request bodies (``Content-Encoding: gzip``).
    :param batch_events: at most this many events per request (≤ 2500).
    :param batch_bytes: at most this many bytes of JSON per request (≤ 500 KB).
    :param path: the batch endpoint.
    :param sleep: how the client waits between attempts (``time.sleep``; tests pass a
        recorder to see the waits it chose).
    """

    def __init__(
        self,
        host: str,
        write_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        gzip: bool = True,
        batch_events: int = MAX_BATCH_EVENTS,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        max_queue: int = 10_000,
        path: str = "/v1/import",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 1 <= batch_events <= MAX_BATCH_EVENTS:
            raise ValueError(f"batch_events must be between 1 and {MAX_BATCH_EVENTS}")
        if not MAX_EVENT_BYTES < batch_bytes <= MAX_BATCH_BYTES:
            raise ValueError(f"batch_bytes must be over 32 KB and at most {MAX_BATCH_BYTES}")
        if max_retries < 0:
            raise ValueError("max_retries must be 0 or more")
        if "://" not in host:
            host = f"http://{host}"
        self.host = host.rstrip("/")
        self.url = f"{self.host}{path}"
        self.max_retries = max_retries
        self.sleep = sleep
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.gzip = gzip
        self.batch_events = batch_events
        self.batch_bytes = batch_bytes
        self.max_queue = max_queue
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"eventrouter-python/{__version__}",
        }
        if gzip:
            headers["Content-Encoding"] = "gzip"
        self._http = httpx.Client(
            auth=(write_key, "") if write_key else None,
            headers=headers,
            timeout=timeout,
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=4),
        )
        self._queue: list[dict[str, Any]] = []
        self._flushed = UploadResult()  # results of automatic flushes, until flush()

    # -- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        """Flush queued events, then close the connection pool."""
        try:
            self.flush()
        finally:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- bulk upload -------------------------------------------------------------------
    def upload(
        self,
        events: Iterable[dict[str, Any]],
        *,
        progress: Callable[[int], None] | None = None,
    ) -> UploadResult:
        """Send ``events`` in batches; return the accepted count and each rejection by
        its index in ``events``.

        The input is consumed lazily, one batch at a time, so it may be a generator over
        a file larger than memory. The dicts are not modified: a missing ``messageId`` is
        added to a copy. ``progress``, when given, is called after each batch with the
        number of input events that batch settled (sent or rejected locally).

        Raises :class:`ServerUnavailable` when a batch still fails after ``max_retries``
        retries, :class:`AuthenticationError` when the writeKey is refused; the
        exception's ``result`` holds what earlier batches achieved.
        """
        result = UploadResult()
        for batch, local in self._batches(events, result):
            if batch.items:
                self._send(batch, result)
            if progress is not None:
                progress(len(batch.items) + local)
        result.rejections.sort(key=lambda r: r.index)
        return result

    def _batches(
        self, events: Iterable[dict[str, Any]], result: UploadResult
    ) -> Iterator[tuple[_Batch, int]]:
        """Encoded batches within both limits, each with the count of events rejected
        locally while it was filled."""
        batch, local = _Batch(), 0
        for index, event in enumerate(events):
            encoded, message_id, problem = _prepare(event)
            if problem is not None:
                result.rejections.append(Rejection(index, *problem, message_id=message_id))
                local += 1
                continue
            extra = len(encoded) + (1 if batch.items else 0)  # the comma
            if batch.items and (
                len(batch.items) >= self.batch_events or batch.size + extra > self.batch_bytes
            ):
                yield batch, local
                batch, local = _Batch(), 0
                extra = len(encoded)
            batch.indexes.append(index)
            batch.message_ids.append(message_id)
            batch.items.append(encoded)
            batch.size += extra
        if batch.items or local:
            yield batch, local

    def _send(self, batch: _Batch, result: UploadResult) -> None:
        body = batch.body()
        if self.gzip:
            body = gzip.compress(body, compresslevel=5, mtime=0)
        failure = ""
        retry_after: float | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.sleep(self._delay(attempt, retry_after))
            retry_after = None
            try:
                response = self._http.post(self.url, content=body)
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code in _RETRY_STATUSES:
                failure = f"HTTP {response.status_code}: {_error_text(response)}"
                retry_after = _retry_after(response)
                continue
            self._settle(batch, response, result)
            return
        attempts = self.max_retries + 1
        raise ServerUnavailable(
            f"POST {self.url} failed after {attempts} attempt(s) "
            f"({len(batch.items)} events not sent from input index {batch.indexes[0]}): "
            f"{failure}",
            result,
            batch.indexes[0],
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        ceiling = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    def _settle(self, batch: _Batch, response: httpx.Response, result: UploadResult) -> None:
        """Count a final (non-retryable) answer into ``result``."""
        status = response.status_code
        body = _json(response)
        if status in (401, 403):
            raise AuthenticationError(
                f"POST {self.url}: writeKey refused (HTTP {status}): {_error_text(response)}",
                result,
                batch.indexes[0],
            )
        rejected = body.get("rejected") if isinstance(body, dict) else None
        if 200 <= status < 300:
            per_item = rejected if isinstance(rejected, list) else []
            result.accepted += len(batch.items) - len(per_item)
            self._map_rejections(batch, per_item, result)
        elif isinstance(rejected, list) and rejected:
            # 400 invalid_batch: no item was valid, and each one says why.
            self._map_rejections(batch, rejected, result)
        else:  # any other 4xx (or unexpected status): the whole batch is refused
            error = body if isinstance(body, dict) else {}
            code = str(error.get("code") or f"http_{status}")
            message = str(error.get("message") or _error_text(response))
            for index, message_id in zip(batch.indexes, batch.message_ids, strict=True):
                result.rejections.append(Rejection(index, code, message, message_id))

    @staticmethod
    def _map_rejections(batch: _Batch, rejected: list[Any], result: UploadResult) -> None:
        """The server's indexes are positions in the batch; report input indexes."""
        for item in rejected:
            position = item.get("index") if isinstance(item, dict) else None
            if not isinstance(position, int) or not 0 <= position < len(batch.indexes):
                continue
            result.rejections.append(
                Rejection(
                    batch.indexes[position],
                    str(item.get("code", "rejected")),
                    str(item.get("message", "")),
                    batch.message_ids[position],
                )
            )

    # -- helpers that queue ------------------------------------------------------------
    def track(
        self,
        user_id: str | None = None,
        event: str | None = None,
        properties: dict[str, Any] | None = None,
        **common: Any,
    ) -> str:
        """Queue a track event; returns its ``messageId``. ``common`` takes
        ``anonymous_id``, ``timestamp``, ``context``, ``message_id``, ``integrations``."""
        if not event:
            raise ValueError("track: event is required")
        return self._enqueue(
            "track", user_id, {"event": event, "properties": properties or {}}, **common
        )

    def identify(
        self, user_id: str | None = None, traits: dict[str, Any] | None = None, **common: Any
    ) -> str:
        """Queue an identify event; returns its ``messageId``."""
        return self._enqueue("identify", user_id, {"traits": traits or {}}, **common)

    def page(
        self,
        user_id: str | None = None,
        name: str | None = None,
        properties: dict[str, Any] | None = None,
        *,
        category: str | None = None,
        **common: Any,
    ) -> str:
        """Queue a page event; returns its ``messageId``."""
        return self._view("page", user_id, name, properties, category, common)

    def screen(
        self,
        user_id: str | None = None,
        name: str | None = None,
        properties: dict[str, Any] | None = None,
        *,
        category: str | None = None,
        **common: Any,
    ) -> str:
        """Queue a screen event; returns its ``messageId``."""
        return self._view("screen", user_id, name, properties, category, common)

    def _view(
        self,
        kind: str,
        user_id: str | None,
        name: str | None,
        properties: dict[str, Any] | None,
        category: str | None,
        common: dict[str, Any],
    ) -> str:
        fields = {"name": name, "category": category, "properties": properties or {}}
        return self._enqueue(kind, user_id, _present(fields), **common)

    def group(
        self,
        user_id: str | None = None,
        group_id: str | None = None,
        traits: dict[str, Any] | None = None,
        **common: Any,
    ) -> str:
        """Queue a group event; returns its ``messageId``."""
        if not group_id:
            raise ValueError("group: group_id is required")
        return self._enqueue(
            "group", user_id, {"groupId": group_id, "traits": traits or {}}, **common
        )

    def alias(
        self, user_id: str | None = None, previous_id: str | None = None, **common: Any
    ) -> str:
        """Queue an alias event (``previous_id`` becomes ``user_id``); returns its
        ``messageId``."""
        if not previous_id:
            raise ValueError("alias: previous_id is required")
        return self._enqueue("alias", user_id, {"previousId": previous_id}, **common)

    def flush(self) -> UploadResult:
        """Send every queued event. The result covers them and any automatic flush since
        the last call; rejection indexes count events in queueing order from there."""
        queued, self._queue = self._queue, []
        done, self._flushed = self._flushed, UploadResult()
        if queued:
            try:
                result = self.upload(queued)
            except UploadError:
                # Keep them all for the next flush: the batches that did go through are
                # resent with the same messageIds.
                self._queue = queued + self._queue
                self._flushed = done
                raise
            _merge(done, result)
        return done

    def _enqueue(
        self,
        kind: str,
        user_id: str | None,
        fields: dict[str, Any],
        *,
        anonymous_id: str | None = None,
        timestamp: datetime | str | None = None,
        context: dict[str, Any] | None = None,
        message_id: str | None = None,
        integrations: dict[str, Any] | None = None,
    ) -> str:
        if user_id is None and anonymous_id is None:
            raise ValueError(f"{kind}: user_id or anonymous_id is required")
        message_id = message_id or str(uuid.uuid4())
        event: dict[str, Any] = {"type": kind, "messageId": message_id, **fields}
        if user_id is not None:
            event["userId"] = user_id
        if anonymous_id is not None:
            event["anonymousId"] = anonymous_id
        # The call time is the event time: queued events keep it however late they go.
        event["timestamp"] = timestamp or datetime.now(UTC)
        event["context"] = {"library": LIBRARY, **(context or {})}
        if integrations is not None:
            event["integrations"] = integrations
        self._queue.append(event)
        if len(self._queue) >= self.max_queue:
            queued, self._queue = self._queue, []
            try:
                result = self.upload(queued)
            except UploadError:
                self._queue = queued
                raise
            _merge(self._flushed, result)
        return message_id


def _merge(into: UploadResult, result: UploadResult) -> None:
    """Append ``result`` to ``into``, its indexes shifted past the events ``into`` covers."""
    offset = into.accepted + into.rejected
    into.accepted += result.accepted
    into.rejections.extend(
        Rejection(r.index + offset, r.code, r.message, r.message_id) for r in result.rejections
    )


def _present(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _prepare(event: Any) -> tuple[bytes, str | None, tuple[str, str] | None]:
    """``(encoded, messageId, None)``, or ``(b"", messageId, (code, message))`` for an
    event that cannot be sent."""
    if not isinstance(event, dict):
        return (
            b"",
            None,
            ("invalid_event", f"event: expected an object, got {type(event).__name__}"),
        )
    message_id = event.get("messageId")
    if not message_id:
        message_id = str(uuid.uuid4())
        event = {**event, "messageId": message_id}
    elif not isinstance(message_id, str):
        message_id = str(message_id)
    try:
        encoded = _encode(event)
    except (TypeError, msgspec.EncodeError) as exc:
        return b"", message_id, ("invalid_event", f"event: cannot be encoded as JSON ({exc})")
    if len(encoded) > MAX_EVENT_BYTES:
        return (
            b"",
            message_id,
            (
                "event_too_large",
                f"event: {len(encoded)} bytes, larger than the "
                f"{MAX_EVENT_BYTES // 1024} KB limit (not sent)",
            ),
        )
    return encoded, message_id, None


def _json(response: httpx.Response) -> Any:
    try:
        return msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        return None


def _error_text(response: httpx.Response) -> str:
    body = _json(response)
    if isinstance(body, dict) and "message" in body:
        code = body.get("code")
        return f"{code}: {body['message']}" if code else str(body["message"])
    text = response.text.strip()
    return text[:200] or response.reason_phrase


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
