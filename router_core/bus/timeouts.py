"""The bus's own time limit on a call: :func:`within` and the :class:`Expired` it raises."""

from __future__ import annotations

import asyncio
from typing import Any


class Expired(TimeoutError):
    """The bus's own time limit on a hook call ran out. A ``TimeoutError`` the hook
    raised itself (a socket's, a broker confirm's) is that hook's failure instead, and is
    reported with its own message."""

    #: Quoted in the 503 (``NotDurable``): "timed out after 10s" names no host.
    client_safe = True


async def within(timeout: float, awaitable: Any) -> Any:
    """Await ``awaitable`` in the current task, raising :class:`Expired` after ``timeout``.

    ``asyncio.timeout`` does the same with more machinery; on the request path, once per
    event batch, one timer handle is all it takes.
    """
    task = asyncio.current_task()
    fired = False

    def expire() -> None:
        nonlocal fired
        fired = True
        task.cancel()

    handle = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        return await awaitable
    except asyncio.CancelledError:
        if fired and task.uncancel() == 0:
            raise Expired(f"timed out after {timeout:g}s") from None
        raise
    finally:
        handle.cancel()
