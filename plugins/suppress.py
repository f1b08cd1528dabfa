"""Suppression: new events of a suppressed user id or anonymous id are never stored.

``eventrouter privacy suppress`` and the dashboard's Privacy page write the list into the
admin store's ``suppressions`` table (:mod:`eventrouter.privacy.suppressions`). Every process
that handles events (each server process, each ``eventrouter worker``) registers a
:class:`Suppressor` at start-up: it reads the list once, then again every
``[privacy] refresh`` seconds on a thread of its own, and drops matching events in
``eventrouter_process_batch``, a set lookup per event on the event loop:

- on the edge (``sink=None``), before any sink and before the broker: the client still
  gets ``200``, as from Segment, so an SDK does not retry;
- in the worker (``sink="NAME"``), for events that were already queued when the
  suppression was made.

A suppression therefore takes effect everywhere within ``refresh`` seconds. If the
store cannot be read, the last list read stays in force (and ``/health`` shows the
error): an outage of the store neither lets suppressed events through nor stops
ingestion.

The stage fails closed (``fail_closed``). Until the list has been read once, this
process does not know whom to drop: the stage raises :class:`ListNotRead`, and the bus
refuses every batch (503 on the edge; in the worker the batch is held, unacknowledged,
while ``/health`` shows the suppression list down) rather than store a suppressed
user's events. Meanwhile the list is read again every :data:`UNREAD_RETRY` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from eventrouter import metrics
from eventrouter.bus.hookspecs import hookimpl
from eventrouter.events.commands import Command
from eventrouter.health import ComponentHealth
from eventrouter.privacy.suppressions import ANONYMOUS_ID, USER_ID, SuppressionList
from eventrouter.store.admin_tables import RefreshErrors

log = logging.getLogger("eventrouter.plugins.suppress")

#: Plugin name of the per-process instance registered at start-up.
PLUGIN_NAME = "suppress:store"
#: Seconds between repeated warnings while the store cannot be read.
WARN_INTERVAL = 60.0
#: Seconds between attempts to read the list while it has never been read (at most
#: ``[privacy] refresh``): batches are refused meanwhile.
UNREAD_RETRY = 1.0


class ListNotRead(RuntimeError):
    """The suppression list has not been read yet: whom to drop is unknown."""

    #: Quoted in the 503 (eventrouter.bus.bus.FailedClosed): it names no host.
    client_safe = True


@hookimpl
def eventrouter_startup(bus: Any) -> None:
    """Register a :class:`Suppressor` on this bus when there is an SQL store to read."""
    store = bus.store_sink()
    if store is None:
        return
    suppressor = Suppressor(SuppressionList(store.store()), bus.config.privacy.refresh)
    if bus.add_plugin(suppressor, PLUGIN_NAME):
        suppressor.start()


class Suppressor:
    """This process's copy of the suppression list, refreshed in the background."""

    #: A privacy stage: a batch it cannot check is refused (eventrouter.bus.bus.fails_closed).
    fail_closed = True
    #: The last stage (docs/plugins.md, "Pipeline stages and their order"): it drops
    #: by the user and anonymous ids the batch finally carries.
    stage_order = 950

    def __init__(self, source: SuppressionList, refresh: float) -> None:
        self.source = source
        self.refresh_interval = max(0.05, float(refresh))
        self.user_ids: frozenset[str] = frozenset()
        self.anonymous_ids: frozenset[str] = frozenset()
        self.dropped = 0
        self.refreshes = 0
        self.failures = RefreshErrors(log, "suppression list not refreshed", WARN_INTERVAL)
        self.refreshed_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: One refresh at a time: a periodic read that began before a change must not
        #: land after the refresh that saw the change and put the old list back.
        self._refreshing = threading.Lock()

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="suppress-refresh", daemon=True)
        self._thread.start()

    @property
    def read(self) -> bool:
        """Whether the list has been read at least once."""
        return self.refreshed_at is not None

    def _loop(self) -> None:
        while not self._stop.wait(
            self.refresh_interval if self.read else min(self.refresh_interval, UNREAD_RETRY)
        ):
            self.refresh()

    def refresh(self) -> bool:
        """Read the list now; ``False`` (counted, shown in ``/health``) when it cannot.
        Refreshes run one at a time, so the list in use is never older than the last
        read that finished."""
        with self._refreshing:
            try:
                ids = self.source.ids()
            except Exception as exc:
                self.failures.failed(exc)
                return False
            # One assignment each: the event loop reads them without a lock.
            self.user_ids = ids[USER_ID]
            self.anonymous_ids = ids[ANONYMOUS_ID]
            self.refreshes += 1
            self.refreshed_at = time.time()
        self.failures.succeeded()
        return True

    @hookimpl
    def eventrouter_suppressions_changed(self) -> None:
        """The dashboard's privacy page changed the list: re-read it now (in the hook's
        thread), so this process stops storing a newly suppressed id at once."""
        self.refresh()

    @property
    def errors(self) -> int:
        return self.failures.count

    @property
    def last_error(self) -> str | None:
        return self.failures.last

    @property
    def idle(self) -> bool:
        """Nothing is suppressed: the bus skips this stage (docs/plugins.md). Never
        while the list is unread: the stage must then refuse the batch."""
        return self.read and not self.user_ids and not self.anonymous_ids

    def suppressed(self, command: Command) -> bool:
        return command.user_id in self.user_ids or command.anonymous_id in self.anonymous_ids

    @hookimpl
    async def eventrouter_process_batch(
        self, commands: Sequence[Command], sink: str | None
    ) -> Sequence[Command] | None:
        if not self.user_ids and not self.anonymous_ids:
            if not self.read:
                raise ListNotRead("the suppression list has not been read yet")
            return None
        kept = [c for c in commands if not self.suppressed(c)]
        if len(kept) == len(commands):
            return None
        dropped = len(commands) - len(kept)
        self.dropped += dropped
        metrics.get().suppressed_dropped.labels(sink or "edge").inc(dropped)
        return kept

    @hookimpl
    def eventrouter_health(self) -> ComponentHealth:
        return ComponentHealth(
            name="suppression",
            up=self.last_error is None,
            # Once read, the last list read stays in force; until then, batches are refused.
            required=not self.read,
            detail=(self.last_error or "")
            if self.read
            else f"never read: {self.last_error or 'not yet'}",
            stats={
                "user_ids": len(self.user_ids),
                "anonymous_ids": len(self.anonymous_ids),
                "dropped": self.dropped,
                "refreshes": self.refreshes,
                "errors": self.errors,
            },
        )

    @hookimpl
    def eventrouter_shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.source.close()
