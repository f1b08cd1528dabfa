"""The base class for sinks: destinations that observe batches of commands.

A sink type is a subclass of :class:`Sink` returned by a plugin's
``eventrouter_sink_types`` hook. For every ``[sinks.NAME]`` table in the config, the bus
builds one instance and registers it on the plugin manager as ``sink:NAME``; the hook
implementations below adapt pluggy's calls to four plain methods a sink author writes:
:meth:`start`, :meth:`write`, :meth:`health` and :meth:`stop`. A sink that keeps events
the core may read or erase returns its :meth:`store`.

``write`` gets one whole batch and writes it once. Batching, buffering and retries are
the framework's (:mod:`eventrouter.bus.outlet` on the edge, the queue consumer in
``eventrouter worker``), configured by the sink's ``batch``, ``buffer`` and ``retry``
blocks; a sink only says which of its errors are not worth retrying
(:meth:`Sink.is_retryable`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from eventrouter.bus.hookspecs import hookimpl
from eventrouter.bus.retry import retryable_by_default
from eventrouter.config import SinkConfig
from eventrouter.health import ComponentHealth

if TYPE_CHECKING:
    from eventrouter.bus.context import BusContext
    from eventrouter.events.commands import Command
    from eventrouter.store.interface import Store


class Sink:
    """A destination. Subclasses set :attr:`Options` and override :meth:`write`.

    ``write`` may be ``async def`` (awaited on the event loop: it must not block) or a
    plain method (run in a thread of the sink's own).
    """

    #: The msgspec Struct validating this sink's own config keys (beside the shared
    #: ``type``, ``acknowledgements``, ``batch``, ``buffer`` and ``retry`` blocks).
    Options: ClassVar[type[msgspec.Struct]] = msgspec.Struct

    #: A plain (not ``async``) ``write`` whose calls are serialised anyway (one
    #: connection, a file lock) may ask for a writer thread of its own on the edge: the
    #: thread takes the next group the moment the previous write returns, so a group
    #: holds everything that arrived meanwhile and no event-loop turn passes between
    #: writes. Its attempts are not cut short by a timeout (each request still is, by
    #: its own). Otherwise plain writes run in a small thread pool shared by the sink's
    #: hooks. The worker calls ``write`` from its pool either way.
    dedicated_writer: ClassVar[bool] = False

    #: True for an append-only destination (a file, a stream) that cannot skip an event
    #: it holds already: a batch written again (a retry, a redelivery in queue mode) is
    #: stored twice. False: writes are idempotent on ``message_id``. The conformance kit
    #: (``eventrouter.testing``) checks the claim; docs/plugins.md, "Idempotent and
    #: append-only destinations".
    at_least_once: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # The bus awaits ``async def`` hook implementations on the loop and runs plain
        # ones in a thread; give an async ``write``/``start``/``stop`` an async adapter.
        super().__init_subclass__(**kwargs)
        if not isinstance(getattr(cls, "queryable", None), property):
            raise TypeError(
                f"{cls.__name__}.queryable: a sink is queryable when store() returns a "
                "Store with a query dialect (docs/plugins.md, 'Adding a store')"
            )
        for method, (hook, adapter) in _ASYNC_ADAPTERS.items():
            if inspect.iscoroutinefunction(getattr(cls, method)):
                setattr(cls, hook, adapter)

    def __init__(self, name: str, config: SinkConfig, options: Any) -> None:
        self.name = name
        self.config = config
        self.options = options

    # -- the methods a sink author writes ---------------------------------------------
    def start(self, bus: BusContext) -> Any:
        """Open connections, start threads. Called once per process."""

    def write(self, commands: Sequence[Command]) -> Any:
        """Deliver ``commands``; return once durable, raise on failure."""
        raise NotImplementedError

    def health(self) -> ComponentHealth:
        """Up; required when acknowledging, so an override that reports it down (or a
        probe that raises) makes ``/health`` answer 503."""
        return ComponentHealth(
            name=f"sink:{self.name}", up=True, required=self.config.acknowledgements
        )

    def stop(self) -> Any:
        """Flush and close. Called once per process at shutdown."""

    def is_retryable(self, error: BaseException) -> bool:
        """Whether a write that failed with ``error`` may succeed if tried again.

        The framework retries a failed write per the sink's ``retry`` block, on the edge
        and in the worker alike; a sink never retries on its own. By default every error
        is retried except one whose class (or instance) sets ``retryable = False``; an
        error with a ``retry_after`` attribute (seconds) makes the next pause at least
        that long. Override this for errors of a library you do not own."""
        return retryable_by_default(error)

    def probed_health(
        self,
        probe: Callable[[], Any],
        stats: dict[str, Any],
        *,
        last_error: str | None = None,
        where: str = "",
        not_running: str | None = None,
    ) -> ComponentHealth:
        """The usual :meth:`health` of a sink with a store to reach: up when ``probe()``
        (a cheap round trip: ``SELECT 1``, ``HeadBucket``) returns, down with the error
        (prefixed by ``where``) when it raises; ``last_error`` is shown while up. With
        ``not_running`` (why the sink cannot write), down with that, unprobed."""
        component = ComponentHealth(
            name=f"sink:{self.name}", up=False, required=self.config.acknowledgements, stats=stats
        )
        if not_running is not None:
            component.detail = not_running
            return component
        try:
            probe()
        except Exception as exc:
            component.detail = f"{where}{type(exc).__name__}: {exc}"
            return component
        component.up = True
        component.detail = f"last error: {last_error}" if last_error else ""
        return component

    def migrate(self) -> str | None:
        """Create or upgrade this sink's schema, idempotently (``eventrouter migrate``).

        Blocking; runs outside any server. Returns a one-line description of the schema
        now in place, or ``None`` when the sink has no schema to manage."""
        return None

    def store(self) -> Store | None:
        """What the core asks a sink that keeps events about them: how to query, erase
        and keep the admin tables there (:class:`eventrouter.store.interface.Store`).
        None: the sink keeps nothing the core can read or erase. No I/O."""
        return None

    @property
    def queryable(self) -> bool:
        """Whether the query API and the dashboard can read this sink's store."""
        store = self.store()
        return store is not None and store.queryable

    # -- pluggy adapters ---------------------------------------------------------------
    @hookimpl
    def eventrouter_startup(self, bus: BusContext) -> Any:
        return self.start(bus)

    @hookimpl
    def eventrouter_write_batch(self, commands: Sequence[Command]) -> Any:
        return self.write(commands)

    @hookimpl
    def eventrouter_health(self) -> ComponentHealth:
        return self.health()

    @hookimpl
    def eventrouter_shutdown(self) -> Any:
        return self.stop()


def resolve_waiters(entries: Sequence[tuple], error: BaseException | None) -> None:
    """For sinks that group-commit from a thread: on the event loop (via
    ``loop.call_soon_threadsafe``), settle the future that ends each of ``entries``
    with the group's outcome. A request that gave up meanwhile (timeout, disconnect) has
    its future done already and is skipped."""
    for *_, future in entries:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


@hookimpl
async def _async_startup(self: Sink, bus: BusContext) -> Any:
    return await self.start(bus)


@hookimpl
async def _async_write(self: Sink, commands: Sequence[Command]) -> Any:
    return await self.write(commands)


@hookimpl
async def _async_shutdown(self: Sink) -> Any:
    return await self.stop()


_ASYNC_ADAPTERS = {
    "start": ("eventrouter_startup", _async_startup),
    "write": ("eventrouter_write_batch", _async_write),
    "stop": ("eventrouter_shutdown", _async_shutdown),
}
