"""One sink's bounded buffer: the events it holds accepted but not yet written.

Every batch the edge hands to a sink takes room here first (events, and bytes when
``buffer.max_bytes`` is set) and gives it back once the sink has written it, failed it
for good, or it was skipped because its request gave up. A sink that stalls therefore
holds at most ``buffer.max_events`` events of pending work, however long it stalls;
what does not fit is refused at the door (``when_full``):

- ``block``: the request waits for room, in arrival order, until its deadline
  (``server.dispatch_timeout``), then is answered 503;
- ``reject``: the request is answered 503 with ``Retry-After`` at once.

A batch larger than the whole buffer is let in when the buffer is empty, so that it is
not refused forever. Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
from collections import deque

from eventrouter.config import BufferConfig


class BufferFull(Exception):
    """The sink's buffer had no room for the batch (at once, or before the deadline)."""

    #: Quoted in the 503: it names the sink's buffer and its size, nothing else.
    client_safe = True


class Buffer:
    """Room for pending events (and bytes), taken and given back by the sink's outlet."""

    def __init__(self, config: BufferConfig) -> None:
        self.max_events = config.max_events
        self.max_bytes = config.max_bytes
        self.when_full = config.when_full
        #: What is held now.
        self.events = 0
        self.bytes = 0
        #: The most ever held at once (events), for /health.
        self.peak_events = 0
        self._waiters: deque[tuple[int, int, asyncio.Future[None]]] = deque()

    def fits(self, events: int, nbytes: int) -> bool:
        """Whether a batch of this size may be let in now (an empty buffer takes any)."""
        if self.events == 0 and self.bytes == 0:
            return True
        if self.events + events > self.max_events:
            return False
        return self.max_bytes is None or self.bytes + nbytes <= self.max_bytes

    def try_take(self, events: int, nbytes: int) -> bool:
        """Take room without waiting; False when full, or when others already wait for
        room (they come first)."""
        if self._waiters or not self.fits(events, nbytes):
            return False
        self._take(events, nbytes)
        return True

    async def take(self, events: int, nbytes: int, deadline: float) -> None:
        """Wait for room until ``deadline`` (the loop's clock), behind earlier waiters.

        :raises BufferFull: no room came in time."""
        if self.try_take(events, nbytes):
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        entry = (events, nbytes, waiter)
        self._waiters.append(entry)
        timer = loop.call_at(deadline, _expire, waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give_back(events, nbytes)  # room granted as the request gave up
            raise
        except BufferFull:
            raise BufferFull(self.describe(waited=True)) from None
        finally:
            timer.cancel()
            if entry in self._waiters:
                self._waiters.remove(entry)
                self._wake()  # the next waiter may fit where this one did not

    def give_back(self, events: int, nbytes: int) -> None:
        """Return room; wake the waiters that now fit, oldest first."""
        self.events -= events
        self.bytes -= nbytes
        self._wake()

    def full_error(self) -> BufferFull:
        """The error of a batch refused at once (``reject``, or an observer's skip)."""
        return BufferFull(self.describe(waited=False))

    def describe(self, waited: bool) -> str:
        held = f"{self.events:,} of {self.max_events:,} events"
        if self.max_bytes is not None:
            held += f", {self.bytes:,} of {self.max_bytes:,} bytes"
        how = "no room came in time" if waited else "the batch does not fit"
        return f"buffer full ({held} pending: the sink is behind; {how})"

    def _take(self, events: int, nbytes: int) -> None:
        self.events += events
        self.bytes += nbytes
        if self.events > self.peak_events:
            self.peak_events = self.events

    def _wake(self) -> None:
        while self._waiters:
            events, nbytes, waiter = self._waiters[0]
            if waiter.done():  # gave up or expired; removed by its own task
                self._waiters.popleft()
                continue
            if not self.fits(events, nbytes):
                return
            self._waiters.popleft()
            self._take(events, nbytes)
            waiter.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(BufferFull())
