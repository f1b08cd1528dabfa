"""IP anonymisation: what becomes of ``context.ip`` (``[privacy] ip``, ``sources[].ip``).

Applied on the edge while a request is normalised, before its events are Commands: the
original address never reaches a pipeline stage, the broker or any sink.

- ``keep``: stored as it came;
- ``truncate``: the host part zeroed, as Google Analytics and PostHog do: an IPv4
  address keeps its /24 (``203.0.113.77`` → ``203.0.113.0``), an IPv6 address its /48
  (``2001:db8:abcd:12::1`` → ``2001:db8:abcd::``). An IPv4-mapped IPv6 address is
  truncated as the IPv4 address it carries. A value that is not an IP address (a
  client may send anything in ``context.ip``) is dropped: it cannot be truncated;
- ``drop``: removed from ``context``.

Truncation is cached, since a busy client sends many requests from one address; the
cache holds syntactically valid addresses only. ``context.ip`` is whatever a client
sent: a value longer than any address, or with a character no address has, is refused
before it is parsed, and one that fails to parse is not remembered (``lru_cache`` does
not cache an exception). So a million distinct junk strings leave the cache as it was,
and its at most :data:`CACHE_SIZE` keys are each at most :data:`MAX_ADDRESS_LENGTH`
characters.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any

KEEP = "keep"
TRUNCATE = "truncate"
DROP = "drop"
IPV4_PREFIX = 24
IPV6_PREFIX = 48
CACHE_SIZE = 4096
#: The longest text form of an address: ``ffff:...:ffff:255.255.255.255`` (IPv6 with
#: an embedded IPv4 address; INET6_ADDRSTRLEN less its NUL).
MAX_ADDRESS_LENGTH = 45
#: The characters of IPv4 and IPv6 text forms. A zone index (``fe80::1%eth0``) is not
#: an address a client could have connected from: dropped.
_ADDRESS = re.compile(rf"[0-9A-Fa-f:.]{{2,{MAX_ADDRESS_LENGTH}}}")


def truncate(value: str) -> str | None:
    """``value`` with its host part zeroed, or None when it is not an IP address."""
    text = value.strip()
    if not _ADDRESS.fullmatch(text):
        return None
    try:
        return _truncate(text)
    except ValueError:  # not cached: only addresses are
        return None


@functools.lru_cache(maxsize=CACHE_SIZE)
def _truncate(text: str) -> str:
    """:raises ValueError: ``text`` is not an IP address."""
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        else:
            network = ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False)
            return str(network.network_address)
    return str(ipaddress.IPv4Network((address, IPV4_PREFIX), strict=False).network_address)


def anonymise(value: Any, mode: str) -> str | None:
    """The address to store for ``value`` under ``mode`` (None: store none)."""
    if value is None or mode == DROP:
        return None
    if mode == KEEP:
        return value
    return truncate(value) if isinstance(value, str) else None


def apply(context: dict[str, Any], mode: str) -> None:
    """Anonymise ``context["ip"]`` in place (``context`` belongs to one event)."""
    if mode == KEEP or "ip" not in context:
        return
    ip = anonymise(context["ip"], mode)
    if ip is None:
        del context["ip"]
    else:
        context["ip"] = ip
