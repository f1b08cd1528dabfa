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

#: Byte maps that set a UUID's version (the high nibble of byte 6: 4) and its RFC 4122
#: variant (the top two bits of byte 8: 10), applied to every id of a refill at once.
_VERSION_4 = bytes((b & 0x0F) | 0x40 for b in range(256))
_VARIANT_RFC4122 = bytes((b & 0x3F) | 0x80 for b in range(256))
#: Ids made per refill.
POOL = 512
#: Where each of an id's 32 hex digits goes in its 36-character form (dashes after the
#: 8th, 12th, 16th and 20th digit), and where the dashes go.
_DIGIT_AT = tuple(i + (i >= 8) + (i >= 12) + (i >= 16) + (i >= 20) for i in range(32))
_DASHES_AT = (8, 13, 18, 23)


def new_message_id() -> str:
    """A random UUID v4 string: the pool's next id."""
    try:
        return _ids.popleft()
    except IndexError:
        raw = bytearray(os.urandom(16 * POOL))
        raw[6::16] = raw[6::16].translate(_VERSION_4)
        raw[8::16] = raw[8::16].translate(_VARIANT_RFC4122)
        digits = raw.hex().encode("ascii")
        # Every id's n-th digit at once (one strided copy per digit position): a
        # formatted string per id cost more than the rest of normalising an event.
        text = bytearray(36 * POOL)
        for at in _DASHES_AT:
            text[at::36] = b"-" * POOL
        for digit, at in enumerate(_DIGIT_AT):
            text[at::36] = digits[digit::32]
        ids = text.decode("ascii")
        _ids.extend(ids[i : i + 36] for i in range(0, 36 * POOL, 36))
        return _ids.popleft()


def new_hex_id() -> str:
    """A random UUID v4 as 32 hex digits (``uuid.uuid4().hex``), from the same pool."""
    return new_message_id().replace("-", "")
