"""Data quality: tracking plans enforced on the edge, the event catalogue, violation counts.

Configured in ``[plugins.options.quality]`` (docs/data-quality.md)::

    [plugins.options.quality]
    plans = { web = "plans/web.toml", app = "plans/app" }   # per source: a file or a directory
    catalogue = true                                         # discover events from traffic

Nothing is registered without a plan and without the catalogue: the ingest path then
pays nothing. With them, on the edge only (``eventrouter serve``; the worker gets events
the edge has checked already):

- :class:`PlanGate` (``quality:gate``): ``eventrouter_admit_events``, for the sources
  whose plan says ``on_violation = "reject"``: a breaking event is refused with a 400
  naming the path and rule, before it joins any dispatch, so before any ``200``;
- :class:`PlanStage` (``quality:plans``): a pipeline stage for ``allow`` (the event is
  stored with ``context.violations``) and ``drop`` (the event is kept out of the events
  and written, with its violations, to the store's ``rejected_events`` before the
  request is answered; ``eventrouter violations replay`` ingests it again). It runs at
  ``stage_order`` 300, after dedup, before enrichment and the privacy stages, so it
  checks what the client sent. It fails closed: a batch it cannot check, or whose
  dropped events it cannot keep, is refused (503), never passed on unchecked or lost;
- :class:`CatalogueStage` (``quality:catalogue``, ``stage_order`` 250): counts, per
  source, event kind and name, every property path with its JSON type, in memory; a
  thread adds the counts to the store's ``event_catalogue`` every ``flush`` seconds (one
  write per flush, never a query per event). Violation counts per hour, rule and path
  go the same way.

Plans are compiled once per version. A thread looks at the plans' files every
``reload_interval`` seconds, and on ``SIGHUP`` (a server worker process reloads in place;
``eventrouter serve``'s gunicorn master answers it by replacing its workers, which read
the plans anew): a changed plan is loaded and swapped
in whole; one that fails to load leaves the last good version in force, logged and
shown in ``/health``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from eventrouter.bus.hookspecs import hookimpl
from eventrouter.config import ConfigError
from eventrouter.errors import APIError, InvalidEvent
from eventrouter.events.commands import Command
from eventrouter.health import ComponentHealth
from eventrouter.quality.plans import (
    ALLOW,
    DROP,
    PLUGIN,
    REJECT,
    Plan,
    PlanError,
    Violation,
    options_of,
    plan_files,
    plan_locations,
    read_plan,
)
from eventrouter.store.admin_tables import RefreshErrors
from eventrouter.store.quality import (
    ENTRY,
    MAX_EXAMPLE,
    CatalogueCount,
    QualityTables,
    Rejected,
    ViolationCount,
)

log = logging.getLogger("eventrouter.plugins.quality")

GATE_NAME = "quality:gate"
STAGE_NAME = "quality:plans"
CATALOGUE_NAME = "quality:catalogue"
#: The error code of an event refused by a plan.
VIOLATION_CODE = "violation"
#: Paths deeper than this are counted at this depth.
MAX_DEPTH = 6
#: Distinct catalogue keys (and violation keys) held in memory between two flushes;
#: past it, new ones are counted as overflow (a hostile client cannot grow memory).
MAX_KEYS = 20_000

_encode = msgspec.json.Encoder().encode


def quality_tables_of(bus: Any) -> QualityTables | None:
    sink = bus.store_sink()
    if sink is None:
        return None
    store = sink.store()
    return store.quality_tables() if store is not None else None


@hookimpl
def eventrouter_startup(bus: Any) -> None:
    """Register the gate, the plan stage and the catalogue on an edge that needs them."""
    options = options_of(bus.config)
    if bus.role != "edge" or (not options.plans and not options.catalogue):
        return
    plans = Plans(plan_locations(bus.config, options), options.reload_interval)
    plans.load_all()  # a bad plan stops the start, naming its file and key
    tables = quality_tables_of(bus)
    if tables is None and (options.catalogue or any(p.on_violation == DROP for p in plans)):
        raise ConfigError(
            bus.config.path,
            f"plugins.options.{PLUGIN}",
            "the catalogue and on_violation = 'drop' need a store that keeps the quality "
            "tables (admin.store: sqlite, postgres or clickhouse)",
        )
    recorder = Recorder(tables, options.flush)
    if options.plans:
        bus.add_plugin(PlanGate(plans, recorder), GATE_NAME)
        bus.add_plugin(PlanStage(plans, recorder, tables), STAGE_NAME)
    if options.catalogue:
        bus.add_plugin(CatalogueStage(recorder, options.catalogue_sample), CATALOGUE_NAME)
    plans.start()
    recorder.start()
    bus.add_plugin(Lifecycle(plans, recorder), f"{PLUGIN}:lifecycle")


class Plans:
    """The plan in force for each source, reloaded when its files change."""

    def __init__(self, locations: dict[str, Path], interval: float) -> None:
        self.locations = locations
        self.interval = float(interval)
        self.by_source: dict[str, Plan] = {}
        #: The ``on_violation`` policies of the plans in force, kept with ``by_source``:
        #: the gate and the stage ask for every request whether they have work.
        self.policies: frozenset[str] = frozenset()
        self.stamps: dict[str, tuple] = {}
        self.errors: dict[str, str] = {}
        self.reloads = 0
        self.failures = RefreshErrors(log, "tracking plan not reloaded", 60.0)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous_handler: Any = None
        self._handling = False
        self._force = False

    def __iter__(self):
        return iter(self.by_source.values())

    def load_all(self) -> None:
        for source, location in self.locations.items():
            self.stamps[source] = plan_files(location)
            self.by_source[source] = read_plan(source, location)
        self.policies = frozenset(plan.on_violation for plan in self.by_source.values())

    def has(self, policy: str) -> bool:
        return policy in self.policies

    def reload(self, force: bool = False) -> int:
        """Load each plan whose files changed (all with ``force``); the number swapped in."""
        swapped = 0
        for source, location in self.locations.items():
            stamp = plan_files(location)
            if not force and stamp == self.stamps.get(source):
                continue
            self.stamps[source] = stamp
            try:
                plan = read_plan(source, location)
            except (PlanError, OSError) as exc:
                self.errors[source] = str(exc)
                self.failures.failed(exc)
                continue
            self.errors.pop(source, None)
            current = self.by_source.get(source)
            if current is None or current.version != plan.version:
                # One assignment: the event loop reads the dict without a lock.
                self.by_source = {**self.by_source, source: plan}
                self.policies = frozenset(p.on_violation for p in self.by_source.values())
                swapped += 1
                self.reloads += 1
                log.info("tracking plan of source %r reloaded: version %s", source, plan.version)
        if not self.errors:
            self.failures.succeeded()
        return swapped

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="quality-plans", daemon=True)
        self._thread.start()
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGHUP"):
            try:
                self._previous_handler = signal.signal(signal.SIGHUP, self._on_sighup)
                self._handling = True
            except (ValueError, OSError):  # not allowed here: the file watch still works
                self._previous_handler = None

    def _on_sighup(self, signum: int, frame: Any) -> None:
        self._force = True
        self._wake.set()
        previous = self._previous_handler
        if callable(previous):
            previous(signum, frame)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            force, self._force = self._force, False
            try:
                self.reload(force)
            except Exception as exc:  # never let the watcher die
                self.failures.failed(exc)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._handling and threading.current_thread() is threading.main_thread():
            # The process outlives this bus (a replay): SIGHUP is as it was.
            previous = self._previous_handler
            signal.signal(signal.SIGHUP, previous if previous is not None else signal.SIG_DFL)
            self._handling = False


def _hour(now: datetime) -> datetime:
    return now.replace(minute=0, second=0, microsecond=0)


def _example(command: Command) -> str:
    column = "traits_json" if command.kind in ("identify", "group") else "properties_json"
    raw = getattr(command, column, None)
    text = bytes(raw).decode("utf-8", "replace") if raw is not None else "{}"
    return text[:MAX_EXAMPLE]


def entry_name(command: Command) -> str:
    """The catalogue and violation name of an event: its event name, page or screen
    name, or the kind (identify traits and group traits are entries of their own)."""
    if command.kind == "track":
        return command.event
    if command.kind in ("page", "screen"):
        return command.name or ""
    return command.kind


class Recorder:
    """The catalogue and the violation counts of this process, in memory, flushed to
    the store by a thread every ``flush`` seconds and at shutdown."""

    def __init__(self, tables: QualityTables | None, flush: float) -> None:
        self.tables = tables
        self.interval = float(flush)
        self.catalogue: dict[tuple, list] = {}
        self.violations: dict[tuple, list] = {}
        self.overflow = 0
        self.flushes = 0
        self.failures = RefreshErrors(log, "quality counts not written", 60.0)
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def count_paths(self, key: tuple, paths: dict[tuple[str, str], int], now: datetime) -> None:
        source, kind, name = key
        with self._lock:  # the flush thread swaps the dicts: never mid-count
            self._count_paths(source, kind, name, paths, now)

    def _count_paths(
        self, source: str, kind: str, name: str, paths: dict[tuple[str, str], int], now: datetime
    ) -> None:
        catalogue = self.catalogue
        for (path, json_type), count in paths.items():
            entry = (source, kind, name, path, json_type)
            held = catalogue.get(entry)
            if held is None:
                if len(catalogue) >= MAX_KEYS:
                    self.overflow += count
                    continue
                catalogue[entry] = [count, now, now]
            else:
                held[0] += count
                held[2] = now

    def count_violations(
        self, command: Command, violations: Sequence[Violation], policy: str, now: datetime
    ) -> None:
        hour = _hour(now)
        name = entry_name(command)
        with self._lock:
            self._count_violations(command, violations, policy, now, hour, name)

    def _count_violations(
        self,
        command: Command,
        violations: Sequence[Violation],
        policy: str,
        now: datetime,
        hour: datetime,
        name: str,
    ) -> None:
        for violation in violations:
            key = (hour, command.source, command.kind, name, violation.rule, violation.path, policy)
            held = self.violations.get(key)
            if held is None:
                if len(self.violations) >= MAX_KEYS:
                    self.overflow += 1
                    continue
                self.violations[key] = [1, _example(command), now]
            else:
                held[0] += 1
                held[2] = now

    def start(self) -> None:
        if self.tables is None:
            return
        self._thread = threading.Thread(target=self._loop, name="quality-flush", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def flush(self) -> bool:
        """Write what was counted since the last flush (one write per table); what
        cannot be written is kept for the next flush."""
        if self.tables is None:
            return True
        with self._flushing:
            # Swapped, not copied: the event loop goes on counting into the new dicts.
            with self._lock:
                catalogue, self.catalogue = self.catalogue, {}
                violations, self.violations = self.violations, {}
            if not catalogue and not violations:
                return True
            rows = [
                CatalogueCount(s, k, n, p, t, c, first, last)
                for (s, k, n, p, t), (c, first, last) in catalogue.items()
            ]
            counts = [
                ViolationCount(h, s, k, n, r, p, po, c, e, last)
                for (h, s, k, n, r, p, po), (c, e, last) in violations.items()
            ]
            try:
                self.tables.add_catalogue(rows)
                catalogue = {}
                self.tables.add_violations(counts)
            except Exception as exc:
                self.failures.failed(exc)
                self._merge_back(catalogue, violations)
                return False
            self.flushes += 1
            self.failures.succeeded()
            return True

    def _merge_back(self, catalogue: dict, violations: dict) -> None:
        with self._lock:
            self._merge(catalogue, violations)

    def _merge(self, catalogue: dict, violations: dict) -> None:
        for key, (count, first, last) in catalogue.items():
            held = self.catalogue.get(key)
            if held is None:
                self.catalogue[key] = [count, first, last]
            else:
                held[0] += count
                held[1] = min(held[1], first)
        for key, (count, example, last) in violations.items():
            held = self.violations.get(key)
            if held is None:
                self.violations[key] = [count, example, last]
            else:
                held[0] += count

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()
        if self.tables is not None:
            self.tables.close()


def violation_error(plan: Plan, violations: Sequence[Violation]) -> APIError:
    first = violations[0]
    error = InvalidEvent(
        VIOLATION_CODE,
        f"{first.path}: breaks rule {first.rule!r} of the tracking plan ({first.message})",
    )
    error.extra = {
        "violations": [msgspec.structs.asdict(v) for v in violations],
        "plan_version": plan.version,
    }
    return error


class PlanGate:
    """``on_violation = "reject"``: a breaking event is answered 400, never stored."""

    def __init__(self, plans: Plans, recorder: Recorder) -> None:
        self.plans = plans
        self.recorder = recorder
        self.rejected = 0

    @property
    def idle(self) -> bool:
        return not self.plans.has(REJECT)

    @hookimpl
    def eventrouter_admit_events(self, commands: Sequence[Command]) -> dict[int, APIError] | None:
        by_source = self.plans.by_source
        refused: dict[int, APIError] | None = None
        now: datetime | None = None
        for index, command in enumerate(commands):
            plan = by_source.get(command.source)
            if plan is None or plan.on_violation != REJECT:
                continue
            violations = plan.check(command)
            if not violations:
                continue
            if refused is None:
                refused = {}
                now = datetime.now(UTC)
            refused[index] = violation_error(plan, violations)
            self.recorder.count_violations(command, violations, REJECT, now)
        if refused:
            self.rejected += len(refused)
        return refused


class NoRejectedStore(RuntimeError):
    """A plan says ``drop`` (since a reload) but no store keeps the quality tables."""

    #: Quoted in the 503: it names no host.
    client_safe = True


class PlanStage:
    """``allow`` and ``drop``: the pipeline stage on the edge."""

    stage_order = 300
    #: A plan in force is enforced: a batch that cannot be checked is refused (503).
    fail_closed = True

    def __init__(self, plans: Plans, recorder: Recorder, tables: QualityTables | None) -> None:
        self.plans = plans
        self.recorder = recorder
        self.tables = tables
        self.allowed = 0
        self.dropped = 0

    @property
    def idle(self) -> bool:
        return not (self.plans.has(ALLOW) or self.plans.has(DROP))

    @hookimpl
    async def eventrouter_process_batch(
        self, commands: Sequence[Command], sink: str | None
    ) -> Sequence[Command] | None:
        if sink is not None:
            return None  # a worker: the edge checked these
        by_source = self.plans.by_source
        out: list[Command] | None = None
        dropped: list[Rejected] = []
        now = datetime.now(UTC)
        for index, command in enumerate(commands):
            plan = by_source.get(command.source)
            if plan is None or plan.on_violation == REJECT:
                if out is not None:
                    out.append(command)
                continue
            violations = plan.check(command)
            if not violations:
                if out is not None:
                    out.append(command)
                continue
            if out is None:
                out = list(commands[:index])
            self.recorder.count_violations(command, violations, plan.on_violation, now)
            if plan.on_violation == ALLOW:
                self.allowed += 1
                context = {
                    **command.context,
                    "violations": [msgspec.structs.asdict(v) for v in violations],
                }
                out.append(msgspec.structs.replace(command, context=context))
            else:
                dropped.append(
                    Rejected(
                        source=command.source,
                        message_id=command.message_id,
                        type=command.kind,
                        name=entry_name(command),
                        received_at=command.received_at,
                        rejected_at=now,
                        plan_version=plan.version,
                        violations=_encode(violations).decode(),
                        command=_encode(command).decode(),
                    )
                )
        if dropped:
            if self.tables is None:
                raise NoRejectedStore("on_violation = 'drop' needs a store with quality tables")
            # Kept before the request is answered: a drop loses nothing.
            await asyncio.to_thread(self.tables.record_rejected, dropped)
            self.dropped += len(dropped)
        return out


class CatalogueStage:
    """Counts each event's paths and JSON types into this process's catalogue."""

    #: After dedup (a retry is not counted twice), before the plan stage: it counts what
    #: arrives, dropped events included (a ``reject``ed one never reaches the pipeline).
    stage_order = 250

    def __init__(self, recorder: Recorder, sample: float) -> None:
        self.recorder = recorder
        self.sample = sample
        self._every = max(1, round(1 / sample)) if sample < 1.0 else 1
        self._seen = 0
        self.counted = 0

    @hookimpl
    async def eventrouter_process_batch(
        self, commands: Sequence[Command], sink: str | None
    ) -> None:
        """Count on the event loop (an ``async`` stage); the recorder's lock keeps the
        flush thread, which swaps the dicts whole, from taking them mid-count."""
        if sink is not None:
            return None
        now = datetime.now(UTC)
        recorder = self.recorder
        every = self._every
        for command in commands:
            self._seen += 1
            if every > 1 and self._seen % every:
                continue
            self.counted += 1
            paths: dict[tuple[str, str], int] = {(ENTRY, "event"): 1}
            kind = command.kind
            if kind in ("identify", "group"):
                walk(command.traits, "", paths, 0)
            elif kind != "alias":
                walk(command.properties, "", paths, 0)
            recorder.count_paths((command.source, kind, entry_name(command)), paths, now)
        return None


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if value is True or value is False:
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def walk(value: Any, prefix: str, paths: dict[tuple[str, str], int], depth: int) -> None:
    """Add every path under ``value`` (an object) with its JSON type to ``paths``: keys
    joined with ``.``, an array's items as ``[]`` (``products[].sku``)."""
    if not isinstance(value, dict):
        return
    for key, child in value.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        kind = json_type(child)
        paths[(path, kind)] = paths.get((path, kind), 0) + 1
        if depth + 1 >= MAX_DEPTH:
            continue
        if kind == "object":
            walk(child, path, paths, depth + 1)
        elif kind == "array":
            item_path = f"{path}[]"
            for item in child[:50]:
                item_kind = json_type(item)
                paths[(item_path, item_kind)] = paths.get((item_path, item_kind), 0) + 1
                if item_kind == "object":
                    walk(item, item_path, paths, depth + 1)


class Lifecycle:
    """Health and shutdown of the quality plugin's parts."""

    def __init__(self, plans: Plans, recorder: Recorder) -> None:
        self.plans = plans
        self.recorder = recorder
        self.started = time.time()

    @hookimpl
    def eventrouter_health(self) -> ComponentHealth:
        errors = self.plans.errors
        detail = "; ".join(errors.values()) or (self.recorder.failures.last or "")
        return ComponentHealth(
            name="quality",
            up=not errors and self.recorder.failures.last is None,
            detail=detail,
            stats={
                "plans": len(self.plans.by_source),
                "versions": ",".join(
                    f"{s}={p.version}" for s, p in sorted(self.plans.by_source.items())
                ),
                "reloads": self.plans.reloads,
                "flushes": self.recorder.flushes,
                "overflow": self.recorder.overflow,
            },
        )

    @hookimpl
    def eventrouter_shutdown(self) -> None:
        self.plans.stop()
        self.recorder.stop()
