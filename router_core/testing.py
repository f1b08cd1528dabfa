"""A conformance kit for sink types: the same cases for every sink, and a table.

Use it from a test::

    from eventrouter.testing import SinkConformance

    def test_my_sink_conforms(tmp_path):
        kit = SinkConformance("jsonl", {"path": str(tmp_path / "e.jsonl")},
                              plugins=[eventrouter_jsonl], read_back=my_reader)
        kit.check()  # runs every case, prints the table, fails naming the cases

or as a pytest plugin: ``pytest -p eventrouter.testing --sink-type file
--sink-options '{"path": "/tmp/e.jsonl"}'`` collects nothing of its own but gives tests
the ``sink_conformance`` fixture built from those options.

``read_back(sink)`` returns the ``message_id`` of every event the destination holds,
once per copy stored. The kit reads a queryable store (SQL) itself, and the built-in
``file`` sink's files; any other sink needs a reader.

The cases (docs/plugins.md, "Testing a sink with the conformance kit"): every call
type; a large batch; a redelivered batch, which must not be stored twice unless the
sink declares ``at_least_once``; several processes writing at once, each with its own
instance; a failure raised in ``write`` and how ``is_retryable`` classifies it;
``start`` and ``stop`` called twice; and the health report.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import multiprocessing
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eventrouter import config as config_module
from eventrouter.bus.bus import WORKER, Bus, make_plugin_manager
from eventrouter.bus.sink import Sink
from eventrouter.events.commands import (
    AliasCommand,
    Command,
    GroupCommand,
    IdentifyCommand,
    PageCommand,
    ScreenCommand,
    TrackCommand,
)
from eventrouter.health import ComponentHealth

#: Values that must arrive as sent, whatever the destination encodes them into.
NASTY = 'it\'s "quoted"; DROP TABLE events; -- <script>\u2028\n\\ é 😀'
LARGE_BATCH = 5000
PROCESSES = 3


@dataclass
class Case:
    name: str
    passed: bool
    detail: str = ""


def commands(prefix: str, count: int | None = None) -> list[Command]:
    """One command of every type (``count`` None), or ``count`` track commands; every
    ``message_id`` starts with ``prefix``."""
    now = datetime.now(UTC)
    base = {"source": "conformance", "timestamp": now, "received_at": now, "user_id": NASTY}
    if count is not None:
        return [
            TrackCommand(message_id=f"{prefix}-{i}", event=NASTY, properties={"i": i}, **base)
            for i in range(count)
        ]
    return [
        TrackCommand(message_id=f"{prefix}-track", event=NASTY, properties={NASTY: NASTY}, **base),
        IdentifyCommand(message_id=f"{prefix}-identify", traits={"plan": NASTY}, **base),
        PageCommand(message_id=f"{prefix}-page", name=NASTY, **base),
        ScreenCommand(message_id=f"{prefix}-screen", name=NASTY, **base),
        GroupCommand(message_id=f"{prefix}-group", group_id=NASTY, **base),
        AliasCommand(message_id=f"{prefix}-alias", previous_id=NASTY, **base),
    ]


async def _call(method: Any, *args: Any) -> Any:
    if inspect.iscoroutinefunction(method):
        return await method(*args)
    result = await asyncio.to_thread(method, *args)
    return await result if inspect.isawaitable(result) else result


def read_sql_store(sink: Sink) -> list[str]:
    """Every stored ``message_id`` of a queryable store, once per row, read as the query
    API and the dashboard read it (the dialect's ``select``: ClickHouse's ``FINAL``
    reads copies that no merge has collapsed yet as one)."""
    dialect = sink.store().query_dialect()
    engine = dialect.connect()
    try:
        with engine.connect() as connection:
            query = dialect.select(dialect.table.c.message_id)
            return [row[0] for row in connection.execute(query)]
    finally:
        engine.dispose()


def read_files(sink: Sink) -> list[str]:
    """The ``file`` sink's live and rotated files."""
    path = Path(sink.options.path)
    ids = []
    for file in sorted(path.parent.glob(f"{path.stem}*{path.suffix}")):
        ids += [json.loads(line)["message_id"] for line in file.read_bytes().split(b"\n") if line]
    return ids


def _write_in_process(
    kit_class: type[SinkConformance],
    sink_type: str,
    options: dict,
    plugins: Sequence[str],
    prefix: str,
) -> None:
    """One of the concurrent writers (a new process, given the kit's class, which pickle
    passes by name, and the plugins' module names): its own bus, sink instance, start,
    writes, stop."""
    modules = [importlib.import_module(name) for name in plugins]
    kit = kit_class(sink_type, options, plugins=modules)
    sink = kit.build()

    async def run() -> None:
        await _call(sink.start, kit.bus)
        try:
            for n in range(5):
                await _call(sink.write, commands(f"{prefix}-{n}", 50))
        finally:
            await _call(sink.stop)

    asyncio.run(run())


class SinkConformance:
    """Drives one sink type through the kit's cases (module docstring).

    A harness for a sink that is not configured as ``[sinks.NAME]`` (the edge's queue
    publisher, built from ``[queue]``) subclasses it: :meth:`build` returns the instance
    to drive (and sets :attr:`bus`), :attr:`health_name` the component its health report
    must include. The concurrent writers build their instances through the same class,
    so a subclass lives in an importable module, and keeps this constructor's signature.
    """

    #: The name of the component the sink's health report must include (``sink:NAME``).
    health_name = "sink:conformance"

    def __init__(
        self,
        sink_type: str,
        options: dict[str, Any],
        *,
        plugins: Sequence[Any] = (),
        read_back: Callable[[Sink], list[str]] | None = None,
        processes: int = PROCESSES,
    ) -> None:
        self.sink_type = sink_type
        self.options = options
        self.plugins = list(plugins)
        self.read_back = read_back
        self.processes = processes
        self.run_id = uuid.uuid4().hex[:8]
        self.bus: Bus | None = None

    def build(self) -> Sink:
        """A fresh instance, validated as ``[sinks.conformance]`` would be."""
        table = {"type": self.sink_type, **self.options}
        config = config_module.parse({"sinks": {"conformance": table}})
        self.bus = Bus(config, make_plugin_manager(config, plugins=self.plugins), role=WORKER)
        return self.bus.sinks["conformance"]

    def _reader(self, sink: Sink) -> Callable[[Sink], list[str]]:
        if self.read_back is not None:
            return self.read_back
        if sink.queryable:
            return read_sql_store
        if sink.config.type == "file":
            return read_files
        raise TypeError(f"sink type {self.sink_type!r}: give SinkConformance a read_back")

    def stored(self, sink: Sink, prefix: str) -> Counter:
        ids = self._reader(sink)(sink)
        return Counter(i for i in ids if i.startswith(prefix))

    # -- the cases -------------------------------------------------------------------
    async def _cases(self) -> list[Case]:
        sink = self.build()
        results = []

        async def case(name: str, check: Callable[[], Any]) -> None:
            try:
                detail = await check()
                results.append(Case(name, True, detail or ""))
            except Exception as exc:
                results.append(Case(name, False, f"{type(exc).__name__}: {exc}"[:300]))

        async def start_stop() -> str:
            await _call(sink.start, self.bus)
            await _call(sink.start, self.bus)
            await _call(sink.stop)
            await _call(sink.stop)
            await _call(sink.start, self.bus)
            return "start, start, stop, stop, start"

        await case("start/stop idempotent", start_stop)

        async def every_type() -> str:
            prefix = f"{self.run_id}-types"
            batch = commands(prefix)
            await _call(sink.write, batch)
            held = self.stored(sink, prefix)
            missing = {c.message_id for c in batch} - set(held)
            assert not missing, f"not stored: {sorted(missing)}"
            return f"{len(batch)} types stored"

        await case("every call type", every_type)

        async def large() -> str:
            prefix = f"{self.run_id}-large"
            await _call(sink.write, commands(prefix, LARGE_BATCH))
            held = len(self.stored(sink, prefix))
            assert held == LARGE_BATCH, f"{held} of {LARGE_BATCH} stored"
            return f"{LARGE_BATCH} events in one write"

        await case("large batch", large)

        async def redelivered() -> str:
            prefix = f"{self.run_id}-again"
            batch = commands(prefix, 20)
            await _call(sink.write, batch)
            await _call(sink.write, batch)
            held = self.stored(sink, prefix)
            twice = sum(1 for n in held.values() if n > 1)
            assert len(held) == 20, f"{len(held)} of 20 stored"
            if twice and not sink.at_least_once:
                raise AssertionError(
                    f"{twice} events stored twice, and the sink does not declare at_least_once"
                )
            return "stored twice (at_least_once)" if twice else "stored once"

        await case("redelivered batch", redelivered)

        async def concurrent() -> str:
            prefix = f"{self.run_id}-proc"
            context = multiprocessing.get_context("spawn")
            names = [plugin.__name__ for plugin in self.plugins]  # modules, imported again
            workers = [
                context.Process(
                    target=_write_in_process,
                    args=(type(self), self.sink_type, self.options, names, f"{prefix}{n}"),
                )
                for n in range(self.processes)
            ]
            for worker in workers:
                worker.start()
            for worker in workers:
                await asyncio.to_thread(worker.join, 300)
            failed = [w.exitcode for w in workers if w.exitcode != 0]
            assert not failed, f"writer processes exited with {failed}"
            expected = self.processes * 5 * 50
            held = self.stored(sink, prefix)
            assert len(held) == expected, f"{len(held)} of {expected} stored"
            return f"{self.processes} processes x 250 events"

        await case("concurrent processes", concurrent)

        async def failure() -> str:
            class Permanent(Exception):
                retryable = False

            assert sink.is_retryable(Permanent("bad")) is False, "retryable = False retried"
            await _call(sink.stop)
            try:
                await _call(sink.write, commands(f"{self.run_id}-stopped", 1))
            except Exception as exc:
                kind = "retryable" if sink.is_retryable(exc) else "permanent"
                return f"write on a stopped sink: {type(exc).__name__} ({kind})"
            finally:
                await _call(sink.start, self.bus)
            return "write on a stopped sink did not raise"

        await case("failure in write classified", failure)

        async def health() -> str:
            # One component, or a list of them (as eventrouter_health may return).
            report = await _call(sink.health)
            components = report if isinstance(report, list) else [report]
            for component in components:
                assert isinstance(component, ComponentHealth), f"health() returned {report!r}"
                assert component.up, f"{component.name} down: {component.detail}"
            names = [component.name for component in components]
            assert self.health_name in names, f"no {self.health_name!r} among {names}"
            return f"{', '.join(names)} up"

        await case("health report", health)
        await _call(sink.stop)
        return results

    def run(self) -> list[Case]:
        return asyncio.run(self._cases())

    def table(self, results: Sequence[Case]) -> str:
        width = max(len(r.name) for r in results)
        lines = [
            f"conformance of sink type {self.sink_type!r}",
            f"{'case':<{width}}  result  detail",
        ]
        lines += [
            f"{r.name:<{width}}  {'pass' if r.passed else 'FAIL':<6}  {r.detail}" for r in results
        ]
        return "\n".join(lines)

    def check(self) -> list[Case]:
        """Run every case, print the table, and raise naming the failed cases."""
        results = self.run()
        print(self.table(results))
        failed = [r.name for r in results if not r.passed]
        if failed:
            raise AssertionError(f"sink type {self.sink_type!r} failed: {', '.join(failed)}")
        return results


# -- as a pytest plugin: ``pytest -p eventrouter.testing --sink-type T --sink-options J``
def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("eventrouter", "eventrouter sink conformance")
    group.addoption("--sink-type", help="the sink type the sink_conformance fixture drives")
    group.addoption("--sink-options", default="{}", help="its options, as a JSON object")


def _fixture() -> Any:
    import pytest

    @pytest.fixture
    def sink_conformance(request: Any) -> SinkConformance:
        """A :class:`SinkConformance` for ``--sink-type`` and ``--sink-options``."""
        sink_type = request.config.getoption("--sink-type")
        if not sink_type:
            pytest.skip("no --sink-type given")
        options = json.loads(request.config.getoption("--sink-options"))
        return SinkConformance(sink_type, options)

    return sink_conformance


with contextlib.suppress(ImportError):  # without pytest, the class works on its own
    sink_conformance = _fixture()
