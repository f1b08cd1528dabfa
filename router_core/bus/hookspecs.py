"""The hooks of the eventrouter bus: every extension point, each with its contract.

A plugin is any module or object with functions marked ``@hookimpl`` whose names match
these; it is registered through the ``eventrouter`` entry-point group (built-in sinks
use the same group). Every hook is documented in ``docs/plugins.md``; a test fails when
one is missing there. Implementations may be plain functions or ``async def``; the bus
awaits whatever is awaitable and runs plain functions in a thread of their own, so a
blocking implementation never stalls the event loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from eventrouter.bus.context import BusContext, RouteContext
    from eventrouter.bus.sink import Sink
    from eventrouter.errors import APIError
    from eventrouter.events.commands import Command
    from eventrouter.health import ComponentHealth

hookspec = pluggy.HookspecMarker("eventrouter")
hookimpl = pluggy.HookimplMarker("eventrouter")


@hookspec
def eventrouter_sink_types() -> dict[str, type[Sink]]:
    """Return the sink types this plugin provides, keyed by the ``type`` name used in config.

    :returns: ``{"webhook": WebhookSink}``; each class subclasses
        :class:`eventrouter.bus.sink.Sink`.
    """


@hookspec
def eventrouter_startup(bus: BusContext) -> Any:
    """Called once per server or worker process, before the first event is dispatched.

    :param bus: what a plugin sees of the running bus
        (:class:`eventrouter.bus.context.BusContext`); ``bus.config`` is the validated
        configuration. A pipeline stage registers itself here with ``bus.add_plugin``.
    Open connections and start threads here. Raising aborts start-up.
    """


@hookspec
def eventrouter_register_routes(app: Any, routes: RouteContext) -> Any:
    """Mount this plugin's HTTP routes on the server's Falcon ASGI ``app``.

    Called once per app, in ``eventrouter serve`` only, after the core's own routes
    (ingestion, ``/api/v1``, ``/health``, ``/metrics``, ``/openapi.json``). The built-in
    dashboard (``/admin``) and the snippet origin (``/snippet/v1/...``,
    ``/analytics.js/v1/...``, ``/v1/projects/.../settings``) mount theirs here.
    :param app: the ``falcon.asgi.App``; add routes with ``app.add_route``.
    :param routes: the config, the bus, the admin store's query layer and the admin
        sign-in (:class:`eventrouter.bus.context.RouteContext`);
        ``routes.on_shutdown(close)`` has ``close()`` awaited when the server stops.
    Raising aborts start-up.
    """


@hookspec
def eventrouter_suppressions_changed() -> Any:
    """The suppression list changed in this process (the dashboard's privacy page):
    a plugin holding a copy of it re-reads it now rather than at its next refresh.

    Failures are logged; the change itself is already stored.
    """


@hookspec
def eventrouter_process_batch(
    commands: Sequence[Command], sink: str | None
) -> Sequence[Command] | None:
    """Pipeline stage run before any sink sees a batch (dedup, enrichment, scrubbing).

    :param commands: the accepted commands of one request (or one queue batch).
    :param sink: the name of the one sink the batch is for (in ``eventrouter worker``,
        which feeds each sink from its own queue), or ``None`` on the edge, where the
        batch goes to every sink (embedded mode) or to the queue.
    :returns: a new sequence to replace the batch (drop or rewrite commands with
        :func:`msgspec.structs.replace`; ``command.properties`` and the other free-form
        fields read as dicts, decoded on first access, and a replaced one is encoded
        once), or ``None`` to leave it unchanged.
    Implementations run one after another, each seeing the previous one's output. An
    implementation that raises, or takes longer than ``server.dispatch_timeout``, is
    skipped (counted and logged): a broken enrichment must not lose events. A
    privacy stage fails closed instead: when its plugin object has ``fail_closed = True``
    (the built-in scrub and suppress stages do), its failure refuses the whole batch,
    which then reaches no sink and no broker (``503`` on the edge; in the worker the
    write fails and is retried).
    """


@hookspec
def eventrouter_admit_events(commands: Sequence[Command]) -> Mapping[int, APIError] | None:
    """Refuse events of one request at the edge, before any is accepted.

    :param commands: the commands of one request (one event, or a batch's valid items),
        in request order; never empty.
    :returns: ``{index: error}`` for the commands to refuse (each error an
        :class:`eventrouter.errors.APIError`, usually a ``400``
        :class:`~eventrouter.errors.InvalidEvent` naming the field), or ``None`` to admit
        them all. A single event refused is answered with its error; a batch's refused
        items are listed in its response as invalid ones are, and the others stored.
    Called on the edge only (``eventrouter serve``, embedded and queue mode), for every
    request, on the event loop, before the request joins a dispatch: it must be a plain
    function and fast (no I/O). An object whose ``idle`` attribute is true is not called.
    Raising refuses the request with ``503`` (nothing of it stored).
    """


@hookspec
def eventrouter_batch_committed(commands: Sequence[Command], sink: str | None) -> Any:
    """Called after a batch is durable: every acknowledging sink (or the queue) holds it.

    :param commands: the commands that were delivered (after the pipeline stages).
    :param sink: as for :func:`eventrouter_process_batch`: the sink that committed them
        in ``eventrouter worker``, or ``None`` on the edge.
    Dedup marks message ids as seen here, never earlier, so an id whose write failed is
    stored when it comes again. Failures are logged and counted; they never undo the
    commit or change the response.
    """


@hookspec
def eventrouter_write_batch(commands: Sequence[Command]) -> Any:
    """Observer: deliver a batch of accepted commands to a destination.

    :param commands: commands in arrival order; never empty.
    Return (or resolve) once the batch is handled; raise to report failure. Each
    implementation is called in isolation with a timeout: one that raises or hangs never
    stops the others. For a sink with ``acknowledgements = true`` (the default for sinks
    named in config) the client's ``200`` waits for it, and its failure answers ``503``;
    every other implementation is fire-and-forget and its failures are counted in
    ``/health``. Batching, a bounded buffer and retries are the framework's
    (``eventrouter.bus.outlet``, the worker): an implementation writes each batch once.
    """


@hookspec
def eventrouter_health() -> ComponentHealth | list[ComponentHealth] | None:
    """Report the state of the components this plugin owns, for ``GET /health``.

    :returns: one or more :class:`eventrouter.health.ComponentHealth`.
    A component marked ``required`` that is down makes ``/health`` answer ``503``.
    """


@hookspec
def eventrouter_shutdown() -> Any:
    """Called once when the process stops, after the last request was answered.

    Flush buffers and close connections; every acknowledged event must be durable on return.
    """
