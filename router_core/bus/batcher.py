"""Group commit: the pending writes of one sink, cut into groups and written one at a time.

Writers (the bus, for each batch of requests) :meth:`Batcher.add` a :class:`Pending`
and await its future. One task per sink takes the oldest pending writes as a group as
soon as :class:`BatchPolicy` says so (``batch.max_events`` or ``batch.max_bytes``
reached, or the oldest has waited ``batch.timeout``), hands the group to the sink in
one write, and settles every future of the group with that write's outcome. While a
group is being written the next one gathers, so under load one write serves many
requests; when idle a write starts at once (``timeout = 0``, the default).

A sink with ``dedicated_writer`` gets a :class:`ThreadBatcher` instead: the same
policy, but the group is taken on a writer thread of its own, the moment its previous
write returns (no event-loop turn between writes).

The same policy cuts the worker's batches out of a sink's queue
(:mod:`eventrouter.queue.worker`), so ``batch`` means the same in both roles.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from eventrouter.config import BatchConfig
from eventrouter.errors import own_copy
from eventrouter.events.commands import Command

log = logging.getLogger("eventrouter.bus.batcher")


@dataclass(frozen=True)
class BatchPolicy:
    """When pending work becomes one write."""

    max_events: int
    max_bytes: int | None = None
    #: Seconds the oldest pending item may wait for more.
    timeout: float = 0.0

    @classmethod
    def from_config(cls, config: BatchConfig) -> BatchPolicy:
        return cls(config.max_events, config.max_bytes, float(config.timeout))

    def full(self, events: int, nbytes: int) -> bool:
        """A group this large is written without waiting any longer."""
        return events >= self.max_events or (
            self.max_bytes is not None and nbytes >= self.max_bytes
        )

    def fits(self, events: int, nbytes: int) -> bool:
        """A group may grow to this size (a first item of any size always starts one)."""
        return events <= self.max_events and (self.max_bytes is None or nbytes <= self.max_bytes)


@dataclass(eq=False, slots=True)
class Pending:
    """One batch waiting for its group's write."""

    commands: Sequence[Command]
    events: int
    nbytes: int
    #: Settled with the group's outcome; None when nobody waits (an observer's batch).
    future: asyncio.Future[None] | None
    #: The loop's clock when it arrived.
    arrived: float
    #: When its writer stops waiting (the loop's clock), or None.
    deadline: float | None = None
    #: Holders of its room in the buffer: the batcher, and writer threads still running
    #: with it after their attempt timed out (:mod:`eventrouter.bus.outlet`).
    holders: int = field(default=1)

    @property
    def wanted(self) -> bool:
        """Someone still waits for it (an observer's batch always counts as wanted)."""
        return self.future is None or not self.future.done()


def cut_group(
    pending: deque[Pending], policy: BatchPolicy
) -> tuple[list[Pending], list[Pending], int, int]:
    """Take whole items from the oldest of ``pending``, within the policy's limits (at
    least one); items nobody waits for any more are dropped on the way. Returns the group,
    the dropped items, and the events and bytes removed from ``pending`` (both kinds)."""
    group: list[Pending] = []
    dropped: list[Pending] = []
    events = nbytes = removed_events = removed_bytes = 0
    while pending:
        item = pending[0]
        if group and not policy.fits(events + item.events, nbytes + item.nbytes):
            break
        pending.popleft()
        removed_events += item.events
        removed_bytes += item.nbytes
        if not item.wanted:
            dropped.append(item)
            continue
        group.append(item)
        events += item.events
        nbytes += item.nbytes
    return group, dropped, removed_events, removed_bytes


def settle(item: Pending, error: BaseException | None) -> None:
    """Answer the writer waiting for ``item`` (if it still waits): written, or ``error``."""
    future = item.future
    if future is not None and not future.done():
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(own_copy(error))


#: Writes one group; returns the error that failed it, or None.
GroupWriter = Callable[[list[Pending]], Awaitable[BaseException | None]]


class Batcher:
    """Pending writes of one sink, written group by group by one task of its own.

    :param write: writes a group (with retries) and returns its error or None.
    :param done: called with every item once it leaves the batcher: written, failed, or
        dropped because nobody waited for it any more.
    """

    def __init__(
        self,
        name: str,
        policy: BatchPolicy,
        write: GroupWriter,
        done: Callable[[Pending], None],
    ) -> None:
        self.name = name
        self.policy = policy
        self._write = write
        self._done = done
        self._pending: deque[Pending] = deque()
        self._events = 0
        self._bytes = 0
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        #: Groups written (or failed), for /health.
        self.groups = 0

    def add(self, item: Pending) -> None:
        if self._closing:
            raise RuntimeError(f"{self.name} is stopping")
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"batcher-{self.name}"
            )
        self._pending.append(item)
        self._events += item.events
        self._bytes += item.nbytes
        self._arrived.set()

    @property
    def pending_events(self) -> int:
        """Events waiting for a group (not those being written)."""
        return self._events

    async def close(self) -> None:
        """Write what is pending, then stop."""
        self._closing = True
        self._arrived.set()
        if self._task is not None:
            await self._task

    def cancel(self) -> None:
        """Stop at once: the group in hand fails, pending items are left unwritten."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        try:
            while True:
                if not self._pending:
                    if self._closing:
                        return
                    self._arrived.clear()
                    await self._arrived.wait()
                    continue
                await self._linger()
                group = self._take()
                if group:
                    await self._commit(group)
        except asyncio.CancelledError:
            while self._pending:
                self._leave(self._pending.popleft(), RuntimeError(f"{self.name} stopped"))
            raise

    async def _linger(self) -> None:
        """Wait until the policy says the group is full or the oldest item's time is up."""
        policy = self.policy
        if policy.timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = self._pending[0].arrived + policy.timeout
        while not self._closing and not policy.full(self._events, self._bytes):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[Pending]:
        """The next group (:func:`cut_group`); the dropped items leave at once."""
        group, dropped, events, nbytes = cut_group(self._pending, self.policy)
        self._events -= events
        self._bytes -= nbytes
        for item in dropped:
            self._done(item)
        return group

    async def _commit(self, group: list[Pending]) -> None:
        try:
            error = await self._write(group)
        except asyncio.CancelledError:
            for item in group:
                self._leave(item, RuntimeError(f"{self.name} stopped"))
            raise
        except Exception as exc:  # a bug in the writer: fail the group, keep going
            log.exception("%s: group write raised", self.name)
            error = exc
        self.groups += 1
        for item in group:
            self._leave(item, error)

    def _leave(self, item: Pending, error: BaseException | None) -> None:
        settle(item, error)
        self._done(item)


class ThreadBatcher:
    """Pending writes of one sink, taken group by group by a writer thread of its own.

    For a sink whose plain ``write`` is serialised anyway (one connection, a file lock:
    :attr:`eventrouter.bus.sink.Sink.dedicated_writer`). The thread takes the next group
    the moment the previous write returns, without a trip through the event loop: the
    group holds everything that arrived while the sink was busy, and no loop turn passes
    between two writes. :meth:`add` runs on the event loop; :meth:`take` on the writer
    thread; items leave on the loop (``done``), through ``loop.call_soon_threadsafe``.
    Times (``Pending.arrived``) are ``time.monotonic()``, the thread's clock.
    """

    def __init__(
        self,
        name: str,
        policy: BatchPolicy,
        done: Callable[[Pending], None],
    ) -> None:
        self.name = name
        self.policy = policy
        self._done = done
        self._pending: deque[Pending] = deque()
        self._events = 0
        self._bytes = 0
        self._ready = threading.Condition(threading.Lock())
        self._closing = False
        #: Groups written (or failed), for /health.
        self.groups = 0

    def add(self, item: Pending) -> None:
        with self._ready:
            if self._closing:
                raise RuntimeError(f"{self.name} is stopping")
            self._pending.append(item)
            self._events += item.events
            self._bytes += item.nbytes
            self._ready.notify()

    @property
    def pending_events(self) -> int:
        """Events waiting for a group (not those being written)."""
        return self._events

    def close(self) -> None:
        """No more items: the thread writes what is pending, then :meth:`take` says None."""
        with self._ready:
            self._closing = True
            self._ready.notify_all()

    def drain(self) -> list[Pending]:
        """Stop now: the items not yet taken, removed (the caller fails them)."""
        with self._ready:
            self._closing = True
            items = list(self._pending)
            self._pending.clear()
            self._events = self._bytes = 0
            self._ready.notify_all()
        return items

    def take(self) -> tuple[list[Pending], list[Pending]] | None:
        """On the writer thread: block until the policy says a group is due; return it
        with the items dropped on the way (nobody waits for them any more), or None once
        closed and empty."""
        policy = self.policy
        with self._ready:
            while not self._pending:
                if self._closing:
                    return None
                self._ready.wait()
            if policy.timeout > 0:
                deadline = self._pending[0].arrived + policy.timeout
                while not self._closing and not policy.full(self._events, self._bytes):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._ready.wait(remaining)
            group, dropped, events, nbytes = cut_group(self._pending, policy)
            self._events -= events
            self._bytes -= nbytes
            return group, dropped

    def leave(self, items: Sequence[Pending], error: BaseException | None) -> None:
        """On the loop: settle each item's future with ``error`` (None: written)."""
        for item in items:
            settle(item, error)
            self._done(item)
