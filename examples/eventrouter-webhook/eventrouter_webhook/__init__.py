"""The ``webhook`` sink type: POST every batch of events, as JSON, to an HTTP endpoint.

A third-party eventrouter plugin, written only against the public plugin API of
``docs/plugins.md``: a :class:`~eventrouter.bus.sink.Sink` subclass with an ``Options``
Struct, registered by ``eventrouter_sink_types`` in the module that the package's
``eventrouter`` entry point names. Operator's guide: ``README.md``.

Each request is ``{"batch": [row, ...]}``, one row per event with exactly the stored
columns (``Command.row()``), at most ``max_events_per_request`` rows per request.

Batching, buffering and retries are eventrouter's, configured by the sink's ``batch``,
``buffer`` and ``retry`` blocks: a write posts its batch once. The sink only says which
failures are permanent: any answer outside 2xx other than 429 and 5xx
(:class:`WebhookRejected`, ``retryable = False``). Connection errors, timeouts, 429
and 5xx (:class:`WebhookUnavailable`) are retried, no sooner than a ``Retry-After: N``
the endpoint asked for.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from collections.abc import Sequence
from typing import Annotated, Any

import httpx
import msgspec

from eventrouter.bus.hookspecs import hookimpl
from eventrouter.bus.sink import Sink
from eventrouter.config import Duration
from eventrouter.events.commands import Command
from eventrouter.health import ComponentHealth

__version__ = "0.1.0"

log = logging.getLogger("eventrouter_webhook")

SIGNATURE_HEADER = "X-Eventrouter-Signature"
BATCH_ID_HEADER = "X-Eventrouter-Batch-Id"
#: The namespace of batch ids: a UUIDv5 of the message ids a request carries.
BATCH_NAMESPACE = uuid.UUID("0b6f7a3e-2a51-4c38-9a0e-6d1f3c5b8e21")


class WebhookOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``[sinks.NAME]`` keys of ``type = "webhook"``, beside the shared ones."""

    url: Annotated[str, msgspec.Meta(pattern=r"^https?://\S+$")]
    #: Sent with every request, e.g. ``{ Authorization = "Bearer ${HOOK_TOKEN}" }``.
    headers: dict[str, str] = {}
    #: Connect, read and write timeout of each request.
    timeout: Duration = Duration(10.0)
    #: When set, the body's HMAC-SHA256 goes in ``X-Eventrouter-Signature``.
    secret: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    max_events_per_request: Annotated[int, msgspec.Meta(ge=1)] = 500


class WebhookRejected(Exception):
    """The endpoint refused a request for good (a 4xx other than 429)."""

    #: Sending the same request again cannot succeed: eventrouter does not retry it.
    retryable = False


class WebhookUnavailable(Exception):
    """The endpoint could not take a request now (no connection, a timeout, 429, 5xx)."""

    def __init__(self, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        #: Seconds the endpoint asked to wait (``Retry-After``): the least pause before
        #: eventrouter's next attempt.
        self.retry_after = retry_after


def sign(secret: str, body: bytes) -> str:
    """The value of ``X-Eventrouter-Signature`` for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def is_retryable(status: int) -> bool:
    return status == 429 or status >= 500


class WebhookSink(Sink):
    Options = WebhookOptions

    #: A batch written again (a retry after a timeout the endpoint did answer, a
    #: redelivery in queue mode) is posted again: the endpoint gets it twice, with the
    #: same ``X-Eventrouter-Batch-Id``, by which it can drop the repeat.
    at_least_once = True

    def __init__(self, name: str, config: Any, options: WebhookOptions) -> None:
        # No I/O here: ``config check`` and a queued edge build the sink but never start it.
        super().__init__(name, config, options)
        self._client: httpx.AsyncClient | None = None
        self.requests = 0
        self.delivered_events = 0
        self.failed_requests = 0
        self.last_status: int | None = None
        self.last_error: str | None = None

    async def start(self, bus: Any) -> None:
        self._client = httpx.AsyncClient(
            timeout=self.options.timeout,
            headers={
                "User-Agent": f"eventrouter-webhook/{__version__}",
                "Content-Type": "application/json",
                **self.options.headers,
            },
        )
        log.info("%s: posting batches to %s", self.name, self.options.url)

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def write(self, commands: Sequence[Command]) -> None:
        # An async write runs on the event loop and is cancelled when the request (or the
        # worker's ``write_timeout``) gives up, so a slow endpoint never leaves work behind.
        if self._client is None:
            raise RuntimeError(f"sink {self.name} is not running")
        size = self.options.max_events_per_request
        for first in range(0, len(commands), size):
            await self._post(commands[first : first + size])

    async def _post(self, commands: Sequence[Command]) -> None:
        """POST one request; raise :class:`WebhookRejected` or :class:`WebhookUnavailable`
        unless the endpoint answered 2xx."""
        body = msgspec.json.encode({"batch": [command.row() for command in commands]})
        headers = {BATCH_ID_HEADER: str(uuid.uuid5(BATCH_NAMESPACE, _ids(commands)))}
        if self.options.secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.options.secret, body)
        self.requests += 1
        try:
            response = await self._client.post(self.options.url, content=body, headers=headers)
        except httpx.TransportError as exc:
            self._failed(f"{type(exc).__name__}: {exc or 'no detail'}")
            raise WebhookUnavailable(self.last_error) from exc
        self.last_status = response.status_code
        if response.is_success:
            self.delivered_events += len(commands)
            return
        error = f"HTTP {response.status_code} from {self.options.url}"
        if not is_retryable(response.status_code):
            self._failed(f"{error}: {response.text[:200]}")
            raise WebhookRejected(self.last_error)
        self._failed(error)
        raise WebhookUnavailable(error, retry_after=_retry_after(response))

    def _failed(self, error: str) -> None:
        self.failed_requests += 1
        self.last_error = error

    def health(self) -> ComponentHealth:
        # There is no cheap round trip to a webhook that would not deliver something, so
        # the probe is a no-op: the component is up while running, with the last error.
        stats = {
            "requests": self.requests,
            "delivered_events": self.delivered_events,
            "failed_requests": self.failed_requests,
            "last_status": self.last_status,
        }
        return self.probed_health(
            lambda: None,
            stats,
            last_error=self.last_error,
            not_running="not running" if self._client is None else None,
        )


def _ids(commands: Sequence[Command]) -> str:
    return "\n".join(command.message_id for command in commands)


def _retry_after(response: httpx.Response) -> float:
    """Seconds asked for by a ``Retry-After: N`` header, else 0 (dates are ignored)."""
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else 0.0


@hookimpl
def eventrouter_sink_types() -> dict[str, type[Sink]]:
    return {"webhook": WebhookSink}
