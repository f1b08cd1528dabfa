"""Random ids, cut from randomness read from the OS in bulk.

A ``getrandom`` call per id costs more than the rest of making it (and releases the GIL):
the request path takes its message ids and request ids from a pool refilled 512 ids at a
time. A forked worker starts with an empty pool, so it never hands out an id its parent
or a sibling also holds.
"""

from __future__ import annotations

import os
from collections import deque

_ids: deque[str] = deque()
os.register_at_fork(after_in_child=_ids.clear)

_VARIANT = "89ab"  # RFC 4122 variant: the top two bits of byte 8 are 10


def new_message_id() -> str:
    """A random UUID v4 string: the pool's next id, version and variant set."""
    try:
        return _ids.popleft()
    except IndexError:
        h = os.urandom(16 * 512).hex()
        _ids.extend(
            f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-4{h[i + 13 : i + 16]}-"
            f"{_VARIANT[int(h[i + 16], 16) & 3]}{h[i + 17 : i + 20]}-{h[i + 20 : i + 32]}"
            for i in range(0, len(h), 32)
        )
        return _ids.popleft()


def new_hex_id() -> str:
    """A random UUID v4 as 32 hex digits (``uuid.uuid4().hex``), from the same pool."""
    return new_message_id().replace("-", "")
