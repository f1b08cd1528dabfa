"""writeKey lookup in constant time.

A dict keyed by the writeKeys themselves compares the sent key with a stored one
byte by byte, and stops at the first difference: how long a wrong key takes to refuse
tells how much of it was right. Here the table is keyed by the SHA-256 digest of each
key: what a lookup's timing can reveal is how much of the *digest* matched, which says
nothing about the key. The match is then confirmed with :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable


def digest(secret: str) -> bytes:
    """SHA-256 of ``secret``: what is looked up and compared instead of the secret."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


class WriteKeys:
    """writeKey → source name, looked up without leaking the keys through timing."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._by_digest = {
            digest(key): (key.encode("utf-8", "surrogatepass"), name) for key, name in pairs
        }

    def __bool__(self) -> bool:
        return bool(self._by_digest)

    def __len__(self) -> int:
        return len(self._by_digest)

    def name(self, key: str) -> str | None:
        """The source whose writeKey is ``key``, else None."""
        found = self._by_digest.get(digest(key))
        if found is None:
            return None
        stored, name = found
        return name if hmac.compare_digest(stored, key.encode("utf-8", "surrogatepass")) else None

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.name(key) is not None
