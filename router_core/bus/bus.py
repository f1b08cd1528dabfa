"""The bus: a pluggy PluginManager built from config, behind a small typed facade.

Nothing else in the code base calls ``pm.hook.*`` for dispatch. pluggy stops a hook call
at the first exception, so the bus calls every implementation of
``eventrouter_write_batch`` on its own, with a timeout, records what happened to it, and
goes on: one broken sink never holds the others back or fails the request path.

Sinks named in config with ``acknowledgements = true`` are *acknowledging*: the request
awaits them and answers 503 if one fails. Every other implementation is an observer,
called in the background. On the edge each of them is reached through an
:class:`~eventrouter.bus.outlet.Outlet`, which owns the mechanics every sink needs: a
bounded buffer (``buffer``), group commit (``batch``) and retries (``retry``).

A bus has a role. On the *edge* (``eventrouter serve``) it runs the configured sinks
itself (embedded mode) or, with ``[queue]`` configured, only the queue publisher: the
sinks then run in ``eventrouter worker``, whose bus (role *worker*) delivers each
queue's batches to its one sink with :meth:`Bus.deliver`.

Pipeline stages fail open, except privacy stages: a plugin whose object has
``fail_closed = True`` (:func:`fails_closed`; the built-in scrub and suppress stages)
refuses the whole batch when its stage raises or times out (:class:`FailedClosed`, a
503 on the edge, a failed write that the worker retries), rather than let the batch go
on without it.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import inspect
import logging
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from eventrouter import metrics
from eventrouter.bus import hookspecs
from eventrouter.bus.batcher import BatchPolicy
from eventrouter.bus.context import RouteContext, stage_order
from eventrouter.bus.outlet import Outlet
from eventrouter.bus.retry import RetryPolicy
from eventrouter.bus.sink import Sink
from eventrouter.bus.timeouts import Expired
from eventrouter.bus.timeouts import within as _within
from eventrouter.config import BatchConfig, BufferConfig, Config, ConfigError, SinkConfig, convert
from eventrouter.errors import APIError
from eventrouter.events.commands import Command
from eventrouter.health import ComponentHealth

log = logging.getLogger("eventrouter.bus")

ENTRY_POINT_GROUP = "eventrouter"
EDGE = "edge"
WORKER = "worker"
#: Sink type of the edge's queue publisher (provided by ``sinks.queue``).
QUEUE_PLUGIN = "queue"
#: Plugin name it is registered under (not ``sink:...``: it is not a [sinks] entry).
PUBLISHER_NAME = "broker"


def make_plugin_manager(
    config: Config, *, entry_points: bool = True, plugins: Sequence[Any] = ()
) -> pluggy.PluginManager:
    """Build a fresh PluginManager: hookspecs, entry-point plugins, then ``plugins``.

    Plugins named in ``[plugins] disabled`` are blocked before loading. Every test gets
    its own manager; there is no import-time global. A module in ``plugins`` that an
    entry point has registered already (a plugin under test, installed with
    ``pip install -e .``) is skipped: pluggy would refuse it under a second name.
    """
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    for name in config.plugins.disabled:
        pm.set_blocked(name)
    if entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    if config.plugins_dir:
        for name, module in load_plugins_dir(config.plugins_dir, config.path):
            if pm.is_blocked(name):
                continue
            if pm.get_plugin(name) is not None:
                raise ConfigError(
                    config.path,
                    "plugins_dir",
                    f"{Path(config.plugins_dir) / (name + '.py')}: a plugin named {name!r} "
                    "is installed already (rename the file)",
                )
            pm.register(module, name=name)
    for plugin in plugins:
        if not pm.is_registered(plugin):
            pm.register(plugin)
    pm.check_pending()
    return pm


def load_plugins_dir(directory: str, file: str | None = None) -> list[tuple[str, ModuleType]]:
    """Import every ``*.py`` file of ``directory`` (not those starting with ``_``), in
    name order: ``[(plugin name = file stem, module)]``.

    Each file is imported once per process and kept in ``sys.modules`` under a name of
    its own (its path's hash), so that building a second plugin manager, as the server's
    workers and the tests do, reuses the module and its state, as for an entry point.

    :raises ConfigError: the directory is missing, or a file fails to import (the error
        names the file).
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise ConfigError(file, "plugins_dir", f"{directory}: not a directory")
    found = []
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        resolved = path.resolve()
        digest = hashlib.sha1(str(resolved).encode(), usedforsecurity=False).hexdigest()[:12]
        module_name = f"eventrouter_plugins_dir_{digest}_{path.stem}"
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, resolved)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[module_name]
                raise ConfigError(
                    file, "plugins_dir", f"{path}: {type(exc).__name__}: {exc}"
                ) from exc
        found.append((path.stem, module))
    return found


#: Seconds a client is told to wait before retrying a refused batch.
RETRY_AFTER = "5"


class NotDurable(APIError):
    """An acknowledging sink could not take the batch: the client must retry."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            503,
            "unavailable",
            f"events may not have been stored, retry later: {detail}",
            headers={"Retry-After": RETRY_AFTER},
        )


class StartFailed(Exception):
    """A plugin's ``eventrouter_startup`` (a sink's ``start``) raised. ``str()`` is the
    one line an operator needs: ``sink 'archive' (type jsonl) failed to start: ...``;
    the original error is the ``__cause__``."""

    def __init__(self, message: str, plugin_name: str) -> None:
        super().__init__(message)
        #: The plugin's name on the plugin manager (``sink:archive``, ``dedup:redis``).
        self.plugin_name = plugin_name


def fails_closed(plugin: Any) -> bool:
    """Whether ``plugin``'s pipeline stage is privacy-relevant: its object (module or
    instance) has a true ``fail_closed`` attribute (docs/plugins.md, "Failing closed")."""
    return bool(getattr(plugin, "fail_closed", False))


class FailedClosed(APIError):
    """A fail-closed pipeline stage raised or timed out, so the batch went nowhere: no
    sink, observer or broker saw any of it. The edge answers 503 (the client retries);
    the worker's write fails, unacknowledged, and is retried."""

    def __init__(self, stage: str, detail: str) -> None:
        super().__init__(
            503,
            "unavailable",
            f"pipeline stage {stage} failed ({detail}); "
            "no event of this request was stored, retry later",
            headers={"Retry-After": RETRY_AFTER},
        )
        #: The plugin name of the stage (``scrub:paths``, ``suppress:store``, ...).
        self.stage = stage


def _client_detail(exc: BaseException) -> str:
    """What a 503 may quote of ``exc``: its message if it says it is ``client_safe``
    (names no host or credential), else only its type."""
    return str(exc) if getattr(exc, "client_safe", False) else type(exc).__name__


@dataclass
class PluginStats:
    """What happened to one hook implementation (shown in ``/health``)."""

    batches: int = 0
    events: int = 0
    failures: int = 0
    timeouts: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_success_at: float | None = None

    @property
    def up(self) -> bool:
        """No failure since the last success (the counters keep the history)."""
        if self.last_error_at is None:
            return True
        return self.last_success_at is not None and self.last_success_at > self.last_error_at

    def failed(self, error: str, timed_out: bool = False) -> None:
        self.failures += 1
        self.timeouts += timed_out
        self.last_error = error
        self.last_error_at = time.time()

    def succeeded(self) -> None:
        self.last_success_at = time.time()


class Bus:
    """Dispatches batches of commands through the pipeline and out to the sinks."""

    def __init__(
        self,
        config: Config,
        pm: pluggy.PluginManager,
        *,
        role: str = EDGE,
        only: Sequence[str] | None = None,
    ) -> None:
        """:param role: ``EDGE`` or ``WORKER``.
        :param only: worker: run just these sinks (default: every configured sink)."""
        self.config = config
        self.pm = pm
        self.role = role
        #: Every configured sink, built and validated (whether or not it runs here).
        self.sinks: dict[str, Sink] = {}
        #: The sinks this process runs (registered on the plugin manager).
        self.running: dict[str, Sink] = {}
        #: The edge's queue publisher, when ``[queue]`` is configured.
        self.publisher: Sink | None = None
        self.stats: dict[str, PluginStats] = {}
        self._acknowledging: set[str] = set()
        self._executors: dict[str, ThreadPoolExecutor] = {}
        #: Edge: each write implementation's buffer, batcher and retries, by plugin name.
        self.outlets: dict[str, Outlet] = {}
        self._is_async: dict[Any, bool] = {}
        self._stage_cache: tuple[list, list] | None = None
        self.build_sinks(only)

    # -- construction ------------------------------------------------------------------
    def sink_types(self) -> dict[str, type[Sink]]:
        """Every installed sink type by name; of two plugins offering one name, the first
        registered wins (with a warning naming both)."""
        types: dict[str, type[Sink]] = {}
        owners: dict[str, str] = {}
        for impl in self.pm.hook.eventrouter_sink_types.get_hookimpls():
            for name, cls in (impl.function() or {}).items():
                if name in owners:
                    log.warning(
                        "sink type %r is provided by plugins %r and %r; using %r's",
                        name,
                        owners[name],
                        impl.plugin_name,
                        owners[name],
                    )
                    continue
                types[name] = cls
                owners[name] = impl.plugin_name
        return types

    @property
    def gathers_batches(self) -> bool:
        """True in ``eventrouter worker``, where each write is a batch a queue's consumer
        gathered. Informational: in both roles the framework batches and retries (the
        edge's :class:`~eventrouter.bus.outlet.Outlet`, the worker's consumer), so a
        sink neither lingers for more writes nor retries one itself."""
        return self.role == WORKER

    def group_limit(self, default: int) -> int:
        """The most events one dispatch should carry: ``default``, or less when a sink
        this process writes has a smaller ``buffer.max_events`` (a dispatch larger than
        a sink's whole buffer could only enter it while the buffer is empty)."""
        buffers = [sink.config.buffer.max_events for sink in self.running.values()]
        return min([default, *buffers])

    @property
    def queued(self) -> bool:
        """True on an edge that hands events to the queue instead of running the sinks."""
        return self.role == EDGE and self.config.queue is not None

    def build_sinks(self, only: Sequence[str] | None = None) -> None:
        """Instantiate every ``[sinks.NAME]``; register the ones this process runs as
        plugin ``sink:NAME`` (and, on a queued edge, the queue publisher)."""
        types = self.sink_types()
        file = self.config.path
        for name in only or ():
            if name not in self.config.sinks:
                known = ", ".join(self.config.sinks) or "none"
                raise ConfigError(file, "sinks", f"no sink named {name!r} (configured: {known})")
        for name, sink_config in self.config.sinks.items():
            if sink_config.type == QUEUE_PLUGIN:
                raise ConfigError(
                    file,
                    f"sinks.{name}.type",
                    "the queue is configured in the [queue] table, not as a sink",
                )
            cls = types.get(sink_config.type)
            if cls is None:
                known = ", ".join(sorted(t for t in types if t != QUEUE_PLUGIN)) or "none"
                raise ConfigError(
                    file,
                    f"sinks.{name}.type",
                    f"unknown sink type {sink_config.type!r} (installed: {known})",
                )
            options = convert(sink_config.options, cls.Options, file, f"sinks.{name}")
            self.sinks[name] = cls(name, sink_config, options)
        if self.queued:
            cls = types.get(QUEUE_PLUGIN)
            if cls is None:
                raise ConfigError(file, "queue", "the queue plugin (sinks.queue) is not installed")
            self.publisher = cls(QUEUE_PLUGIN, SinkConfig(type=QUEUE_PLUGIN), self.config.queue)
            self._register(PUBLISHER_NAME, self.publisher, acknowledging=True)
        else:
            for name, sink in self.sinks.items():
                if self.role == EDGE or not only or name in only:
                    self._register(f"sink:{name}", sink, sink.config.acknowledgements)
                    self.running[name] = sink
        self.store_sink()

    def _register(self, plugin_name: str, sink: Sink, acknowledging: bool) -> None:
        if self.pm.register(sink, name=plugin_name) is None:
            # pluggy refuses a blocked name silently: the sink would never be called.
            what = f"sink {plugin_name[5:]!r}" if plugin_name.startswith("sink:") else plugin_name
            raise ConfigError(
                self.config.path,
                "plugins.disabled",
                f"{what} is configured but blocked by plugins.disabled "
                f"(remove [sinks.{plugin_name[5:]}] to turn it off)"
                if plugin_name.startswith("sink:")
                else f"{what} is configured but blocked by plugins.disabled",
            )
        if acknowledging:
            self._acknowledging.add(plugin_name)

    def add_plugin(self, plugin: Any, name: str) -> bool:
        """Register ``plugin`` under ``name`` once (:class:`~.context.BusContext`): a
        pipeline stage or any object with ``@hookimpl`` methods. ``False`` when a plugin
        of that name is registered already, or ``[plugins] disabled`` blocks it."""
        if self.pm.get_plugin(name) is not None or self.pm.is_blocked(name):
            return False
        self.pm.register(plugin, name=name)
        self._stage_cache = None
        return True

    def stages(self) -> list[pluggy.HookImpl]:
        """The ``eventrouter_process_batch`` implementations in the order they run:
        by :func:`~.context.stage_order` (``[plugins] stage_order``, else the plugin's
        ``stage_order``), ties in registration order."""
        impls = self.pm.hook.eventrouter_process_batch.get_hookimpls()
        cached = self._stage_cache
        if cached is not None and cached[0] == impls:
            return cached[1]
        configured = self.config.plugins.stage_order
        # get_hookimpls() lists the last registered last; pluggy would call it first.
        ordered = sorted(
            impls,
            key=lambda impl: stage_order(impl.plugin, impl.plugin_name, configured),
        )
        self._stage_cache = (impls, ordered)
        return ordered

    def admit(self, commands: Sequence[Command]) -> dict[int, APIError] | None:
        """Ask every ``eventrouter_admit_events`` implementation (not ``idle``) which of
        one request's ``commands`` to refuse: ``{index: error}``, or None for none. None
        at once when no plugin implements the hook (then it costs a look-up).

        :raises FailedClosed: an implementation raised (the request is refused, 503).
        """
        refused: dict[int, APIError] | None = None
        for impl in self.pm.hook.eventrouter_admit_events.get_hookimpls():
            if getattr(impl.plugin, "idle", False):
                continue
            try:
                result = impl.function(commands)
            except Exception as exc:
                name = impl.plugin_name
                self.stats.setdefault(name, PluginStats()).failed(repr(exc))
                log.exception("%s: admit_events failed; request refused", name)
                raise FailedClosed(name, _client_detail(exc)) from exc
            if result:
                refused = {**(refused or {}), **result}
        return refused

    def register_routes(self, app: Any, routes: RouteContext) -> None:
        """Have every ``eventrouter_register_routes`` implementation mount its routes on
        ``app`` (first registered first). A failure aborts start-up."""
        for impl in reversed(self.pm.hook.eventrouter_register_routes.get_hookimpls()):
            impl.function(**{name: {"app": app, "routes": routes}[name] for name in impl.argnames})

    async def suppressions_changed(self) -> None:
        """Call every ``eventrouter_suppressions_changed`` implementation, each isolated."""
        timeout = self.config.server.dispatch_timeout
        for impl in self.pm.hook.eventrouter_suppressions_changed.get_hookimpls():
            try:
                await _within(timeout, self._invoke(impl, {}))
            except Exception as exc:
                detail = "timed out" if isinstance(exc, Expired) else repr(exc)
                log.error("%s: suppressions_changed failed: %s", impl.plugin_name, detail)

    def store_sink(self) -> Sink | None:
        """The sink whose store the query API reads: ``[admin] store``, else the first SQL one.

        :raises ConfigError: ``[admin] store`` names a sink that is not queryable.
        """
        wanted = self.config.admin.store
        if not wanted:
            return next((s for s in self.sinks.values() if s.queryable), None)
        sink = self.sinks[wanted]
        if not sink.queryable:
            raise ConfigError(
                self.config.path,
                "admin.store",
                f"sink {wanted!r} has type {sink.config.type!r}, which is not queryable "
                "(the query API needs an SQL store)",
            )
        return sink

    # -- calling one implementation in isolation ---------------------------------------
    def _executor(self, plugin_name: str) -> ThreadPoolExecutor:
        executor = self._executors.get(plugin_name)
        if executor is None:
            executor = ThreadPoolExecutor(4, thread_name_prefix=f"hook-{plugin_name}")
            self._executors[plugin_name] = executor
        return executor

    async def _invoke(self, impl: pluggy.HookImpl, kwargs: dict[str, Any]) -> Any:
        function = impl.function
        args = {name: kwargs[name] for name in impl.argnames}
        is_async = self._is_async.get(function)
        if is_async is None:
            is_async = self._is_async[function] = inspect.iscoroutinefunction(function)
        if is_async:
            return await function(**args)
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(
            self._executor(impl.plugin_name), partial(function, **args)
        )
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _guarded(
        self,
        impl: pluggy.HookImpl,
        commands: Sequence[Command],
        timeout: float,
        outlet: Outlet | None = None,
    ) -> BaseException | None:
        """Deliver to one implementation (through ``outlet`` when it has one); return the
        failure instead of raising it."""
        stats = self.stats.setdefault(impl.plugin_name, PluginStats())
        stats.batches += 1
        stats.events += len(commands)
        if outlet is not None:
            # The outlet writes, retries, meters and logs per group; this is the view of
            # the requests that waited for it.
            try:
                await outlet.submit(commands, timeout)
            except Expired as exc:
                stats.failed(str(exc), timed_out=True)
                return exc
            except Exception as exc:
                stats.failed(f"{type(exc).__name__}: {exc}")
                return exc
            stats.succeeded()
            return None
        m = metrics.get()
        m.child(m.sink_batch_events, impl.plugin_name).observe(len(commands))
        started = time.perf_counter()
        try:
            await _within(timeout, self._invoke(impl, {"commands": commands}))
            stats.succeeded()
        except Expired as exc:
            stats.failed(f"timed out after {timeout:g}s", timed_out=True)
            log.error("%s: write timed out after %gs", impl.plugin_name, timeout)
            m.child(m.sink_failed, impl.plugin_name).inc()
            return exc
        except Exception as exc:
            stats.failed(f"{type(exc).__name__}: {exc}")
            log.exception("%s: write failed", impl.plugin_name)
            m.child(m.sink_failed, impl.plugin_name).inc()
            return exc
        m.child(m.sink_write_duration, impl.plugin_name).observe(time.perf_counter() - started)
        m.child(m.sink_written, impl.plugin_name).inc(len(commands))
        return None

    def _outlet(self, impl: pluggy.HookImpl) -> Outlet | None:
        """The edge's outlet of a write implementation, made on first use; None for the
        queue publisher, which has its own group commit and spool (sinks/queue.py)."""
        name = impl.plugin_name
        outlet = self.outlets.get(name)
        if outlet is not None or name == PUBLISHER_NAME:
            return outlet
        sink = self.running.get(name[5:]) if name.startswith("sink:") else None
        acknowledging = name in self._acknowledging
        server = self.config.server
        if sink is not None:
            config = sink.config
            batch, buffer = config.batch, config.buffer
            retry = RetryPolicy(config.retry, sink.is_retryable)
            if acknowledging and config.batch.timeout >= server.dispatch_timeout:
                log.warning(
                    "%s: batch.timeout (%gs) is not below server.dispatch_timeout (%gs): "
                    "requests will time out waiting for the write",
                    name,
                    config.batch.timeout,
                    server.dispatch_timeout,
                )
        else:  # a plugin that observes every batch: the defaults, no retries
            batch, buffer, retry = BatchConfig(), BufferConfig(), RetryPolicy.never()
        stats = self.stats.setdefault(name, PluginStats())

        def report(events: int, error: BaseException | None, timed_out: bool) -> None:
            if acknowledging:
                return  # counted per request by _guarded
            stats.batches += 1
            stats.events += events
            if error is None:
                stats.succeeded()
            else:
                stats.failed(_describe(error), timed_out=timed_out)

        outlet = self.outlets[name] = Outlet(
            name,
            impl,
            acknowledging=acknowledging,
            batch=BatchPolicy.from_config(batch),
            buffer=buffer,
            retry=retry,
            write_timeout=server.observer_timeout,
            executor=partial(self._executor, name),
            report=report,
        )
        return outlet

    # -- the request path --------------------------------------------------------------
    async def process(
        self,
        commands: Sequence[Command],
        stages: Sequence[pluggy.HookImpl] | None = None,
        sink: str | None = None,
    ) -> Sequence[Command]:
        """Run the pipeline hooks (dedup, enrichment, ...) in order, each isolated.

        A stage that raises or takes longer than ``server.dispatch_timeout`` is counted,
        logged and skipped: the batch passes on unchanged. Unless its plugin
        :func:`fails_closed` (a privacy stage: scrub, suppress): then the whole batch is
        refused. ``stages`` defaults to :meth:`stages` (every ``eventrouter_process_batch``
        implementation, in their declared order); ``sink`` is passed on to them. A stage
        whose plugin object says it is ``idle`` (it would return the batch unchanged,
        e.g. an empty suppression list) is not called: the isolation around each call
        costs the request path more than such a stage's own work.

        :raises FailedClosed: a fail-closed stage raised or timed out.
        """
        if stages is None:
            stages = self.stages()
        timeout = self.config.server.dispatch_timeout
        for impl in stages:
            plugin = impl.plugin
            if getattr(plugin, "idle", False):
                continue
            name = impl.plugin_name
            try:
                result = await _within(
                    timeout, self._invoke(impl, {"commands": commands, "sink": sink})
                )
            except Expired:
                detail = f"timed out after {timeout:g}s"
                self.stats.setdefault(name, PluginStats()).failed(detail, timed_out=True)
                if fails_closed(plugin):
                    log.error("%s: pipeline stage %s; batch refused (fail_closed)", name, detail)
                    raise FailedClosed(name, detail) from None
                log.error("%s: pipeline stage %s; batch passed on", name, detail)
                continue
            except Exception as exc:
                self.stats.setdefault(name, PluginStats()).failed(repr(exc))
                if fails_closed(plugin):
                    # An error that explains itself (``client_safe``, e.g. the suppression
                    # list not read yet) may come with every batch: no traceback for it.
                    log.error(
                        "%s: pipeline stage failed (%r); batch refused (fail_closed)",
                        name,
                        exc,
                        exc_info=not getattr(exc, "client_safe", False),
                    )
                    raise FailedClosed(name, _client_detail(exc)) from exc
                log.exception("%s: pipeline stage failed; batch passed on unchanged", name)
                continue
            if (stats := self.stats.get(name)) is not None:
                stats.succeeded()  # only stages that failed before are tracked in /health
            if result is not None:
                commands = result
            if not commands:
                break
        return commands

    async def dispatch(self, commands: Sequence[Command]) -> None:
        """Deliver a batch; return once every acknowledging sink holds it.

        :raises NotDurable: an acknowledging sink failed or timed out (answer 503).
        :raises FailedClosed: a fail-closed stage failed; no sink was called (503).
        """
        if stages := self.stages():
            commands = await self.process(commands, stages)
            if not commands:
                return
        acknowledging = []
        server = self.config.server
        for impl in self.pm.hook.eventrouter_write_batch.get_hookimpls():
            if impl.plugin_name in self._acknowledging:
                acknowledging.append(impl)
            else:  # never holds the request: skipped while its buffer is full
                self._outlet(impl).offer(commands)
        timeout = server.dispatch_timeout
        if len(acknowledging) == 1:
            impl = acknowledging[0]
            failures = [await self._guarded(impl, commands, timeout, self._outlet(impl))]
        else:
            failures = await asyncio.gather(
                *(self._guarded(i, commands, timeout, self._outlet(i)) for i in acknowledging)
            )
        failed = [
            (impl.plugin_name, exc)
            for impl, exc in zip(acknowledging, failures, strict=True)
            if exc is not None
        ]
        if failed:
            name, exc = failed[0]
            # Only the type: a message may name hosts or credentials. An error meant for
            # the client (``client_safe = True``, e.g. the full spool) is quoted.
            raise NotDurable(f"{name}: {_client_detail(exc)}")
        await self.committed(commands, None)

    async def deliver(self, sink: str, commands: Sequence[Command]) -> Sequence[Command]:
        """Worker: run the pipeline for ``sink``, write the batch to it, then report it
        committed. Returns the commands written (dedup may have dropped some).

        :raises Exception: the sink's failure (or ``TimeoutError``), or
            :class:`FailedClosed` before any write, for the worker to retry, hold or
            dead-letter.
        """
        if stages := self.stages():
            commands = await self.process(commands, stages, sink)
            if not commands:
                return commands
        plugin_name = f"sink:{sink}"
        impl = next(
            i
            for i in self.pm.hook.eventrouter_write_batch.get_hookimpls()
            if i.plugin_name == plugin_name
        )
        queue = self.config.queue
        timeout = queue.write_timeout if queue is not None else self.config.server.dispatch_timeout
        error = await self._guarded(impl, commands, timeout)
        if error is not None:
            raise error
        await self.committed(commands, sink)
        return commands

    async def committed(self, commands: Sequence[Command], sink: str | None) -> None:
        """Call every ``eventrouter_batch_committed`` implementation, each isolated."""
        if not commands:
            return
        timeout = self.config.server.dispatch_timeout
        for impl in self.pm.hook.eventrouter_batch_committed.get_hookimpls():
            try:
                await _within(timeout, self._invoke(impl, {"commands": commands, "sink": sink}))
            except Exception as exc:
                detail = "timed out" if isinstance(exc, Expired) else repr(exc)
                self.stats.setdefault(impl.plugin_name, PluginStats()).failed(detail)
                log.error("%s: batch_committed failed: %s", impl.plugin_name, detail)

    async def stage_down(self, plugin_name: str, timeout: float = 5.0) -> str | None:
        """Why plugin ``plugin_name`` says it is down (its ``eventrouter_health``), or
        None: it reports nothing down, or nothing at all. The worker holds a batch that a
        fail-closed stage refused while that stage is down, as it does for a sink."""
        for impl in self.pm.hook.eventrouter_health.get_hookimpls():
            if impl.plugin_name != plugin_name:
                continue
            try:
                result = await _within(timeout, self._invoke(impl, {}))
            except Exception as exc:
                return "health check timed out" if isinstance(exc, Expired) else repr(exc)
            for component in result if isinstance(result, list) else [result]:
                if component is not None and not component.up:
                    return component.detail or "down"
        return None

    # -- lifecycle and health ----------------------------------------------------------
    def describe_plugin(self, plugin_name: str) -> str:
        """How an operator knows a plugin: ``sink 'archive' (type jsonl)`` for a
        configured sink, ``the queue publisher`` for the edge's, else
        ``plugin 'NAME'``."""
        if plugin_name.startswith("sink:") and plugin_name[5:] in self.sinks:
            sink = self.sinks[plugin_name[5:]]
            return f"sink {sink.name!r} (type {sink.config.type})"
        if plugin_name == PUBLISHER_NAME:
            return "the queue publisher"
        return f"plugin {plugin_name!r}"

    async def start(self) -> None:
        """Call every ``eventrouter_startup``, first registered first.

        :raises StartFailed: one raised; the plugins started before it have been shut
            down again, and the error names the culprit in one line.
        """
        started: set[str] = set()
        for impl in reversed(self.pm.hook.eventrouter_startup.get_hookimpls()):
            try:
                await self._invoke(impl, {"bus": self})
            except Exception as exc:
                await self._shut_down(started)
                message = (
                    f"{self.describe_plugin(impl.plugin_name)} failed to start: "
                    f"{type(exc).__name__}: {exc}"
                )
                raise StartFailed(message, impl.plugin_name) from exc
            started.add(impl.plugin_name)
        if self.role == EDGE:  # each outlet in /health and /metrics from the start
            for impl in self.pm.hook.eventrouter_write_batch.get_hookimpls():
                self._outlet(impl)

    async def stop(self, grace: float = 10.0) -> None:
        """Write what the outlets hold (for up to ``grace`` seconds: a hung observer is
        then given up), then call every ``eventrouter_shutdown``."""
        if self.outlets:
            closing = [asyncio.create_task(o.close()) for o in self.outlets.values()]
            _, late = await asyncio.wait(closing, timeout=grace)
            for outlet in self.outlets.values():
                outlet.cancel()
            if late:
                await asyncio.wait(late)
        await self._shut_down()

    async def _shut_down(self, only: set[str] | None = None) -> None:
        """Call ``eventrouter_shutdown`` (of the plugins in ``only``, when given), each
        isolated, then let the hook threads go."""
        for impl in reversed(self.pm.hook.eventrouter_shutdown.get_hookimpls()):
            if only is not None and impl.plugin_name not in only:
                continue
            try:
                await self._invoke(impl, {})
            except Exception:
                log.exception("%s: shutdown failed", impl.plugin_name)
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)
        self._executors.clear()

    async def health(self, timeout: float = 5.0) -> list[ComponentHealth]:
        """Every component's state; a probe that raises or hangs reports it as down."""
        components: list[ComponentHealth] = []
        reported: set[str] = set()
        for impl in self.pm.hook.eventrouter_health.get_hookimpls():
            required = impl.plugin_name in self._acknowledging
            try:
                result = await _within(timeout, self._invoke(impl, {}))
            except Exception as exc:
                detail = "health check timed out" if isinstance(exc, Expired) else repr(exc)
                result = ComponentHealth(
                    name=impl.plugin_name, up=False, required=required, detail=detail
                )
            for component in result if isinstance(result, list) else [result]:
                if component is None:
                    continue
                stats = self.stats.get(impl.plugin_name)
                if stats is not None:
                    component.stats = {
                        **vars(stats),
                        **self._outlet_stats(impl.plugin_name),
                        **component.stats,
                    }
                components.append(component)
            reported.add(impl.plugin_name)
        for name, stats in self.stats.items():
            if name not in reported:
                components.append(
                    ComponentHealth(
                        name=name,
                        up=stats.up,
                        detail=stats.last_error or "",
                        stats={**vars(stats), **self._outlet_stats(name)},
                    )
                )
        return components

    def _outlet_stats(self, plugin_name: str) -> dict[str, Any]:
        outlet = self.outlets.get(plugin_name)
        return outlet.stats() if outlet is not None else {}


def _describe(error: BaseException) -> str:
    return str(error) if isinstance(error, Expired) else f"{type(error).__name__}: {error}"
