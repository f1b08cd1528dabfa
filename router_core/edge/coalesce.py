"""Request coalescing: the requests of one event-loop turn share one bus dispatch.

Under load an ingestion worker's event loop runs dozens of request handlers per turn,
each with one event (or one batch). Dispatching each on its own repeats per request what
only needs doing per group: the pipeline stages and their isolation, one timer and one
failure guard per sink, the sink's hand-off (for the queue sink, one trip to the
publisher thread), the per-sink metrics. :class:`Coalescer` collects the commands every
handler submits during one turn and dispatches them together on the next; each handler
returns once the group is durable, or raises the group's error. A line logged for the
group's work carries the ids of all its requests, comma-separated, as ``request_id``
(router_core/logs.py).

What a client sees does not change: a ``200`` still means every acknowledging sink holds
the request's events, and a ``503`` still means none of them may be assumed held (the
group was refused as a whole, so every request in it is answered ``503``; SDKs retry,
and the store's ``message_id`` key keeps a retry of events that were held single).
Latency grows by at most one loop turn; a group is cut before it passes
:attr:`Coalescer.max_events` (a request alone may be larger), so that one turn of large
batches is not delayed behind a huge write, and no group outgrows the smallest sink
buffer it must fit in (``Bus.group_limit``).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence

from eventrouter.errors import own_copy as _own_copy
from eventrouter.events.commands import Command
from eventrouter.logs import request_id

#: A group is dispatched at once when it holds this many events, or when the next
#: request would take it past them (the rest of the turn's requests start the next group).
MAX_GROUP_EVENTS = 10_000


class Coalescer:
    """Groups the commands submitted during one event-loop turn into one ``dispatch``.

    ``dispatch`` is awaited once per group, in a task of its own; it raises to refuse
    the group (every submitter then raises a copy of that error).
    """

    def __init__(
        self,
        dispatch: Callable[[Sequence[Command]], Awaitable[None]],
        max_events: int = MAX_GROUP_EVENTS,
    ) -> None:
        self.dispatch = dispatch
        self.max_events = max_events
        self._commands: list[Command] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._request_ids: list[str] = []
        self._scheduled: asyncio.Handle | None = None
        #: Groups in flight (strong references: the loop keeps only weak ones).
        self._running: set[asyncio.Task[None]] = set()
        #: Groups dispatched, and the requests they carried.
        self.groups = 0
        self.requests = 0

    async def submit(self, commands: Sequence[Command]) -> None:
        """Return once the group holding ``commands`` was dispatched; raise its error."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        if self._commands and len(self._commands) + len(commands) > self.max_events:
            self._flush()
        self._commands.extend(commands)
        self._waiters.append(waiter)
        if (rid := request_id.get()) is not None:
            self._request_ids.append(rid)
        if len(self._commands) >= self.max_events:
            self._flush()
        elif self._scheduled is None:
            self._scheduled = loop.call_soon(self._flush)
        await waiter

    def _flush(self) -> None:
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        if not self._waiters:
            return
        commands, waiters, ids = self._commands, self._waiters, self._request_ids
        self._commands, self._waiters, self._request_ids = [], [], []
        self.groups += 1
        self.requests += len(waiters)
        # The group's own context: its log lines name every request it carries.
        context = contextvars.Context()
        context.run(request_id.set, ",".join(ids) if ids else None)
        task = asyncio.get_running_loop().create_task(self._run(commands, waiters), context=context)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, commands: list[Command], waiters: list[asyncio.Future[None]]) -> None:
        try:
            await self.dispatch(commands)
        except BaseException as exc:
            for waiter in waiters:
                if not waiter.done():  # a cancelled request waits for nothing
                    waiter.set_exception(_own_copy(exc))
            if not isinstance(exc, Exception):
                raise
        else:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
