"""What a plugin sees of the bus: :class:`BusContext`, and :class:`RouteContext` for
plugins that serve HTTP.

Hooks and sinks are given a ``BusContext``, never the :class:`~eventrouter.bus.bus.Bus`
itself: this module imports nothing of the bus, so the hook specifications, the sink
base class and the bus no longer refer to one another's types, and a plugin cannot
reach the plugin manager. :class:`~eventrouter.bus.bus.Bus` implements the protocol.

Pipeline stages run in a declared order: each stage plugin may say where it runs with
a ``stage_order`` attribute (an int, lower first; :data:`DEFAULT_STAGE_ORDER` when it
has none), and ``[plugins] stage_order`` in config overrides it per plugin name. Ties
keep registration order. See docs/plugins.md, "Pipeline stages and their order".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from eventrouter.config import Config
    from eventrouter.health import ComponentHealth

#: Where a stage without a ``stage_order`` runs: after dedup, before the privacy stages.
DEFAULT_STAGE_ORDER = 500


def stage_order(plugin: Any, name: str | None, configured: Mapping[str, int]) -> int:
    """Where ``plugin`` (registered as ``name``) runs among the pipeline stages:
    ``[plugins] stage_order`` for its name, else its ``stage_order`` attribute, else
    :data:`DEFAULT_STAGE_ORDER`."""
    if name is not None and name in configured:
        return configured[name]
    order = getattr(plugin, "stage_order", DEFAULT_STAGE_ORDER)
    return order if isinstance(order, int) and not isinstance(order, bool) else DEFAULT_STAGE_ORDER


class BusContext(Protocol):
    """The bus as hooks and sinks see it (``eventrouter_startup(bus)``, ``Sink.start``)."""

    #: The validated configuration of this process.
    config: Config
    #: ``"edge"`` in ``eventrouter serve``, ``"worker"`` in ``eventrouter worker`` and
    #: ``eventrouter dead-letters replay``.
    role: str
    #: Every configured sink by name (built and validated, whether or not it runs here).
    sinks: Mapping[str, Any]
    #: The sinks this process writes to, by name (empty on a queued edge).
    running: Mapping[str, Any]

    @property
    def queued(self) -> bool:
        """An edge that hands events to ``[queue]`` instead of running the sinks."""
        ...

    @property
    def gathers_batches(self) -> bool:
        """True in the worker: each write is a whole batch its consumer gathered and
        retries itself, so a sink neither lingers for more writes nor retries again."""
        ...

    def store_sink(self) -> Any:
        """The sink whose store the query API and the dashboard read (``[admin] store``,
        else the first queryable one), or ``None``."""
        ...

    def add_plugin(self, plugin: Any, name: str) -> bool:
        """Register ``plugin`` (a pipeline stage, a health reporter: any object with
        ``@hookimpl`` methods) under ``name``, once: ``False`` when a plugin of that name
        is registered already (or blocked by ``[plugins] disabled``)."""
        ...

    async def health(self, timeout: float = 5.0) -> list[ComponentHealth]:
        """Every component's state, as ``GET /health`` shows it."""
        ...

    async def suppressions_changed(self) -> None:
        """Tell every plugin holding a copy of the suppression list to re-read it now
        (``eventrouter_suppressions_changed``)."""
        ...


@dataclass
class RouteContext:
    """What ``eventrouter_register_routes`` gets beside the app: the parts of the edge a
    plugin's pages share with the core's own routes."""

    config: Config
    bus: BusContext
    #: The admin store's query layer (:class:`eventrouter.store.query.EventStore`), or
    #: ``None`` without a queryable sink.
    store: Any
    #: The admin sign-in (:class:`eventrouter.edge.auth.AdminAuth`): sessions, CSRF,
    #: the bearer token; a plugin's protected pages check it as the dashboard does.
    auth: Any
    #: Awaited at shutdown, last registered first, before the bus stops.
    closers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)

    def on_shutdown(self, close: Callable[[], Awaitable[Any]]) -> None:
        """Have ``close()`` awaited when the server stops (after the last request)."""
        self.closers.append(close)
