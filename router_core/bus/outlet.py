"""One sink's way out of the bus on the edge: a bounded buffer, group commit, retries.

On ``eventrouter serve`` (embedded mode) the bus hands every batch for a sink, or for
any other plugin that implements ``eventrouter_write_batch``, to that plugin's
:class:`Outlet`:

1. the batch takes room in the sink's :class:`~eventrouter.bus.buffer.Buffer`
   (``buffer``): an acknowledging sink's request waits for room or is refused with a
   503 (``when_full``); an observer's batch that does not fit is skipped, so an observer
   never holds a request up;
2. the :class:`~eventrouter.bus.batcher.Batcher` gathers it with the other pending
   batches into one write (``batch``); for a sink with ``dedicated_writer`` a
   :class:`~eventrouter.bus.batcher.ThreadBatcher` does, on a writer thread of the
   outlet's own that also writes and retries;
3. the write is tried again per the sink's :class:`~eventrouter.bus.retry.RetryPolicy`
   (``retry``) while someone still waits for it: the requests of an acknowledging sink
   until their ``server.dispatch_timeout``, an observer's until the policy gives up;
4. every request of the group is answered with the outcome, and the room is given back.

Each attempt is bounded: an acknowledging sink's by its requests' deadlines, an
observer's by ``server.observer_timeout``. An ``async`` write that runs over is
cancelled. A plain one, in a thread, cannot be: its thread runs on, and the batch it
holds keeps its room in the buffer until the thread returns, so a sink that hangs in
its own code still holds no more than its buffer.

In ``eventrouter worker`` there is no outlet: each queue's consumer gathers its batches
with the same :class:`~eventrouter.bus.batcher.BatchPolicy`, the broker is the buffer,
and the consumer retries with the same policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

import pluggy

from eventrouter import metrics
from eventrouter.bus.batcher import Batcher, BatchPolicy, Pending, ThreadBatcher
from eventrouter.bus.buffer import Buffer, BufferFull
from eventrouter.bus.retry import Backoff, RetryPolicy
from eventrouter.bus.timeouts import Expired, within
from eventrouter.config import BufferConfig
from eventrouter.events.commands import Command, encode_many

log = logging.getLogger("eventrouter.bus.outlet")

#: Seconds an acknowledging sink's attempt runs past the last deadline of its requests.
ACK_GRACE = 0.05
#: Threads one outlet's plain (not ``async``) write may hold at once: the attempt in
#: progress and one that timed out and runs on. Further attempts wait for a thread
#: instead of queueing in the plugin's pool (4 threads), where a batch would wait for a
#: thread that may never come, held by nothing the buffer counts; the pool keeps room
#: for the plugin's other hooks (``health``).
WRITE_THREADS = 2
#: Seconds between two log lines about one outlet's full buffer.
FULL_LOG_INTERVAL = 10.0

#: Told of each finished write of an observer: (events, error or None, timed out).
WriteReport = Callable[[int, BaseException | None, bool], None]


class Outlet:
    """The buffer, batcher and retries between the bus and one write implementation.

    :param name: the plugin name (``sink:NAME``, or an observer plugin's), also the
        ``sink`` label of its metrics.
    :param acknowledging: requests wait for it (:meth:`submit`); else it is an observer
        (:meth:`offer`).
    :param write_timeout: an observer's limit per attempt (an acknowledging sink's is
        its requests' deadline).
    :param report: told of every write (observers: their /health counts).
    """

    def __init__(
        self,
        name: str,
        impl: pluggy.HookImpl,
        *,
        acknowledging: bool,
        batch: BatchPolicy,
        buffer: BufferConfig,
        retry: RetryPolicy,
        write_timeout: float,
        executor: Callable[[], ThreadPoolExecutor],
        report: WriteReport | None = None,
    ) -> None:
        self.name = name
        self.acknowledging = acknowledging
        self.buffer = Buffer(buffer)
        self.retry = retry
        self.write_timeout = write_timeout
        self._function = impl.function
        self._takes_commands = "commands" in impl.argnames
        self._is_async = inspect.iscoroutinefunction(impl.function)
        #: A plain write on a writer thread of its own (``Sink.dedicated_writer``).
        self._dedicated = not self._is_async and getattr(impl.plugin, "dedicated_writer", False)
        self.batcher: Batcher | ThreadBatcher = (
            ThreadBatcher(name, batch, self._leave)
            if self._dedicated
            else Batcher(name, batch, self._write_group, self._leave)
        )
        self._writer: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Set when the writer thread has ended (or was given up by :meth:`cancel`).
        self._writer_done: asyncio.Future[None] | None = None
        self._stopping = threading.Event()
        self._executor = executor
        self._threads = asyncio.Semaphore(WRITE_THREADS)
        self._report = report
        #: Bytes are measured (a MessagePack encoding per batch) only when limited.
        self._measure = batch.max_bytes is not None or buffer.max_bytes is not None
        self._last_full_log = 0.0
        #: How long the requests of an acknowledging sink wait (``dispatch_timeout``).
        self._waited = write_timeout
        self.retries = 0
        #: Events answered 503 because the buffer was full (acknowledging sinks).
        self.refused_events = 0
        #: Events not given to this observer because its buffer was full.
        self.skipped_events = 0
        m = metrics.get()
        self._depth_events = m.child(m.sink_buffer_events, name)
        self._depth_bytes = m.child(m.sink_buffer_bytes, name) if self._measure else None

    # -- the request path ----------------------------------------------------------------
    async def submit(self, commands: Sequence[Command], timeout: float) -> None:
        """Acknowledging: return once ``commands`` are written.

        :raises BufferFull: no room (at once with ``reject``, after waiting with ``block``).
        :raises Expired: not written within ``timeout`` (seconds).
        :raises Exception: the write's own error, once retries are spent.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._waited = timeout
        events = len(commands)
        nbytes = len(encode_many(commands)) if self._measure else 0
        buffer = self.buffer
        if not buffer.try_take(events, nbytes):
            if buffer.when_full == "reject":
                self._full(events, "refused")
                raise buffer.full_error()
            try:
                await buffer.take(events, nbytes, deadline)
            except BufferFull:
                self._full(events, "refused")
                raise
        future: asyncio.Future[None] = loop.create_future()
        if self._dedicated:  # the writer thread's clock
            now = time.monotonic()
            ends = now + (deadline - loop.time())
            self._add(Pending(commands, events, nbytes, future, now, ends))
        else:
            self._add(Pending(commands, events, nbytes, future, loop.time(), deadline))
        timer = loop.call_at(deadline, _expire, future, timeout)
        try:
            await future
        finally:
            timer.cancel()

    def offer(self, commands: Sequence[Command]) -> bool:
        """Observer: queue ``commands`` for writing if the buffer has room (never waits);
        False when they were skipped."""
        events = len(commands)
        nbytes = len(encode_many(commands)) if self._measure else 0
        if not self.buffer.try_take(events, nbytes):
            self._full(events, "skipped")
            return False
        try:
            now = time.monotonic() if self._dedicated else asyncio.get_running_loop().time()
            self._add(Pending(commands, events, nbytes, None, now))
        except RuntimeError:  # stopping: an observer never fails a request
            return False
        return True

    def _add(self, item: Pending) -> None:
        if self._dedicated and self._writer is None:
            self._start_writer()
        try:
            self.batcher.add(item)
        except RuntimeError:  # stopping
            self.buffer.give_back(item.events, item.nbytes)
            raise
        self._gauge()

    def _full(self, events: int, what: str) -> None:
        m = metrics.get()
        if what == "refused":
            self.refused_events += events
            m.child(m.sink_buffer_refused, self.name).inc(events)
        else:
            self.skipped_events += events
            m.child(m.sink_buffer_skipped, self.name).inc(events)
        self._gauge()
        now = time.monotonic()
        if now - self._last_full_log >= FULL_LOG_INTERVAL:
            self._last_full_log = now
            log.warning(
                "%s: %s; batches %s (%d events so far)",
                self.name,
                self.buffer.describe(waited=False),
                "answered 503" if what == "refused" else "not given to it",
                self.refused_events if what == "refused" else self.skipped_events,
            )

    def _leave(self, item: Pending) -> None:
        """An item left the batcher: give its room back unless a thread still holds it."""
        item.holders -= 1
        if item.holders == 0:
            self.buffer.give_back(item.events, item.nbytes)
            self._gauge()

    def _gauge(self) -> None:
        self._depth_events.set(self.buffer.events)
        if self._depth_bytes is not None:
            self._depth_bytes.set(self.buffer.bytes)

    # -- writing a group ---------------------------------------------------------------
    async def _write_group(self, group: list[Pending]) -> BaseException | None:
        """Write the group's batches as one, retried per the policy while wanted."""
        loop = asyncio.get_running_loop()
        backoff = self.retry.backoff()
        while True:
            wanted = [item for item in group if item.wanted]
            if not wanted:
                return None  # every request gave up: nothing to write for them
            if self.acknowledging:
                last = max(item.deadline for item in wanted)
                # A little past the last deadline: each request is answered by its own
                # timer ("timed out after 10s"), not by the attempt's.
                timeout = max(last - loop.time() + ACK_GRACE, 0.0)
                limit = self._waited
            else:
                last, timeout = None, self.write_timeout
                limit = timeout
            commands = self._commands_of(wanted)
            started = time.perf_counter()
            try:
                await self._attempt(commands, timeout, wanted)
            except Expired:
                error: BaseException = Expired(f"timed out after {limit:g}s")
            except Exception as exc:
                error = exc
            else:
                self._written(len(commands), started)
                if self._report is not None:
                    self._report(len(commands), None, False)
                return None
            pause = self._retry_pause(error, backoff, len(commands), last, loop.time())
            if pause is None:
                if self._report is not None:
                    self._report(len(commands), error, isinstance(error, Expired))
                return error
            await asyncio.sleep(pause)

    # -- what both ways of writing a group share ----------------------------------------
    def _commands_of(self, wanted: list[Pending]) -> Sequence[Command]:
        """The commands of the items still wanted, as one batch (counted in metrics)."""
        commands: Sequence[Command] = (
            wanted[0].commands
            if len(wanted) == 1
            else [command for item in wanted for command in item.commands]
        )
        m = metrics.get()
        m.child(m.sink_batch_events, self.name).observe(len(commands))
        return commands

    def _written(self, events: int, started: float) -> None:
        m = metrics.get()
        m.child(m.sink_write_duration, self.name).observe(time.perf_counter() - started)
        m.child(m.sink_written, self.name).inc(events)

    def _retry_pause(
        self, error: BaseException, backoff: Backoff, events: int, last: float | None, now: float
    ) -> float | None:
        """Seconds to wait before trying again, counted and logged; None when the write
        has failed for good (counted and logged too): the policy gives up, or the
        requests will have stopped waiting by then (``last``, on the clock of ``now``)."""
        m = metrics.get()
        pause = backoff.failed(error)
        if pause is not None and last is not None and now + pause >= last:
            pause = None
        if pause is None:
            m.child(m.sink_failed, self.name).inc()
            self._log_failure(error, events, backoff.attempts)
            return None
        self.retries += 1
        m.child(m.sink_retries, self.name).inc()
        log.warning(
            "%s: write of %d events failed (%s); retry %d in %.2fs",
            self.name,
            events,
            _describe(error),
            backoff.attempts,
            pause,
        )
        return pause

    async def _attempt(self, commands: Sequence[Command], timeout: float, items: list) -> None:
        args = {"commands": commands} if self._takes_commands else {}
        if self._is_async:
            await within(timeout, self._function(**args))
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        await within(timeout, self._threads.acquire())
        try:
            future = self._executor().submit(partial(self._function, **args))
        except BaseException:
            self._threads.release()
            raise
        future.add_done_callback(partial(_call_soon, loop, self._threads.release))
        try:
            result = await within(
                max(timeout - (loop.time() - started), 0.0), asyncio.wrap_future(future)
            )
        except Expired:
            if not future.done():
                self._hold(future, items, loop)
            raise
        if inspect.isawaitable(result):
            await within(max(timeout - (loop.time() - started), 0.0), result)

    def _hold(self, future: Future, items: list[Pending], loop: asyncio.AbstractEventLoop) -> None:
        """A timed-out thread still runs with ``items``: their room stays taken until it
        returns."""
        for item in items:
            item.holders += 1

        future.add_done_callback(partial(_call_soon, loop, partial(self._release, items)))

    def _release(self, items: list[Pending]) -> None:
        for item in items:
            self._leave(item)

    def _log_failure(self, error: BaseException, events: int, attempts: int) -> None:
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        if isinstance(error, Expired):
            log.error("%s: write of %d events %s%s", self.name, events, error, tries)
        else:
            log.error("%s: write of %d events failed%s", self.name, events, tries, exc_info=error)

    # -- a dedicated writer thread ------------------------------------------------------
    def _start_writer(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._writer_done = loop.create_future()
        self._writer = threading.Thread(
            target=self._write_loop, name=f"writer-{self.name}", daemon=True
        )
        self._writer.start()

    def _write_loop(self) -> None:
        """The writer thread: take a group, write it (with retries), settle it on the
        loop; again, until the batcher is closed and empty."""
        loop = self._loop
        batcher = self.batcher
        try:
            while (taken := batcher.take()) is not None:
                group, dropped = taken
                if dropped:  # their requests gave up: give their room back
                    _call_soon(loop, partial(batcher.leave, dropped, None), None)
                if not group:
                    continue
                try:
                    error = self._write_group_here(group)
                except Exception as exc:  # a bug in the writer: fail the group, keep going
                    log.exception("%s: group write raised", self.name)
                    error = exc
                _call_soon(loop, partial(self._settle, group, error), None)
        finally:
            _call_soon(loop, self._writer_ended, None)

    def _settle(self, group: list[Pending], error: BaseException | None) -> None:
        self.batcher.groups += 1
        self.batcher.leave(group, error)

    def _writer_ended(self) -> None:
        if self._writer_done is not None and not self._writer_done.done():
            self._writer_done.set_result(None)

    def _write_group_here(self, group: list[Pending]) -> BaseException | None:
        """:meth:`_write_group` on the writer thread. An attempt is not cut short (a
        thread cannot be): each request is answered by its own timer meanwhile, and the
        group keeps its room in the buffer until the attempt returns."""
        backoff = self.retry.backoff()
        while True:
            wanted = [item for item in group if item.wanted]
            if not wanted:
                return None  # every request gave up: nothing to write for them
            last = max(item.deadline for item in wanted) if self.acknowledging else None
            commands = self._commands_of(wanted)
            started = time.perf_counter()
            try:
                result = self._function(**({"commands": commands} if self._takes_commands else {}))
                if inspect.isawaitable(result):
                    asyncio.run_coroutine_threadsafe(_awaited(result), self._loop).result()
            except Exception as exc:
                error: BaseException = exc
            else:
                self._written(len(commands), started)
                self._report_soon(len(commands), None)
                return None
            pause = self._retry_pause(error, backoff, len(commands), last, time.monotonic())
            if pause is None:
                self._report_soon(len(commands), error)
                return error
            if self._stopping.wait(pause):
                return error

    def _report_soon(self, events: int, error: BaseException | None) -> None:
        if self._report is not None:
            _call_soon(self._loop, partial(self._report, events, error, False), None)

    # -- lifecycle and health ----------------------------------------------------------
    async def close(self) -> None:
        """Write what is pending (the bus bounds how long it waits), then stop."""
        if isinstance(self.batcher, ThreadBatcher):
            self.batcher.close()
            if self._writer_done is not None:
                await self._writer_done
            return
        await self.batcher.close()

    def cancel(self) -> None:
        if isinstance(self.batcher, ThreadBatcher):
            # Pending items fail now; a write in progress is left to its thread.
            self._stopping.set()
            self.batcher.leave(self.batcher.drain(), RuntimeError(f"{self.name} stopped"))
            self._writer_ended()
            return
        self.batcher.cancel()

    def stats(self) -> dict[str, Any]:
        """Counters for /health, merged into the plugin's component."""
        buffer = self.buffer
        stats: dict[str, Any] = {
            "buffered_events": buffer.events,
            "buffer_max_events": buffer.max_events,
            "buffer_peak_events": buffer.peak_events,
            "writes": self.batcher.groups,
            "retries": self.retries,
        }
        if self._measure:
            stats["buffered_bytes"] = buffer.bytes
            stats["buffer_max_bytes"] = buffer.max_bytes
        if self.acknowledging:
            stats["refused_events"] = self.refused_events
        else:
            stats["skipped_events"] = self.skipped_events
        return stats


def _call_soon(
    loop: asyncio.AbstractEventLoop, callback: Callable[[], Any], _: Future | None
) -> None:
    """A thread's done callback: run ``callback`` on the loop. A closed loop (the
    process is ending) has no buffer or threads left to give back."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _expire(future: asyncio.Future[None], timeout: float) -> None:
    if not future.done():
        future.set_exception(Expired(f"timed out after {timeout:g}s"))


def _describe(error: BaseException) -> str:
    return str(error) if isinstance(error, Expired) else f"{type(error).__name__}: {error}"
